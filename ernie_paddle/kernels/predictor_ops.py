"""The compiled CPU operators of the step program (``predictor_ops.cc``): streaming GEMV linears over
transposed weights in every stored format (``weight_formats.h``), the routed experts of an MoE layer in one
operator (``ernie_moe``: with its router), RMSNorm, attention and the rotary KV write.

Each linear operator takes its weight as WT plus four scale inputs S0..S3 and the attributes ``fmt`` (a
code of ``FORMAT_CODES``) and ``int8_act``; scales a format does not use are a dummy float32 [1].

Built on first use by ``ernie_paddle.kernels.build`` (g++, cached per source and CPU). ``get()`` is None,
and exports use plain Paddle ops, when ``ERNIE_PADDLE_NATIVE_OPS=0``, off Linux/x86, or when the build
fails (``build_error()`` says why). A program exported with these operators needs them loaded in the
process that runs it (``Predictor`` does that, and refuses the export clearly when they cannot be built).
"""

from __future__ import annotations

from pathlib import Path

from ernie_paddle.kernels.build import NativeModule

# The ``fmt`` attribute of the linear operators: the stored form of W^T [N, K] (see weight_formats.h).
FORMAT_CODES = {"float32": 0, "bfloat16": 1, "wint8": 2, "wint4": 3, "fp8": 4, "wint2": 5}

_MODULE = NativeModule(Path(__file__).with_name("predictor_ops.cc"), "ernie_predictor_ops", "ERNIE_PADDLE_NATIVE_OPS")


def get():
    """The operator module (``ernie_linear``, ``ernie_linear_add``, ``ernie_moe_experts``, ``ernie_moe``,
    ``ernie_rms_norm``, ``ernie_attention``, ``ernie_rope_kv``) or None."""
    return _MODULE.get()


def build_error() -> str | None:
    return _MODULE.error


def reset() -> None:
    """Forget the cached decision (tests switch ``ERNIE_PADDLE_NATIVE_OPS``)."""
    _MODULE.reset()
