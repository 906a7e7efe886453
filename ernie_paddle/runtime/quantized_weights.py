"""Build a model whose quantized linears stay compact: prequantized checkpoints and quantization on load.

``runtime.text`` calls :func:`load_quantized` when the checkpoint's config.json has a
``quantization_config`` or when ``quantization=`` asks for online quantization. The model is built
without allocating parameters (``paddle.LazyGuard``); each linear that the checkpoint stores quantized
(``P.quant_weight`` + scales, probed by name, as FastDeploy does) or that the online method covers is
replaced by a :class:`QuantLinear` holding only the compact tensors, built as soon as its tensors
have streamed past. Everything else (embeddings, head, norms, router, correction bias, and any linear a
prequantized checkpoint keeps as ``P.weight``) loads as usual. Which method a linear uses comes from the
config (``QuantConfig.method_for``); tensors that do not fit that method are an ErnieError.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import paddle
from paddle import nn

from converters import rules
from ernie_paddle.errors import ErnieError
from ernie_paddle.models.layers import Linear
from ernie_paddle.quant import kernel_form
from ernie_paddle.quant.config import ONLINE_METHODS, QuantConfig, online, parse
from ernie_paddle.quant.linear import QuantLinear
from ernie_paddle.quant.tensors import quantize_weight
from ernie_paddle.runtime.weights import build_model, load_weights, tensor_stream

_IGNORED = ("activation_scale",)  # named by FastDeploy's key map for block-wise FP8, never read
_NEEDED = {"fp8": ("quant_weight", "weight_scale"), "wint8": ("quant_weight", "weight_scale"),
           "wint4": ("quant_weight", "weight_scale"),
           "wint2": ("quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp")}


class _Pending(nn.Layer):
    """Stands where a quantized linear goes until its tensors arrive; running it is a bug."""

    def __init__(self, prefix: str, method: str, in_features: int, out_features: int, online: bool):
        super().__init__()
        self.prefix, self.method, self.online = prefix, method, online
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):  # pragma: no cover - load() replaces every stub or fails
        raise RuntimeError(f"quantized linear {self.prefix!r} was never loaded")


def resolve(config, quantization: str | None, path) -> QuantConfig | None:
    """The QuantConfig for this load: the checkpoint's, or ``online(quantization)``; None when neither."""
    declared = parse(config.quantization_config, None if path is None else f"{path}/config.json")
    if quantization is None:
        return declared
    if quantization not in ONLINE_METHODS:
        raise ErnieError(f"unknown quantization {quantization!r}; expected one of {', '.join(ONLINE_METHODS)}")
    if declared is not None:
        raise ErnieError(f"the checkpoint is already quantized ({sorted(declared.methods)}); load it without "
                         f"quantization={quantization!r}", path)
    return online(quantization)


def _owner(model: nn.Layer, key: str) -> tuple[nn.Layer, str, nn.Layer]:
    """(parent, attribute, layer) of the layer that holds parameter/tensor ``key``."""
    parts = key.split(".")[:-1]
    parent: nn.Layer = model
    for p in parts[:-1]:
        parent = parent._sub_layers.get(p) if isinstance(parent, nn.Layer) else None
        if parent is None:
            break
    layer = parent._sub_layers.get(parts[-1]) if parent is not None else None
    return parent, parts[-1], layer


def _quant_prefixes(ckpt) -> dict[str, set[str]]:
    """Paddle linear prefix -> the quantized suffixes the checkpoint stores for it."""
    out: dict[str, set[str]] = {}
    for key in ckpt.keys():
        m = rules.match_paddle(key)
        if m is not None and m.variant:
            out.setdefault(m.weight_key()[: -len(".weight")], set()).add(key.rsplit(".", 1)[1])
    return out


def _install(model: nn.Layer, prefix: str, method: str, online_: bool, source) -> _Pending:
    parent, name, layer = _owner(model, prefix + ".weight")
    if not isinstance(layer, Linear):
        raise ErnieError(f"tensor {prefix!r}.* is quantized but the model has no linear layer there", source)
    k, n = layer.weight.shape
    stub = _Pending(prefix, method, k, n, online_)
    parent._sub_layers[name] = stub
    return stub


def install_stubs(model: nn.Layer, ckpt, qc: QuantConfig, online_: bool) -> dict[str, _Pending]:
    """Swap every linear that will be quantized for a stub (before any weight is allocated)."""
    source = ckpt.folder
    stubs: dict[str, _Pending] = {}
    if online_:
        for key, _ in list(model.named_parameters()):
            if (rules.is_linear_weight(key) and isinstance(_owner(model, key)[2], Linear) and qc.method_for(key)):
                prefix = key[: -len(".weight")]
                stubs[prefix] = _install(model, prefix, qc.method_for(key), True, source)
        return stubs
    if ckpt.format != "paddle":
        raise ErnieError("quantized checkpoints in Hugging Face layout are not loaded directly; convert to the "
                         "Paddle layout first (ernie-paddle convert)", source)
    for prefix, suffixes in _quant_prefixes(ckpt).items():
        method = qc.method_for(prefix + ".weight")
        if method is None:
            raise ErnieError(f"tensor '{prefix}.{sorted(suffixes)[0]}' is quantized, but quantization_config "
                             f"keeps {prefix!r} in high precision", source)
        stubs[prefix] = _install(model, prefix, method, False, source)
    return stubs


ONLINE_CHUNK = 2048  # output columns quantized at a time (a multiple of every block): bounds the float32 copies


