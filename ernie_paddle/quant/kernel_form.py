"""The kernel form of a quantized linear: its compact arrays transposed to one output per row (numpy only).

The compiled CPU operators (``kernels/predictor_ops``: ``ernie_linear(X, WT, S0, S1, S2, S3; fmt, int8_act)``)
take every stored weight as W^T [N, ...] and its scales in a fixed order. This module turns the compact arrays
of ``quant.tensors.compact`` (checkpoint orientation [K, ...] x N) into that form and back; only transposes,
no re-quantization, so the bytes are the checkpoint's:

=======  ========================  ============================================================================
method   ``weight_t``              scales, in operator order (S0, S1, ...)
=======  ========================  ============================================================================
wint8    int8 [N, K]               ``weight_scale`` f32 [N]
wint4    int8 [N, K/2]             ``weight_scale`` f32 [N]; byte j: low nibble k = 2j, high nibble k = 2j + 1
fp8      uint8 e4m3 [N, K]         ``weight_scale`` f32 [ceil(N/b), ceil(K/b)] (the grid transposed)
wint2    uint8 [N, K/4]            ``weight_scale`` u8 [N, ceil(K/128)] (transposed), ``super_scales``,
                                   ``code_scale``, ``code_zp`` f32 [N]
=======  ========================  ============================================================================

The operators take fp8 blocks of ``KERNEL_BLOCK`` only; other block sizes keep the same form and run the
dequantizing fallback of ``QuantLinear``.
"""

from __future__ import annotations

import numpy as np

from ernie_paddle.kernels.predictor_ops import FORMAT_CODES
from ernie_paddle.quant import fp8
from ernie_paddle.quant.tensors import compact, dequantize_weight

__all__ = ["FORMAT_CODES", "dequantize", "from_checkpoint", "from_kernel_form", "kernel_shapes", "runs_compiled",
           "to_kernel_form"]
SCALE_NAMES = {"wint8": ("weight_scale",), "wint4": ("weight_scale",), "fp8": ("weight_scale",),
               "wint2": ("weight_scale", "super_scales", "code_scale", "code_zp")}
SCALE_SLOTS = 4  # S0 .. S3: unused slots take a dummy float32 [1]
KERNEL_BLOCK = 128  # the fp8 block of the compiled operators
WEIGHT = "weight_t"


def to_kernel_form(method: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"weight_t": W^T bytes, <scale name>: scale, ...}`` (scales in operator order) from the compact
    arrays of ``quant.tensors.compact``: every 2-D array transposed, vectors as they are."""
    form = {WEIGHT: np.ascontiguousarray(arrays["quant_weight"].T)}
    for name in SCALE_NAMES[method]:
        a = np.asarray(arrays[name])
        form[name] = np.ascontiguousarray(a.T) if a.ndim == 2 else a
    return form


def from_checkpoint(method: str, tensors: dict[str, np.ndarray], in_features: int, out_features: int, *,
                    layout: str = "auto", block: int = fp8.BLOCK, name: str = "weight") -> dict[str, np.ndarray]:
    """The kernel form of one linear's checkpoint tensors (by suffix), validated by ``quant.tensors.compact``
    (names, dtypes, shapes: an ErnieError naming the tensor)."""
    return to_kernel_form(method, compact(method, tensors, in_features, out_features, layout=layout, block=block,
                                          name=name))


def from_kernel_form(method: str, form: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The exact inverse of :func:`to_kernel_form`: the compact arrays, keyed by checkpoint suffix."""
    arrays = {"quant_weight": np.ascontiguousarray(np.asarray(form[WEIGHT]).T)}
    for name in SCALE_NAMES[method]:
        a = np.asarray(form[name])
        arrays[name] = np.ascontiguousarray(a.T) if a.ndim == 2 else a
    return arrays


def dequantize(method: str, form: dict[str, np.ndarray], in_features: int, out_features: int,
               block: int = fp8.BLOCK, name: str = "weight") -> np.ndarray:
    """float32 W [in, out] of a kernel form, by the numpy reference of ``quant.tensors``."""
    return dequantize_weight(method, from_kernel_form(method, form), in_features, out_features, layout="plain",
                             block=block, name=name)


def kernel_shapes(method: str, in_features: int, out_features: int,
                  block: int = KERNEL_BLOCK) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The kernel form's arrays of a K x N linear without its values: name -> (dtype name, shape), in
    operator order (the table above)."""
    k, n = in_features, out_features
    if method == "wint2":
        groups = -(-k // 128)
        return {WEIGHT: ("uint8", (n, k // 4)), "weight_scale": ("uint8", (n, groups)),
                "super_scales": ("float32", (n,)), "code_scale": ("float32", (n,)), "code_zp": ("float32", (n,))}
    if method == "fp8":
        return {WEIGHT: ("uint8", (n, k)), "weight_scale": ("float32", (-(-n // block), -(-k // block)))}
    if method in ("wint8", "wint4"):
        return {WEIGHT: ("int8", (n, k if method == "wint8" else k // 2)), "weight_scale": ("float32", (n,))}
    raise ValueError(f"no kernel form for method {method!r}")


def runs_compiled(method: str, block: int) -> bool:
    """Whether the compiled operators take this format (fp8 only with 128 x 128 blocks)."""
    return method != "fp8" or block == KERNEL_BLOCK
