"""Plan a conversion as tensor groups, validated against the config before any byte is written.

A group is the unit of streaming: the source tensors of one rule instance (e.g. q, k, v of one layer)
and the output tensors they become. Planning reads headers only; ``Group.compute`` reads the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ernie_paddle.checkpoint import Checkpoint
from ernie_paddle.config import HF, PADDLE
from ernie_paddle.dtypes import BY_CODE, BY_NAME, code_of
from ernie_paddle.errors import ErnieError
from ernie_paddle.shard_writer import OutSpec

from . import layout
from .schema import expected_paddle_tensors, mtp_layers_in

FLOAT_CODES = ("BF16", "F16", "F32")


@dataclass
class Group:
    """Source keys of one rule instance, the outputs they become, and how."""

    sources: list[str]
    outputs: list[OutSpec]
    op: str
    target: str

    def compute(self, ckpt: Checkpoint) -> list[np.ndarray]:
        arrays = [ckpt.get(k) for k in self.sources]
        if self.target == HF and self.op != "identity":
            results = layout.to_hf(self.op, arrays[0], ckpt.config)
        elif self.target == PADDLE and self.op != "identity":
            results = [layout.to_paddle(self.op, arrays)]
        else:
            results = arrays
        return [_cast(a, spec.dtype) for a, spec in zip(results, self.outputs)]


def _cast(arr: np.ndarray, code: str) -> np.ndarray:
    want = BY_CODE[code]
    return arr if arr.dtype == want else arr.astype(want)


def _out_code(ckpt: Checkpoint, name: str, src: str, dtype: str) -> str:
    code = ckpt.dtype_code(src)
    if code not in FLOAT_CODES:
        return code
    if layout.is_fp32_key(name):
        return "F32"
    return code if dtype == "keep" else code_of(BY_NAME[dtype])


def _match_groups(ckpt: Checkpoint, problems: list[ErnieError]) -> list[tuple[layout.Match, list[str]]]:
    """Group source keys by rule instance, in source order; unknown names and gaps become problems."""
    found: dict[tuple, tuple[layout.Match, list[str | None]]] = {}
    for key in ckpt.keys():
        m = layout.match_paddle(key) if ckpt.format == PADDLE else layout.match_hf(key)
        if m is None:
            problems.append(ErnieError(f"unknown tensor {key!r}: not an ERNIE 4.5 {ckpt.format} "
                                       "text-model key", ckpt.specs[key].file))
            continue
        ident = (m.rule, m.groups)
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

    groups: list[tuple[layout.Match, list[str], tuple[int, ...]]]
    problems: list[ErnieError]


def analyse(ckpt: Checkpoint) -> Analysis:
    """Match every tensor to a rule and check it against the config; collects all problems."""
    problems: list[ErnieError] = []
    matched = _match_groups(ckpt, problems)
    expected = expected_paddle_tensors(ckpt.config, mtp_layers_in(m.paddle_key() for m, _ in matched))
    seen: set[str] = set()
    groups = []
    for m, keys in matched:
        pkey = m.paddle_key()
        shapes = [ckpt.specs[k].shape for k in keys]
        try:
            pshape = shapes[0] if ckpt.format == PADDLE else layout.paddle_shape(m.rule.op, shapes)
        except IndexError:
            pshape = ()
        problem = _shape_problem(ckpt, keys[0], pkey, pshape, expected)
        seen.add(pkey)
        if problem:
            problems.append(problem)
        else:
            groups.append((m, keys, pshape))
    missing = [k for k, e in expected.items() if e.required and k not in seen]
    if missing:
        problems.append(ErnieError(f"{len(missing)} tensor(s) the config requires are missing, e.g. "
                                   f"{_source_name(ckpt, missing[0])!r}", ckpt.folder))
    return Analysis(groups, problems)


def plan(ckpt: Checkpoint, target: str, dtype: str = "keep") -> list[Group]:
    """Validated groups that turn ``ckpt`` into ``target`` layout (``"hf"`` or ``"paddle"``)."""
    if dtype != "keep" and dtype not in BY_NAME:
        raise ErnieError(f"unknown --dtype {dtype!r} (keep, bfloat16, float16 or float32)")
    cfg = ckpt.config
    analysis = analyse(ckpt)
    if analysis.problems:
        raise analysis.problems[0]
    groups: list[Group] = []
    for m, keys, pshape in analysis.groups:
        pkey = m.paddle_key()
        if target == ckpt.format:
            outs = [OutSpec(k, _out_code(ckpt, k, k, dtype), ckpt.specs[k].shape) for k in keys]
            groups.append(Group(keys, outs, "identity", target))
        elif layout.drops(m.rule.op, cfg):
            continue
        elif target == HF:
            names = m.hf_keys()
            out_shapes = layout.hf_shapes(m.rule.op, pshape, cfg)
            outs = [OutSpec(n, _out_code(ckpt, n, keys[0], dtype), s) for n, s in zip(names, out_shapes)]
            groups.append(Group(keys, outs, m.rule.op, target))
        else:
            groups.append(Group(keys, [OutSpec(pkey, _out_code(ckpt, pkey, keys[0], dtype), pshape)],
                                m.rule.op, target))
    return groups


def _shape_problem(ckpt: Checkpoint, src: str, pkey: str, pshape, expected) -> ErnieError | None:
    exp = expected.get(pkey)
    if exp is None:
        return ErnieError(f"tensor {src!r} has no place in this config (check num_hidden_layers, "
                          "moe_num_experts, the MoE layer placement and tie_word_embeddings)",
                          ckpt.specs[src].file)
    if tuple(pshape) != exp.shape and not (pkey == "lm_head.weight" and ckpt.config.tie_word_embeddings):
        return ErnieError(f"tensor {src!r} has shape {list(ckpt.specs[src].shape)}, which contradicts "
                          f"config.json (expected Paddle-layout shape {list(exp.shape)})",
                          ckpt.specs[src].file)
    return None


def _source_name(ckpt: Checkpoint, pkey: str) -> str:
    if ckpt.format == PADDLE:
        return pkey
    m = layout.match_paddle(pkey)
    return m.hf_keys()[0] if m else pkey


def iter_tensors(ckpt: Checkpoint, target: str, dtype: str = "keep") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, array) of ``ckpt`` in ``target`` layout, one group at a time."""
    for group in plan(ckpt, target, dtype):
        yield from zip((o.name for o in group.outputs), group.compute(ckpt))
