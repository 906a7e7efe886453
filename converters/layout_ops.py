"""The array ops between the Paddle and HF layouts of one rule, and their shapes without data.

Paddle Linear weights are [in, out] with fused Q|K|V and gate|up on the output axis; HF Linear weights are
[out, in] and separate. Each op names one such relation; ``converters.rules`` says which key uses which.
"""

from __future__ import annotations

import numpy as np

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

# Ops (Paddle side <-> HF side)
COPY, T, QKV, QKV_BIAS, GATE_UP, GATE_UP_BIAS, LM_HEAD, DROP = (
    "copy", "transpose", "qkv", "qkv_bias", "gate_up", "gate_up_bias", "lm_head", "drop")
LINEAR_OPS = (T, QKV, GATE_UP)


def drops(op: str, cfg: ErnieConfig) -> bool:
    """Whether this op writes nothing (usage buffers; lm_head when tied, since both sides re-tie it)."""
    return op == DROP or (op == LM_HEAD and cfg.tie_word_embeddings)


def _split_points(op: str, cfg: ErnieConfig, width: int, block: int = 1) -> list[int]:
    """Where the fused output axis splits; ``block`` > 1 for a scale grid (the cut must fall on a block edge)."""
    if op in (QKV, QKV_BIAS):
        points = [cfg.q_size, cfg.q_size + cfg.kv_size]
    else:
        points = [width * block // 2]
    if block > 1 and any(p % block for p in points):
        raise ErnieError(f"splitting the fused tensor at {points} would cut a {block}-wide FP8 scale block "
                         f"(q/kv sizes and MLP widths must be multiples of {block} to convert FP8 to HF)")
    return [p // block for p in points]


def to_hf(op: str, arr: np.ndarray, cfg: ErnieConfig, block: int = 1) -> list[np.ndarray]:
    """Paddle tensor -> the HF tensor(s) of its rule, in the rule's HF order (``block``: FP8 scale grid)."""
    if op in (T, LM_HEAD):
        return [np.ascontiguousarray(arr.T)]
    if op == COPY:
        return [arr]
    parts = np.split(arr, _split_points(op, cfg, arr.shape[-1], block), axis=-1)
    if op in (QKV, GATE_UP):
        return [np.ascontiguousarray(p.T) for p in parts]
    return [np.ascontiguousarray(p) for p in parts]


def to_paddle(op: str, arrs: list[np.ndarray]) -> np.ndarray:
    """HF tensor(s) of one rule -> the Paddle tensor."""
    if op in (T, LM_HEAD):
        return np.ascontiguousarray(arrs[0].T)
    if op == COPY:
        return arrs[0]
    if op in (QKV, GATE_UP):
        return np.concatenate([a.T for a in arrs], axis=-1)
    return np.concatenate(arrs, axis=-1)


def hf_shapes(op: str, shape: tuple[int, ...], cfg: ErnieConfig, block: int = 1) -> list[tuple[int, ...]]:
    """Shapes of ``to_hf``'s outputs for a Paddle input of ``shape``, without touching data."""
    if op in (T, LM_HEAD):
        return [tuple(reversed(shape))]
    if op == COPY:
        return [shape]
    width = shape[-1]
    cuts = [0, *_split_points(op, cfg, width, block), width]
    widths = [b - a for a, b in zip(cuts, cuts[1:])]
    if op in (QKV, GATE_UP):
        return [(w, shape[0]) for w in widths]
    return [(w,) for w in widths]


def paddle_shape(op: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of ``to_paddle``'s output for HF inputs of ``shapes``, without touching data."""
    if op in (T, LM_HEAD):
        return tuple(reversed(shapes[0]))
    if op == COPY:
        return shapes[0]
    if op in (QKV, GATE_UP):
        return (shapes[0][1], sum(s[0] for s in shapes))
    return (sum(s[0] for s in shapes),)
