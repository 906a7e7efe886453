"""A llama.cpp GGUF (F32, BF16, Q8_0 or Q4_0) of a Paddle-layout checkpoint, written at any size.

``bench_llamacpp.write_gguf`` reads an HF folder and holds every routed expert until the end: at 21B-A3B
size that is the whole model, in float32. Here the GGUF's metadata and tensor names are bench_llamacpp's
(``_add_config``, ``gguf_name``, ``_KEEP_F32``: one writer of the llama.cpp conventions), but the tensor
table is planned from the checkpoint's headers, the file is preallocated, and each Paddle tensor is turned
into its HF piece(s) (``converters.layout_ops.to_hf``) and written at its place (a routed expert into its
slot of the layer's stacked tensor), quantized in chunks of rows: memory stays bounded by one tensor.
``consume=True`` deletes each shard once it has been read, so a GGUF as large as the checkpoint fits
beside what is left of it; ``regenerate`` writes the same tensors without the checkpoint, drawing each one
again from ``scale_checkpoint.random_tensor`` (the checkpoint may be gone: the bench's mapped export
consumed it).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHUNK_BYTES = 64 << 20  # float32 rows quantized at a time


@dataclass(frozen=True)
class Slot:
    """One GGUF tensor: numpy-order logical shape, ggml type and data bytes (offset known once written)."""

    shape: tuple[int, ...]
    ggml: int
    nbytes: int


@dataclass(frozen=True)
class Piece:
    """Where the ``index``-th HF tensor of a Paddle tensor goes: its GGUF tensor and expert slot."""

    index: int
    name: str
    expert: int | None


def _ggml_type(name: str, shape: tuple[int, ...], qtype: str, embedding: str | None = None):
    """As ``bench_llamacpp.write_gguf``: 2-D+ tensors whose rows hold a multiple of 32 values in ``qtype``
    (the embedding / output head in ``embedding`` when given), the rest (norms, router, correction bias) F32."""
    import gguf
    from bench_llamacpp import _KEEP_F32

    if embedding and name in ("token_embd.weight", "output.weight"):
        qtype = embedding.upper()
    wide = qtype == "F32" or len(shape) < 2 or name.endswith(_KEEP_F32) or shape[-1] % 32
    return gguf.GGMLQuantizationType.F32 if wide else getattr(gguf.GGMLQuantizationType, qtype)


def _nbytes(shape: tuple[int, ...], ggml) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ggml]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def plan(cfg, tensors: list[tuple[str, tuple[int, ...]]], qtype: str,
         embedding: str | None = None) -> tuple[dict[str, Slot], list]:
    """The GGUF tensors of a Paddle checkpoint's ``tensors`` (key, shape; in file order), and per Paddle
    tensor its layout op and where its HF pieces go: ``[(key, op, [Piece, ...]), ...]``; ``embedding``: the
    type of the embedding / output head (default ``qtype``)."""
    from bench_llamacpp import gguf_name

    from converters.layout_ops import hf_shapes
    from converters.rules import match_paddle

    shapes: dict[str, tuple[int, ...]] = {}
    sources = []
    for key, paddle_shape in tensors:
        match = match_paddle(key)
        if match is None:
            raise ValueError(f"{key}: not an ERNIE 4.5 text tensor")
        pieces = []
        for i, (hf, shape) in enumerate(zip(match.hf_keys(), hf_shapes(match.rule.op, paddle_shape, cfg))):
            target = gguf_name(hf)
            if target is None:
                continue
            name, expert = target
            if name.endswith("exp_probs_b.bias"):
                shape = (int(np.prod(shape)),)
            shapes[name] = shape if expert is None else (cfg.moe_num_experts, *shape)
            pieces.append(Piece(i, name, expert))
        sources.append((key, match.rule.op, pieces))
    slots = {}
    for name, shape in shapes.items():
        ggml = _ggml_type(name, shape, qtype, embedding)
        slots[name] = Slot(shape, ggml, _nbytes(shape, ggml))
    return slots, sources


def data_bytes(slots: dict[str, Slot]) -> int:
    """The GGUF's tensor data bytes (each tensor padded to the default alignment)."""
    import gguf

    return sum(gguf.GGUFWriter.ggml_pad(s.nbytes, gguf.GGUF_DEFAULT_ALIGNMENT) for s in slots.values())


def _header(out: Path, cfg, slots: dict[str, Slot], qtype: str) -> dict[str, int]:
    """Write metadata and tensor table, size the file; the absolute data offset of every tensor."""
    import gguf
    from bench_llamacpp import _add_config

    w = gguf.GGUFWriter(str(out), "ernie4_5-moe" if cfg.is_moe else "ernie4_5")
    _add_config(w, cfg.to_dict("hf"), qtype)
    for name, slot in slots.items():
        w.add_tensor_info(name, slot.shape, np.dtype(np.float32), slot.nbytes, raw_dtype=slot.ggml)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    pad = gguf.GGUFWriter.ggml_pad
    end = pad(out.stat().st_size, w.data_alignment) + sum(pad(s.nbytes, w.data_alignment) for s in slots.values())
    os.truncate(out, end)
    offsets = {t.name: int(t.data_offset) for t in gguf.GGUFReader(str(out)).tensors}
    if set(offsets) != set(slots):
        raise RuntimeError(f"{out}: tensor table does not read back")
    return offsets


