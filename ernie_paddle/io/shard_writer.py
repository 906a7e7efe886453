"""Write sharded safetensors that stream: headers are laid out from a plan, tensors written one by one.

Memory stays bounded by the tensor being written, not by the shard: each shard file gets its full
header first (every name, dtype and shape is known from the plan), then tensors land at their offsets.
Output goes into a temporary sibling folder that is renamed into place only when the whole job
succeeded (``atomic_folder``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import SAFE_INDEX, SAFE_SINGLE
from ernie_paddle.io.dtypes import BY_CODE, code_of


@dataclass(frozen=True)
class OutSpec:
    """One output tensor: name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * BY_CODE[self.dtype].itemsize


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '10KiB', '1234' -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
             "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "K": 1000, "M": 1000**2,
             "G": 1000**3, "B": 1}
    unit = next((u for u in units if s.endswith(u)), None)
    number, factor = (s[: -len(unit)], units[unit]) if unit else (s, 1)
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ErnieError(f"cannot read size {text!r} (use e.g. 5GB, 500MB, 2GiB)") from None
    if value <= 0:
        raise ErnieError(f"size {text!r} must be positive")
    return value


def plan_shards(groups: Iterable[list[OutSpec]], max_shard_size: int) -> list[list[OutSpec]]:
    """Assign tensors to shards in order; a group's tensors never straddle two shards."""
    shards: list[list[OutSpec]] = [[]]
    size = 0
    for group in groups:
        gsize = sum(s.nbytes for s in group)
        if shards[-1] and size + gsize > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += gsize
    return [s for s in shards if s] or [[]]


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SAFE_SINGLE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardedWriter:
    """Preallocated shard files; ``write(name, array)`` puts one tensor at its planned offset."""

    def __init__(self, folder: Path, shards: list[list[OutSpec]], fmt: str):
        self.folder = Path(folder)
        self.names = shard_names(len(shards))
        self.specs = {s.name: s for shard in shards for s in shard}
        self._where: dict[str, tuple[int, int]] = {}
        self._handles = []
        self._written: set[str] = set()
        for i, (fname, shard) in enumerate(zip(self.names, shards)):
            header: dict = {"__metadata__": {"format": fmt}}
            offset = 0
            for spec in shard:
                header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                                     "data_offsets": [offset, offset + spec.nbytes]}
                offset += spec.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw += b" " * (-len(raw) % 8)
            fh = open(self.folder / fname, "wb")
            fh.write(struct.pack("<Q", len(raw)) + raw)
            base = 8 + len(raw)
            fh.truncate(base + offset)
            self._handles.append(fh)
            for spec in shard:
                start = header[spec.name]["data_offsets"][0]
                self._where[spec.name] = (i, base + start)

    def write(self, name: str, array: np.ndarray) -> int:
        spec = self.specs[name]
        arr = np.ascontiguousarray(array)
        if tuple(arr.shape) != spec.shape or code_of(arr.dtype) != spec.dtype:
            raise AssertionError(f"{name}: planned {spec.dtype}{list(spec.shape)}, got "
                                 f"{code_of(arr.dtype)}{list(arr.shape)}")
        return self.write_stream(name, [arr])

    def write_stream(self, name: str, pieces: Iterable[np.ndarray]) -> int:
        """Write tensor ``name`` from consecutive pieces of its flattened data (its dtype, row-major order):
        memory is bounded by one piece, not by the tensor."""
        spec = self.specs[name]
        shard, offset = self._where[name]
        fh = self._handles[shard]
        fh.seek(offset)
        written = 0
        for piece in pieces:
            if code_of(piece.dtype) != spec.dtype:
                raise AssertionError(f"{name}: planned {spec.dtype}, got a {code_of(piece.dtype)} piece")
            written += piece.nbytes
            if written > spec.nbytes:
                raise AssertionError(f"{name}: pieces overrun the planned {spec.nbytes} bytes")
            fh.write(memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8)))
        if written != spec.nbytes:
            raise AssertionError(f"{name}: pieces hold {written} of the planned {spec.nbytes} bytes")
        self._written.add(name)
        return written

    def close(self) -> None:
        missing = set(self.specs) - self._written
        for fh in self._handles:
            fh.close()
        if missing:
            raise AssertionError(f"planned tensors never written: {sorted(missing)[:5]}")
        if len(self.names) > 1:
            total = sum(s.nbytes for s in self.specs.values())
            weight_map = {n: self.names[self._where[n][0]] for n in sorted(self.specs)}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        for fh in self._handles:
            fh.close()


def write_tensors(folder: Path, tensors: Iterable[tuple[str, np.ndarray]], fmt: str,
                  max_shard_size: int | str = "5GB") -> None:
    """Write in-memory tensors (small checkpoints, tests) as sharded safetensors into ``folder``."""
    items = [(n, np.asarray(a)) for n, a in tensors]
    groups = [[OutSpec(n, code_of(a.dtype), tuple(a.shape))] for n, a in items]
    writer = ShardedWriter(folder, plan_shards(groups, parse_size(max_shard_size)), fmt)
    try:
        for name, arr in items:
            writer.write(name, arr)
    except BaseException:
        writer.abort()
        raise
    writer.close()


class ShardAccumulator:
    """Collect tensors whose shapes are known only once computed; flush a shard whenever it is full.

    Memory is bounded by one shard. Shards are renamed to ``model-0000k-of-0000n`` (or
    ``model.safetensors`` alone) and the index written by ``close``.
    """

    def __init__(self, folder: Path, fmt: str, max_shard_size: int | str = "5GB"):
        self.folder, self.fmt, self.limit = Path(folder), fmt, parse_size(max_shard_size)
        self._pending: list[tuple[str, np.ndarray]] = []
        self._size = 0
        self._parts: list[list[OutSpec]] = []

    def add(self, name: str, array: np.ndarray) -> None:
        arr = np.ascontiguousarray(array)
        if self._pending and self._size + arr.nbytes > self.limit:
            self._flush()
        self._pending.append((name, arr))
        self._size += arr.nbytes

    def _flush(self) -> None:
        part = self.folder / f".part-{len(self._parts)}"
        part.mkdir()
        write_tensors(part, self._pending, self.fmt, max_shard_size=1 << 62)
        self._parts.append([OutSpec(n, code_of(a.dtype), tuple(a.shape)) for n, a in self._pending])
        self._pending, self._size = [], 0

    def close(self) -> None:
        if self._pending or not self._parts:
            self._flush()
        names = shard_names(len(self._parts))
        weight_map = {}
        for i, (name, specs) in enumerate(zip(names, self._parts)):
            part = self.folder / f".part-{i}"
            os.replace(part / SAFE_SINGLE, self.folder / name)
            part.rmdir()
            weight_map.update({s.name: name for s in specs})
        if len(names) > 1:
            total = sum(s.nbytes for specs in self._parts for s in specs)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_folder(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``dst`` only if the block completes."""
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise ErnieError("destination exists (pass --overwrite to replace it)", dst)
    if not dst.parent.is_dir():
        raise ErnieError("the destination's parent folder does not exist", dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, trash / dst.name)
        os.replace(tmp, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dst)
