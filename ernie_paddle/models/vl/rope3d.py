"""3-D rotary positions for the VL language model (spec 4.1) and the rope index of a multimodal prompt.

Of the ``head_dim / 2`` rotary pairs, the last ``freq_allocation`` turn with the temporal position; of the
first ``hw`` pairs, even ones turn with the height and odd ones with the width position. Text tokens carry
the same position on all three axes, so a text-only prompt is plain 1-D RoPE.
"""

from __future__ import annotations

import itertools

import numpy as np
import paddle

TEXT, IMAGE, VIDEO = 0, 1, 2


def axis_of_pairs(head_dim: int, hw: int) -> np.ndarray:
    """Which position axis (0 time, 1 height, 2 width) drives each rotary pair."""
    pairs = np.arange(head_dim // 2)
    return np.where(pairs >= hw, 0, np.where(pairs % 2 == 0, 1, 2))


def rope_3d_cos_sin(positions: np.ndarray, head_dim: int, theta: float, hw: int):
    """cos/sin [B, T, 1, head_dim/2] float32 for positions [3, B, T] (time, height, width)."""
    exponent = paddle.arange(0, head_dim, 2, dtype="float32") / head_dim
    inv_freq = 1.0 / paddle.pow(paddle.to_tensor(theta, dtype="float32"), exponent)
    axes = axis_of_pairs(head_dim, hw)
    pos = np.asarray(positions, dtype=np.int64)
    chosen = np.stack([pos[a] for a in axes], axis=-1)  # [B, T, hd/2]: the driving position of each pair
    freqs = paddle.to_tensor(chosen.astype(np.float32)) * inv_freq
    return freqs.cos().unsqueeze(2), freqs.sin().unsqueeze(2)


def _vision_positions(start: int, grid, t_merge: int, merge: int) -> np.ndarray:
    t, h, w = (int(g) for g in grid)
    tt, hh, ww = np.meshgrid(np.arange(t // t_merge), np.arange(h // merge) + start,
                             np.arange(w // merge) + start, indexing="ij")
    out = np.stack([tt, hh, ww]).reshape(3, -1)
    out[0] += start
    return out


def rope_index(token_types: np.ndarray, image_grids, video_grids, merge: int, t_merge: int):
    """Positions [3, T] and the decode offset (max + 1 - T) for one row of modality types.

    Each run of image (video) tokens takes the next image (video) grid; the position then advances by
    max(h, w) / merge, not by the number of tokens, as in the reference.
    """
    grids = {IMAGE: iter(image_grids if image_grids is not None else []),
             VIDEO: iter(video_grids if video_grids is not None else [])}
    parts, current = [], 0
    for kind, run in itertools.groupby(np.asarray(token_types).tolist()):
        n = len(list(run))
        if kind == TEXT:
            parts.append(np.broadcast_to(np.arange(n) + current, (3, n)))
            current += n
            continue
        grid = next(grids[kind])
        part = _vision_positions(current, grid, 1 if kind == IMAGE else t_merge, merge)
        if part.shape[1] != n:
            raise ValueError(f"{part.shape[1]} positions for a grid {list(grid)} but {n} placeholder tokens")
        parts.append(part)
        current += max(int(grid[1]), int(grid[2])) // merge
    pos = np.concatenate(parts, axis=1).astype(np.int64)
    return pos, int(pos.max()) + 1 - pos.shape[1]
