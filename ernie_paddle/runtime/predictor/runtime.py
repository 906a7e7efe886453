"""``PredictorRuntime``: the ``Model`` interface over an export folder, and ``load_predictor``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.generation import pad_batch, read_generation_config
from ernie_paddle.runtime.predictor import manifest as mf
from ernie_paddle.runtime.predictor.batching import PredictorEngine
from ernie_paddle.runtime.predictor.export import supports
from ernie_paddle.runtime.predictor.export_cache import export_cached, export_into
from ernie_paddle.runtime.predictor.model import PredictorModel
from ernie_paddle.runtime.predictor.runner import Predictor
from ernie_paddle.runtime.setup import resolve_device, resolve_dtype
from ernie_paddle.runtime.text import ErnieRuntime


class PredictorRuntime(ErnieRuntime):
    """``ErnieRuntime``'s interface (``config``, ``logits``, ``generate``, ``stream``) backed by a Predictor."""

    engine = "predictor"

    def __init__(self, predictor: Predictor):
        super().__init__(PredictorModel(predictor), predictor.folder, predictor.device, predictor.dtype,
                         read_generation_config(predictor.folder))
        self.predictor = predictor
        self.manifest = predictor.manifest

    def logits(self, ids, attention_mask=None) -> np.ndarray:
        ids, mask = pad_batch(ids)
        if attention_mask is not None:
            m = attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor) else attention_mask
            mask = np.asarray(m, dtype=np.int64).reshape(ids.shape)
        return self.model.logits(ids, None, mask)

    def step_engine(self) -> PredictorEngine:
        """The server's step engine (prefill / decode / merge / select) over this predictor."""
        return PredictorEngine(self.model)

    def close(self) -> None:
        """Drop the predictor; the runtime cannot run afterwards."""
        super().close()
        self.predictor = None


def load_predictor(path, dtype: str | None = None, device: str | None = None,
                   num_threads: int | None = None, quantization: str | None = None,
                   activations: str | None = None, mmap: bool | None = None,
                   offload_folder=None) -> PredictorRuntime:
    """A PredictorRuntime for an export folder, or for a checkpoint via the export cache (exported on
    first use; ``quantization`` and ``activations`` as for ``export``).

    ``mmap``: map the export's weights instead of reading them (None: map when they do not fit in the
    memory available, ``weight_file.should_map``). ``offload_folder``: export a checkpoint into that folder
    (once; reused afterwards) instead of the cache, and serve it mapped."""
    folder = Path(path)
    dev = resolve_device(device)
    want = resolve_dtype(dtype, dev)
    if offload_folder is not None:
        if mf.is_export_folder(folder):
            raise ErnieError("--offload-folder exports a checkpoint; this is already an export folder (serve it "
                             "mapped with --mmap)", folder)
        mmap = True if mmap is None else mmap
    if not mf.is_export_folder(folder):
        reason = supports(ErnieConfig.from_file(folder))
        if reason:
            raise ErnieError(reason, folder)
        folder = (export_cached(folder, want, dev, quantization, activations) if offload_folder is None else
                  export_into(folder, offload_folder, want, dev, quantization, activations, quiet=False))
    elif quantization is not None:
        raise ErnieError(f"quantization={quantization!r} applies to checkpoints; this export folder holds "
                         f"{mf.read_manifest(folder).get('weight_format', 'float32')} weights", folder)
    elif activations not in (None, "auto") and activations != mf.read_manifest(folder).get("weights", {}).get(
            "activations", "float32"):
        raise ErnieError(f"this export runs its quantized linears on "
                         f"{mf.read_manifest(folder).get('weights', {}).get('activations', 'float32')} activations, "
                         f"not {activations}; export again with --activations {activations}", folder)
    elif dtype is not None and want != mf.read_manifest(folder)["dtype"]:
        raise ErnieError(f"this export computes in {mf.read_manifest(folder)['dtype']}, not {want}; export "
                         "again for that dtype", folder)
    return PredictorRuntime(Predictor(folder, dev, num_threads, mmap=mmap))