def _encoded(arr: np.ndarray, ggml) -> np.ndarray:
    """``arr`` (rows of the GGUF tensor) as the GGUF's bytes."""
    import gguf

    if ggml == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(arr, dtype=np.float32).view(np.uint8)
    if ggml == gguf.GGMLQuantizationType.BF16 and arr.dtype.name == "bfloat16":
        return np.ascontiguousarray(arr).view(np.uint8)  # the bits as they are
    return gguf.quants.quantize(np.asarray(arr, dtype=np.float32), ggml)


def _write_rows(pool, fd: int, offset: int, arr: np.ndarray, ggml) -> int:
    """Encode and write ``arr`` at ``offset`` in chunks of rows, on the pool's threads; bytes written."""
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
    row_bytes = _nbytes((rows.shape[1],), ggml)
    step = max(1, CHUNK_BYTES // (4 * rows.shape[1]))

    def chunk(start: int) -> int:
        data = np.ascontiguousarray(_encoded(rows[start:start + step], ggml)).reshape(-1)
        return os.pwrite(fd, memoryview(data), offset + start * row_bytes)

    return sum(pool.map(chunk, range(0, rows.shape[0], step)))


class _Regenerated:
    """The random checkpoint of ``scale_checkpoint`` without its files: specs from its shard plan, each
    tensor drawn again."""

    def __init__(self, preset: str, layers: int | None, overrides: dict, seed: int, shard_size: str):
        from types import SimpleNamespace

        from ernie_paddle.devkit.scale_checkpoint import checkpoint_plan, scaled_config

        self.config, self.seed = scaled_config(preset, layers, **overrides), seed
        self.specs = {}
        for i, shard in enumerate(checkpoint_plan(self.config, shard_size)):
            for pos, s in enumerate(shard):
                self.specs[s.name] = SimpleNamespace(name=s.name, shape=tuple(s.shape), nbytes=s.nbytes,
                                                     file=f"shard-{i}", start=pos)
        self.total_bytes = sum(s.nbytes for s in self.specs.values())

    def get(self, key: str) -> np.ndarray:
        from ernie_paddle.devkit.scale_checkpoint import random_tensor

        return random_tensor(self.config, key, self.seed)


def write_gguf_from_paddle(folder: Path, out: Path, qtype: str = "Q4_0", consume: bool = False,
                           quiet: bool = False, regenerate: dict | None = None, embedding: str | None = None) -> Path:
    """Write ``out`` from the Paddle checkpoint ``folder`` (``regenerate``: the ``_Regenerated`` arguments
    instead); ``consume`` deletes each shard once read; ``embedding``: as for ``plan``."""
    from converters.layout_ops import to_hf
    from ernie_paddle.io.checkpoint import open_checkpoint
    from ernie_paddle.progress import progress_bar

    qtype = qtype.upper()
    ckpt = _Regenerated(**regenerate) if regenerate else open_checkpoint(folder)
    consume = consume and not regenerate
    order = sorted(ckpt.specs.values(), key=lambda spec: (spec.file, spec.start))
    slots, sources = plan(ckpt.config, [(spec.name, spec.shape) for spec in order], qtype, embedding)
    offsets = _header(out, ckpt.config, slots, qtype)
    filled = dict.fromkeys(slots, 0)
    last_of = {ckpt.specs[key].file: key for key, _op, _pieces in sources}
    fd = os.open(out, os.O_WRONLY)
    pool = ThreadPoolExecutor(os.cpu_count() or 1)
    try:
        with progress_bar(ckpt.total_bytes, f"gguf {qtype}", quiet) as bar:
            for key, op, pieces in sources:
                spec = ckpt.specs[key]
                if pieces:
                    parts = to_hf(op, ckpt.get(key), ckpt.config)
                    for p in pieces:
                        slot, part = slots[p.name], parts[p.index]
                        at = offsets[p.name] + (0 if p.expert is None else p.expert * slot.nbytes // slot.shape[0])
                        filled[p.name] += _write_rows(pool, fd, at, part, slot.ggml)
                    del parts
                bar.update(spec.nbytes)
                if consume and last_of[spec.file] == key:
                    os.unlink(spec.file)
    finally:
        pool.shutdown()
        os.close(fd)
    short = [n for n, s in slots.items() if filled[n] != s.nbytes]
    if short:
        raise RuntimeError(f"{out}: tensors not fully written: {short[:3]}")
    return out
