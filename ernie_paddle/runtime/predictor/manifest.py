"""The export folder's manifest: file digests, the source checkpoint's digest, and their verification.

An export folder is self-describing: ``manifest.json`` records the versions that wrote it, the program's
inputs and shapes, the dtype, the source checkpoint's digest and the sha256 of every file in the folder.
Loading verifies every file against the manifest, so a missing, truncated, swapped or edited file is an
``ErnieError`` rather than silently different logits. Hashes of big files are remembered by
(path, size, mtime) in ``$ERNIE_PADDLE_HOME/exports/digests.json`` so that a verified file is not re-read
at every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ernie_paddle.errors import ErnieError

FORMAT = "ernie-paddle-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "step.json"
PARAMS = "step.pdiparams"
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".pdparams", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 16 << 20


def home() -> Path:
    """``$ERNIE_PADDLE_HOME`` or ~/.cache/ernie-paddle."""
    return Path(os.environ.get("ERNIE_PADDLE_HOME") or Path.home() / ".cache" / "ernie-paddle")


def _memo_path() -> Path:
    return home() / "exports" / "digests.json"


def _read_memo() -> dict:
    try:
        data = json.loads(_memo_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(memo, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # the memo only saves time


def file_sha256(path: Path, memo: dict | None = None) -> str:
    """sha256 of a file's bytes; ``memo`` maps realpath -> [size, mtime_ns, digest] of earlier reads."""
    st = path.stat()
    key = os.path.realpath(path)
    hit = (memo or {}).get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    if memo is not None:
        memo[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
    return h.hexdigest()


def file_table(folder: Path, names) -> dict[str, dict]:
    """{name: {"sha256", "bytes"}} for ``names`` in ``folder`` (hashes memoised across runs)."""
    memo = _read_memo()
    before = dict(memo)
    table = {n: {"sha256": file_sha256(folder / n, memo), "bytes": (folder / n).stat().st_size}
             for n in sorted(names)}
    if memo != before:
        _write_memo(memo)
    return table


def carry_digests(old: Path, new: Path) -> None:
    """Remember the digests of the files of folder ``old`` (already hashed) under folder ``new``, which it
    has just been renamed to: a fresh export is not hashed again at its first load (its weights may be
    tens of GB)."""
    memo = _read_memo()
    prefix = os.path.realpath(old) + os.sep
    moved = {os.path.join(os.path.realpath(new), key[len(prefix):]): value
             for key, value in memo.items() if key.startswith(prefix)}
    if moved:
        _write_memo({k: v for k, v in memo.items() if not k.startswith(prefix)} | moved)


def checkpoint_digest(folder: str | Path) -> str:
    """One sha256 over every top-level file of a checkpoint folder (names, sizes and contents)."""
    folder = Path(folder)
    names = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    table = file_table(folder, names)
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def weight_formats_entry(formats: dict[str, str]) -> dict:
    """The manifest's record of the stored weights: ``weight_format`` (of the linears; float32 when the
    program keeps the model's own weights) and ``weight_formats`` (each stored weight's name -> format)."""
    linear = sorted({f for name, f in formats.items() if "embed_tokens" not in name}) or ["float32"]
    return {"weight_format": ",".join(linear), "weight_formats": dict(sorted(formats.items()))}


def weight_formats(manifest: dict) -> set[str]:
    """The formats of an export's stored weights (an export written before formats were recorded:
    float32)."""
    return set((manifest.get("weight_formats") or {}).values()) or {manifest.get("weight_format", "float32")}


def is_export_folder(path) -> bool:
    return Path(path, MANIFEST).is_file()


def write_manifest(folder: Path, manifest: dict) -> None:
    """Add the file table of everything already in ``folder`` and write ``manifest.json``."""
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST]
    manifest = dict(manifest, files=file_table(folder, names))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ErnieError(f"cannot read the export manifest: {exc.strerror}", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ErnieError("the export manifest is not valid JSON; re-run `ernie-paddle export`", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ErnieError(f"not an {FORMAT} manifest; re-run `ernie-paddle export`", path)
    if data.get("format_version") != FORMAT_VERSION:
        raise ErnieError(f"export format version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                         "re-export the checkpoint with this version", path)
    return data


def verify_export(folder: str | Path) -> dict:
    """The manifest, after checking that every listed file exists with the recorded size and sha256."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest["files"]
    for required in (PROGRAM, PARAMS, "config.json"):
        if required not in files:
            raise ErnieError(f"the manifest lists no {required}; re-run `ernie-paddle export`",
                             folder / MANIFEST)
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            raise ErnieError(f"{name} is missing from the export folder (the manifest lists it); "
                             "re-run `ernie-paddle export`", path)
        if path.stat().st_size != info.get("bytes"):
            raise ErnieError(f"{name} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')} "
                             "(truncated or replaced); re-run `ernie-paddle export`", path)
    actual = file_table(folder, files)
    for name, info in files.items():
        if actual[name]["sha256"] != info.get("sha256"):
            raise ErnieError(f"{name} does not match the sha256 in {MANIFEST} (edited or corrupted after "
                             "export); re-run `ernie-paddle export`", folder / name)
    return manifest
