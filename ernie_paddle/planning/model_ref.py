"""Resolve a model reference to a local folder: a path, or a repo id found offline in an HF hub cache.

Cache layout (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)::

    models--baidu--ERNIE-4.5-0.3B-PT/refs/main            -> commit hash
    models--baidu--ERNIE-4.5-0.3B-PT/snapshots/<hash>/...  -> the files

Nothing is ever downloaded: a reference that is not on disk is an ``ErnieError`` that says how to fetch it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ernie_paddle.config.presets import preset_config, preset_name
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_cache_dir() -> Path:
    """The HF hub cache folder the environment points at (same precedence as huggingface_hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def is_repo_id(ref: str) -> bool:
    """``owner/name`` (optionally ``@revision``) that is not an existing path."""
    return bool(_REPO_ID.match(ref.split("@", 1)[0])) and not Path(ref).expanduser().exists()


def resolve(ref: str | os.PathLike, revision: str | None = None, need: str = "config.json") -> Path:
    """The folder ``ref`` names: an existing local folder, or the cached snapshot of repo id ``ref``.

    ``ref`` may carry ``@revision`` (a branch or tag under ``refs/``, or a commit hash). ``need`` is a
    file the folder must contain (empty string: no check).
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return _checked(path.resolve(), need)
    if path.exists():
        raise ErnieError("is a file; a model reference must be a folder or a repo id", path)
    if not is_repo_id(text):
        raise ErnieError("no such folder (and not an owner/name repo id)", path)
    repo, _, rev = text.partition("@")
    return _checked(snapshot(repo, revision or rev or "main"), need)


def snapshot(repo_id: str, revision: str = "main") -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` in the local hub cache, or ErnieError."""
    cache = hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    hint = (f"download it first (e.g. `hf download {repo_id}`, or copy the folder) and pass its path; "
            "this tool never downloads")
    if not repo_dir.is_dir():
        raise ErnieError(f"{repo_id} is not in the local Hugging Face cache; {hint}", repo_dir)
    ref_file = repo_dir / "refs" / revision
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
    elif re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        raise ErnieError(f"{repo_id}: revision {revision!r} is not in the cache (no refs/{revision}); {hint}",
                         repo_dir)
    snap = repo_dir / "snapshots" / commit
    if not snap.is_dir():
        raise ErnieError(f"{repo_id}@{revision}: snapshot {commit} is missing from the cache; {hint}", snap)
    return snap


def _checked(folder: Path, need: str) -> Path:
    if need and not (folder / need).is_file():
        raise ErnieError(f"{need} not found: the folder is not a complete model (interrupted download?)",
                         folder)
    return folder


def load_config(ref: str) -> ErnieConfig:
    """Config of a family preset name, else of a local folder or cached repo id; a repo id not on disk
    that names a family (``baidu/ERNIE-4.5-21B-A3B-PT``) falls back to the preset."""

    if preset_name(ref) and "/" not in ref and not Path(ref).is_dir():
        return preset_config(ref)
    try:
        return ErnieConfig.from_file(resolve(ref))
    except ErnieError:
        if preset_name(ref):
            return preset_config(ref)
        raise


def default_quantization(ref: str) -> str | None:
    """Quantization a release name implies (``-FP8-``, ``-2Bits-``, ``-WINT4-``) when no config says so."""
    up = ref.upper()
    for tag, q in (("FP8", "fp8"), ("2BITS", "wint2"), ("WINT4", "wint4"), ("WINT8", "wint8")):
        if f"-{tag}" in up:
            return q
    return None
