"""Quantized weights: formats (block-wise FP8, WINT2 (CCQ), weight-only int8/int4), configs, one linear's
checkpoint tensors, and ``QuantLinear``, the runtime layer over them.

``fp8``, ``wint2``, ``weight_only``, ``config``, ``tensors`` and ``kernel_form`` need only numpy, so the converters (layer 1)
use them without importing paddle; ``linear`` (QuantLinear) is loaded on first use.
"""

from ernie_paddle.quant.config import METHODS, QuantConfig, online, parse, read
from ernie_paddle.quant.tensors import compact, dequantize_weight, quantize_weight

__all__ = ["METHODS", "QuantConfig", "QuantLinear", "compact", "dequantize_weight", "online", "parse",
           "quantize_weight", "read"]


def __getattr__(name: str):
    if name == "QuantLinear":
        from ernie_paddle.quant.linear import QuantLinear

        return QuantLinear
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
