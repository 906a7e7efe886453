"""Weight-only int8/int4 per output channel, and the GPU byte arrangement of ``paddle.nn.quant.weight_quantize``.

Values: scale[n] = max_k |w[k, n]| / 127 (int8) or / 7 (int4), stored in the weight dtype (bf16);
q = clip(round_half_away(w / scale), -bound, bound); W = q * scale[n].

Layouts of ``quant_weight`` for a [K, N] linear:
- ``"sm80"`` (the released prequantized files, as Paddle writes them for arch 75..90): int8 [N, K] or, for
  int4, [N/2, K] bytes; the four steps of section 4.1 of the spec (row permutation, transpose, column
  interleave, +bias and in-word reorder) applied to Q [K, N].
- ``"plain"``: int8 Q [K, N]; int4 as [K/2, N] with two values per byte along K, the even k in the low nibble.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant.arrays import FLOATS, float_matrix

BITS = {"wint8": 8, "wint4": 4}
BOUND = {8: 127, 4: 7}
LAYOUTS = ("sm80", "plain")
_NIBBLE_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # int4 step 4: destination nibble i takes source nibble


def quantize(w: np.ndarray, bits: int, scale_dtype=ml_dtypes.bfloat16,
             name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric quantization of W [K, N]; returns (int8 values [K, N], scale [N])."""
    w = float_matrix(w, name, "quantize")
    bound = BOUND[bits]
    scale = (np.abs(w).max(axis=0) / np.float32(bound)).astype(np.float32).astype(scale_dtype)
    s = scale.astype(np.float32)
    x = (w / np.where(s > 0, s, np.float32(1))).astype(np.float64)
    q = np.clip(np.trunc(x + np.copysign(0.5, x)), -bound, bound)  # C round(): half away from zero
    return np.where(s > 0, q, 0).astype(np.int8), scale


