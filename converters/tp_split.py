"""Split a Paddle checkpoint into per-rank tensor-parallel checkpoints, and merge them back bit-exactly.

Output layout (the released pre-sharded variants): ``DST/rank{r}/`` with each rank's safetensors,
``DST/config.json`` and the side files, and ``DST/tp_split.json`` recording the degree. Column-parallel
linears (fused qkv: each rank holds its own Q|K|V block; up_gate: its own gate|up block; their biases)
split the output axis; row-parallel linears (o_proj, down_proj of dense, shared and routed experts) split
the input axis; everything else (embeddings, head, norms, routers, correction bias, MTP projection) is
replicated. KV heads are replicated when there are fewer than ranks. Quantized tensors split with their
scales along the same axis; a split that would cut a head or a quantization block is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.convert import check_paths, copy_side_files
from converters.layout_ops import GATE_UP, GATE_UP_BIAS, QKV, QKV_BIAS
from converters.rules import BLOCK, COLUMN, QUANT_VARIANTS, ROW, Match, match_paddle, mlp_width
from converters.tensor_groups import plan_groups
from ernie_paddle.config.text import PADDLE, ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.io.dtypes import BY_CODE
from ernie_paddle.io.shard_writer import OutSpec, ShardedWriter, atomic_folder, plan_shards, write_tensors
from ernie_paddle.progress import progress_bar

MANIFEST = "tp_split.json"
_QUANT_1D = ("super_scales", "code_scale", "code_zp")  # WINT2 per-column vectors (``rules.QUANT_VARIANTS``)
_WINT2_MARK = "super_scales"


def rank_ranges(key: str, cfg: ErnieConfig, tp: int, rank: int) -> tuple[str, list[tuple[int, int]]] | None:
    """(axis 'N' or 'K', original index ranges) that ``rank`` holds of linear ``key``; None = replicated."""
    m = match_paddle(key)
    if m is None or m.rule.tp not in (COLUMN, ROW):
        return None
    if m.rule.op in (QKV, QKV_BIAS):
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = nh // tp * hd
        kv_head = rank * nkv // tp if nkv < tp else None
        kv = (kv_head * hd, (kv_head + 1) * hd) if kv_head is not None else \
            (rank * nkv // tp * hd, (rank + 1) * nkv // tp * hd)
        qs = cfg.q_size
        return "N", [(rank * q, (rank + 1) * q), (qs + kv[0], qs + kv[1]),
                     (qs + cfg.kv_size + kv[0], qs + cfg.kv_size + kv[1])]
    if m.rule.scope == BLOCK:  # the attention output projection
        part = cfg.q_size // tp
        return "K", [(rank * part, (rank + 1) * part)]
    width = mlp_width(m.rule, cfg)
    part = width // tp
    if m.rule.op in (GATE_UP, GATE_UP_BIAS):
        return "N", [(rank * part, (rank + 1) * part), (width + rank * part, width + (rank + 1) * part)]
    return "K", [(rank * part, (rank + 1) * part)]


def check_degree(cfg: ErnieConfig, tp: int, folder) -> None:
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    problems = []
    if tp < 1:
        problems.append("--tp must be at least 1")
    elif nh % tp:
        problems.append(f"{nh} attention heads do not split over {tp} ranks")
    elif (nkv % tp) if nkv >= tp else (tp % nkv):
        problems.append(f"{nkv} kv heads cannot be split or replicated evenly over {tp} ranks")
    for name, width in (("intermediate_size", cfg.intermediate_size),
                        ("moe_intermediate_size", cfg.moe_intermediate_size),
                        ("shared experts width", cfg.shared_intermediate_size)):
        if width and tp >= 1 and width % tp:
            problems.append(f"{name} {width} does not split over {tp} ranks")
    if problems:
        raise ErnieError("cannot split: " + "; ".join(problems), folder)


def _axis_and_grain(key: str, arr, axis: str, keys) -> tuple[int, int] | None:
    """Stored axis index and granularity (original rows/cols per stored one) for a tensor of a linear."""
    m = match_paddle(key)
    suffix = "bias" if m.rule.bias else QUANT_VARIANTS[m.variant][0] if m.variant else "weight"
    wint2 = Match(m.rule, m.groups, 0, _WINT2_MARK).paddle_key() in keys
    if suffix in ("weight", "quant_weight") and arr.ndim == 2:
        if suffix == "quant_weight" and arr.dtype != BY_CODE["F8_E4M3"] and not wint2:
            raise ErnieError(f"{key}: splitting weight-only int8/int4 tensors in the GPU byte arrangement is "
                             "not supported; dequantize (ernie-paddle quantize) before splitting")
        return (0, 4 if wint2 and suffix == "quant_weight" else 1) if axis == "K" else (1, 1)
    if suffix == "weight_scale" and arr.ndim == 2:
        return (0, 128) if axis == "K" else (1, 1 if wint2 else 128)
    if arr.ndim == 1 and (suffix == "bias" or suffix in _QUANT_1D or suffix == "weight_scale"):
        return None if axis == "K" else (0, 1)
    raise ErnieError(f"{key}: do not know how to split a {arr.dtype} tensor of shape {list(arr.shape)}")


def _stored_ranges(key: str, ranges, grain: int) -> list[tuple[int, int]]:
    out = []
    for a, b in ranges:
        if a % grain or b % grain:
            raise ErnieError(f"{key}: a rank boundary at {a if a % grain else b} would cut a quantization "
                             f"block of {grain}; choose a --tp that keeps slices block-aligned")
        out.append((a // grain, b // grain))
    return out


def split(src, dst, tp: int, overwrite: bool = False, quiet: bool = False) -> list[Path]:
    """Write ``tp`` per-rank checkpoints of ``src`` (any layout; output in the Paddle layout), streaming."""
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    check_paths(src, dst)
    cfg = ckpt.config
    check_degree(cfg, tp, src / "config.json")
    groups = plan_groups(ckpt, PADDLE)
    keys = {o.name for g in groups for o in g.outputs}
    rank_specs = [[[OutSpec(o.name, o.dtype, _slice_shape(o, cfg, tp, r, keys)) for o in g.outputs]
                   for g in groups] for r in range(tp)]
    with atomic_folder(dst, overwrite) as tmp:
        writers = []
        for r in range(tp):
            (tmp / f"rank{r}").mkdir()
            writers.append(ShardedWriter(tmp / f"rank{r}", plan_shards(rank_specs[r], 5 * 1000**3), "paddle"))
        with progress_bar(ckpt.total_bytes, f"split tp={tp}", quiet) as bar:
            for group in groups:
                for spec, arr in zip(group.outputs, group.compute(ckpt)):
                    for r in range(tp):
                        writers[r].write(spec.name, _slice(spec.name, arr, cfg, tp, r, keys))
                    bar.update(arr.nbytes)
        for w in writers:
            w.close()
        cfg.write(tmp, PADDLE)
        copy_side_files(src, tmp)
        (tmp / MANIFEST).write_text(json.dumps({"tp": tp, "layout": "paddle"}, indent=2) + "\n")
    return [dst / f"rank{r}" for r in range(tp)]


def _where(key, arr, cfg, tp, rank, keys):
    spec = rank_ranges(key, cfg, tp, rank)
    if spec is None or tp == 1:
        return None
    where = _axis_and_grain(key, arr, spec[0], keys)
    if where is None:
        return None
    axis, grain = where
    return axis, _stored_ranges(key, spec[1], grain)


def _slice_shape(out: OutSpec, cfg, tp, rank, keys) -> tuple[int, ...]:
    fake = np.empty((0,) * len(out.shape), dtype=BY_CODE[out.dtype])
    where = _where(out.name, fake, cfg, tp, rank, keys)
    if where is None:
        return out.shape
    axis, ranges = where
    shape = list(out.shape)
    shape[axis] = sum(b - a for a, b in ranges)
    return tuple(shape)


def _slice(key, arr, cfg, tp, rank, keys) -> np.ndarray:
    where = _where(key, arr, cfg, tp, rank, keys)
    if where is None:
        return arr
    axis, ranges = where
    parts = [np.take(arr, np.arange(a, b), axis=axis) for a, b in ranges]
    return np.ascontiguousarray(np.concatenate(parts, axis=axis))


def merge(src, dst, overwrite: bool = False, quiet: bool = False) -> None:
    """Join ``rank*`` checkpoints written by ``split`` back into one Paddle checkpoint."""
    src, dst = Path(src), Path(dst)
    manifest = src / MANIFEST
    if not manifest.is_file():
        raise ErnieError(f"not a split checkpoint ({MANIFEST} missing)", src)
    check_paths(src, dst)
    tp = int(json.loads(manifest.read_text())["tp"])
    cfg = ErnieConfig.from_file(src)
    rank_dirs = [src / f"rank{r}" for r in range(tp)]
    for d in rank_dirs:
        if not d.is_dir():
            raise ErnieError(f"rank folder {d.name} is missing", src)
    parts = [open_checkpoint(d, cfg) for d in rank_dirs]
    keys = set(parts[0].keys())
    merged = []
    with progress_bar(len(keys), f"merge tp={tp}", quiet, unit="tensor") as bar:
        for key in parts[0].keys():
            if any(key not in p for p in parts):
                raise ErnieError(f"tensor {key!r} is missing from some rank folders", src)
            merged.append((key, _join(key, [p.get(key) for p in parts], cfg, tp, keys)))
            bar.update(1)
    with atomic_folder(dst, overwrite) as tmp:
        write_tensors(tmp, merged, "paddle")
        cfg.write(tmp, PADDLE)
        copy_side_files(src, tmp, skip={MANIFEST, *(d.name for d in rank_dirs)})


def _join(key, pieces, cfg, tp, keys) -> np.ndarray:
    if _where(key, pieces[0], cfg, tp, 0, keys) is None:
        return pieces[0]
    wheres = [_where(key, pieces[0], cfg, tp, r, keys) for r in range(tp)]
    axis = wheres[0][0]
    shape = list(pieces[0].shape)
    shape[axis] = max(b for _, ranges in wheres for _, b in ranges)
    out = np.empty(shape, dtype=pieces[0].dtype)
    for piece, (_, ranges) in zip(pieces, wheres):
        offset = 0
        for a, b in ranges:
            index = [slice(None)] * out.ndim
            index[axis] = slice(a, b)
            src_index = [slice(None)] * out.ndim
            src_index[axis] = slice(offset, offset + b - a)
            out[tuple(index)] = piece[tuple(src_index)]
            offset += b - a
    return out
