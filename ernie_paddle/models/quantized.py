"""The runtime's quantized linear: ``QuantLinear`` storage, computed without materialising the whole weight.

``QuantLinear.forward`` dequantizes the full weight to float32 and then multiplies; on CPU that writes
(and re-reads) 4 bytes per weight through main memory on every call. ``RuntimeQuantLinear`` keeps the
same compact buffers but works through them in row blocks small enough to stay in cache:

- with the compiled CPU kernels (``ernie_paddle.kernels.quant_ops``), a few tokens (decode) run a fused
  dequantize-and-multiply that reads each stored byte once; more tokens dequantize one row block at a
  time into float32 and hand it to Paddle's matmul;
- without them, each row block is decoded with Paddle ops (wint8: a cast; wint4: a cast plus one floor on
  an offset-binary copy of the nibbles; fp8: a 256-entry table lookup) and multiplied right away.
  Per-column scales are applied to the [tokens, N] output, not to the weight.

``dequantize()`` still returns the whole float32 W [in, out] (tests compare it with the numpy reference).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import paddle

from ernie_paddle.quant.linear import QuantLinear

BLOCK_ELEMS = 1 << 19  # weights decoded per step (2 MiB of float32): stays in L2
FUSED_MAX_TOKENS = 8  # up to this many rows of x use the fused kernel (decode, small batches)
_FP8_TABLE = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def _kernels():
    from ernie_paddle.kernels import quant_ops

    return quant_ops.get()


class RuntimeQuantLinear(QuantLinear):
    """A ``QuantLinear`` whose forward decodes the compact storage block by block (see module docstring).

    wint4 storage is the plain packing of ``QuantLinear`` ([K/2, N], even k in the low nibble); a second,
    same-sized offset-binary copy is not kept: the fallback derives it per block.
    """

    def __init__(self, method, in_features, out_features, buffers, block=128):
        super().__init__(method, in_features, out_features, buffers, block)
        self._table = None

    # ------------------------------------------------------------------ forward
    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.method == "wint2" or x.place.is_gpu_place():
            return super().forward(x)
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
        if self._table is None:
            self._table = paddle.to_tensor(_FP8_TABLE)
        n, b = self.out_features, self.block
        q = self.quant_weight[r0:r1]
        w = paddle.gather(self._table, q.astype("int32").reshape([-1])).reshape([r1 - r0, n])
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
