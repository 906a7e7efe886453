"""Build a model in a dtype and fill its parameters from a checkpoint's (Paddle key, array) stream.

HF tensors are mapped to the Paddle layout on the fly by the converter's rule table (no converted copy on
disk). Weights are copied into Paddle-owned memory, so nothing stays memory-mapped from the checkpoint.
"""

from __future__ import annotations

import contextlib

import numpy as np
import paddle

from converters import rules
from converters.tensor_groups import iter_paddle_tensors
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.models import ErnieForCausalLM


@contextlib.contextmanager
def default_dtype(dtype: str):
    """Paddle's default dtype is ``dtype`` inside the block (new parameters are created in it)."""
    old = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(old)


def build_model(config: ErnieConfig, dtype: str = "float32") -> ErnieForCausalLM:
    """An ErnieForCausalLM with zero-initialised parameters in ``dtype`` (router and bias stay fp32)."""
    with default_dtype(dtype):
        model = ErnieForCausalLM(config)
    model.eval()
    return model


def mtp_layers(ckpt) -> int:
    """MTP layers present in the checkpoint (some releases ship them without the config key)."""
    keys = ckpt.keys()
    if ckpt.format != "paddle":
        keys = [m.paddle_key() for m in map(rules.match_hf, keys) if m is not None]
    return rules.mtp_layers_in(keys)


def tensor_stream(ckpt, dtype: str):
    """(Paddle key, array) of every tensor of ``ckpt``: float32 for a float32 model, else as stored."""
    return iter_paddle_tensors(ckpt, "float32" if dtype == "float32" else "keep")


def load_weights(model, tensors, source: object = None) -> None:
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
