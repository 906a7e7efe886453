"""The static step program: one forward over new tokens that writes their keys/values into a KV buffer.

It runs on the dygraph model's own parameters and shares its primitive functions (``rope_cos_sin``,
``causal_mask``, MoE ``route``, the RMSNorm epsilon, the SwiGLU [gate | up] split). Attention, norm and
MLP call the model's ``RMSNorm`` layers; attention and MLP are written here with Paddle's ``swiglu``,
shape-free reshapes and one rotary rotation (a tiny matmul) for q and k together: tracing the dygraph
layers as they are gives the same logits with about twice as many small ops per layer, which cost decode
time on CPU (Paddle's CPU ``flip`` and ``fused_rms_norm`` kernels were measured slower still). Parity with dygraph is tested to 1e-5 at
every step (tests/test_predictor.py).

One program serves prefill and decode: the KV buffer ``kv`` [L, 2, B, nkv, C, hd] is an input that the
runner shares zero-copy with the predictor; the program writes the new tokens' keys/values into columns
``start .. start+T`` in place and attends over columns ``0 .. start+T`` only, so a decode step costs
attention over the cached length, never a copy of the buffer. Each routed expert is a conditional block
that runs only when a token selected it.
"""


from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.static import InputSpec

from ..model.layers import NEG_INF, causal_mask, rope_cos_sin
from ..model.moe import route

PROGRAM_VERSION = 5  # bump when the traced program changes: the export cache keys on it
INPUT_NAMES = ("input_ids", "positions", "key_mask", "start", "logit_index", "kv")


def sparse_moe(moe, x: paddle.Tensor) -> paddle.Tensor:
    """``SparseMoE.forward`` for a static graph: each expert is a conditional block that runs, on the rows
    routed to it, only when some row selected it (the dygraph version loops over numpy ids instead)."""
    shape = x.shape
    flat = x.reshape([-1, shape[-1]])
    bias = moe.moe_statics.e_score_correction_bias if moe.use_bias else None
    ids, weights = route(flat, moe.gate.weight, bias, moe.top_k, moe.norm_min, moe.act)
    n_exp = moe.gate.weight.shape[1]
    hits = nn.functional.one_hot(ids, n_exp).astype(flat.dtype)  # [N, k, E]
    row_w = (hits * weights.astype(flat.dtype).unsqueeze(-1)).sum(axis=1)  # [N, E] weight per row/expert
    row_hit = hits.sum(axis=1) > 0  # [N, E]
    chosen = paddle.split(row_hit.any(axis=0), n_exp)  # one op instead of one slice per expert
    out = paddle.zeros_like(flat)
    for j, e in enumerate(getattr(moe, "owned", range(n_exp))):  # experts[j] is expert e
        if chosen[e]:
            rows = paddle.nonzero(row_hit[:, e]).flatten()
            part = _mlp(moe.experts[j], paddle.gather(flat, rows)) * paddle.gather(row_w[:, e:e + 1], rows)
            out = paddle.index_add(out, rows, 0, part)
    if moe.shared_experts is not None:
        out = out + _mlp(moe.shared_experts, flat)
    return out.reshape(shape)


def _mlp(mlp, x):
    return paddle.matmul(F.swiglu(paddle.matmul(x, mlp.up_gate_proj.weight)), mlp.down_proj.weight)


def _pair_rotation(head_dim: int) -> paddle.Tensor:
    """[hd, hd] matrix R with (x @ R)[2i] = -x[2i+1] and (x @ R)[2i+1] = x[2i] (exact: one +-1 per column)."""
    r = paddle.zeros([head_dim, head_dim], dtype="float32")
    even = paddle.arange(0, head_dim, 2)
    r[even + 1, even] = -1.0
    r[even, even + 1] = 1.0
    return r


def _as(x, dtype):
    """``x.astype(dtype)`` only when it changes something (no cast ops in float32 programs)."""
    return x if x.dtype == dtype else x.astype(dtype)


def _rope(x, cos2, sin2, rotation):
    """``apply_rope``: x * cos + rotate_pairs(x) * sin in float32, the same products as the dygraph
    even/odd form."""
    xf = _as(x, paddle.float32)
    return _as(xf * cos2 + paddle.matmul(xf, rotation) * sin2, x.dtype)


