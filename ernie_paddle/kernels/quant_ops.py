"""Optional compiled CPU kernels for ``QuantLinear`` (``quant_ops.cc``, a Paddle custom operator).

Built on first use by ``ernie_paddle.kernels.build`` (g++, ~15 s once, cached per source and CPU). ``get()``
returns None, and the runtime uses Paddle ops instead, when ``ERNIE_PADDLE_QUANT_KERNELS=0``, on a
non-Linux/x86 host, or when the build fails (the reason is kept in ``build_error()``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ernie_paddle.kernels.build import NativeModule

_MODULE = NativeModule(Path(__file__).with_name("quant_ops.cc"), "ernie_quant_kernels", "ERNIE_PADDLE_QUANT_KERNELS")
_CODES = {"wint8": 0, "wint4": 1, "fp8": 2}
_KERNELS: dict = {}


class Kernels:
    """Python face of the two operators, taking a QuantLinear."""

    def __init__(self, module):
        self._fused, self._dequant = module.eqlinear_fused, module.eqlinear_dequant

    def fused(self, layer, x):
        """y [M, N] = x [M, K] @ W for M <= 8, reading the compact storage once."""
        x = x if x.is_contiguous() else x.contiguous()
        return self._fused(x, layer.quant_weight, layer.weight_scale, _CODES[layer.method], layer.block,
                           layer.out_features, threads())

    def dequant_rows(self, layer, r0: int, r1: int):
        """float32 rows r0:r1 of W [K, N] (wint4: r0, r1 even; fp8: r0 on a block boundary)."""
        if layer.method == "wint4":
            q, s = layer.quant_weight[r0 // 2: r1 // 2], layer.weight_scale
        elif layer.method == "fp8":
            b = layer.block
            q, s = layer.quant_weight[r0:r1], layer.weight_scale[r0 // b: (r1 + b - 1) // b]
        else:
            q, s = layer.quant_weight[r0:r1], layer.weight_scale
        return self._dequant(q.contiguous(), s.contiguous(), _CODES[layer.method], layer.block, layer.out_features,
                             threads())


def threads() -> int:
    """Threads per kernel call: ``$ERNIE_PADDLE_QUANT_THREADS``, else 1 (see ``QuantLinear``)."""
    return int(os.environ.get("ERNIE_PADDLE_QUANT_THREADS", "1"))


def get() -> Kernels | None:
    """The compiled kernels, or None (see the module docstring)."""
    module = _MODULE.get()
    if module is None:
        return None
    if _KERNELS.get("module") is not module:
        _KERNELS.update(module=module, kernels=Kernels(module))
    return _KERNELS["kernels"]


def build_error() -> str | None:
    return _MODULE.error


def reset() -> None:
    """Forget the cached decision (tests switch ``ERNIE_PADDLE_QUANT_KERNELS``)."""
    _MODULE.reset()
