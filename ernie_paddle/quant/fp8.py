"""Block-wise FP8 (e4m3, 128x128 blocks): quantize, dequantize, Paddle <-> HF layout, block-safe split/concat.

Paddle release: ``quant_weight`` float8_e4m3fn [K, N] + ``weight_scale`` float32 [ceil(K/B), ceil(N/B)],
W[k, n] = fp32(q[k, n]) * S[k // B, n // B] (the scale is a multiplier).
HF fine-grained FP8: ``weight`` [N, K] + ``weight_scale_inv`` [ceil(N/B), ceil(K/B)], same values transposed.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant.arrays import FLOATS, float_matrix

BLOCK = 128
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-4  # FastDeploy's per_block_cast_to_fp8 clips the block amax here; all-zero blocks stay 0
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def grid_shape(rows: int, cols: int, block: int = BLOCK) -> tuple[int, int]:
    """Shape of the scale grid for a [rows, cols] weight."""
    return -(-rows // block), -(-cols // block)


def e4m3_bytes(q: np.ndarray, name: str = "quant_weight") -> np.ndarray:
    """The raw e4m3 bytes of ``q`` as uint8 (accepts float8_e4m3fn or uint8/int8 byte views)."""
    q = np.asarray(q)
    if q.dtype == E4M3 or q.dtype in (np.uint8, np.int8):
        return q.view(np.uint8)
    raise ErnieError(f"tensor {name!r} has dtype {q.dtype}; expected float8_e4m3fn (or its raw uint8/int8 bytes)")


def as_e4m3(q: np.ndarray, name: str = "quant_weight") -> np.ndarray:
    """``q`` viewed as float8_e4m3fn."""
    return e4m3_bytes(q, name).view(E4M3)


def check(q: np.ndarray, scale: np.ndarray | None, block: int = BLOCK, name: str = "weight",
          suffixes: tuple[str, str] = ("quant_weight", "weight_scale")) -> tuple[np.ndarray, np.ndarray]:
    """Validate one FP8 pair (either layout: the scale grid follows q's two axes); returns (e4m3 q, scale).

    ``suffixes`` names the pair in messages: ("quant_weight", "weight_scale") for Paddle,
    ("weight", "weight_scale_inv") for HF.
    """
    qn, sn = f"{name}.{suffixes[0]}", f"{name}.{suffixes[1]}"
    if scale is None:
        raise ErnieError(f"tensor {sn!r} is missing (the FP8 tensor {qn!r} needs its block scale)")
    q = as_e4m3(q, qn)
    scale = np.asarray(scale)
    if q.ndim != 2:
        raise ErnieError(f"tensor {qn!r} has shape {list(q.shape)}; expected 2-D")
    if scale.dtype not in FLOATS:
        raise ErnieError(f"tensor {sn!r} has dtype {scale.dtype}; expected float32")
    want = grid_shape(*q.shape, block)
    if scale.shape != want:
        raise ErnieError(f"tensor {sn!r} has shape {list(scale.shape)}; expected {list(want)} for "
                         f"{qn!r} of shape {list(q.shape)} with {block}x{block} blocks")
    bad = (q.view(np.uint8) & 0x7F) == 0x7F
    if bad.any():
        raise ErnieError(f"tensor {qn!r} holds {int(bad.sum())} e4m3 NaN codes (0x7F/0xFF)")
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray, block: int = BLOCK, name: str = "weight") -> np.ndarray:
    """float32 W[r, c] = q[r, c] * scale[r // block, c // block] (works for [K,N] and [N,K] alike)."""
    q, scale = check(q, scale, block, name)
    rows, cols = q.shape
    s = np.repeat(np.repeat(scale.astype(np.float32), block, axis=0), block, axis=1)[:rows, :cols]
    return q.astype(np.float32) * s


def quantize(w: np.ndarray, block: int = BLOCK, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest e4m3 with scale = block amax / 448; returns (q float8_e4m3fn, scale float32)."""
    w = float_matrix(w, name, "FP8-quantize")
    rows, cols = w.shape
    gr, gc = grid_shape(rows, cols, block)
    padded = np.zeros((gr * block, gc * block), np.float32)
    padded[:rows, :cols] = w
    tiles = padded.reshape(gr, block, gc, block)
    amax = np.maximum(np.abs(tiles).max(axis=(1, 3)), np.float32(AMAX_FLOOR))
    scale = (amax / np.float32(E4M3_MAX)).astype(np.float32)
    inv = (np.float32(E4M3_MAX) / amax).astype(np.float32)
    scaled = np.clip(tiles * inv[:, None, :, None], -E4M3_MAX, E4M3_MAX)
    q = scaled.reshape(gr * block, gc * block)[:rows, :cols].astype(E4M3)
    return np.ascontiguousarray(q), scale


def paddle_to_hf(quant_weight: np.ndarray, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paddle ([K,N] q, [K/B,N/B] scale) -> HF ([N,K] weight, [N/B,K/B] weight_scale_inv); bytes unchanged."""
    return np.ascontiguousarray(np.asarray(quant_weight).T), np.ascontiguousarray(np.asarray(weight_scale).T)


def hf_to_paddle(weight: np.ndarray, weight_scale_inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HF ([N,K] weight, [N/B,K/B] weight_scale_inv) -> Paddle ([K,N] quant_weight, [K/B,N/B] weight_scale)."""
    return paddle_to_hf(weight, weight_scale_inv)


def split(q: np.ndarray, scale: np.ndarray, sizes: list[int], axis: int, block: int = BLOCK,
          name: str = "weight") -> list[tuple[np.ndarray, np.ndarray]]:
    """Split q and its scale grid along ``axis`` into parts of ``sizes``; every cut must fall on a block edge."""
    q, scale = np.asarray(q), np.asarray(scale)
    if scale.shape != grid_shape(*q.shape, block):
        raise ErnieError(f"scale of {name!r} has shape {list(scale.shape)}, which does not match "
                         f"{list(q.shape)} with {block}x{block} blocks")
    if sum(sizes) != q.shape[axis] or min(sizes, default=0) <= 0:
        raise ErnieError(f"cannot split {name!r} (size {q.shape[axis]} on axis {axis}) into parts {sizes}")
    parts, start = [], 0
    for size in sizes:
        end = start + size
        if end != q.shape[axis] and end % block:
            raise ErnieError(f"splitting FP8 tensor {name!r} at {end} on axis {axis} would cut a "
                             f"{block}-wide scale block; fused parts must be multiples of {block}")
        parts.append((np.take(q, range(start, end), axis=axis),
                      np.take(scale, range(start // block, -(-end // block)), axis=axis)))
        start = end
    return parts


def concat(parts: list[tuple[np.ndarray, np.ndarray]], axis: int, block: int = BLOCK,
           name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`split`: every part but the last must fill whole blocks along ``axis``."""
    for i, (q, s) in enumerate(parts):
        q = np.asarray(q)
        if np.asarray(s).shape != grid_shape(*q.shape, block):
            raise ErnieError(f"part {i} of {name!r}: scale shape {list(np.asarray(s).shape)} does not match "
                             f"{list(q.shape)} with {block}x{block} blocks")
        if i < len(parts) - 1 and q.shape[axis] % block:
            raise ErnieError(f"cannot fuse FP8 tensor {name!r}: part {i} has size {q.shape[axis]} on axis "
                             f"{axis}, not a multiple of {block}, so its last scale block would be shared")
    try:
        return (np.concatenate([np.asarray(q) for q, _ in parts], axis=axis),
                np.concatenate([np.asarray(s) for _, s in parts], axis=axis))
    except ValueError as e:
        raise ErnieError(f"cannot fuse FP8 tensor {name!r}: {e}") from None
