"""Fit an MTP layer to a main model by least squares, so that speculative decoding has real acceptance.

Released MoE checkpoints ship a trained MTP layer; the tiny random test models and the random 0.3B-shaped
benchmark model do not. The MTP output is final_norm(block(x)) with x = linear_proj(z) and z =
concat[emb_norm(embed(x_{i+1})), hidden_norm(h_i)]. Since final_norm(y) is a positive multiple of
h_{i+1} when y = h_{i+1} / norm.weight (elementwise), fitting block(x) ~ h_{i+1} / norm.weight makes the
MTP at position i predict the main model's logits at position i + 1 up to a temperature. ``linear_proj``
is solved by ridge regression; with the block kept (``block_scale`` > 0, its output projections scaled
down), a few fixed-point passes refit it against the targets minus the block's residual contribution.
"""

from __future__ import annotations

import numpy as np
import paddle

from converters.rules import ROW, match_paddle
from ernie_paddle.models.kv_cache import KVCache
from ernie_paddle.models.layers import rope_cos_sin
from ernie_paddle.runtime.speculative import mtp_forward


def _block_residual(model, x: paddle.Tensor) -> paddle.Tensor:
    """block(x) - x for full sequences x [N, L, H] (a fresh cache: plain causal attention)."""
    ern, cfg = model.ernie, model.config
    n, length, _ = x.shape
    cache = KVCache(1, length)
    positions, _ = cache.positions_and_mask(n, length, None)

    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    return ern.mtp_block[0](x, cos, sin, None, None) - x


def fit_mtp(model, sequences, ridge: float = 1e-3, block_scale: float = 0.0, passes: int = 3) -> float:
    """Overwrite ``model``'s MTP layer 0 fitted on int64 token sequences [N, L] (no padding).

    ``block_scale`` multiplies the output projections of the block (attention output, MLP down; 0 makes
    the block the identity).
    Returns the top-1 agreement of MTP and main-model predictions on the fitting data.
    """
    ern = model.ernie
    seqs = paddle.to_tensor(np.asarray(sequences, dtype=np.int64))
    with paddle.no_grad():
        for layer in (ern.mtp_block[0].self_attn.o_proj, ern.mtp_block[0].mlp.down_proj):
            layer.weight.set_value(layer.weight * block_scale)
        hidden = ern(seqs)  # final-normed [N, L, H]
        z = paddle.concat([ern.mtp_emb_norm[0](ern.embed_tokens(seqs[:, 1:])),
                           ern.mtp_hidden_norm[0](hidden[:, :-1])], axis=-1)
        target = hidden[:, 1:] / ern.norm.weight
        z_np = z.numpy().reshape(-1, z.shape[-1]).astype(np.float64)
        gram = z_np.T @ z_np + ridge * len(z_np) * np.eye(z_np.shape[1])
        goal = target
        for _ in range(max(1, passes if block_scale else 1)):
            w = np.linalg.solve(gram, z_np.T @ goal.numpy().reshape(len(z_np), -1).astype(np.float64))
            ern.mtp_linear_proj[0].weight.set_value(w.astype(np.float32))
            if block_scale:
                goal = target - _block_residual(model, ern.mtp_linear_proj[0](z))
    return mtp_agreement(model, sequences)


def mtp_agreement(model, sequences) -> float:
    """How often the MTP's top-1 draft at position i equals the main model's top-1 at position i + 1,
    teacher-forced on int64 token sequences [N, L]."""
    seqs = paddle.to_tensor(np.asarray(sequences, dtype=np.int64))
    with paddle.no_grad():
        hidden = model.ernie(seqs)
        drafted = model.head(mtp_forward(model, seqs[:, 1:], hidden[:, :-1], KVCache(1))).numpy()
        main = model.head(hidden[:, 1:]).numpy()
    return float((drafted.argmax(-1) == main.argmax(-1)).mean())


def _is_main_output_projection(name: str) -> bool:
    """A main decoder layer's row-parallel Linear weight: attention output or MLP / expert down projection."""
    m = match_paddle(name)
    return m is not None and m.layer is not None and m.rule.tp == ROW and not m.rule.bias and not m.variant


def damp_main_layers(model, scale: float) -> None:
    """Scale the output projections of every main decoder layer (attention output, MLP and expert down
    projections) by ``scale``, so the next token depends mostly on the current one and a fitted MTP
    layer predicts it well. For demos and tests of speculative decoding only: it changes the model."""
    with paddle.no_grad():
        for name, p in model.named_parameters():
            if _is_main_output_projection(name):
                p.set_value(p * scale)
