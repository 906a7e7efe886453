"""The static step program: one forward over new tokens that writes their keys/values into a KV buffer.

It runs on the dygraph model's own parameters and shares its primitive functions (``rope_cos_sin``,
``causal_mask``, MoE ``route``, the RMSNorm epsilon, the SwiGLU [gate | up] split). Attention, norm and
MLP call the model's ``RMSNorm`` layers; attention and MLP are written here with Paddle's ``swiglu``,
shape-free reshapes and one rotary rotation (a tiny matmul) for q and k together: tracing the dygraph
layers as they are gives the same logits with about twice as many small ops per layer, which cost decode
time on CPU (Paddle's CPU ``flip`` and ``fused_rms_norm`` kernels were measured slower still). Parity with
dygraph is tested to 1e-5 at every step (tests/test_predictor.py).

Two operator sets give the program its linears, norms, rotary split, attention and experts: ``PaddleOps``
(Paddle's own operators over the model's [in, out] weights; GPU, and CPU without a compiler) and
``NativeOps`` (the compiled CPU operators of ``predictor_ops.cc`` over transposed [out, in] copies of the
weights: a streaming GEMV for decode, MKL for prefill, all routed experts of a layer in one operator, one
operator each for RMSNorm, the rotary split and attention). On the 0.3B shape the program went from about
1,000 operations (plus ~690 constants) to about 175, and the linears, now 95% of a decode step, read
weights at about the machine's memory bandwidth. The exported folder's manifest records which set the program uses.

One program serves prefill and decode: the KV buffer ``kv`` [L, 2, B, nkv, C, hd] is an input that the
runner shares zero-copy with the predictor; the program writes the new tokens' keys/values into columns
``start .. start+T`` in place and attends over columns ``0 .. start+T`` only, so a decode step costs
attention over the cached length, never a copy of the buffer. MoE layers run only the chosen experts.
"""


from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.static import InputSpec

from ernie_paddle.models.layers import NEG_INF, causal_mask, rope_cos_sin
from ernie_paddle.models.moe import route

PROGRAM_VERSION = 10  # bump when the traced program changes: the export cache keys on it
INPUT_NAMES = ("input_ids", "positions", "key_mask", "start", "logit_index", "kv")


