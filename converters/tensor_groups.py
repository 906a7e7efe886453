"""MemoryPlan a conversion as tensor groups, validated against the config before any byte is written.

A group is the unit of streaming: the source tensors of one rule instance (e.g. q, k, v of one layer)
and the output tensors they become. Planning reads headers only; ``Group.compute`` reads the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from converters import layout_ops
from converters.expected import Expected, expected_tensors
from converters.rules import (
    LINEAR_OPS,
    Match,
    is_fp32_key,
    is_tied_head_copy,
    match_hf,
    match_paddle,
    mtp_layers_in,
    rules_for,
)
from ernie_paddle.config.text import HF, PADDLE
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import Checkpoint
from ernie_paddle.io.dtypes import BY_CODE, BY_NAME, code_of
from ernie_paddle.io.shard_writer import OutSpec

FLOAT_CODES = ("BF16", "F16", "F32")


@dataclass
class Group:
    """Source keys of one rule instance, the outputs they become, and how."""

    sources: list[str]
    outputs: list[OutSpec]
    op: str
    target: str
    block: int = 1  # > 1 for an FP8 scale grid

    def compute(self, ckpt: Checkpoint) -> list[np.ndarray]:
        arrays = [ckpt.get(k) for k in self.sources]
        if self.target == HF and self.op != "identity":
            results = layout_ops.to_hf(self.op, arrays[0], ckpt.config, self.block)
        elif self.target == PADDLE and self.op != "identity":
            results = [layout_ops.to_paddle(self.op, arrays)]
        else:
            results = arrays
        return [_cast(a, spec.dtype) for a, spec in zip(results, self.outputs)]


def _cast(arr: np.ndarray, code: str) -> np.ndarray:
    want = BY_CODE[code]
    return arr if arr.dtype == want else arr.astype(want)


def _out_code(ckpt: Checkpoint, name: str, src: str, dtype: str, variant: str = "") -> str:
    code = ckpt.dtype_code(src)
    if code not in FLOAT_CODES or variant:  # quantized tensors and their scales keep their dtype
        return code
    if is_fp32_key(name):
        return "F32"
    return code if dtype == "keep" else code_of(BY_NAME[dtype])


def _match_groups(ckpt: Checkpoint, problems: list[ErnieError]) -> list[tuple[Match, list[str]]]:
    """Group source keys by rule instance, in source order; unknown names and gaps become problems."""
    found: dict[tuple, tuple[Match, list[str | None]]] = {}
    rules = rules_for(ckpt.config)
    for key in ckpt.keys():
        m = match_paddle(key, rules) if ckpt.format == PADDLE else match_hf(key, rules)
        if m is None:
            problems.append(ErnieError(f"unknown tensor {key!r}: not an ERNIE 4.5 {ckpt.format} "
                                       "text-model key", ckpt.specs[key].file))
            continue
        if ckpt.format == HF and not m.variant and ckpt.dtype_code(key).startswith("F8") \
                and m.rule.op in LINEAR_OPS:
            m = Match(m.rule, m.groups, m.slot, "q")  # HF FP8 keeps the name ``weight``
        ident = (m.rule, m.groups, m.variant)
        if ident not in found:
            found[ident] = (m, [None] * (1 if ckpt.format == PADDLE else len(m.rule.hf)))
        found[ident][1][m.slot] = key
    groups = []
    for m, keys in found.values():
        if None in keys:
            have = [k for k in keys if k]
            missing = [k for k, got in zip(m.hf_keys(), keys) if got is None]
            problems.append(ErnieError(f"incomplete tensor group: {have} present but {missing} missing",
                                       ckpt.specs[have[0]].file))
            continue
        groups.append((m, keys))
    return groups


@dataclass
class Analysis:
    """Matched groups with their Paddle-layout shapes, and every problem found."""

    groups: list[tuple[Match, list[str], tuple[int, ...]]]
    problems: list[ErnieError]


def analyse(ckpt: Checkpoint) -> Analysis:
    """Match every tensor to a rule and check it against the config; collects all problems."""
    problems: list[ErnieError] = []
    matched = _match_groups(ckpt, problems)
    expected = expected_tensors(ckpt.config, mtp_layers_in(m.paddle_key() for m, _ in matched))
    seen: set[str] = set()
    groups = []
    block = quant_block(ckpt.config)
    for m, keys in matched:
        shapes = [ckpt.specs[k].shape for k in keys]
        try:
            pshape = shapes[0] if ckpt.format == PADDLE else layout_ops.paddle_shape(m.rule.op, shapes)
        except IndexError:
            pshape = ()
        problem = _shape_problem(ckpt, keys[0], m, pshape, expected, block)
        seen.add(m.weight_key())
        if problem:
            problems.append(problem)
        else:
            groups.append((m, keys, pshape))
    missing = [k for k, e in expected.items() if e.required and k not in seen]
    if missing:
        problems.append(ErnieError(f"{len(missing)} tensor(s) the config requires are missing, e.g. "
                                   f"{_source_name(ckpt, missing[0])!r}", ckpt.folder))
    return Analysis(groups, problems)


def plan_groups(ckpt: Checkpoint, target: str, dtype: str = "keep") -> list[Group]:
    """Validated groups that turn ``ckpt`` into ``target`` layout (``"hf"`` or ``"paddle"``)."""
    if dtype != "keep" and dtype not in BY_NAME:
        raise ErnieError(f"unknown --dtype {dtype!r} (keep, bfloat16, float16 or float32)")
    cfg = ckpt.config
    analysis = analyse(ckpt)
    if analysis.problems:
        raise analysis.problems[0]
    groups: list[Group] = []
    block = quant_block(cfg)
    for m, keys, pshape in analysis.groups:
        pkey, v = m.paddle_key(), m.variant
        gblock = block if v == "s" else 1
        if target == ckpt.format:
            outs = [OutSpec(k, _out_code(ckpt, k, k, dtype, v), ckpt.specs[k].shape) for k in keys]
            groups.append(Group(keys, outs, "identity", target))
        elif layout_ops.drops(m.rule.op, cfg):
            continue
        elif target == HF:
            _check_hf_convertible(ckpt, m, keys[0])
            names = m.hf_keys()
            out_shapes = layout_ops.hf_shapes(m.rule.op, pshape, cfg, gblock)
            outs = [OutSpec(n, _out_code(ckpt, n, keys[0], dtype, v), s) for n, s in zip(names, out_shapes)]
            groups.append(Group(keys, outs, m.rule.op, target, gblock))
        else:
            groups.append(Group(keys, [OutSpec(pkey, _out_code(ckpt, pkey, keys[0], dtype, v), pshape)],
                                m.rule.op, target, gblock))
    return groups


def quant_block(cfg) -> int:
    """The FP8 block edge from ``quantization_config.weight_block_size`` (128 when absent)."""
    qc = cfg.quantization_config or {}
    size = qc.get("weight_block_size") if isinstance(qc, dict) else None
    if isinstance(size, list) and size:
        if len(set(size)) != 1:
            raise ErnieError(f"non-square FP8 blocks {size} are not supported")
        return int(size[0])
    return 128


def _is_fp8_part(ckpt: Checkpoint, m: Match, src: str) -> bool:
    """An FP8 block-wise weight (e4m3 bytes) or its float32 2-D scale grid."""
    code, ndim = ckpt.dtype_code(src), len(ckpt.specs[src].shape)
    return (m.variant == "q" and code.startswith("F8")) or (m.variant == "s" and code == "F32" and ndim == 2)


def _check_hf_convertible(ckpt: Checkpoint, m: Match, src: str) -> None:
    """Only bf16/fp32 and FP8 block-wise tensors have an HF layout."""
    if m.variant and not _is_fp8_part(ckpt, m, src):
        raise ErnieError(f"tensor {src!r} ({m.variant}, {ckpt.dtype_code(src)}) has no Hugging Face layout: "
                         "WINT2 and weight-only int8/int4 exist only as Paddle checkpoints; convert the "
                         "unquantized checkpoint instead", ckpt.specs[src].file)


def _shape_problem(ckpt: Checkpoint, src: str, m: Match, pshape, expected,
                   block: int) -> ErnieError | None:
    pkey = m.weight_key()
    exp = expected.get(pkey)
    if exp is not None and m.variant:
        if _is_fp8_part(ckpt, m, src) and m.variant == "s":
            exp = Expected(tuple(-(-d // block) for d in exp.shape))
        elif not _is_fp8_part(ckpt, m, src):
            return None  # packed integer layouts are checked by the quantized loaders
    if exp is None:
        return ErnieError(f"tensor {src!r} has no place in this config (check num_hidden_layers, "
                          "moe_num_experts, the MoE layer placement and tie_word_embeddings)",
                          ckpt.specs[src].file)
    if tuple(pshape) != exp.shape and not (is_tied_head_copy(pkey, ckpt.config)):
        return ErnieError(f"tensor {src!r} has shape {list(ckpt.specs[src].shape)}, which contradicts "
                          f"config.json (expected Paddle-layout shape {list(exp.shape)})",
                          ckpt.specs[src].file)
    return None


def _source_name(ckpt: Checkpoint, pkey: str) -> str:
    if ckpt.format == PADDLE:
        return pkey
    m = match_paddle(pkey, rules_for(ckpt.config))
    return m.hf_keys()[0] if m else pkey


def iter_tensors(ckpt: Checkpoint, target: str, dtype: str = "keep") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, array) of ``ckpt`` in ``target`` layout, one group at a time."""
    for group in plan_groups(ckpt, target, dtype):
        yield from zip((o.name for o in group.outputs), group.compute(ckpt))


def iter_paddle_tensors(ckpt: Checkpoint, dtype: str = "keep") -> Iterator[tuple[str, np.ndarray]]:
    """(Paddle key, array) for a checkpoint in either layout, mapped on the fly one group at a time."""
    return iter_tensors(ckpt, PADDLE, dtype)


def iter_hf_tensors(ckpt: Checkpoint, dtype: str = "keep") -> Iterator[tuple[str, np.ndarray]]:
    """(HF key, array) for a checkpoint in either layout, mapped on the fly one group at a time."""
    return iter_tensors(ckpt, HF, dtype)
