"""The attention and SwiGLU MLP blocks, written once as calls on the active op set (``models.ops``)."""

from __future__ import annotations

import paddle
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.models.layers import Linear
from ernie_paddle.models.ops import active_ops


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

    def forward(self, x: paddle.Tensor, cos, sin, mask, cache=None, residual=None) -> paddle.Tensor:
        """(residual +) attention of x [B, T, H]; cos/sin, mask and cache in the op set's form (dygraph:
        cos/sin [B, T, 1, hd/2], mask additive [B, 1, T, S] or None, a ``LayerCache`` or None)."""
        op = active_ops()
        q, kv = op.rope_kv(self, op.linear(x, self.qkv_proj), cos, sin, cache)
        return op.linear_add(op.attention(self, q, kv, mask), self.o_proj, residual)


class MLP(nn.Layer):
    """SwiGLU: down(silu(gate) * up) with ``up_gate_proj`` [H, 2I] holding [gate | up]."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.up_gate_proj = Linear(hidden_size, 2 * intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)

    def forward(self, x: paddle.Tensor, residual: paddle.Tensor | None = None) -> paddle.Tensor:
        op = active_ops()
        return op.linear_add(op.linear(x, self.up_gate_proj), self.down_proj, residual, swiglu=True)
