"""Multimodal MoE: text tokens to text experts (router ``gate.weight``, bias row 0), vision tokens to
vision experts (``gate.weight_1``, bias row 1), shared experts on every token (spec 4.5)."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.config.vl import pair
from ernie_paddle.models.blocks import MLP
from ernie_paddle.models.moe import dispatch_experts, route


class VLRouter(nn.Layer):
    """``weight`` [H, E_text] and ``weight_1`` [H, E_vision], float32 (the same in both checkpoint layouts)."""

    def __init__(self, hidden: int, text_experts: int, vision_experts: int):
        super().__init__()
        zero = nn.initializer.Constant(0.0)
        self.weight = self.create_parameter([hidden, text_experts], dtype="float32", default_initializer=zero)
        self.weight_1 = self.create_parameter([hidden, vision_experts], dtype="float32", default_initializer=zero)


class VLMoEStatics(nn.Layer):
    """``e_score_correction_bias`` [2, E] float32: row 0 text, row 1 vision."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.e_score_correction_bias = self.create_parameter(
            [2, num_experts], dtype="float32", default_initializer=nn.initializer.Constant(0.0))


class VLSparseMoE(nn.Layer):
    """Experts ``0..E_t-1`` (width Im_text), then ``E_t..E_t+E_v-1`` (width Im_vision), in one list."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        h = config.hidden_size
        (self.e_text, e_vision), (i_text, i_vision) = pair(config, "moe_num_experts"), pair(
            config, "moe_intermediate_size")
        self.top_k, self.norm_min, self.act = config.moe_k, config.moe_norm_min, config.moe_gate_act
        self.use_bias = config.moe_use_aux_free
        self.gate = VLRouter(h, self.e_text, e_vision)
        self.moe_statics = VLMoEStatics(self.e_text)
        self.experts = nn.LayerList([MLP(h, i_text) for _ in range(self.e_text)]
                                    + [MLP(h, i_vision) for _ in range(e_vision)])
        shared = config.moe_num_shared_experts
        self.shared_experts = MLP(h, i_text * shared) if shared > 0 else None

    def _modality(self, rows: paddle.Tensor, vision: bool) -> paddle.Tensor:
        gate = self.gate.weight_1 if vision else self.gate.weight
        n = gate.shape[1]
        bias = self.moe_statics.e_score_correction_bias[int(vision), :n] if self.use_bias else None
        ids, weights = route(rows, gate, bias, self.top_k, self.norm_min, self.act)
        offset = self.e_text if vision else 0
        return dispatch_experts(rows, ids, weights.astype(rows.dtype), n, {e: self.experts[offset + e] for e in range(n)})

    def forward(self, x: paddle.Tensor, vision_mask: np.ndarray | None = None) -> paddle.Tensor:
        """x [B, T, H]; ``vision_mask`` bool [B, T] marks image/video tokens (None: all text)."""
        shape = x.shape
        flat = x.reshape([-1, shape[-1]])
        mask = np.zeros(flat.shape[0], dtype=bool) if vision_mask is None else np.asarray(vision_mask).reshape(-1)
        out = paddle.zeros_like(flat)
        for vision in (False, True):
            idx = np.nonzero(mask == vision)[0]
            if idx.size:
                idx_t = paddle.to_tensor(idx, dtype="int64")
                out = paddle.scatter(out, idx_t, self._modality(paddle.gather(flat, idx_t), vision))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.reshape(shape)
