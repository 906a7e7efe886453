"""Read checkpoint folders: sharded or single safetensors (validated, memory-mapped) and legacy .pdparams.

Tensors come back as numpy arrays that view the file (no copy, bf16/fp8 kept as ml_dtypes); the
header of every shard is validated before any tensor is handed out, so a truncated or garbled file
fails with an ErnieError naming the file instead of returning wrong bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ernie_paddle.config.text import HF, PADDLE, ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.dtypes import BY_CODE, code_of

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
PDPARAMS = "model_state.pdparams"
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The layout of a key set is told by these prefixes alone (``converters.rules`` spells every full key).
PADDLE_PREFIX, HF_PREFIX = "ernie.", "model."


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives and what it is."""

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    start: int = 0  # absolute byte offsets in the file
    end: int = 0

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorSpec], dict]:
    """Parse and validate one safetensors file's header; returns (specs, metadata)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ErnieError(f"truncated safetensors file ({size} bytes, no header length)", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ErnieError(f"safetensors header claims {n} bytes but the file has {size} "
                                 "(truncated or not a safetensors file)", path)
            raw = fh.read(n)
    except OSError as exc:
        raise ErnieError(f"cannot read: {exc.strerror}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ErnieError("safetensors header is not valid JSON (corrupt or not a safetensors file)",
                         path) from None
    if not isinstance(header, dict):
        raise ErnieError("safetensors header is not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    specs: dict[str, TensorSpec] = {}
    for name, info in header.items():
        specs[name] = _spec_from_header(path, name, info, data_start, data_size)
    return specs, metadata


def _spec_from_header(path: Path, name: str, info, data_start: int, data_size: int) -> TensorSpec:
    try:
        code, shape, (b, e) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise ErnieError(f"tensor {name!r} has a malformed header entry", path) from None
    if code not in BY_CODE:
        raise ErnieError(f"tensor {name!r} has unsupported dtype {code!r}", path)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if any(s < 0 for s in shape) or not (0 <= b <= e) or e - b != numel * BY_CODE[code].itemsize:
        raise ErnieError(f"tensor {name!r}: offsets {b}..{e} do not fit shape {list(shape)} {code}", path)
    if e > data_size:
        raise ErnieError(f"tensor {name!r} ends at byte {e} but the data section has only {data_size} "
                         "bytes (file truncated)", path)
    return TensorSpec(name, code, shape, path, data_start + b, data_start + e)


class Checkpoint:
    """A checkpoint folder: its config, its tensor specs, lazy tensor access, and its layout format."""

    def __init__(self, folder: str | Path, config: ErnieConfig | None = None):
        self.folder = Path(folder)
        if not self.folder.exists():
            raise ErnieError("no such file or folder", self.folder)
        if not self.folder.is_dir():
            raise ErnieError("expected a checkpoint folder, got a file", self.folder)
        self.config = config or ErnieConfig.from_file(self.folder)
        self.specs: dict[str, TensorSpec] = {}
        self.metadata: dict[str, dict] = {}
        self._pdparams: dict[str, np.ndarray] | None = None
        self._scan()
        self.format = self._detect_format()

    # ------------------------------------------------------------------ scanning
    def _scan(self) -> None:
        index = self.folder / SAFE_INDEX
        if index.exists():
            self._scan_index(index)
        elif (self.folder / SAFE_SINGLE).exists():
            self._add_file(self.folder / SAFE_SINGLE)
        elif list(self.folder.glob("*.safetensors")):
            for f in sorted(self.folder.glob("*.safetensors")):
                self._add_file(f)
        elif list(self.folder.glob("*.pdparams")):
            self._scan_pdparams(sorted(self.folder.glob("*.pdparams")))
        else:
            raise ErnieError("no weights found (expected model.safetensors, shards with "
                             f"{SAFE_INDEX}, or {PDPARAMS})", self.folder)
        if not self.specs:
            raise ErnieError("the checkpoint holds no tensors", self.folder)

    def _scan_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            assert isinstance(weight_map, dict)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AssertionError, TypeError):
            raise ErnieError("index is not valid JSON with a 'weight_map' object", index) from None
        for shard in sorted(set(weight_map.values())):
            path = self.folder / shard
            if not path.is_file():
                raise ErnieError(f"index names shard {shard!r}, which does not exist", index)
            self._add_file(path)
        in_index, in_files = set(weight_map), set(self.specs)
        if in_index != in_files:
            extra = sorted(in_files - in_index)[:3]
            missing = sorted(in_index - in_files)[:3]
            raise ErnieError(f"index and shards disagree: listed but absent {missing}, present but "
                             f"unlisted {extra}", index)
        for name, shard in weight_map.items():
            if self.specs[name].file.name != shard:
                raise ErnieError(f"index maps {name!r} to {shard} but it is stored in "
                                 f"{self.specs[name].file.name}", index)

    def _add_file(self, path: Path) -> None:
        specs, meta = read_safetensors_header(path)
        for name, spec in specs.items():
            if name in self.specs:
                raise ErnieError(f"tensor {name!r} appears twice: in {self.specs[name].file.name} and "
                                 f"{path.name}", path)
            self.specs[name] = spec
        self.metadata[path.name] = meta

    def _scan_pdparams(self, files: list[Path]) -> None:
        import paddle

        self._pdparams = {}
        for path in files:
            try:
                state = paddle.load(str(path), return_numpy=True)
            except Exception as exc:  # paddle raises many types for a corrupt pickle
                raise ErnieError(f"cannot read legacy Paddle weights: {exc}", path) from None
            if not isinstance(state, dict):
                raise ErnieError("a .pdparams file must hold a dict of tensors", path)
            for name, arr in state.items():
                arr = np.asarray(arr)
                if name in self._pdparams:
                    raise ErnieError(f"tensor {name!r} appears in two .pdparams files", path)
                self._pdparams[name] = arr
                code = "U16" if arr.dtype == np.uint16 else _code(arr.dtype, path, name)
                self.specs[name] = TensorSpec(name, code, tuple(arr.shape), path, 0, arr.nbytes)

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        return list(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def get(self, name: str) -> np.ndarray:
        """The tensor as a numpy array viewing the file; U16 is read as bf16 when the config is bf16."""
        spec = self.specs[name]
        if self._pdparams is not None:
            arr = self._pdparams[name]
        else:
            arr = _map_range(spec)
        if spec.dtype == "U16" or arr.dtype == np.uint16:
            if self.config.dtype != "bfloat16":
                raise ErnieError(f"tensor {name!r} is stored as U16, which is read as bf16 only when "
                                 f"config.json says bfloat16 (it says {self.config.dtype})", spec.file)
            arr = arr.view(BY_CODE["BF16"])
        return arr

    def dtype_code(self, name: str) -> str:
        """The effective dtype code (U16 reported as BF16 for bf16 checkpoints)."""
        code = self.specs[name].dtype
        return "BF16" if code == "U16" and self.config.dtype == "bfloat16" else code

    @cached_property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())

    @property
    def files(self) -> list[Path]:
        return sorted({s.file for s in self.specs.values()})

    # ------------------------------------------------------------------ format
    def _detect_format(self) -> str:
        names = list(self.specs)
        paddle_votes = sum(n.startswith(PADDLE_PREFIX) for n in names)
        hf_votes = sum(n.startswith(HF_PREFIX) for n in names)
        if paddle_votes and hf_votes:
            raise ErnieError(f"tensor names mix the Paddle layout ({paddle_votes} like '{PADDLE_PREFIX}*') "
                             f"and the HF layout ({hf_votes} like '{HF_PREFIX}*')", self.folder)
        if not paddle_votes and not hf_votes:
            raise ErnieError(f"tensor names are neither Paddle ('{PADDLE_PREFIX}*') nor HF ('{HF_PREFIX}*') "
                             f"ERNIE 4.5 names (first: {names[0]!r})", self.folder)
        fmt = PADDLE if paddle_votes else HF
        hinted = self.config.source_dialect
        if hinted is not None and hinted != fmt:
            raise ErnieError(f"config.json is in the {hinted} dialect but the tensors are in the {fmt} "
                             "layout; fix the config or the weights", self.folder / "config.json")
        return fmt


def _map_range(spec: TensorSpec) -> np.ndarray:
    """Map just this tensor's bytes; the mapping goes away with the array, so RSS stays bounded."""
    dtype = BY_CODE[spec.dtype]
    if spec.nbytes == 0:
        return np.empty(spec.shape, dtype=dtype)
    mm = np.memmap(spec.file, dtype=np.uint8, mode="r", offset=spec.start, shape=(spec.nbytes,))
    return mm.view(dtype).reshape(spec.shape)


def _code(dtype, path, name) -> str:
    try:
        return code_of(dtype)
    except ValueError:
        raise ErnieError(f"tensor {name!r} has unsupported dtype {dtype}", path) from None


def open_checkpoint(folder: str | Path, config: ErnieConfig | None = None) -> Checkpoint:
    """Open and validate a checkpoint folder (any layout); ``config`` stands in for its config.json."""
    return Checkpoint(folder, config)