def _online_tensors(method: str, w: np.ndarray, block: int, name: str) -> tuple[dict, str]:
    """The compact tensors of W [in, out] (same values ``converters.quantize`` writes) and their layout,
    quantized ``ONLINE_CHUNK`` output columns at a time (scales are per column or per 128-column block, so
    the pieces join exactly): a float32 copy of one chunk at a time, not of the whole linear."""
    parts = [quantize_weight(method, np.asarray(w[:, c:c + ONLINE_CHUNK], np.float32), block=block, name=name,
                             layout="plain") for c in range(0, w.shape[1], ONLINE_CHUNK)]
    scale_axis = 1 if method == "fp8" else 0  # fp8: [in/b, out/b] block grid; weight-only: [out]
    tensors = {key: parts[0][key] if len(parts) == 1 else
               np.concatenate([p[key] for p in parts], axis=1 if key == "quant_weight" else scale_axis)
               for key in parts[0]}
    return tensors, ("auto" if method == "fp8" else "plain")


def _guess(tensors: dict, elements: int) -> str | None:
    """Which method a linear's tensors look like (for error messages only)."""
    if "super_scales" in tensors or "code_scale" in tensors:
        return "wint2"
    q, s = tensors.get("quant_weight"), tensors.get("weight_scale")
    if q is None or s is None:
        return None
    q, s = np.asarray(q), np.asarray(s)
    if "float8" in str(q.dtype) or s.ndim == 2:
        return "fp8"
    if q.dtype == np.int8 and s.ndim == 1:
        return {elements: "wint8", elements // 2: "wint4"}.get(q.size)
    return None


class QuantRouter:
    """Passes the plain tensors on and turns the quantized ones into QuantLinears, installed in the model
    (or their kernel form handed to ``sink(prefix, form)`` instead: the streaming export writes and drops
    each one)."""

    def __init__(self, model: nn.Layer, stubs: dict[str, _Pending], qc: QuantConfig, source, sink=None):
        self.model, self.stubs, self.qc, self.source, self.sink = model, stubs, qc, source, sink
        self.pending: dict[str, dict[str, np.ndarray]] = {}
        self.done: set[str] = set()

    def _build(self, prefix: str, tensors: dict, layout_: str = "auto") -> None:
        stub = self.stubs[prefix]
        try:
            form = kernel_form.from_checkpoint(stub.method, tensors, stub.in_features, stub.out_features,
                                               layout=layout_, block=self.qc.block_size, name=prefix)
        except ErnieError as e:
            guess = _guess(tensors, stub.in_features * stub.out_features)
            hint = (f" (its tensors look like {guess}, but quantization_config says {stub.method})"
                    if guess and guess != stub.method else "")
            raise ErnieError(f"{e}{hint}", self.source) from None
        if self.sink is not None:
            self.sink(prefix, form)
        else:
            parent, name, _ = _owner(self.model, prefix + ".weight")
            parent._sub_layers[name] = QuantLinear(stub.method, stub.in_features, stub.out_features, form,
                                                   self.qc.block_size, tensors.get("bias"))
        self.done.add(prefix)

    def __call__(self, tensors: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        for key, arr in tensors:
            prefix, _, suffix = key.rpartition(".")
            stub = self.stubs.get(prefix)
            if stub is None:
                yield key, arr
            elif stub.online:
                tensors_, layout_ = _online_tensors(stub.method, arr, self.qc.block_size, prefix)
                self._build(prefix, tensors_, layout_)
            elif suffix in _IGNORED:
                continue
            elif prefix in self.done:
                raise ErnieError(f"tensor {key!r} does not belong to method {stub.method!r} of linear {prefix!r} "
                                 f"(expected {', '.join(_NEEDED[stub.method])})", self.source)
            else:
                got = self.pending.setdefault(prefix, {})
                got[suffix] = arr
                if set(_NEEDED[stub.method]) <= set(got):
                    self._build(prefix, self.pending.pop(prefix))

    def finish(self) -> None:
        for prefix, got in list(self.pending.items()):
            self._build(prefix, got)  # raises: a tensor is missing (named by the validator)
        missing = sorted(set(self.stubs) - self.done)
        if missing:
            stub = self.stubs[missing[0]]
            what = "weight" if stub.online else "quant_weight"
            raise ErnieError(f"{len(missing)} quantized linear(s) missing from the checkpoint, e.g. "
                             f"'{missing[0]}.{what}'", self.source)


def load_quantized(ckpt, config, dtype: str, qc: QuantConfig, online_: bool):
    """An ErnieForCausalLM for ``ckpt`` with QuantLinears where ``qc`` (and the tensors) say."""
    with paddle.LazyGuard():
        model = build_model(config, dtype)
    return fill_quantized(model, ckpt, qc, online_, tensor_stream(ckpt, dtype))


def fill_quantized(model: nn.Layer, ckpt, qc: QuantConfig, online_: bool,
                   tensors: Iterable[tuple[str, np.ndarray]]) -> nn.Layer:
    """Load ``tensors`` (parameter name, array) into ``model``, built under ``paddle.LazyGuard``, with
    QuantLinears where ``qc`` says; the tensor-parallel loader passes its rank's slices here."""
    stubs = install_stubs(model, ckpt, qc, online_)
    router = QuantRouter(model, stubs, qc, ckpt.folder)
    load_weights(model, router(tensors), ckpt.folder)
    router.finish()
    model.quantization = qc
    return model
