"""The export cache: ``$ERNIE_PADDLE_HOME/exports/<digest>-<dtype>-<ops><formats>-v<program>-paddle<version>``.

A checkpoint is exported there on first use (``export_cached``) and reused while its digest, the program
version and the Paddle version match; ``export_into`` is the same for a folder the caller names (the
``--offload-folder`` of a mapped load). Once a new export of a checkpoint is in place, the cache deletes
that checkpoint's exports of other program or Paddle versions (``prune_stale``): they can never be loaded
again by this code, and at real sizes each holds the model's full size on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import paddle

from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor.export import activations_of, checkpoint_weight_format, export, native_ops
from ernie_paddle.runtime.predictor.program import PROGRAM_VERSION


def _version_tag() -> str:
    return f"-v{PROGRAM_VERSION}-paddle{paddle.__version__}"


def cache_folder(digest: str, dtype: str, device: str = "cpu", weight_format: str = "float32",
                 quantization: str | None = None, activations: str = "float32") -> Path:
    """Where the export cache keeps the export of a checkpoint with ``digest``: named apart by op set, float
    weight format, on-load quantization and activation mode."""
    ops = "native" if native_ops(device, dtype) is not None else "paddle"
    fmt = "-bf16" if ops == "native" and weight_format == "bfloat16" else ""
    fmt += f"-{quantization}" if quantization else ""
    fmt += "-int8act" if ops == "native" and activations == "int8" else ""
    return mf.home() / "exports" / f"{digest[:24]}-{dtype}-{ops}{fmt}{_version_tag()}"


def _device_kind(device: str | None) -> str:
    return "gpu" if str(device).startswith("gpu") else "cpu"


def _activations_for(source: Path, activations: str | None, device: str, dtype: str, quantization: str | None) -> str:
    """The resolved activation mode of an export of ``source`` on ``device`` / ``dtype``."""
    return activations_of(source, activations, native_ops(device, dtype) is not None, quantization)


def export_cached(source, dtype: str = "float32", device: str | None = "cpu", quantization: str | None = None,
                  activations: str | None = None) -> Path:
    """The cached export of ``source`` (exported on first use; ``quantization`` and ``activations`` as for
    ``export``); a cached folder made from a different checkpoint than its name says is an error, never
    reused."""
    source = Path(source)
    device = _device_kind(device)
    activations = _activations_for(source, activations, device, dtype, quantization)
    digest = mf.checkpoint_digest(source)
    folder = cache_folder(digest, dtype, device, checkpoint_weight_format(source), quantization, activations)
    folder = export_into(source, folder, dtype, device, quantization, activations, digest,
                         "delete the cached folder to re-export")
    prune_stale(digest)
    return folder


def export_into(source, folder, dtype: str = "float32", device: str | None = "cpu", quantization: str | None = None,
                activations: str | None = None, digest: str | None = None,
                remedy: str = "choose an empty folder", quiet: bool = True) -> Path:
    """``folder`` holding the export of ``source``: exported there when it is empty or missing, reused when
    it already holds an export of the same checkpoint with the same quantization and activations (the
    ``--offload-folder`` of a mapped load, and the export cache); another export there is an error."""
    source, folder = Path(source), Path(folder)
    activations = _activations_for(source, activations, _device_kind(device), dtype, quantization)
    digest = digest or mf.checkpoint_digest(source)
    if not mf.is_export_folder(folder):
        export(source, folder, max_batch=1024, dtype=dtype, device=device, digest=digest,
               quantization=quantization, activations=activations, quiet=quiet)
    manifest = mf.read_manifest(folder)
    recorded = manifest.get("source", {}).get("digest")
    if recorded != digest:
        raise ErnieError(f"this folder holds an export of a checkpoint with digest {str(recorded)[:16]}..., not "
                         f"{digest[:16]}... ({source}); {remedy}", folder)
    weights = manifest.get("weights", {})
    held = (weights.get("quantization") or None, weights.get("activations", "float32"))
    if quantization is not None and held != (quantization, activations):
        raise ErnieError(f"this folder holds an export with quantization {held[0]} and {held[1]} activations, not "
                         f"{quantization} and {activations}; {remedy}", folder)
    return folder


def prune_stale(digest: str) -> list[Path]:
    """Delete the cached exports of the checkpoint with ``digest`` made by another program or Paddle version
    (complete or partial); returns what was deleted."""
    root, tag = mf.home() / "exports", _version_tag()
    stale = [p for p in sorted(root.glob(f"{digest[:24]}-*")) if p.is_dir() and not p.name.endswith(tag)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
