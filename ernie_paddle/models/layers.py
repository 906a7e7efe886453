"""Building blocks in Paddle layout: Linear [in, out], RMSNorm, interleaved RoPE, GQA attention, SwiGLU MLP."""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.models.kv_cache import LayerCache


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


class Attention(nn.Layer):
    """GQA self-attention with fused ``qkv_proj`` [H, (nh + 2 nkv) hd] and scale 1/sqrt(head_dim)."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size)
        self.o_proj = Linear(self.q_size, config.hidden_size)

    def forward(self, x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor,
                mask: paddle.Tensor | None, cache: LayerCache | None = None) -> paddle.Tensor:
        """x [B, T, H]; mask additive [B, 1, T, S] or None (plain causal); cache holds earlier keys."""
        b, t, _ = x.shape
        hd, nkv = self.head_dim, self.num_kv_heads
        groups = self.num_heads // nkv
        qkv = self.qkv_proj(x)
        q = qkv[..., : self.q_size].reshape([b, t, self.num_heads, hd])
        k = qkv[..., self.q_size: self.q_size + self.kv_size].reshape([b, t, nkv, hd])
        v = qkv[..., self.q_size + self.kv_size:].reshape([b, t, nkv, hd])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])  # [B, nkv, T, hd]
        if cache is not None:
            k, v = cache.update(k, v)
        s = k.shape[2]
        # Query heads j*g .. j*g+g-1 share kv head j: group them so K/V are never repeated.
        q = q.transpose([0, 2, 1, 3]).reshape([b, nkv, groups * t, hd])
        scores = paddle.matmul(q, k, transpose_y=True).astype("float32") * (1.0 / math.sqrt(hd))
        scores = scores.reshape([b, nkv, groups, t, s])
        if mask is not None:
            scores = scores + mask.unsqueeze(1)
        elif t > 1:
            scores = scores + causal_mask(t, s).reshape([1, 1, 1, t, s])
        probs = F.softmax(scores, axis=-1).astype(v.dtype).reshape([b, nkv, groups * t, s])
        out = paddle.matmul(probs, v).reshape([b, self.num_heads, t, hd])
        return self.o_proj(out.transpose([0, 2, 1, 3]).reshape([b, t, self.q_size]))


def causal_mask(t: int, s: int) -> paddle.Tensor:
    """Additive float32 [t, s] mask: query i (absolute position s - t + i) sees keys 0 .. s - t + i."""
    q_pos = paddle.arange(s - t, s, dtype="int64").unsqueeze(1)
    k_pos = paddle.arange(0, s, dtype="int64").unsqueeze(0)
    return paddle.where(k_pos <= q_pos, paddle.zeros([1], "float32"), paddle.full([1], NEG_INF, "float32"))


NEG_INF = float(paddle.finfo(paddle.float32).min)


class MLP(nn.Layer):
    """SwiGLU: down(silu(gate) * up) with ``up_gate_proj`` [H, 2I] holding [gate | up]."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.up_gate_proj = Linear(hidden_size, 2 * intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        gate_up = self.up_gate_proj(x)
        gate, up = gate_up[..., : self.intermediate_size], gate_up[..., self.intermediate_size:]
        return self.down_proj(F.silu(gate) * up)