def _attention(attn, x, cos2, sin2, rotation, mask, kv, i, start, end):
    nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    qkv = paddle.matmul(x, attn.qkv_proj.weight).reshape([0, 0, nh + 2 * nkv, hd])
    qk, v = paddle.split(qkv, [nh + nkv, nkv], axis=2)
    q, k = paddle.split(_rope(qk, cos2, sin2, rotation), [nh, nkv], axis=2)
    kv[i, 0, :, :, start:end] = k.transpose([0, 2, 1, 3])
    kv[i, 1, :, :, start:end] = v.transpose([0, 2, 1, 3])
    q = q.transpose([0, 2, 1, 3]).reshape([0, nkv, -1, hd])  # query heads j*g.. share kv head j
    scores = _as(paddle.matmul(q, kv[i, 0, :, :, :end], transpose_y=True), paddle.float32) * (1.0 / math.sqrt(hd))
    probs = _as(F.softmax(scores + mask, axis=-1), kv.dtype)
    out = paddle.matmul(probs, kv[i, 1, :, :, :end]).reshape([0, nh, -1, hd]).transpose([0, 2, 1, 3])
    return paddle.matmul(out.reshape([0, 0, nh * hd]), attn.o_proj.weight)


class StepProgram(nn.Layer):
    """Wraps an ``ErnieForCausalLM`` (its parameters are this layer's) as one static step function."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids, positions, key_mask, start, logit_index, kv):
        """Logits [B, K, V] (float32) at ``logit_index`` [K] of the T new tokens.

        input_ids, positions [B, T] int64 (positions count real tokens only); key_mask [B, start+T] int64,
        1 for real tokens; start [1] int64, the columns already in ``kv``; kv [L, 2, B, nkv, C, hd].
        """
        cfg, ernie = self.config, self.model.ernie
        t = paddle.shape(input_ids)[1]
        end = start[0] + t
        s = paddle.shape(key_mask)[1]
        allowed = (causal_mask(t, s) == 0).unsqueeze(0) & (key_mask > 0).unsqueeze(1)
        mask = paddle.where(allowed, paddle.zeros([1], "float32"),
                            paddle.full([1], NEG_INF, "float32")).unsqueeze(1)
        groups = cfg.num_attention_heads // cfg.num_key_value_heads
        mask = paddle.tile(mask, [1, 1, groups, 1])  # rows ordered (group, token) like the grouped queries
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        cos2 = paddle.repeat_interleave(cos, 2, axis=-1)
        sin2 = paddle.repeat_interleave(sin, 2, axis=-1)
        rotation = _pair_rotation(cfg.head_dim)
        # A row gather: Paddle's CPU ``embedding`` kernel took milliseconds per call for one token.
        x = paddle.gather(ernie.embed_tokens.weight, input_ids.flatten()).reshape([-1, t, cfg.hidden_size])
        for i, layer in enumerate(ernie.layers):
            x = x + _attention(layer.self_attn, layer.input_layernorm(x), cos2, sin2, rotation, mask, kv, i,
                               start[0], end)
            h = layer.post_attention_layernorm(x)
            x = x + (sparse_moe(layer.mlp, h) if cfg.is_moe_layer(i) else _mlp(layer.mlp, h))
        hidden = ernie.norm(paddle.gather(x, logit_index, axis=1))
        return self.model.head(hidden)


def input_specs(config, dtype: str = "float32") -> list[InputSpec]:
    """Dynamic batch, token and cache sizes; layers, heads and head_dim fixed by the config."""
    kv_shape = [config.num_hidden_layers, 2, None, config.num_key_value_heads, None, config.head_dim]
    return [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "positions"),
            InputSpec([None, None], "int64", "key_mask"), InputSpec([1], "int64", "start"),
            InputSpec([None], "int64", "logit_index"), InputSpec(kv_shape, dtype, "kv")]


def save_program(model, prefix: str, dtype: str = "float32") -> None:
    """Trace ``StepProgram(model)`` and write ``prefix.json`` + ``prefix.pdiparams`` (PIR)."""
    step = StepProgram(model)
    step.eval()
    specs = input_specs(model.config, dtype)
    static = paddle.jit.to_static(step, input_spec=specs, full_graph=True)
    paddle.jit.save(static, prefix, input_spec=specs)
