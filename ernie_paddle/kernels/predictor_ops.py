"""The compiled CPU operators of the step program (``predictor_ops.cc``): a streaming GEMV linear over
transposed weights, the routed experts of an MoE layer in one operator, and RMSNorm.

Built on first use by ``ernie_paddle.kernels.build`` (g++, cached per source and CPU). ``get()`` is None,
and exports use plain Paddle ops, when ``ERNIE_PADDLE_NATIVE_OPS=0``, off Linux/x86, or when the build
fails (``build_error()`` says why). A program exported with these operators needs them loaded in the
process that runs it (``Predictor`` does that, and refuses the export clearly when they cannot be built).
"""

from __future__ import annotations

from pathlib import Path

from ernie_paddle.kernels.build import NativeModule

_MODULE = NativeModule(Path(__file__).with_name("predictor_ops.cc"), "ernie_predictor_ops", "ERNIE_PADDLE_NATIVE_OPS")


def get():
    """The operator module (``ernie_linear``, ``ernie_moe_experts``, ``ernie_rms_norm``) or None."""
    return _MODULE.get()


def build_error() -> str | None:
    return _MODULE.error


def reset() -> None:
    """Forget the cached decision (tests switch ``ERNIE_PADDLE_NATIVE_OPS``)."""
    _MODULE.reset()
