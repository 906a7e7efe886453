"""Primitives in Paddle layout: Linear [in, out], RMSNorm, interleaved RoPE and the causal mask."""

from __future__ import annotations

import paddle
from paddle import nn


class Linear(nn.Layer):
    """Bias-free linear layer whose ``weight`` is stored [in, out], as in Paddle checkpoints."""

    def __init__(self, in_features: int, out_features: int, dtype: str | None = None):
        super().__init__()
        dtype = dtype or paddle.get_default_dtype()
        self.weight = self.create_parameter([in_features, out_features], dtype=dtype,
                                            default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.matmul(x, self.weight)


class RMSNorm(nn.Layer):
    """y = w * cast(x_f32 * rsqrt(mean(x_f32^2) + eps)); variance always in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        dtype = x.dtype
        xf = x.astype("float32")
        xf = xf * paddle.rsqrt(xf.pow(2).mean(axis=-1, keepdim=True) + self.eps)
        return self.weight * xf.astype(dtype)


def rope_cos_sin(positions: paddle.Tensor, head_dim: int, theta: float) -> tuple[paddle.Tensor, paddle.Tensor]:
    """cos/sin [B, T, 1, head_dim/2] in float32 for integer ``positions`` [B, T]."""
    exponent = paddle.arange(0, head_dim, 2, dtype="float32") / head_dim
    inv_freq = 1.0 / paddle.pow(paddle.to_tensor(theta, dtype="float32"), exponent)
    freqs = positions.astype("float32").unsqueeze(-1) * inv_freq
    return freqs.cos().unsqueeze(2), freqs.sin().unsqueeze(2)


def apply_rope(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """Rotate even/odd pairs (x[2i], x[2i+1]) of x [B, T, heads, hd] by pos * inv_freq_i, in float32."""
    dtype = x.dtype
    b, t, h, d = x.shape
    pairs = x.astype("float32").reshape([b, t, h, d // 2, 2])
    even, odd = pairs[..., 0], pairs[..., 1]
    out = paddle.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    return out.reshape([b, t, h, d]).astype(dtype)


def causal_mask(t: int, s: int) -> paddle.Tensor:
    """Additive float32 [t, s] mask: query i (absolute position s - t + i) sees keys 0 .. s - t + i."""
    q_pos = paddle.arange(s - t, s, dtype="int64").unsqueeze(1)
    k_pos = paddle.arange(0, s, dtype="int64").unsqueeze(0)
    return paddle.where(k_pos <= q_pos, paddle.zeros([1], "float32"), paddle.full([1], NEG_INF, "float32"))


NEG_INF = float(paddle.finfo(paddle.float32).min)