def dequantize_values(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 W [K, N] = q[k, n] * scale[n]."""
    return q.astype(np.float32) * np.asarray(scale).astype(np.float32)[None, :]


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int4 values [K, N] -> int8 [K/2, N], even k in the low nibble."""
    u = q.astype(np.uint8) & 0xF
    return (u[0::2] | (u[1::2] << 4)).view(np.int8)


def unpack_int4(p: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_int4`: int8 [K/2, N] -> sign-extended int8 values [K, N]."""
    u = p.view(np.uint8)
    lo, hi = (u & 0xF).astype(np.int8), (u >> 4).astype(np.int8)
    q = np.stack([lo, hi], axis=1).reshape(-1, u.shape[1])
    return np.where(q > 7, q - 16, q).astype(np.int8)


def _row_perm(bits: int) -> np.ndarray:
    """Step 1 permutation inside a tile of 16 (int8) / 32 (int4) rows: output row t reads input row perm[t]."""
    r = 32 // bits
    t = np.arange(8 * 16 // bits)
    return 8 * ((t % r) // 2) + t % 2 + 2 * (t // r)


def _check_sm80_dims(bits: int, k: int, n: int, name: str) -> int:
    f = 16 // bits  # step 3 interleave factor: 128 * 8 / bits / 64
    if k % 64 or n % (32 // bits) or n % f:
        raise ErnieError(f"tensor {name!r}: the sm80 layout needs in_features % 64 == 0 and out_features % "
                         f"{max(32 // bits, f)} == 0, got [{k}, {n}]")
    return f


def to_sm80(q: np.ndarray, bits: int, name: str = "quant_weight") -> np.ndarray:
    """int values Q [K, N] -> the bytes ``weight_quantize(..., arch=80)`` returns (int8 [N, K] / [N/2, K])."""
    k, n = q.shape
    f = _check_sm80_dims(bits, k, n, name)
    perm = _row_perm(bits)
    x = q.reshape(-1, perm.size, n)[:, perm, :].reshape(k, n)                                 # step 1
    x = x.T.reshape(n // f, f, k // 64, 64).transpose(0, 2, 1, 3).reshape(-1)                 # steps 2-3
    if bits == 8:
        x = (x.astype(np.int16) + 128).astype(np.uint8).reshape(-1, 4)[:, [0, 2, 1, 3]]      # step 4
        return x.reshape(n, k).view(np.int8)
    x = (x.astype(np.int16) + 8).astype(np.uint8).reshape(-1, 8)[:, _NIBBLE_ORDER].reshape(-1)
    return (x[0::2] | (x[1::2] << 4)).reshape(n // 2, k).view(np.int8)


def from_sm80(buf: np.ndarray, bits: int, k: int, n: int, name: str = "quant_weight") -> np.ndarray:
    """Inverse of :func:`to_sm80`: the released bytes -> int values Q [K, N]."""
    f = _check_sm80_dims(bits, k, n, name)
    u = buf.view(np.uint8).reshape(-1)
    if bits == 8:
        x = u.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(-1).astype(np.int16) - 128
    else:
        nib = np.stack([u & 0xF, u >> 4], axis=1).reshape(-1, 8)
        src = np.empty_like(nib)
        src[:, _NIBBLE_ORDER] = nib
        x = src.reshape(-1).astype(np.int16) - 8
    x = x.reshape(n // f, k // 64, f, 64).transpose(0, 2, 1, 3).reshape(n, k).T
    q = np.empty((k, n), np.int8)
    q.reshape(-1, _row_perm(bits).size, n)[:, _row_perm(bits), :] = x.reshape(-1, _row_perm(bits).size, n)
    return q


def to_plain(q: np.ndarray, bits: int) -> np.ndarray:
    return q.astype(np.int8) if bits == 8 else pack_int4(q)


def from_plain(buf: np.ndarray, bits: int) -> np.ndarray:
    return buf.view(np.int8) if bits == 8 else unpack_int4(buf)


def _shapes(bits: int, k: int, n: int) -> dict[str, tuple[int, int]]:
    return {"sm80": (n, k), "plain": (k, n)} if bits == 8 else {"sm80": (n // 2, k), "plain": (k // 2, n)}


def _possible(buf: np.ndarray, bits: int) -> dict[str, bool]:
    """Content test: sm80 adds a bias, so code 0 never occurs; plain values never hit -128 / -8."""
    u = buf.view(np.uint8)
    if bits == 8:
        return {"sm80": not (u == 0).any(), "plain": not (u == 0x80).any()}
    lo, hi = u & 0xF, u >> 4
    return {"sm80": not ((lo == 0) | (hi == 0)).any(), "plain": not ((lo == 8) | (hi == 8)).any()}


def detect_layout(buf: np.ndarray, bits: int, k: int, n: int, name: str = "quant_weight") -> str:
    """Decide ``"sm80"`` or ``"plain"`` from the shape, then the byte values; refuse when unsure."""
    shapes = _shapes(bits, k, n)
    by_shape = [lay for lay, s in shapes.items() if tuple(buf.shape) == s]
    if not by_shape:
        raise ErnieError(f"tensor {name!r} has shape {list(buf.shape)}; for a [{k}, {n}] int{bits} linear "
                         f"expected {list(shapes['sm80'])} (GPU layout) or {list(shapes['plain'])} (plain)")
    ok = _possible(buf, bits)
    fits = [lay for lay in by_shape if ok[lay]]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ErnieError(f"tensor {name!r}: its bytes fit neither the GPU (sm80) nor the plain int{bits} layout "
                         f"(values out of range); it may be an SM70 or an unknown arrangement")
    raise ErnieError(f"tensor {name!r}: cannot tell the GPU (sm80) from the plain int{bits} layout for a square "
                     f"weight from its bytes; pass layout='sm80' or 'plain'")


def unpack(buf: np.ndarray, bits: int, k: int, n: int, layout: str = "auto",
           name: str = "quant_weight") -> np.ndarray:
    """int values Q [K, N] from a stored ``quant_weight`` in ``layout`` ("auto" detects it)."""
    buf = np.asarray(buf)
    if buf.dtype not in (np.int8, np.uint8):
        raise ErnieError(f"tensor {name!r} has dtype {buf.dtype}; expected int8")
    if bits not in BOUND:
        raise ErnieError(f"tensor {name!r}: unsupported weight-only bit width {bits}")
    if layout == "auto":
        layout = detect_layout(buf, bits, k, n, name)
    if layout not in LAYOUTS:
        raise ErnieError(f"unknown weight-only layout {layout!r}; expected one of {LAYOUTS}")
    if tuple(buf.shape) != _shapes(bits, k, n)[layout]:
        raise ErnieError(f"tensor {name!r} has shape {list(buf.shape)}; the {layout} int{bits} layout of a "
                         f"[{k}, {n}] linear is {list(_shapes(bits, k, n)[layout])}")
    if not _possible(buf, bits)[layout]:
        raise ErnieError(f"tensor {name!r} holds bytes the {layout} int{bits} layout cannot produce")
    return from_sm80(buf, bits, k, n, name) if layout == "sm80" else from_plain(buf, bits)


def check_scale(scale: np.ndarray | None, n: int, name: str = "weight_scale") -> np.ndarray:
    """A per-channel scale [N] as float32 (bf16, fp16 and fp32 files are accepted)."""
    if scale is None:
        raise ErnieError(f"tensor {name!r} is missing (weight-only int weights need a per-channel scale)")
    scale = np.asarray(scale)
    if scale.dtype not in FLOATS or scale.size != n or scale.ndim > 2:
        raise ErnieError(f"tensor {name!r} has {scale.dtype} {list(scale.shape)}; expected a float vector [{n}]")
    return scale.reshape(n).astype(np.float32)
