"""The dygraph runtime of an ERNIE 4.5 text checkpoint (Paddle or HF layout): ``ErnieRuntime`` and its loader.

A checkpoint whose config.json has a ``quantization_config``, or a load with ``quantization=``, keeps its
linears compact (``ernie_paddle.runtime.quantized_weights``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paddle

from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.models import ErnieForCausalLM
from ernie_paddle.runtime import speculative as spec
from ernie_paddle.runtime.batching import EagerEngine
from ernie_paddle.runtime.generation import generate, pad_batch, read_generation_config, stream
from ernie_paddle.runtime.quantized_weights import load_quantized, resolve
from ernie_paddle.runtime.setup import Placement, setup
from ernie_paddle.runtime.weights import build_model, load_weights, mtp_layers, tensor_stream

TEXT_FAMILIES = ("dense", "moe")


class ErnieRuntime:
    """A loaded model: ``config``, ``logits(ids)``, ``generate(ids, ...)``, ``stream(ids, ...)``, ``close()``."""

    engine = "dygraph"

    def __init__(self, model: ErnieForCausalLM, folder: Path | None, device: str, dtype: str,
                 generation_defaults: dict | None = None):
        self.model = model
        self.config = model.config
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.generation_defaults = generation_defaults or {}
        self.speculative_stats = None  # SpecStats of the last speculative generate / stream

    def logits(self, ids, attention_mask=None) -> np.ndarray:
        """Float32 logits [B, T, V] for int64 ids [B, T]; ``attention_mask`` marks left padding with 0."""
        ids, mask = pad_batch(ids)
        if attention_mask is not None:
            mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, paddle.Tensor)
                              else attention_mask, dtype=np.int64).reshape(ids.shape)
        with paddle.no_grad():
            out = self.model(paddle.to_tensor(ids), None, None if mask.all() else paddle.to_tensor(mask))
        return out.numpy()

    def generate(self, ids, max_new_tokens: int | None = None, attention_mask=None,
                 speculative: str | None = None, num_draft: int = 1, **sampling) -> np.ndarray:
        """Prompt plus new ids [B, T + N] as int64 numpy; greedy unless a sampling option is given.

        ``speculative="mtp"`` drafts ``num_draft`` tokens per step with the checkpoint's MTP layer (same
        output law as without it); its counters land in ``self.speculative_stats``.
        """
        if speculative:
            out, stats = spec.generate(self.model, ids, attention_mask, defaults=self.generation_defaults,
                                       num_draft=num_draft, method=speculative,
                                       max_new_tokens=max_new_tokens, **sampling)
            self.speculative_stats = stats
            return out
        return generate(self.model, ids, attention_mask, defaults=self.generation_defaults,
                        max_new_tokens=max_new_tokens, **sampling)

    def stream(self, ids, max_new_tokens: int | None = None, attention_mask=None,
               speculative: str | None = None, num_draft: int = 1, **sampling) -> Iterator[np.ndarray]:
        """Yield the new token ids [B] one step at a time (``speculative`` as in ``generate``)."""
        if speculative:
            self.speculative_stats = spec.SpecStats()
            return spec.stream(self.model, ids, attention_mask, defaults=self.generation_defaults,
                               num_draft=num_draft, method=speculative, stats=self.speculative_stats,
                               max_new_tokens=max_new_tokens, **sampling)
        return stream(self.model, ids, attention_mask, defaults=self.generation_defaults,
                      max_new_tokens=max_new_tokens, **sampling)

    def step_engine(self) -> EagerEngine:
        """The server's step engine (prefill / decode / merge / select) over this model."""
        return EagerEngine(self)

    def close(self) -> None:
        """Drop the weights; the runtime cannot run afterwards."""
        self.model = None


def text_runtime(ckpt, place: Placement, quantization: str | None = None) -> ErnieRuntime:
    """The ErnieRuntime of an opened text checkpoint on an already set-up ``place``."""
    config = ckpt.config
    if config.family not in TEXT_FAMILIES:
        raise ErnieError(f"this runtime runs ERNIE 4.5 text models; the config is a {config.family} model",
                         ckpt.folder / "config.json")
    config = config.replace(num_nextn_predict_layers=mtp_layers(ckpt))
    qc = resolve(config, quantization, ckpt.folder)
    if qc is not None:
        model = load_quantized(ckpt, config, place.dtype, qc, quantization is not None)
    else:
        model = build_model(config, place.dtype)
        load_weights(model, tensor_stream(ckpt, place.dtype), ckpt.folder)
    if place.device == "cpu" and qc is None:  # quantized models keep memory low: no transposed head copy
        model.cache_head_transpose()
    return ErnieRuntime(model, ckpt.folder, place.device, place.dtype, read_generation_config(ckpt.folder))


def load_text(path, dtype: str | None = None, device: str | None = None, num_threads: int | None = None,
              quantization: str | None = None) -> ErnieRuntime:
    """The dygraph runtime of a text checkpoint folder (``ernie_paddle.load`` picks it for text folders)."""
    place = setup(device, dtype, num_threads)
    return text_runtime(open_checkpoint(path), place, quantization)
