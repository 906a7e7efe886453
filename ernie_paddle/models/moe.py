"""Sparse MoE block as released: fp32 router, correction bias for selection only, only chosen experts run.

``route`` is the one router (the native program's compiled ``ernie_moe`` computes the same, ties included).
``dispatch_experts`` is the one MoE dispatch (text MoE, VL MoE and the exported program's Paddle op set): in
dygraph it runs the experts the numpy ids name; traced, each expert is a conditional block that runs only
when some row selected it.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.models.blocks import MLP
from ernie_paddle.models.ops import active_ops


class Router(nn.Layer):
    """``weight`` [H, E] in float32 (the Paddle checkpoint orientation)."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.weight = self.create_parameter([hidden_size, num_experts], dtype="float32",
                                            default_initializer=nn.initializer.Constant(0.0))


class MoEStatics(nn.Layer):
    """Holds ``e_score_correction_bias`` [1, E] float32 (the aux-free load-balancing bias)."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.e_score_correction_bias = self.create_parameter(
            [1, num_experts], dtype="float32", default_initializer=nn.initializer.Constant(0.0))


def route(x: paddle.Tensor, gate: paddle.Tensor, bias: paddle.Tensor | None, k: int,
          norm_min: float, act: str = "softmax") -> tuple[paddle.Tensor, paddle.Tensor]:
    """Top-k expert ids and weights for tokens x [N, H].

    Probabilities come from an fp32 softmax of x @ gate; the bias only changes WHICH experts are chosen;
    the weights are the unbiased probabilities of the chosen experts divided by max(sum, norm_min).
    """
    logits = paddle.matmul(x.astype("float32"), gate)
    probs = F.softmax(logits, axis=-1) if act == "softmax" else F.sigmoid(logits)
    scores = probs + bias.reshape([1, -1]) if bias is not None else probs
    _, ids = paddle.topk(scores, k, axis=-1)
    weights = paddle.take_along_axis(probs, ids, axis=-1)
    weights = weights / paddle.clip(weights.sum(axis=-1, keepdim=True), min=norm_min)
    return ids, weights


def dispatch_experts(x: paddle.Tensor, ids: paddle.Tensor, weights: paddle.Tensor, num_experts: int,
                     experts: dict) -> paddle.Tensor:
    """sum_j weights[:, j] * experts[ids[:, j]](x) for tokens x [N, H] and top-k ``ids``/``weights`` [N, k]
    (weights in x's dtype); ``experts`` maps expert id -> MLP for the experts held (others add nothing)."""
    hits = F.one_hot(ids, num_experts).astype(x.dtype)  # [N, k, E]
    row_w = (hits * weights.unsqueeze(-1)).sum(axis=1)  # [N, E] weight per row/expert
    row_hit = hits.sum(axis=1) > 0  # [N, E]
    if paddle.in_dynamic_mode():
        present = set(np.unique(ids.numpy()).tolist())
        chosen = [e in present for e in range(num_experts)]
    else:  # one op instead of one slice per expert
        chosen = paddle.split(row_hit.any(axis=0), num_experts)
    out = paddle.zeros_like(x)
    for e, expert in experts.items():
        if chosen[e]:
            rows = paddle.nonzero(row_hit[:, e]).flatten()
            part = expert(paddle.gather(x, rows)) * paddle.gather(row_w[:, e:e + 1], rows)
            out = paddle.index_add(out, rows, 0, part)
    return out


class SparseMoE(nn.Layer):
    """Routed experts (each ``up_gate_proj`` [H, 2Im] + ``down_proj``), optional shared experts, router."""

    def __init__(self, config: ErnieConfig, owned: range | None = None, shared_size: int | None = None):
        """``owned``: the experts this layer holds (all by default; expert parallel holds a range, and
        ``forward`` then returns this part's share of the sum). ``shared_size``: shared-expert width."""
        super().__init__()
        h, e = config.hidden_size, config.moe_num_experts
        self.top_k, self.norm_min, self.act = config.moe_k, config.moe_norm_min, config.moe_gate_act
        self.use_bias = config.moe_use_aux_free
        self.gate = Router(h, e)
        self.moe_statics = MoEStatics(e)
        self.owned = owned if owned is not None else range(e)
        self.experts = nn.LayerList([MLP(h, config.moe_intermediate_size) for _ in self.owned])
        shared = config.shared_intermediate_size if shared_size is None else shared_size
        self.shared_experts = MLP(h, shared) if config.moe_num_shared_experts > 0 else None

    def routing(self, flat: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Top-k expert ids and weights for tokens ``flat`` [N, H] (``route`` with this layer's router)."""
        bias = self.moe_statics.e_score_correction_bias if self.use_bias else None
        return route(flat, self.gate.weight, bias, self.top_k, self.norm_min, self.act)

    def routed(self, flat: paddle.Tensor, ids: paddle.Tensor, weights: paddle.Tensor) -> paddle.Tensor:
        """The held experts' weighted sum for tokens ``flat`` [N, H] (``dispatch_experts``)."""
        return dispatch_experts(flat, ids, weights, self.gate.weight.shape[1], dict(zip(self.owned, self.experts)))

    def forward(self, x: paddle.Tensor, residual: paddle.Tensor | None = None) -> paddle.Tensor:
        """(residual +) routed experts + shared experts of x [..., H]."""
        out = active_ops().routed_experts(self, x)
        if self.shared_experts is not None:
            out = self.shared_experts(x, residual=out)
        return out if residual is None else residual + out
