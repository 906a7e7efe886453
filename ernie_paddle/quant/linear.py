"""A quantized linear for CPU: compact storage stays resident, the weight is dequantized on each forward.

``QuantLinear.from_tensors(method, tensors, in_features, out_features)`` takes the checkpoint tensors of
one linear by suffix (``quant_weight``, ``weight_scale``, ...); ``quantize_weight`` makes them.
Weight-only int8/int4 bytes are un-arranged once at construction (same size), so forward only unpacks.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

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


def quantize_weight(method: str, w_in_out: np.ndarray, *, block: int = fp8.BLOCK,
                    name: str = "weight") -> dict[str, np.ndarray]:
    """Quantize a Paddle-layout W [in, out] to the released tensors, keyed by suffix."""
    method = _method(method)
    if method == "fp8":
        q, s = fp8.quantize(w_in_out, block, name)
        return {"quant_weight": q, "weight_scale": s}
    if method == "wint2":
        return wint2.encode(w_in_out, name=name)
    bits = weight_only.BITS[method]
    q, s = weight_only.quantize(w_in_out, bits, name=name)
    return {"quant_weight": weight_only.to_sm80(q, bits, f"{name}.quant_weight"), "weight_scale": s}


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


def _i32(v: int) -> paddle.Tensor:
    return paddle.full([], v, dtype="int32")


class QuantLinear(nn.Layer):
    """y = x @ dequantize(storage) (+ bias); the storage buffers keep the checkpoint's compact size."""

    def __init__(self, method: str, in_features: int, out_features: int, buffers: dict[str, np.ndarray],
                 block: int = fp8.BLOCK):
        super().__init__()
        self.method, self.in_features, self.out_features, self.block = method, in_features, out_features, block
        for key, arr in buffers.items():
            self.register_buffer(key, paddle.to_tensor(np.ascontiguousarray(arr)), persistable=True)
        if "bias" not in buffers:
            self.bias = None

    @classmethod
    def from_tensors(cls, method: str, tensors: dict[str, np.ndarray], in_features: int, out_features: int, *,
                     layout: str = "auto", block: int = fp8.BLOCK, name: str = "weight") -> QuantLinear:
        """Build from one linear's checkpoint tensors (by suffix); validates names, dtypes and shapes."""
        buffers = compact(method, tensors, in_features, out_features, layout=layout, block=block, name=name)
        if tensors.get("bias") is not None:
            buffers["bias"] = np.asarray(tensors["bias"]).astype(np.float32)
        return cls(method, in_features, out_features, buffers, block)

    def dequantize(self) -> paddle.Tensor:
        """float32 W [in, out], computed from the resident storage."""
        k, n = self.in_features, self.out_features
        if self.method == "fp8":
            return self._fp8(k, n)
        if self.method == "wint8":
            return self.quant_weight.astype("float32") * self.weight_scale
        if self.method == "wint4":
            u = self.quant_weight.astype("int32")
            lo = paddle.bitwise_and(u, _i32(15))
            hi = paddle.bitwise_and(paddle.bitwise_right_shift(u, _i32(4)), _i32(15))
            q = paddle.stack([lo, hi], axis=1).reshape([k, n])
            q = paddle.bitwise_xor(q, _i32(8)) - 8  # sign-extend the nibble
            return q.astype("float32") * self.weight_scale
        return self._wint2(k, n)

    def _fp8(self, k: int, n: int) -> paddle.Tensor:
        q = self.quant_weight.view(paddle.float8_e4m3fn).astype("float32")  # stored as raw uint8 bytes
        b, s = self.block, self.weight_scale
        if k % b == 0 and n % b == 0:
            tiles = q.reshape([k // b, b, n // b, b]) * s.reshape([k // b, 1, n // b, 1])
            return tiles.reshape([k, n])
        full = paddle.repeat_interleave(paddle.repeat_interleave(s, b, axis=0), b, axis=1)
        return q * full[:k, :n]

    def _wint2(self, k: int, n: int) -> paddle.Tensor:
        b = self.quant_weight.astype("float32")
        c = paddle.floor(b * self.code_scale + self.code_zp + 0.5).astype("int32")
        q = paddle.stack([paddle.bitwise_and(paddle.bitwise_right_shift(c, _i32(s)), _i32(0x3F))
                          for s in wint2.SHIFTS], axis=1)
        q = (q - wint2.ZERO_POINT).astype("float32").reshape([k // wint2.GROUP, wint2.GROUP, n])
        ls = self.weight_scale.astype("int32")
        nib = paddle.stack([paddle.bitwise_right_shift(ls, _i32(4)), paddle.bitwise_and(ls, _i32(15))], axis=1)
        scale = nib.reshape([-1, n])[: k // wint2.GROUP].astype("float32") * self.super_scales
        return (q * scale.unsqueeze(1)).reshape([k, n])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        w = self.dequantize()
        if x.dtype != w.dtype:
            w = w.astype(x.dtype)
        y = paddle.matmul(x, w)
        return y if self.bias is None else y + self.bias.astype(y.dtype)

    def extra_repr(self) -> str:
        return f"method={self.method}, in_features={self.in_features}, out_features={self.out_features}"


def float_weight(layer: nn.Layer) -> paddle.Tensor:
    """W [in, out] of a linear: its ``weight``, or a QuantLinear's float32 dequantized weight (refused with a
    bias: the exported program's linears have none)."""
    if not isinstance(layer, QuantLinear):
        return layer.weight
    if layer.bias is not None:
        raise ErnieError("a quantized linear with a bias cannot be exported")
    return layer.dequantize()


def quantization_methods(model: nn.Layer) -> str | None:
    """The methods of ``model``'s quantized linears, comma-separated (None when it has none)."""
    return ",".join(sorted({m.method for m in model.sublayers() if isinstance(m, QuantLinear)})) or None
