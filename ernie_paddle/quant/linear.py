"""``QuantLinear``: a quantized linear whose compact checkpoint storage stays resident.

``QuantLinear.from_tensors(method, tensors, in_features, out_features)`` takes one linear's checkpoint
tensors by suffix (``ernie_paddle.quant.tensors``). On GPU, and for wint2, forward dequantizes the whole
weight to float32 and multiplies. On CPU that would write (and re-read) 4 bytes per weight through main
memory on every call, so forward works through the storage in row blocks small enough to stay in cache:

- with the compiled CPU kernels (``ernie_paddle.kernels.quant_ops``), a few tokens (decode) run a fused
  dequantize-and-multiply that reads each stored byte once; more tokens dequantize one row block at a
  time into float32 and hand it to Paddle's matmul;
- without them, each row block is decoded with Paddle ops (wint8: a cast; wint4: a cast plus one floor on
  an offset-binary copy of the nibbles; fp8: a 256-entry table lookup) and multiplied right away.
  Per-column scales are applied to the [tokens, N] output, not to the weight.

``dequantize()`` returns the whole float32 W [in, out] with the same row decoders (tests compare it with
the numpy reference of ``quant.tensors``); the exported predictor program multiplies by it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import paddle
from paddle import nn

from ernie_paddle.errors import ErnieError
from ernie_paddle.kernels import quant_ops
from ernie_paddle.quant import fp8, wint2
from ernie_paddle.quant.tensors import compact

BLOCK_ELEMS = 1 << 19  # weights decoded per step (2 MiB of float32): stays in L2
FUSED_MAX_TOKENS = 8  # up to this many rows of x use the fused kernel (decode, small batches)
_FP8_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
_FP8_TABLES: dict[str, paddle.Tensor] = {}  # device -> the table as a tensor, made on first use


def _kernels():

    return quant_ops.get()


def _fp8_table() -> paddle.Tensor:
    """float32 value of each e4m3 byte, on the current device (shared by every layer)."""
    device = paddle.get_device()
    if device not in _FP8_TABLES:
        _FP8_TABLES[device] = paddle.to_tensor(_FP8_TABLE)
    return _FP8_TABLES[device]


def _i32(v: int) -> paddle.Tensor:
    return paddle.full([], v, dtype="int32")


class QuantLinear(nn.Layer):
    """y = x @ W (+ bias) over compact storage buffers of the checkpoint's size (see the module docstring).

    wint4 storage is the plain packing ([K/2, N], even k in the low nibble); a second, same-sized
    offset-binary copy is not kept: the Paddle-ops path derives it per block.
    """

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
            return self._fp8_rows(0, k)
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
        if self.method == "wint2" or x.place.is_gpu_place():
            return self._dequantized_matmul(x)
        shape = x.shape
        x2 = x.reshape([-1, shape[-1]])
        if x2.dtype != paddle.float32:
            x2 = x2.astype("float32")
        kern = _kernels()
        if kern is not None and x2.shape[0] <= FUSED_MAX_TOKENS:
            y = kern.fused(self, x2)
        else:
            y = self._blocked(x2, kern)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape([*shape[:-1], self.out_features])
        return y if x.dtype == paddle.float32 else y.astype(x.dtype)

    def _dequantized_matmul(self, x: paddle.Tensor) -> paddle.Tensor:
        w = self.dequantize()
        if x.dtype != w.dtype:
            w = w.astype(x.dtype)
        y = paddle.matmul(x, w)
        return y if self.bias is None else y + self.bias.astype(y.dtype)

    def _rows(self) -> int:
        """Stored rows per block (a multiple of the fp8 block for fp8, of 2 for wint4 packing)."""
        n = self.out_features
        if self.method == "fp8":
            return self.block * max(1, BLOCK_ELEMS // (self.block * n))
        return max(1, BLOCK_ELEMS // n)

    def _blocked(self, x: paddle.Tensor, kern) -> paddle.Tensor:
        k, rows = self.in_features, self._rows()
        if self.method == "wint4":
            return self._wint4_blocked(x, kern, rows)
        y = None
        for r0 in range(0, k, rows):
            r1 = min(k, r0 + rows)
            if kern is not None:  # fp8 rows come scaled; wint8 rows are the integers
                w = kern.dequant_rows(self, r0, r1)
            elif self.method == "wint8":
                w = self.quant_weight[r0:r1].astype("float32")
            else:
                w = self._fp8_rows(r0, r1)
            part = paddle.matmul(x[:, r0:r1], w)
            y = part if y is None else y + part
        return y * self.weight_scale if self.method == "wint8" else y

    def _fp8_rows(self, r0: int, r1: int) -> paddle.Tensor:
        """float32 rows r0:r1 of W (block scales applied) by table lookup: Paddle's fp8 cast is scalar code."""
        n, b = self.out_features, self.block
        q = self.quant_weight[r0:r1]
        w = paddle.gather(_fp8_table(), q.astype("int32").reshape([-1])).reshape([r1 - r0, n])
        s = self.weight_scale[r0 // b: (r1 + b - 1) // b]
        s = paddle.repeat_interleave(paddle.repeat_interleave(s, b, axis=0)[: r1 - r0], b, axis=1)[:, :n]
        return w * s

    def _wint4_blocked(self, x: paddle.Tensor, kern, rows: int) -> paddle.Tensor:
        """Packed row p holds k = 2p (low nibble) and 2p + 1 (high nibble)."""
        x_even, x_odd = x[:, 0::2], x[:, 1::2]
        y = None
        for p0 in range(0, self.in_features // 2, rows):
            p1 = min(self.in_features // 2, p0 + rows)
            if kern is not None:  # the integers of rows 2 p0 .. 2 p1
                part = paddle.matmul(x[:, 2 * p0: 2 * p1], kern.dequant_rows(self, 2 * p0, 2 * p1))
            else:
                # offset binary: byte ^ 0x88 = 16 * (hi + 8) + (lo + 8), so with f its value and
                # a = floor(f / 16): x_e * lo + x_o * hi = x_e * f + (x_o - 16 x_e) * a - 8 * (x_e + x_o)
                u = paddle.bitwise_xor(self.quant_weight[p0:p1], paddle.full([], -120, "int8"))
                f = u.astype("uint8").astype("float32")
                a = paddle.floor(f * (1.0 / 16))
                xe, xo = x_even[:, p0:p1], x_odd[:, p0:p1]
                part = paddle.matmul(xe, f) + paddle.matmul(xo - 16.0 * xe, a)
                part = part - 8.0 * (xe.sum(axis=1, keepdim=True) + xo.sum(axis=1, keepdim=True))
            y = part if y is None else y + part
        return y * self.weight_scale

    def storage_bytes(self) -> int:
        """Bytes of the resident buffers (the compact checkpoint storage plus float32 scales)."""
        return sum(int(b.numel()) * b.element_size() for b in self.buffers() if b is not None)

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
