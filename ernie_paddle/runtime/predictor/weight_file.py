"""``weights.bin``: the stored weights of a native export, one raw tensor after another, read resident or mapped.

The native step program takes its stored linears (``stored_weights``) as inputs, not as parameters, so their
bytes live in this file and not in ``step.pdiparams``. The manifest's ``weight_file`` lists each tensor
(``name``, ``dtype``, ``shape``, ``offset``); offsets are multiples of ``ALIGN``. Export writes the file
preallocated, piece by piece (``WeightFileWriter``: an expert's slice of a stacked tensor at its own offset,
so no stack is ever assembled in memory). The runner opens it with :func:`open_weights`: read into memory
(``mmap=False``) or memory-mapped (``mmap=True``: only the pages decoding touches become resident, the page
cache keeps what fits), and hands each tensor to Paddle without a copy (DLPack over the numpy view).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import paddle

from ernie_paddle.errors import ErnieError

FILE = "weights.bin"
ALIGN = 64
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8)}


@dataclass(frozen=True)
class Entry:
    """One tensor of the file."""

    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset}


def layout(specs) -> list[Entry]:
    """Entries for ``specs`` ((name, dtype, shape) in program order) at ``ALIGN``-ed offsets."""
    out, pos = [], 0
    for name, dtype, shape in specs:
        if dtype not in DTYPES:
            raise ValueError(f"weight {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        entry = Entry(name, dtype, tuple(int(d) for d in shape), pos)
        out.append(entry)
        pos += -(-entry.nbytes // ALIGN) * ALIGN
    return out


def file_bytes(entries: list[Entry]) -> int:
    return max((e.offset + e.nbytes for e in entries), default=0)


def entries_from_manifest(manifest: dict, folder: Path) -> list[Entry]:
    """The ``weight_file`` table of a manifest (checked: dtypes known, offsets in order)."""
    table = (manifest.get("weight_file") or {}).get("tensors") or []
    try:
        entries = [Entry(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]), int(t["offset"])) for t in table]
    except (KeyError, TypeError, ValueError):
        raise ErnieError("the manifest's weight_file table is malformed; re-run `ernie-paddle export`",
                         folder / "manifest.json") from None
    for e in entries:
        if e.dtype not in DTYPES or e.offset % ALIGN:
            raise ErnieError(f"weight {e.name!r} in the manifest has dtype {e.dtype!r} at offset {e.offset}; "
                             "re-run `ernie-paddle export`", folder / "manifest.json")
    return entries


class WeightFileWriter:
    """Fills a preallocated ``weights.bin``: ``write(index, array, start)`` puts ``array``'s bytes at element
    ``start`` of entry ``index`` (a stacked tensor's expert e: ``start = e * per-expert elements``);
    ``finish()`` checks that every byte of every entry was written exactly once."""

    def __init__(self, path: Path, entries: list[Entry]):
        self.path, self.entries = Path(path), entries
        self._written = [0] * len(entries)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, file_bytes(entries))

    def write(self, index: int, array: np.ndarray, start: int = 0) -> None:
        e = self.entries[index]
        arr = np.ascontiguousarray(array)
        if arr.dtype != DTYPES[e.dtype]:
            raise ValueError(f"weight {e.name!r} is {e.dtype}, got {arr.dtype}")
        first = start * arr.itemsize
        if first + arr.nbytes > e.nbytes:
            raise ValueError(f"weight {e.name!r}: {arr.nbytes} bytes at byte {first} overrun its {e.nbytes}")
        view, pos = memoryview(arr.reshape(-1).view(np.uint8)), e.offset + first
        while view:
            done = os.pwrite(self._fd, view, pos)
            view, pos = view[done:], pos + done
        self._written[index] += arr.nbytes

    def finish(self) -> None:
        os.close(self._fd)
        for e, got in zip(self.entries, self._written):
            if got != e.nbytes:
                raise ErnieError(f"weight {e.name!r}: {got} of {e.nbytes} bytes came from the checkpoint "
                                 "(a tensor is missing or repeated)", self.path)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def open_weights(folder: Path, entries: list[Entry], mmap: bool = False) -> tuple[dict[str, paddle.Tensor], object]:
    """Paddle tensors over ``folder/weights.bin`` by entry name, and the buffer they view (keep it alive as
    long as the tensors): the file mapped read-only (``mmap``) or read into memory once."""
    if not entries:  # a program of Paddle's op set keeps its weights as parameters
        return {}, None
    path = Path(folder) / FILE
    need = file_bytes(entries)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ErnieError(f"cannot open the export's weights: {exc.strerror}", path) from None
    if size < need:
        short = next(e for e in entries if e.offset + e.nbytes > size)
        raise ErnieError(f"{FILE} has {size} bytes but its weights need {need}; it ends inside {short.name!r} "
                         "(truncated); re-run `ernie-paddle export`", path)
    if mmap:
        buf = np.memmap(path, dtype=np.uint8, mode="r", shape=(need,))
    else:
        buf = np.empty(need, dtype=np.uint8)
        with open(path, "rb", buffering=0) as fh:
            got = fh.readinto(memoryview(buf))
        if got != need:
            raise ErnieError(f"read {got} of {need} bytes (the file changed while loading)", path)
    return {e.name: _tensor(buf, e) for e in entries}, buf


def _tensor(buf: np.ndarray, e: Entry) -> paddle.Tensor:
    """A zero-copy Paddle tensor of entry ``e`` in ``buf`` (bf16 travels as int16: DLPack has no ml_dtypes)."""
    raw = buf[e.offset:e.offset + e.nbytes]
    if e.dtype == "bfloat16":
        return paddle.utils.dlpack.from_dlpack(raw.view(np.int16).reshape(e.shape)).view(paddle.bfloat16)
    return paddle.utils.dlpack.from_dlpack(raw.view(DTYPES[e.dtype]).reshape(e.shape))
