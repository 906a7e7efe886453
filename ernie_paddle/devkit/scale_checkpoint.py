"""Random checkpoints at real sizes in the release's Paddle layout, written one piece at a time.

The tensor set is the one the config implies (``converters.expected``: what the loader checks), in the
release dtypes (bf16; routers and the correction bias float32), as sharded safetensors with the index,
``config.json`` in the Paddle dialect and ``generation_config.json``; no tokenizer (feed token ids).

Values: linear and embedding weights are symmetric with magnitudes log-uniform over [2^-8, 2^-4) (std
about 0.027, built straight from random bits: a sign, 7 mantissa bits and one of four exponents), norms 1,
float32 tensors N(0, 0.02). A tensor's data is cut into pieces of ``PIECE`` values, each drawn from its
own generator seeded by (seed, key, piece index): any tensor can be regenerated alone (``random_tensor``),
pieces are drawn in parallel, and memory stays bounded by a few pieces in flight, not by the tensor or
the shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from converters.expected import Entry, tensor_entries
from converters.rules import NORM, is_correction_bias
from ernie_paddle.config.presets import preset_config
from ernie_paddle.config.text import PADDLE, ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.dtypes import BY_CODE
from ernie_paddle.io.shard_writer import OutSpec, ShardedWriter, atomic_folder, parse_size, plan_shards
from ernie_paddle.progress import progress_bar

PIECE = 1 << 21  # values per piece: 4 MB of bf16; part of every tensor's definition (keep it fixed)
_EXP_LOW = 119   # bf16 biased exponent of 2^-8: magnitudes in [2^-8, 2^-4)
FLOAT_STD = 0.02
# The release's generation_config.json keys that matter here: the token ids (sampling stays opt-in).
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@dataclass(frozen=True)
class WriteReport:
    folder: Path
    tensors: int
    bytes: int
    shards: int
    seconds: float


def scaled_config(preset: str, layers: int | None = None, **overrides) -> ErnieConfig:
    """The preset's config (bf16), with ``layers`` decoder layers and any field replaced by ``overrides``.

    Cutting depth keeps the preset's MoE pattern on the layers that remain (the last MoE layer moves in).
    """
    cfg = preset_config(preset)
    settable = {f.name for f in fields(ErnieConfig)} - {"family", "extra", "source_dialect"}
    unknown = sorted(set(overrides) - settable)
    if unknown:
        raise ErnieError(f"unknown config field(s) {unknown} for a {preset} checkpoint")
    changes = dict(overrides, dtype="bfloat16")
    if layers is not None:
        if layers < 1:
            raise ErnieError(f"layers must be >= 1, not {layers}")
        changes["num_hidden_layers"] = layers
        if cfg.moe_layer_end_index >= layers:
            changes.setdefault("moe_layer_end_index", layers - 1)
    cfg = cfg.replace(**changes)
    cfg.validate()
    return cfg


def _entries(cfg: ErnieConfig) -> list[Entry]:
    """The tensors to write: every required one, and the correction bias where the config uses it."""
    return [e for e in tensor_entries(cfg)
            if e.required or (is_correction_bias(e.key) and cfg.moe_use_aux_free)]


def _code(e: Entry) -> str:
    return "F32" if e.rule.fp32 else "BF16"


def checkpoint_plan(cfg: ErnieConfig, max_shard_size: int | str = "4GB") -> list[list[OutSpec]]:
    """The shards (tensor specs in order) of the random checkpoint of ``cfg``."""
    if cfg.family == "vl":
        raise ErnieError("random checkpoints cover the text models (dense and MoE), not VL")
    groups = [[OutSpec(e.key, _code(e), e.shape)] for e in _entries(cfg)]
    return plan_shards(groups, parse_size(max_shard_size))


def _seed_words(seed: int, key: str) -> list[int]:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
    return [seed & 0xFFFFFFFF, *np.frombuffer(digest, dtype=np.uint32).tolist()]


def _piece(e: Entry, seed: int, index: int, count: int) -> np.ndarray:
    """Values ``index * PIECE`` .. ``+ count`` of tensor ``e``'s flattened data."""
    code = _code(e)
    if e.rule.kind == NORM:
        return np.full(count, 0.0 if e.rule.bias else 1.0, BY_CODE[code])
    gen = np.random.SFC64(np.random.SeedSequence([*_seed_words(seed, e.key), index]))
    if code == "F32":
        return np.random.Generator(gen).standard_normal(count, np.float32) * np.float32(FLOAT_STD)
    bits = gen.random_raw(-(-count // 4)).view(np.uint16)[:count]  # 16 random bits per value
    exponent = (bits >> 7) & 3
    bits &= 0x807F                 # keep the sign and 7 mantissa bits
    exponent += _EXP_LOW
    exponent <<= 7
    bits |= exponent
    return bits.view(BY_CODE["BF16"])


def _pieces(e: Entry) -> list[tuple[int, int]]:
    numel = int(np.prod(e.shape, dtype=np.int64))
    return [(i, min(PIECE, numel - i * PIECE)) for i in range(-(-numel // PIECE))]


def random_tensor(cfg: ErnieConfig, key: str, seed: int = 0) -> np.ndarray:
    """Tensor ``key`` of the random checkpoint of ``cfg`` and ``seed``, regenerated alone."""
    entry = next((e for e in _entries(cfg) if e.key == key), None)
    if entry is None:
        raise ErnieError(f"the config implies no tensor {key!r}")
    flat = [_piece(entry, seed, i, n) for i, n in _pieces(entry)]
    out = np.concatenate(flat) if flat else np.empty(0, BY_CODE[_code(entry)])
    return out.reshape(entry.shape)


def _drawn(entries: list[Entry], seed: int, workers: int) -> Iterator[tuple[Entry, Iterator[np.ndarray]]]:
    """(entry, its pieces) in order; pieces are drawn by ``workers`` threads, a few ahead of the writer."""
    jobs = [(e, i, n) for e in entries for i, n in _pieces(e)]
    with ThreadPoolExecutor(workers) as pool:
        ahead: deque = deque()
        feed = iter(jobs)

        def top_up() -> None:
            for job in feed:
                ahead.append(pool.submit(_piece, job[0], seed, job[1], job[2]))
                if len(ahead) >= workers + 1:
                    return

        def pieces_of(e: Entry) -> Iterator[np.ndarray]:
            for _ in _pieces(e):
                top_up()
                yield ahead.popleft().result()

        for e in entries:
            yield e, pieces_of(e)


def write_random_checkpoint(folder: str | Path, cfg: ErnieConfig, seed: int = 0,
                            max_shard_size: int | str = "4GB", workers: int | None = None,
                            overwrite: bool = False, quiet: bool = False) -> WriteReport:
    """Write the random checkpoint of ``cfg`` into ``folder`` (atomically: a temporary sibling renamed
    into place); peak memory is a few pieces (``workers + 2`` of 4 MB), whatever the size."""
    start = time.perf_counter()
    shards = checkpoint_plan(cfg, max_shard_size)
    entries = {e.key: e for e in _entries(cfg)}
    ordered = [entries[s.name] for shard in shards for s in shard]
    total = sum(s.nbytes for shard in shards for s in shard)
    workers = max(1, workers or os.cpu_count() or 1)
    with atomic_folder(folder, overwrite) as tmp:
        writer = ShardedWriter(tmp, shards, "paddle")
        try:
            with progress_bar(total, "random checkpoint", quiet) as bar:
                for e, pieces in _drawn(ordered, seed, workers):
                    bar.update(writer.write_stream(e.key, pieces))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        cfg.write(tmp, PADDLE)
        (tmp / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    return WriteReport(Path(folder), len(ordered), total, len(shards), time.perf_counter() - start)