class PaddleOps:
    """Paddle's own operators over the model's parameters ([in, out] weights)."""

    name = "paddle"

    def __init__(self, model):
        self.model = model

    def linear(self, x, layer):
        return paddle.matmul(x, layer.weight)

    def linear_add(self, x, layer, residual, swiglu=False):
        """residual + f(x) @ W, f SwiGLU of x's [gate | up] halves or the identity."""
        return residual + self.linear(F.swiglu(x) if swiglu else x, layer)

    def norm(self, layer, x):
        return layer(x)

    def rope_kv(self, attn, qkv, cos2, sin2, rotation, start, end, kv, i):
        """q [B, T, nh, hd] of the fused projection, with rotary embedding, and ``kv`` with this step's keys
        (rotated) and values written into layer i's columns start .. end."""
        nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
        qk, v = paddle.split(qkv.reshape([0, 0, nh + 2 * nkv, hd]), [nh + nkv, nkv], axis=2)
        q, k = paddle.split(_rope(qk, cos2, sin2, rotation), [nh, nkv], axis=2)
        kv[i, 0, :, :, start[0]:end] = k.transpose([0, 2, 1, 3])
        kv[i, 1, :, :, start[0]:end] = v.transpose([0, 2, 1, 3])
        return q, kv

    def mask(self, key_mask, t):
        """The additive mask [B, 1, groups * T, S] for key_mask [B, S], rows ordered (group, token) like the
        grouped queries of ``attention``."""
        s = paddle.shape(key_mask)[1]
        allowed = (causal_mask(t, s) == 0).unsqueeze(0) & (key_mask > 0).unsqueeze(1)
        mask = paddle.where(allowed, paddle.zeros([1], "float32"),
                            paddle.full([1], NEG_INF, "float32")).unsqueeze(1)
        cfg = self.model.config
        return paddle.tile(mask, [1, 1, cfg.num_attention_heads // cfg.num_key_value_heads, 1])

    def attention(self, attn, q, kv, i, start, end, mask):
        """Attention of q [B, T, nh, hd] over kv columns 0 .. end."""
        nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
        q = q.transpose([0, 2, 1, 3]).reshape([0, nkv, -1, hd])  # query heads j*g.. share kv head j
        scores = _as(paddle.matmul(q, kv[i, 0, :, :, :end], transpose_y=True), paddle.float32) * (1.0 / math.sqrt(hd))
        probs = _as(F.softmax(scores + mask, axis=-1), kv.dtype)
        out = paddle.matmul(probs, kv[i, 1, :, :, :end]).reshape([0, nh, -1, hd]).transpose([0, 2, 1, 3])
        return out.reshape([0, 0, nh * hd])

    def experts(self, i: int, moe, flat, ids, weights):
        """The routed experts' weighted sum for tokens ``flat`` [N, H]: each expert is a conditional block
        that runs, on the rows routed to it, only when some row selected it (the dygraph version loops
        over numpy ids instead)."""
        n_exp = moe.gate.weight.shape[1]
        hits = nn.functional.one_hot(ids, n_exp).astype(flat.dtype)  # [N, k, E]
        row_w = (hits * weights.astype(flat.dtype).unsqueeze(-1)).sum(axis=1)  # [N, E] weight per row/expert
        row_hit = hits.sum(axis=1) > 0  # [N, E]
        chosen = paddle.split(row_hit.any(axis=0), n_exp)  # one op instead of one slice per expert
        out = paddle.zeros_like(flat)
        for j, e in enumerate(getattr(moe, "owned", range(n_exp))):  # experts[j] is expert e
            if chosen[e]:
                rows = paddle.nonzero(row_hit[:, e]).flatten()
                part = self.linear(F.swiglu(self.linear(paddle.gather(flat, rows), moe.experts[j].up_gate_proj)),
                                   moe.experts[j].down_proj) * paddle.gather(row_w[:, e:e + 1], rows)
                out = paddle.index_add(out, rows, 0, part)
        return out

    def head(self, hidden):
        return self.model.head(hidden)


class NativeOps(nn.Layer):
    """The compiled CPU operators (``predictor_ops.cc``) over transposed [out, in] float32 copies of every linear
    weight (routed experts stacked per layer: [E, 2I, H] and [E, H, I]); a tied head is the embedding
    itself, already [V, H]. The copies replace the model's weights (their memory is released)."""

    name = "native"

    def __init__(self, model, module):
        super().__init__()
        self.module, self.model = module, model
        self.weights = nn.ParameterList()
        self._index: dict[int, int] = {}  # id of an original Linear -> index of its copy in self.weights
        self._experts: dict[int, tuple[int, int]] = {}  # layer -> (up_gate, down) indices
        for i, layer in enumerate(model.ernie.layers):
            mlp = layer.mlp
            if model.config.is_moe_layer(i):
                if list(mlp.owned) != list(range(mlp.gate.weight.shape[1])):
                    raise ValueError("the native program runs MoE layers that hold all of their experts")
                self._experts[i] = (self._add([m.up_gate_proj for m in mlp.experts]),
                                    self._add([m.down_proj for m in mlp.experts]))
                mlp = mlp.shared_experts
            linears = [layer.self_attn.qkv_proj, layer.self_attn.o_proj]
            linears += [mlp.up_gate_proj, mlp.down_proj] if mlp is not None else []
            for lin in linears:
                self._index[id(lin)] = self._add([lin])
        if not model.config.tie_word_embeddings:
            self._index[id(model.lm_head)] = self._add([model.lm_head])
        model._head_t = None  # a [H, V] copy for dygraph's CPU head is not used here

    def _add(self, layers) -> int:
        """Append the transposed (and, for several layers, stacked) weights; release the originals."""
        mats = [paddle.transpose(lin.weight, [1, 0]) for lin in layers]
        data = (mats[0] if len(mats) == 1 else paddle.stack(mats)).contiguous()
        param = self.create_parameter(data.shape, dtype="float32", default_initializer=nn.initializer.Constant(0.0))
        param.set_value(data)
        del mats, data
        for lin in layers:  # the copy replaces the weight: the model no longer holds (or saves) it
            del lin._parameters["weight"]
        self.weights.append(param)
        return len(self.weights) - 1

    def linear(self, x, layer):
        return self.module.ernie_linear(x, self.weights[self._index[id(layer)]])

    def linear_add(self, x, layer, residual, swiglu=False):
        return self.module.ernie_linear_add(x, self.weights[self._index[id(layer)]], residual, swiglu)

    def norm(self, layer, x):
        return self.module.ernie_rms_norm(x, layer.weight, layer.eps)

    def rope_kv(self, attn, qkv, cos2, sin2, rotation, start, end, kv, i):
        return self.module.ernie_rope_kv(qkv, cos2, sin2, start, kv, attn.num_heads, i)  # (q, kv in place)

    def mask(self, key_mask, t):
        """The key mask itself: the attention operator applies it and the causal limit."""
        return key_mask

    def attention(self, attn, q, kv, i, start, end, mask):
        return self.module.ernie_attention(q, kv, mask, start, i)

    def experts(self, i: int, moe, flat, ids, weights):
        up_gate, down = self._experts[i]
        return self.module.ernie_moe_experts(flat, ids, weights.astype("float32"), self.weights[up_gate],
                                             self.weights[down])

    def head(self, hidden):
        if self.model.config.tie_word_embeddings:
            return self.module.ernie_linear(hidden, self.model.ernie.embed_tokens.weight)
        return self.linear(hidden, self.model.lm_head)


def sparse_moe(ops, i: int, moe, x: paddle.Tensor) -> paddle.Tensor:
    """``SparseMoE.forward`` in the program: route, run the chosen experts (``ops.experts``), add the
    shared experts."""
    shape = x.shape
    flat = x.reshape([-1, shape[-1]])
    bias = moe.moe_statics.e_score_correction_bias if moe.use_bias else None
    ids, weights = route(flat, moe.gate.weight, bias, moe.top_k, moe.norm_min, moe.act)
    out = ops.experts(i, moe, flat, ids, weights)
    if moe.shared_experts is not None:
        out = _mlp(ops, moe.shared_experts, flat, out)
    return out.reshape(shape)


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


def _mlp(ops, mlp, x, residual):
    """residual + down(SwiGLU(x @ up_gate))."""
    return ops.linear_add(ops.linear(x, mlp.up_gate_proj), mlp.down_proj, residual, swiglu=True)


def _attention(ops, attn, x, cos2, sin2, rotation, kv, i, start, end, mask, residual):
    """residual + the attention block's output for normed x, and ``kv`` holding this step's keys/values."""
    q, kv = ops.rope_kv(attn, ops.linear(x, attn.qkv_proj), cos2, sin2, rotation, start, end, kv, i)
    return ops.linear_add(ops.attention(attn, q, kv, i, start, end, mask), attn.o_proj, residual), kv


class StepProgram(nn.Layer):
    """Wraps an ``ErnieForCausalLM`` (its parameters are this layer's) as one static step function."""

    def __init__(self, model, native_module=None):
        """``native_module``: the compiled CPU operators (``predictor_ops.get()``), else Paddle's own."""
        super().__init__()
        self.model = model
        self.config = model.config
        self.ops = NativeOps(model, native_module) if native_module is not None else PaddleOps(model)

    def forward(self, input_ids, positions, key_mask, start, logit_index, kv):
        """Logits [B, K, V] (float32) at ``logit_index`` [K] of the T new tokens.

        input_ids, positions [B, T] int64 (positions count real tokens only); key_mask [B, start+T] int64,
        1 for real tokens; start [1] int64, the columns already in ``kv``; kv [L, 2, B, nkv, C, hd].
        """
        cfg, ernie, ops = self.config, self.model.ernie, self.ops
        t = paddle.shape(input_ids)[1]
        end = start[0] + t
        mask = ops.mask(key_mask, t)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        cos2 = paddle.repeat_interleave(cos, 2, axis=-1)
        sin2 = paddle.repeat_interleave(sin, 2, axis=-1)
        rotation = _pair_rotation(cfg.head_dim)
        # A row gather: Paddle's CPU ``embedding`` kernel took milliseconds per call for one token.
        x = paddle.gather(ernie.embed_tokens.weight, input_ids.flatten()).reshape([-1, t, cfg.hidden_size])
        for i, layer in enumerate(ernie.layers):
            x, kv = _attention(ops, layer.self_attn, ops.norm(layer.input_layernorm, x), cos2, sin2, rotation,
                               kv, i, start, end, mask, x)
            h = ops.norm(layer.post_attention_layernorm, x)
            x = (x + sparse_moe(ops, i, layer.mlp, h)) if cfg.is_moe_layer(i) else _mlp(ops, layer.mlp, h, x)
        return ops.head(ops.norm(ernie.norm, paddle.gather(x, logit_index, axis=1)))


def input_specs(config, dtype: str = "float32") -> list[InputSpec]:
    """Dynamic batch, token and cache sizes; layers, heads and head_dim fixed by the config."""
    kv_shape = [config.num_hidden_layers, 2, None, config.num_key_value_heads, None, config.head_dim]
    return [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "positions"),
            InputSpec([None, None], "int64", "key_mask"), InputSpec([1], "int64", "start"),
            InputSpec([None], "int64", "logit_index"), InputSpec(kv_shape, dtype, "kv")]


def save_program(model, prefix: str, dtype: str = "float32", native_module=None) -> str:
    """Trace ``StepProgram(model, native_module)`` and write ``prefix.json`` + ``prefix.pdiparams`` (PIR);
    returns the operator set's name. With ``native_module`` the model's linear weights are consumed."""
    step = StepProgram(model, native_module)
    step.eval()
    specs = input_specs(model.config, dtype)
    static = paddle.jit.to_static(step, input_spec=specs, full_graph=True)
    paddle.jit.save(static, prefix, input_spec=specs)
    return step.ops.name
