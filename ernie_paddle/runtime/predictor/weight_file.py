"""``weights.bin``: the stored weights of a native export, one raw tensor after another, read resident or mapped.

The native step program takes its stored linears (``stored_weights``) as inputs, not as parameters, so their
bytes live in this file and not in ``step.pdiparams``. The manifest's ``weight_file`` lists each tensor
(``name``, ``dtype``, ``shape``, ``offset``); offsets are multiples of ``ALIGN``. Export writes the file
preallocated, piece by piece (``WeightFileWriter``: an expert's slice of a stacked tensor at its own offset,
so no stack is ever assembled in memory). The runner opens it with :func:`open_weights` and hands each
tensor to Paddle without a copy (DLPack over the numpy view):

- resident (``mmap=False``): the file is read into memory once;
- mapped (``mmap=True``): the routed experts (entries marked ``experts``: most of an MoE's bytes, of which a
  token touches its chosen few) stay memory-mapped read-only, the rest is read. Only the expert pages that
  decoding touches come in, and the page cache keeps what fits. ``WeightBuffers.trim`` drops the mapped pages
  from the process once they pass ``planning.host_ram.MAPPED_BUDGET`` of RAM (``madvise(MADV_DONTNEED)``: they stay in the page
  cache, so a later touch is a minor fault, not a read), so the process's resident set stays bounded by
  the resident part + that budget + one step's experts.
"""

from __future__ import annotations

import mmap as mmap_module
import os
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import paddle

from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.host_ram import MAPPED_BUDGET, host_ram_bytes

FILE = "weights.bin"
ALIGN = 64
HEADROOM = 2 << 30  # memory kept for the KV cache and workspace when deciding to map (``should_map``)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8)}


@dataclass(frozen=True)
class Entry:
    """One tensor of the file."""

    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    offset: int = 0
    experts: bool = False  # routed experts: left mapped by a mapped load

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
                "experts": self.experts}


def layout(specs) -> list[Entry]:
    """Entries for ``specs`` ((name, dtype, shape, experts) in program order) at ``ALIGN``-ed offsets."""
    out, pos = [], 0
    for name, dtype, shape, experts in specs:
        if dtype not in DTYPES:
            raise ValueError(f"weight {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        entry = Entry(name, dtype, tuple(int(d) for d in shape), pos, bool(experts))
        out.append(entry)
        pos += -(-entry.nbytes // ALIGN) * ALIGN
    return out


def file_bytes(entries: list[Entry]) -> int:
    return max((e.offset + e.nbytes for e in entries), default=0)


def _proc_kb(path: str, key: str) -> int | None:
    """Field ``key`` (in kB) of a /proc file such as /proc/meminfo, in bytes (None where it is missing)."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where the system does not say)."""
    return _proc_kb("/proc/meminfo", "MemAvailable")


def should_map(nbytes: int) -> bool:
    """Whether weights of ``nbytes`` should stay mapped: they would not fit in the memory available less
    ``HEADROOM`` (the KV cache and workspace)."""
    free = available_memory()
    return free is not None and nbytes > free - HEADROOM


def entries_from_manifest(manifest: dict, folder: Path) -> list[Entry]:
    """The ``weight_file`` table of a manifest (checked: dtypes known, offsets in order)."""
    table = (manifest.get("weight_file") or {}).get("tensors") or []
    try:
        entries = [Entry(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]), int(t["offset"]),
                         bool(t.get("experts", False))) for t in table]
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


class WeightBuffers:
    """The memory the weight tensors view: ``resident`` (read from the file) and ``mapped`` (the routed
    experts' region of the file, or None); keep it alive as long as the tensors."""

    def __init__(self, resident: np.ndarray, mapped: np.memmap | None, budget: int):
        self.resident, self.mapped, self.budget = resident, mapped, budget
        self.trims = 0

    def trim(self) -> bool:
        """Drop the mapped pages from this process when they pass ``budget`` bytes (they stay in the page
        cache); True when it dropped them."""
        if self.mapped is None or mapped_resident_bytes() <= self.budget:
            return False
        self.mapped._mmap.madvise(mmap_module.MADV_DONTNEED)
        self.trims += 1
        return True


def mapped_resident_bytes() -> int:
    """This process's resident file-backed pages (RssFile of /proc/self/status; 0 where unknown)."""
    return _proc_kb("/proc/self/status", "RssFile") or 0


def open_weights(folder: Path, entries: list[Entry], mmap: bool = False) -> tuple[dict[str, paddle.Tensor],
                                                                                 WeightBuffers | None]:
    """Paddle tensors over ``folder/weights.bin`` by entry name, and the buffers they view: everything read
    into memory, or (``mmap``) the routed experts mapped read-only and the rest read."""
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
    mapped = [e for e in entries if mmap and e.experts]
    read = [e for e in entries if not (mmap and e.experts)]
    resident = np.empty(sum(-(-e.nbytes // ALIGN) * ALIGN for e in read), dtype=np.uint8)
    tensors, pos = {}, 0
    with open(path, "rb", buffering=0) as fh:
        for e in read:
            view = resident[pos:pos + e.nbytes]
            fh.seek(e.offset)
            if fh.readinto(memoryview(view)) != e.nbytes:
                raise ErnieError(f"short read of {e.name!r} (the file changed while loading)", path)
            tensors[e.name] = _tensor(view, e.dtype, e.shape)
            pos += -(-e.nbytes // ALIGN) * ALIGN
    region = None
    if mapped:
        start = min(e.offset for e in mapped) // mmap_module.ALLOCATIONGRANULARITY * mmap_module.ALLOCATIONGRANULARITY
        end = max(e.offset + e.nbytes for e in mapped)
        region = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(end - start,))
        for e in mapped:
            tensors[e.name] = _tensor(region[e.offset - start:e.offset - start + e.nbytes], e.dtype, e.shape)
    return tensors, WeightBuffers(resident, region, int(MAPPED_BUDGET * (host_ram_bytes() or 8 << 30)))


def _tensor(raw: np.ndarray, dtype: str, shape) -> paddle.Tensor:
    """A zero-copy Paddle tensor over the bytes ``raw`` (bf16 travels as int16: DLPack has no ml_dtypes)."""
    if dtype == "bfloat16":
        return paddle.utils.dlpack.from_dlpack(raw.view(np.int16).reshape(shape)).view(paddle.bfloat16)
    return paddle.utils.dlpack.from_dlpack(raw.view(DTYPES[dtype]).reshape(shape))
