"""One linear's checkpoint tensors (numpy only): quantize W, validate them into the compact arrays
``QuantLinear`` keeps, and the numpy reference dequantizer.

Tensors are keyed by suffix (``quant_weight``, ``weight_scale``, ...). Weight-only int8/int4 bytes are
un-arranged once into a plain layout (same size), so a layer's forward only unpacks.
"""

from __future__ import annotations

import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant import fp8, weight_only, wint2
from ernie_paddle.quant.config import METHODS

_EXPECTED = {"fp8": ("quant_weight", "weight_scale"), "wint8": ("quant_weight", "weight_scale"),
             "wint4": ("quant_weight", "weight_scale"), "wint2": wint2.SUFFIXES}
_OPTIONAL = {"bias", "activation_scale"}  # activation_scale: named by FastDeploy's key map, never read


def _method(method: str) -> str:
    if method not in METHODS:
        raise ErnieError(f"unknown quantization method {method!r}; expected one of {METHODS}")
    return method


def quantize_weight(method: str, w_in_out: np.ndarray, *, block: int = fp8.BLOCK, name: str = "weight",
                    layout: str = "sm80") -> dict[str, np.ndarray]:
    """Quantize a Paddle-layout W [in, out] to the released tensors, keyed by suffix; ``layout``: the
    weight-only byte arrangement ("sm80" as released, or "plain", see ``weight_only``)."""
    method = _method(method)
    if method == "fp8":
        q, s = fp8.quantize(w_in_out, block, name)
        return {"quant_weight": q, "weight_scale": s}
    if method == "wint2":
        return wint2.encode(w_in_out, name=name)
    bits = weight_only.BITS[method]
    q, s = weight_only.quantize(w_in_out, bits, name=name)
    stored = weight_only.to_sm80(q, bits, f"{name}.quant_weight") if layout == "sm80" else weight_only.to_plain(q, bits)
    return {"quant_weight": stored, "weight_scale": s}


def _validate(method: str, tensors: dict[str, np.ndarray], k: int, n: int, name: str) -> None:
    extra = sorted(set(tensors) - set(_EXPECTED[method]) - _OPTIONAL)
    if extra:
        raise ErnieError(f"linear {name!r}: tensor(s) {', '.join(f'{name}.{e}' for e in extra)} do not belong to "
                         f"method {method!r} (expected {', '.join(_EXPECTED[method])})")
    if tensors.get("bias") is not None and np.asarray(tensors["bias"]).shape != (n,):
        raise ErnieError(f"tensor '{name}.bias' has shape {list(np.shape(tensors['bias']))}; expected [{n}]")


def dequantize_weight(method: str, tensors: dict[str, np.ndarray], in_features: int, out_features: int, *,
                      layout: str = "auto", block: int = fp8.BLOCK, name: str = "weight") -> np.ndarray:
    """The numpy reference dequantizer: float32 W [in, out] from one linear's checkpoint tensors."""
    method = _method(method)
    c = compact(method, tensors, in_features, out_features, layout=layout, block=block, name=name)
    if method == "fp8":
        return fp8.dequantize(c["quant_weight"], c["weight_scale"], block, name)
    if method == "wint2":
        return wint2.dequantize(c, name)
    q = c["quant_weight"] if method == "wint8" else weight_only.unpack_int4(c["quant_weight"])
    return weight_only.dequantize_values(q, c["weight_scale"])


def compact(method: str, tensors: dict[str, np.ndarray], in_features: int, out_features: int, *,
            layout: str = "auto", block: int = fp8.BLOCK, name: str = "weight") -> dict[str, np.ndarray]:
    """Validate one linear's tensors against ``method`` and return the compact arrays QuantLinear keeps.

    fp8: e4m3 bytes [K, N] + f32 grid; wint8: int8 Q [K, N]; wint4: int8 [K/2, N] (plain packing);
    wint2: the five tensors as (u8, u8, f32, f32, f32); scales as float32.
    """
    method, k, n = _method(method), in_features, out_features
    _validate(method, tensors, k, n, name)
    try:
        if method == "fp8":
            q, s = fp8.check(tensors.get("quant_weight"), tensors.get("weight_scale"), block, name)
            if q.shape != (k, n):
                raise ErnieError(f"tensor '{name}.quant_weight' has shape {list(q.shape)}; expected [{k}, {n}]")
            return {"quant_weight": q.view(np.uint8), "weight_scale": s.astype(np.float32)}
        if method == "wint2":
            qw, ls, sup, cs, zp = wint2.check(tensors, name)
            if qw.shape != (k // 4, n) or k % 4:
                raise ErnieError(f"tensor '{name}.quant_weight' has shape {list(qw.shape)}; expected [{k // 4}, {n}]")
            return {"quant_weight": qw, "weight_scale": ls, "super_scales": sup, "code_scale": cs, "code_zp": zp}
        if tensors.get("quant_weight") is None:
            raise ErnieError(f"tensor '{name}.quant_weight' is missing")
        bits = weight_only.BITS[method]
        q = weight_only.unpack(tensors["quant_weight"], bits, k, n, layout, f"{name}.quant_weight")
        s = weight_only.check_scale(tensors.get("weight_scale"), n, f"{name}.weight_scale")
        return {"quant_weight": q if bits == 8 else weight_only.pack_int4(q), "weight_scale": s}
    except ErnieError as e:
        raise ErnieError(f"linear {name!r} (method {method}): {e}") from None
