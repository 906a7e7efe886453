"""``QuantLinear``: a quantized linear whose checkpoint bytes stay resident, in the kernel form.

``QuantLinear.from_tensors(method, tensors, in_features, out_features)`` takes one linear's checkpoint
tensors (keyed by suffix: ``quant_weight``, ``weight_scale``, ...), validates them (``quant.tensors.compact``)
and keeps them as buffers in the kernel form of ``quant.kernel_form`` (W^T [out, ...] and its scales: the
checkpoint's bytes, transposed), the only copy. The exported predictor program passes the same buffers to
the same operators (``runtime.predictor.program.NativeOps``), so dygraph and predictor compute alike.

Forward on CPU is the compiled ``ernie_linear`` operator of ``kernels.predictor_ops`` (float32
activations, every format decoded in registers, any token count). On the GPU, when the operators cannot be
built, or for fp8 blocks other than 128, forward multiplies by ``dequantize()``: the float32 W decoded with
Paddle ops (exactly the numpy reference of ``quant.tensors``).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import paddle
from paddle import nn

from ernie_paddle.errors import ErnieError
from ernie_paddle.kernels import predictor_ops
from ernie_paddle.quant import fp8, kernel_form, wint2
from ernie_paddle.quant.kernel_form import SCALE_NAMES, WEIGHT

_FP8_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
_CONSTANTS: dict[tuple[str, str], paddle.Tensor] = {}  # (name, device) -> tensor, made on first use


def _constant(name: str) -> paddle.Tensor:
    """A small constant on the current device: the e4m3 value table, or the dummy [1] for unused scales."""
    key = (name, paddle.get_device())
    if key not in _CONSTANTS:
        _CONSTANTS[key] = paddle.to_tensor(_FP8_TABLE if name == "fp8" else np.zeros(1, np.float32))
    return _CONSTANTS[key]


def _kernels():
    """The compiled operators, or None (see ``kernels.predictor_ops``)."""
    return predictor_ops.get()


def _i32(v: int) -> paddle.Tensor:
    return paddle.full([], v, dtype="int32")


class QuantLinear(nn.Layer):
    """y = x @ W (+ bias) over the kernel form of the checkpoint's bytes (see the module docstring)."""

    def __init__(self, method: str, in_features: int, out_features: int, form: dict[str, np.ndarray],
                 block: int = fp8.BLOCK, bias: np.ndarray | None = None):
        super().__init__()
        self.method, self.in_features, self.out_features, self.block = method, in_features, out_features, block
        for key in (WEIGHT, *SCALE_NAMES[method]):
            self.register_buffer(key, paddle.to_tensor(np.ascontiguousarray(form[key])), persistable=True)
        if bias is None:
            self.bias = None
        else:
            self.register_buffer("bias", paddle.to_tensor(np.asarray(bias, np.float32)), persistable=True)

    @classmethod
    def from_tensors(cls, method: str, tensors: dict[str, np.ndarray], in_features: int, out_features: int, *,
                     layout: str = "auto", block: int = fp8.BLOCK, name: str = "weight") -> QuantLinear:
        """Build from one linear's checkpoint tensors (by suffix); validates names, dtypes and shapes."""
        form = kernel_form.from_checkpoint(method, tensors, in_features, out_features, layout=layout, block=block,
                                           name=name)
        return cls(method, in_features, out_features, form, block, tensors.get("bias"))

    @property
    def format_code(self) -> int:
        """The operators' ``fmt`` of this layer's storage."""
        return kernel_form.FORMAT_CODES[self.method]

    @property
    def runs_compiled(self) -> bool:
        """Whether the compiled operators take this layer's form (fp8: 128 x 128 blocks only)."""
        return kernel_form.runs_compiled(self.method, self.block)

    def kernel_inputs(self, dummy: paddle.Tensor) -> list[paddle.Tensor]:
        """[WT, S0, S1, S2, S3] for the operators; ``dummy`` (float32 [1]) fills the unused scale slots."""
        scales = [getattr(self, name) for name in SCALE_NAMES[self.method]]
        return [getattr(self, WEIGHT), *scales, *[dummy] * (kernel_form.SCALE_SLOTS - len(scales))]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        kern = _kernels() if self.runs_compiled and not x.place.is_gpu_place() else None
        if kern is None:
            y = paddle.matmul(x, self._dequantized_t().astype(x.dtype), transpose_y=True)
        else:
            xf = x if x.dtype == paddle.float32 else x.astype("float32")
            xf = xf if xf.is_contiguous() else xf.contiguous()
            y = kern.ernie_linear(xf, *self.kernel_inputs(_constant("dummy")), self.format_code, False)
            y = y if x.dtype == paddle.float32 else y.astype(x.dtype)
        return y if self.bias is None else y + self.bias.astype(y.dtype)

    def dequantize(self) -> paddle.Tensor:
        """float32 W [in, out], decoded from the resident storage with Paddle ops."""
        return self._dequantized_t().transpose([1, 0])

    def _dequantized_t(self) -> paddle.Tensor:
        """float32 W^T [out, in]: each value the same float32 product as the numpy reference."""
        k, n, wt = self.in_features, self.out_features, self.weight_t
        if self.method == "wint8":
            return wt.astype("float32") * self.weight_scale.unsqueeze(1)
        if self.method == "wint4":
            u = wt.astype("int32")
            lo = paddle.bitwise_and(u, _i32(15))
            hi = paddle.bitwise_and(paddle.bitwise_right_shift(u, _i32(4)), _i32(15))
            q = paddle.stack([lo, hi], axis=2).reshape([n, k])
            q = paddle.bitwise_xor(q, _i32(8)) - 8  # sign-extend the nibble
            return q.astype("float32") * self.weight_scale.unsqueeze(1)
        if self.method == "fp8":
            b = self.block
            w = paddle.gather(_constant("fp8"), wt.astype("int32").reshape([-1])).reshape([n, k])
            s = paddle.repeat_interleave(paddle.repeat_interleave(self.weight_scale, b, axis=0)[:n], b, axis=1)
            return w * s[:, :k]
        return self._wint2_t(k, n)

    def _wint2_t(self, k: int, n: int) -> paddle.Tensor:
        """wint2's W^T: codes per byte, four 6-bit windows each, times nibble * super_scale per 64 inputs."""
        b = self.weight_t.astype("float32")
        c = paddle.floor(b * self.code_scale.unsqueeze(1) + self.code_zp.unsqueeze(1) + 0.5).astype("int32")
        q = paddle.stack([paddle.bitwise_and(paddle.bitwise_right_shift(c, _i32(s)), _i32(0x3F))
                          for s in wint2.SHIFTS], axis=2)
        q = (q - wint2.ZERO_POINT).astype("float32").reshape([n, k // wint2.GROUP, wint2.GROUP])
        ls = self.weight_scale.astype("int32")  # [N, ceil(K/128)]: high nibble = even group
        nib = paddle.stack([paddle.bitwise_right_shift(ls, _i32(4)), paddle.bitwise_and(ls, _i32(15))], axis=2)
        scale = nib.reshape([n, -1])[:, : k // wint2.GROUP].astype("float32") * self.super_scales.unsqueeze(1)
        return (q * scale.unsqueeze(2)).reshape([n, k])

    def storage_bytes(self) -> int:
        """Bytes of the resident buffers (the checkpoint's compact bytes plus float32 scales)."""
        return sum(int(b.numel()) * b.element_size() for b in self.buffers() if b is not None)

    def extra_repr(self) -> str:
        return f"method={self.method}, in_features={self.in_features}, out_features={self.out_features}"


def check_exportable(layer: nn.Layer) -> None:
    """Refuse a quantized linear that the exported program cannot hold (a bias: the program's linears have
    none)."""
    if isinstance(layer, QuantLinear) and layer.bias is not None:
        raise ErnieError("a quantized linear with a bias cannot be exported")


def float_weight(layer: nn.Layer) -> paddle.Tensor:
    """W [in, out] of a linear: its ``weight``, or a QuantLinear's float32 dequantized weight (Paddle's op
    set of the exported program, which has no quantized operators)."""
    if not isinstance(layer, QuantLinear):
        return layer.weight
    check_exportable(layer)
    return layer.dequantize()


def quantization_methods(model: nn.Layer) -> str | None:
    """The methods of ``model``'s quantized linears, comma-separated (None when it has none)."""
    return ",".join(sorted({m.method for m in model.sublayers() if isinstance(m, QuantLinear)})) or None
