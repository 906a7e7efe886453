"""Quantized weights: block-wise FP8, WINT2 (CCQ), weight-only int8/int4; configs and a CPU QuantLinear.

``fp8``, ``wint2``, ``weight_only`` and ``config`` need only numpy, so the converters (layer 1) can use the
FP8 mapping helpers without importing paddle; ``linear`` (QuantLinear) is loaded on first use.
"""

from ernie_paddle.quant.config import METHODS, QuantConfig, online, parse, read

_LINEAR = ("QuantLinear", "compact", "dequantize_weight", "quantize_weight")
__all__ = ["METHODS", "QuantConfig", "online", "parse", "read", *_LINEAR]


def __getattr__(name: str):
    if name in _LINEAR:
        from ernie_paddle.quant import linear

        return getattr(linear, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
