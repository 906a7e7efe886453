"""Turn a checkpoint folder (Paddle or HF layout) into a ready model with ``logits`` and ``generate``.

HF tensors are mapped to the Paddle layout on the fly by the converter's rule table (no converted copy on
disk). Weights are copied into Paddle-owned memory, so nothing stays memory-mapped from the checkpoint.
CPU computes in float32 (Paddle has no CPU bf16 kernels); GPU defaults to bfloat16.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paddle

from converters import rules
from converters.plan import iter_paddle_tensors
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.models import ErnieForCausalLM
from ernie_paddle.runtime.generation import generate, pad_batch, read_generation_config, stream

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tune_cpu_math() -> None:
    """On AMD CPUs with AVX2, let Paddle's bundled MKL use its AVX2 kernels (it otherwise takes a generic
    path, 2-3x slower for the matmuls of prefill and batched decode). Effective before the first matmul
    of the process; a user's own MKL_DEBUG_CPU_TYPE wins."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ:
        return
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    if "AuthenticAMD" in info and " avx2" in info:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"


def resolve_device(device: str | None) -> str:
    """``None`` picks the GPU when Paddle has one, else the CPU."""
    if device is None:
        has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        return "gpu:0" if has_gpu else "cpu"
    device = str(device).lower().replace("cuda", "gpu")
    if device.startswith("gpu") and not paddle.device.is_compiled_with_cuda():
        raise ErnieError(f"device {device!r} requested but this Paddle build has no CUDA support")
    if not (device == "cpu" or device.startswith("gpu")):
        raise ErnieError(f"unknown device {device!r} (cpu, gpu or gpu:N)")
    return device


def resolve_dtype(dtype: str | None, device: str) -> str:
    if dtype is None:
        return "float32" if device == "cpu" else "bfloat16"
    name = _DTYPES.get(str(dtype).replace("paddle.", "").lower())
    if name is None:
        raise ErnieError(f"unsupported dtype {dtype!r} (float32, bfloat16 or float16)")
    if device == "cpu" and name != "float32":
        raise ErnieError(f"dtype {name} is not supported on CPU: Paddle has no CPU kernels for it; "
                         "use float32 (the default) or a GPU")
    return name


@contextlib.contextmanager
def _default_dtype(dtype: str):
    old = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(old)


def build_model(config: ErnieConfig, dtype: str = "float32") -> ErnieForCausalLM:
    """An ErnieForCausalLM with zero-initialised parameters in ``dtype`` (router and bias stay fp32)."""
    with _default_dtype(dtype):
        model = ErnieForCausalLM(config)
    model.eval()
    return model


def _mtp_layers(ckpt) -> int:
    """MTP layers present in the checkpoint (some releases ship them without the config key)."""
    keys = ckpt.keys()
    if ckpt.format != "paddle":
        keys = [m.paddle_key() for m in map(rules.match_hf, keys) if m is not None]
    return rules.mtp_layers_in(keys)


def load_weights(model: ErnieForCausalLM, tensors, source: object = None) -> None:
    """Copy (Paddle key, array) pairs onto ``model``; every parameter must be filled exactly once."""
    params = dict(model.named_parameters())
    filled: set[str] = set()
    for key, arr in tensors:
        param = params.get(key)
        if param is None:
            if rules.is_tied_head_copy(key, model.config):
                continue  # a redundant copy of the tied embedding
            raise ErnieError(f"tensor {key!r} has no place in the model built from config.json", source)
        if tuple(arr.shape) != tuple(param.shape):
            raise ErnieError(f"tensor {key!r} has shape {list(arr.shape)}, the model expects "
                             f"{list(param.shape)}", source)
        if param.dtype == paddle.float32:
            param.set_value(np.ascontiguousarray(arr, dtype=np.float32))
        else:
            param.set_value(paddle.to_tensor(np.asarray(arr, dtype=np.float32)).astype(param.dtype))
        filled.add(key)
    missing = sorted(set(params) - filled)
    if missing:
        raise ErnieError(f"{len(missing)} parameter(s) missing from the checkpoint, e.g. {missing[0]!r}",
                         source)


class ErnieRuntime:
    """A loaded model: ``config``, ``logits(ids)``, ``generate(ids, ...)`` and ``stream(ids, ...)``."""

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
            from ernie_paddle.runtime import speculative as spec

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
            from ernie_paddle.runtime import speculative as spec

            self.speculative_stats = spec.SpecStats()
            return spec.stream(self.model, ids, attention_mask, defaults=self.generation_defaults,
                               num_draft=num_draft, method=speculative, stats=self.speculative_stats,
                               max_new_tokens=max_new_tokens, **sampling)
        return stream(self.model, ids, attention_mask, defaults=self.generation_defaults,
                      max_new_tokens=max_new_tokens, **sampling)


def load(path, dtype: str | None = None, device: str | None = None, num_threads: int | None = None,
         engine: str | None = None, quantization: str | None = None, **kwargs) -> ErnieRuntime:
    """Load a Paddle or HF checkpoint folder; see the module docstring for dtype and device rules.

    ``engine``: "dygraph", "predictor" (Paddle Inference; a checkpoint is exported into the cache on first
    use), or "auto" (predictor where supported). Default: predictor for an export folder, else
    ``$ERNIE_PADDLE_ENGINE`` or dygraph (see ``ernie_paddle.runtime.predictor.resolve_engine``).
    ``quantization``: "wint8", "wint4" or "fp8" quantizes the linears on load (dygraph engine); a checkpoint
    whose config.json has a ``quantization_config`` loads quantized without it (``ernie_paddle.runtime.quantized_loading``).
    """
    if kwargs:
        raise TypeError(f"unknown load option(s): {sorted(kwargs)}")
    if quantization is not None:
        if engine == "predictor":
            raise ErnieError("quantization= runs on the dygraph engine, not the predictor")
        engine = "dygraph"
    from ernie_paddle.runtime.predictor.choice import resolve_engine

    if resolve_engine(path, engine) == "predictor":
        from ernie_paddle.runtime.predictor import load_predictor

        return load_predictor(path, dtype=dtype, device=device, num_threads=num_threads)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    paddle.set_device(device)
    if device == "cpu":
        tune_cpu_math()
        paddle.base.core.set_num_threads(num_threads or available_cores())
    ckpt = open_checkpoint(path)
    config = ckpt.config
    if config.family == "vl":
        from ernie_paddle.runtime.vl import load_vl

        return load_vl(path, dtype=dtype, device=device)
    if config.family not in ("dense", "moe"):
        raise ErnieError(f"this runtime runs ERNIE 4.5 text models; the config is a {config.family} model",
                         Path(path) / "config.json")
    config = config.replace(num_nextn_predict_layers=_mtp_layers(ckpt))
    from ernie_paddle.runtime.quantized_loading import load_quantized, resolve

    qc = resolve(config, quantization, ckpt.folder)
    if qc is not None:
        model = load_quantized(ckpt, config, dtype, qc, quantization is not None, build_model, load_weights)
    else:
        model = build_model(config, dtype)
        load_weights(model, iter_paddle_tensors(ckpt, "float32" if dtype == "float32" else "keep"),
                     ckpt.folder)
    if device == "cpu" and qc is None:  # quantized models keep memory low: no transposed head copy
        model.prepare_head()
    return ErnieRuntime(model, ckpt.folder, device, dtype, read_generation_config(ckpt.folder))
