"""WINT2 (CCQ 2-bit) expert weights: the reference decoder of the spec (section 3.4) and a test encoder.

Per projection with K inputs and N outputs: ``quant_weight`` uint8 [K/4, N], ``weight_scale`` uint8
[K/128, N] (two 4-bit local scales per byte, high nibble = even 64-row group), ``super_scales`` [N],
``code_scale`` and ``code_zp`` float32 [N]. For row k, column n:
c = floor(b * code_scale + code_zp + 0.5) in float32; q = ((c >> (9, 6, 3, 0)[k % 4]) & 0x3F) - 32;
W = q * (nibble * super_scale).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant.arrays import FLOATS

SHIFTS = (9, 6, 3, 0)
GROUP = 64  # rows per local scale
ZERO_POINT = 32
SUFFIXES = ("quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp")
# (code_scale, code_zp) the encoder tries per column: each spreads the 256 bytes over codes 0..32767.
CODEBOOKS = ((100.25, 6144.0), (128.4, 0.0), (80.3, 6144.0), (120.7, 0.0))


def check(tensors: dict[str, np.ndarray], name: str = "weight") -> tuple[np.ndarray, ...]:
    """Validate the five tensors of one projection; returns them as (u8, u8, f32, f32, f32) and K, N."""
    for s in SUFFIXES:
        if tensors.get(s) is None:
            raise ErnieError(f"tensor '{name}.{s}' is missing (WINT2 needs {', '.join(SUFFIXES)})")
    qw, ls = (np.asarray(tensors[s]) for s in SUFFIXES[:2])
    for s, t in (("quant_weight", qw), ("weight_scale", ls)):
        if t.dtype not in (np.uint8, np.int8) or t.ndim != 2:
            raise ErnieError(f"tensor '{name}.{s}' has {t.dtype} {list(t.shape)}; expected a 2-D uint8 tensor")
    k, n = qw.shape[0] * 4, qw.shape[1]
    if k % GROUP:
        raise ErnieError(f"tensor '{name}.quant_weight' has {qw.shape[0]} rows; 4 * rows must be a multiple of 64")
    want = (-(-k // 128), n)
    if ls.shape != want:
        raise ErnieError(f"tensor '{name}.weight_scale' has shape {list(ls.shape)}; expected {list(want)}")
    vecs = []
    for s in SUFFIXES[2:]:
        t = np.asarray(tensors[s])
        if t.dtype not in FLOATS or t.size != n or t.ndim > 2:
            raise ErnieError(f"tensor '{name}.{s}' has {t.dtype} {list(t.shape)}; expected a float vector [{n}]")
        t = t.reshape(n).astype(np.float32)
        if not np.isfinite(t).all():
            raise ErnieError(f"tensor '{name}.{s}' holds NaN or Inf")
        vecs.append(t)
    return (qw.view(np.uint8), ls.view(np.uint8), *vecs)


def codes(quant_weight: np.ndarray, code_scale: np.ndarray, code_zp: np.ndarray) -> np.ndarray:
    """The 15-bit code c per byte: floor(b * code_scale + code_zp + 0.5), float32 math, as int64."""
    c = np.floor(quant_weight.astype(np.float32) * code_scale + code_zp + np.float32(0.5))
    if np.abs(c).max(initial=0) >= 2**31:
        raise ErnieError("WINT2 code_scale/code_zp give codes outside the int32 range")
    return c.astype(np.int64)


def decode(quant_weight: np.ndarray, code_scale: np.ndarray, code_zp: np.ndarray) -> np.ndarray:
    """Signed 6-bit values q [K, N] (int8, -32..31) from the bytes [K/4, N]; windows overlap by 3 bits."""
    c = codes(quant_weight, code_scale, code_zp)
    q = np.stack([((c >> s) & 0x3F) - ZERO_POINT for s in SHIFTS], axis=1)
    return q.astype(np.int8).reshape(-1, quant_weight.shape[1])


def nibbles(weight_scale: np.ndarray, k: int) -> np.ndarray:
    """Local scales [K/64, N]: group g takes the high nibble of byte g // 2 when g is even, else the low."""
    both = np.stack([weight_scale >> 4, weight_scale & 0xF], axis=1)
    return both.reshape(-1, weight_scale.shape[1])[: k // GROUP]


def dequantize(tensors: dict[str, np.ndarray], name: str = "weight") -> np.ndarray:
    """float32 W [K, N] (Paddle in/out layout) from the five checkpoint tensors."""
    qw, ls, sup, cs, zp = check(tensors, name)
    k, n = qw.shape[0] * 4, qw.shape[1]
    q = decode(qw, cs, zp).astype(np.float32).reshape(k // GROUP, GROUP, n)
    scale = nibbles(ls, k).astype(np.float32) * sup
    return (q * scale[:, None, :]).reshape(k, n)


def _codebook(cs: float, zp: float) -> np.ndarray:
    """[256, 4] float32 values decoded from every byte under one (code_scale, code_zp)."""
    b = np.arange(256, dtype=np.uint8)[:, None]
    one = np.ones(1, np.float32)
    return decode(b, one * np.float32(cs), one * np.float32(zp)).reshape(256, 4).astype(np.float32)


def _best_bytes(t: np.ndarray, book: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For targets t [R, 4, N] pick the byte with the nearest codeword; returns (bytes [R, N], error [N])."""
    r, _, n = t.shape
    out, err = np.empty((r, n), np.uint8), np.zeros(n, np.float64)
    norms = (book**2).sum(1)[None, :, None]
    step = max(1, (1 << 22) // (256 * r))
    for lo in range(0, n, step):
        tc = t[:, :, lo:lo + step]
        d = norms - 2 * np.einsum("rjn,bj->rbn", tc, book)  # + |t|^2, the same for every byte
        idx = d.argmin(axis=1)
        out[:, lo:lo + step] = idx
        err[lo:lo + step] = (((book[idx].transpose(0, 2, 1) - tc) ** 2).sum(axis=(0, 1)))
    return out, err


def encode(w: np.ndarray, super_dtype=ml_dtypes.bfloat16, name: str = "weight",
           codebooks=CODEBOOKS) -> dict[str, np.ndarray]:
    """Quantize W [K, N] (K % 64 == 0) to valid WINT2 tensors; a nearest-codeword search, not Baidu's CCQ, over
    ``codebooks`` ((code_scale, code_zp) pairs; each costs one search: fewer encode faster, less closely)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype not in FLOATS or w.shape[0] % GROUP:
        raise ErnieError(f"cannot WINT2-encode {name!r}: need a 2-D float [K, N] with K % 64 == 0, "
                         f"got {w.dtype} {list(w.shape)}")
    w = w.astype(np.float32)
    k, n = w.shape
    groups = w.reshape(k // GROUP, GROUP, n)
    target = np.abs(groups).max(axis=1) / np.float32(31)  # [K/64, N] ideal group scale
    sup = (target.max(axis=0) / np.float32(15)).astype(super_dtype)
    sup32 = sup.astype(np.float32)
    safe = np.where(sup32 > 0, sup32, np.float32(1))
    nib = np.where(target > 0, np.clip(np.rint(target / safe), 1, 15), 0).astype(np.uint8)
    scale = nib.astype(np.float32) * sup32
    t = groups / np.where(scale > 0, scale, np.float32(np.inf))[:, None, :]
    t = t.reshape(k // 4, 4, n)
    best_bytes, best_err, cs, zp = None, None, np.zeros(n, np.float32), np.zeros(n, np.float32)
    for c_s, c_z in codebooks:
        b, e = _best_bytes(t, _codebook(c_s, c_z))
        take = np.ones(n, bool) if best_err is None else e < best_err
        best_bytes = b if best_bytes is None else np.where(take[None, :], b, best_bytes)
        best_err = e if best_err is None else np.where(take, e, best_err)
        cs[take], zp[take] = c_s, c_z
    if nib.shape[0] % 2:
        nib = np.concatenate([nib, np.zeros((1, n), np.uint8)])
    local = (nib[0::2] << 4) | nib[1::2]
    return {"quant_weight": best_bytes, "weight_scale": local.astype(np.uint8), "super_scales": sup,
            "code_scale": cs, "code_zp": zp}
