"""The static step program: the model's own forward traced over new tokens, writing their keys/values
into a KV buffer.

There is one forward: ``StepProgram`` feeds its inputs to ``ErnieModel.decode`` (the decoder blocks of
``ernie_paddle.models``) and traces it inside ``models.ops.using(op_set)``. The op sets here give the blocks
their linears, norms, rotary split, attention and experts over a KV buffer written in place:
``PaddleOps`` (Paddle's own operators: GPU, and CPU without a compiler) and ``NativeOps`` (the compiled CPU
operators of ``predictor_ops.cc``: a streaming GEMV for decode, MKL for prefill, an MoE layer's router and
all its routed experts in one operator, one operator each for RMSNorm, the rotary split and attention).
Paddle's op set writes attention with ``swiglu``, shape-free reshapes and one rotary rotation (a tiny matmul,
exact) for q and k together: the dygraph forms cost about twice as many small ops per layer. On the 0.3B
shape the native program has about 175 operations; on the MoE bench shape (8 layers, 7 of them MoE) about
200, an MoE block being 4 (``ernie_moe``, the shared expert's two linears, the residual add; its router was
about 30 small Paddle ops before ``ernie_moe``). Parity with dygraph is tested to 1e-5 at every step
(tests/test_predictor.py). Neither op set changes the model. The native one passes each linear in its stored
format (``stored_weights``: a quantized linear's own compact buffers, transposed float32 or bfloat16 copies
of float linears); Paddle's holds float32 copies of quantized linears (dequantized at export: it has no
quantized operators).

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
from ernie_paddle.models.ops import EagerOps, using
from ernie_paddle.quant.kernel_form import KERNEL_BLOCK, WEIGHT
from ernie_paddle.quant.linear import QuantLinear, float_weight
from ernie_paddle.runtime.predictor.stored_weights import TABLE, Stored, StoredWeights

PROGRAM_VERSION = 13  # bump when the traced program changes: the export cache keys on it
INPUT_NAMES = ("input_ids", "positions", "key_mask", "start", "logit_index", "kv")


class KVSlot:
    """Layer ``index``'s place in the step's KV buffer: the blocks' cache while tracing."""

    def __init__(self, step: KVBuffer, index: int):
        self.step, self.index = step, index


class KVBuffer:
    """The KV buffer [L, 2, B, nkv, C, hd] (replaced by each in-place write) and this step's columns."""

    def __init__(self, kv, start, end):
        self.kv, self.start, self.end = kv, start, end

    def slots(self, layers: int) -> list[KVSlot]:
        return [KVSlot(self, i) for i in range(layers)]


def _linears(model) -> list:
    """Every linear the program multiplies by (attention, dense MLPs, shared and routed experts)."""
    out = []
    for i, layer in enumerate(model.ernie.layers):
        out += [layer.self_attn.qkv_proj, layer.self_attn.o_proj]
        moe = model.config.is_moe_layer(i)
        mlps = [*layer.mlp.experts, layer.mlp.shared_experts] if moe else [layer.mlp]
        out += [lin for m in mlps if m is not None for lin in (m.up_gate_proj, m.down_proj)]
    return out


class PaddleOps(nn.Layer, EagerOps):
    """Paddle's own operators over the model's [in, out] weights (float32 copies of quantized ones)."""

    name = "paddle"

    def __init__(self, model):
        super().__init__()
        self._model = [model]  # not a sublayer: the model's parameters stay the model's
        self.dequantized = nn.ParameterList()
        self._index: dict[int, int] = {}  # id of a quantized linear -> index of its float32 weight
        for lin in _linears(model):
            if isinstance(lin, QuantLinear):
                self._index[id(lin)] = _append(self, self.dequantized, float_weight(lin))
        self.rotation = None

    def begin(self, config) -> None:
        """Constants of one trace: the rotary pair rotation."""
        self.rotation = _pair_rotation(config.head_dim)

    def weight(self, layer):
        i = self._index.get(id(layer))
        return layer.weight if i is None else self.dequantized[i]

    def linear(self, x, layer):
        return paddle.matmul(x, self.weight(layer))

    def linear_add(self, x, layer, residual=None, swiglu=False):
        """residual + f(x) @ W, f SwiGLU of x's [gate | up] halves or the identity."""
        y = self.linear(F.swiglu(x) if swiglu else x, layer)
        return y if residual is None else residual + y

    def norm(self, layer, x):
        return layer(x)

    def rope_kv(self, attn, qkv, cos2, sin2, slot: KVSlot):
        """q [B, T, nh, hd] of the fused projection, with rotary embedding, and the buffer with this step's
        keys (rotated) and values written into the slot's columns start .. end."""
        nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
        qk, v = paddle.split(qkv.reshape([0, 0, nh + 2 * nkv, hd]), [nh + nkv, nkv], axis=2)
        q, k = paddle.split(_rope(qk, cos2, sin2, self.rotation), [nh, nkv], axis=2)
        step, i = slot.step, slot.index
        step.kv[i, 0, :, :, step.start[0]:step.end] = k.transpose([0, 2, 1, 3])
        step.kv[i, 1, :, :, step.start[0]:step.end] = v.transpose([0, 2, 1, 3])
        return q, slot

    def mask(self, key_mask, t):
        """The additive mask [B, 1, groups * T, S] for key_mask [B, S], rows ordered (group, token) like the
        grouped queries of ``attention``."""
        s = paddle.shape(key_mask)[1]
        allowed = (causal_mask(t, s) == 0).unsqueeze(0) & (key_mask > 0).unsqueeze(1)
        mask = paddle.where(allowed, paddle.zeros([1], "float32"),
                            paddle.full([1], NEG_INF, "float32")).unsqueeze(1)
        cfg = self._model[0].config
        return paddle.tile(mask, [1, 1, cfg.num_attention_heads // cfg.num_key_value_heads, 1])

    def attention(self, attn, q, slot: KVSlot, mask):
        """Attention of q [B, T, nh, hd] over the slot's columns 0 .. end."""
        nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
        kv, i, end = slot.step.kv, slot.index, slot.step.end
        q = q.transpose([0, 2, 1, 3]).reshape([0, nkv, -1, hd])  # query heads j*g.. share kv head j
        scores = _as(paddle.matmul(q, kv[i, 0, :, :, :end], transpose_y=True), paddle.float32) * (1.0 / math.sqrt(hd))
        probs = _as(F.softmax(scores + mask, axis=-1), kv.dtype)
        out = paddle.matmul(probs, kv[i, 1, :, :, :end]).reshape([0, nh, -1, hd]).transpose([0, 2, 1, 3])
        return out.reshape([0, 0, nh * hd])

    def embed(self, embedding, ids):
        """Rows ``ids`` of the embedding table."""
        return paddle.gather(embedding.weight, ids)

    def head(self, hidden):
        return self._model[0].head(hidden)


class NativeOps(nn.Layer, EagerOps):
    """The compiled CPU operators (``predictor_ops.cc``) over ``StoredWeights``: each linear in its stored
    format (a quantized linear's kernel form, float linears as transposed float32 or bfloat16, routed experts
    stacked per layer), every stored tensor a program input (``bind`` gives the traced inputs), ``formats``
    the format of each stored weight by name. The model's own linear weights are never read."""

    name = "native"

    def __init__(self, model, module, weight_format: str = "float32", activations: str = "float32",
                 block: int = KERNEL_BLOCK):
        super().__init__()
        self.module = module
        self.stored = StoredWeights(model, weight_format, activations, block)
        self.formats = self.stored.formats
        self._inputs: tuple = ()

    def bind(self, inputs) -> None:
        """The traced stored-weight inputs of this trace (in ``stored.specs`` order)."""
        self._inputs = tuple(inputs)

    def _tensors(self, s: Stored) -> tuple:
        return tuple(self.stored.dummy if i is None else self._inputs[i] for i in s.inputs)

    def embed(self, embedding, ids):
        """Rows ``ids`` of the embedding table, float32."""
        return _as(paddle.gather(self._inputs[self.stored.targets[TABLE].inputs[WEIGHT]], ids), paddle.float32)

    def begin(self, config) -> None:
        """No per-trace constants: the operators rotate pairs themselves."""

    def linear(self, x, layer):
        s = self.stored[layer]
        return self.module.ernie_linear(x, *self._tensors(s), s.fmt, s.int8_act)

    def linear_add(self, x, layer, residual=None, swiglu=False):
        if residual is None:
            return self.linear(F.swiglu(x) if swiglu else x, layer)
        s = self.stored[layer]
        return self.module.ernie_linear_add(x, *self._tensors(s), residual, s.fmt, s.int8_act, swiglu)

    def norm(self, layer, x):
        return self.module.ernie_rms_norm(x, layer.weight, layer.eps)

    def rope_kv(self, attn, qkv, cos2, sin2, slot: KVSlot):
        step = slot.step
        q, step.kv = self.module.ernie_rope_kv(qkv, cos2, sin2, step.start, step.kv, attn.num_heads, slot.index)
        return q, slot

    def mask(self, key_mask, t):
        """The key mask itself: the attention operator applies it and the causal limit."""
        return key_mask

    def attention(self, attn, q, slot: KVSlot, mask):
        return self.module.ernie_attention(q, slot.step.kv, mask, slot.step.start, slot.index)

    def routed_experts(self, moe, x):
        """Router and routed experts of x [..., H] in one operator (its ids and weights outputs unread)."""
        up_gate, down = self.stored[moe]
        bias = moe.moe_statics.e_score_correction_bias if moe.use_bias else self.stored.dummy
        out, _, _ = self.module.ernie_moe(x, moe.gate.weight, bias, *self._tensors(up_gate), *self._tensors(down),
                                          moe.top_k, moe.norm_min, moe.act, moe.use_bias, up_gate.fmt,
                                          up_gate.int8_act)
        return out

    def head(self, hidden):
        s = self.stored.head
        return self.module.ernie_linear(hidden, *self._tensors(s), s.fmt, s.int8_act)


def _append(owner: nn.Layer, params: nn.ParameterList, data) -> int:
    """Append a parameter holding ``data`` to ``owner``'s ``params``; returns its index."""
    param = owner.create_parameter(data.shape, dtype=data.dtype, default_initializer=nn.initializer.Constant(0.0))
    param.set_value(data)
    params.append(param)
    return len(params) - 1


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


class StepProgram(nn.Layer):
    """An ``ErnieForCausalLM``'s own forward as one static step function (trace it inside ``using(ops)``)."""

    def __init__(self, model, native_module=None, weight_format: str = "float32", activations: str = "float32",
                 block: int = KERNEL_BLOCK):
        """``native_module``: the compiled CPU operators (``predictor_ops.get()``; the model may be built
        without weights: the stored weights are inputs), else Paddle's own (which keep the model's float32
        weights); ``weight_format``, ``activations`` and ``block``: see ``StoredWeights``."""
        super().__init__()
        self.model = model
        self.config = model.config
        self.ops = (NativeOps(model, native_module, weight_format, activations, block) if native_module is not None
                    else PaddleOps(model))

    @property
    def weight_specs(self) -> list:
        """(name, dtype, shape, routed experts?) of the stored-weight inputs after the six step inputs (none for
        Paddle's ops)."""
        return self.ops.stored.specs if isinstance(self.ops, NativeOps) else []

    def forward(self, input_ids, positions, key_mask, start, logit_index, kv, weights=None):
        """Logits [B, K, V] (float32) at ``logit_index`` [K] of the T new tokens.

        input_ids, positions [B, T] int64 (positions count real tokens only); key_mask [B, start+T] int64,
        1 for real tokens; start [1] int64, the columns already in ``kv``; kv [L, 2, B, nkv, C, hd];
        ``weights``: the list of stored weights (``weight_specs``; a list argument: dy2static takes no *args).
        """
        cfg, ernie, ops = self.config, self.model.ernie, self.ops
        if isinstance(ops, NativeOps):
            ops.bind(weights or ())
        t = paddle.shape(input_ids)[1]
        buffer = KVBuffer(kv, start, start[0] + t)
        ops.begin(cfg)
        mask = ops.mask(key_mask, t)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        cos2 = paddle.repeat_interleave(cos, 2, axis=-1)
        sin2 = paddle.repeat_interleave(sin, 2, axis=-1)
        # A row gather: Paddle's CPU ``embedding`` kernel took milliseconds per call for one token.
        x = ops.embed(ernie.embed_tokens, input_ids.flatten()).reshape([-1, t, cfg.hidden_size])
        x = ernie.decode(x, cos2, sin2, mask, buffer.slots(cfg.num_hidden_layers))
        return ops.head(ops.norm(ernie.norm, paddle.gather(x, logit_index, axis=1)))


def weight_input_name(index: int) -> str:
    """The program input of stored weight ``index``."""
    return f"w{index}"


def input_specs(config, dtype: str = "float32", weights=()) -> list[InputSpec]:
    """Dynamic batch, token and cache sizes; layers, heads and head_dim fixed by the config; then one input
    per stored weight (``weights``: (name, dtype, shape, ...)), passed as one list."""
    kv_shape = [config.num_hidden_layers, 2, None, config.num_key_value_heads, None, config.head_dim]
    return [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "positions"),
            InputSpec([None, None], "int64", "key_mask"), InputSpec([1], "int64", "start"),
            InputSpec([None], "int64", "logit_index"), InputSpec(kv_shape, dtype, "kv"),
            *([[InputSpec(list(w[2]), w[1], weight_input_name(i)) for i, w in enumerate(weights)]]
              if weights else [])]


def save_program(step: StepProgram, prefix: str, dtype: str = "float32") -> None:
    """Trace ``step`` and write ``prefix.json`` + ``prefix.pdiparams`` (PIR): the parameters the program reads
    (all of the model's for Paddle's op set; norms, router and the dummy for the native one, whose stored
    weights are inputs). Every parameter the program reads must hold its values."""
    step.eval()
    specs = input_specs(step.config, dtype, step.weight_specs)
    static = paddle.jit.to_static(step, input_spec=specs, full_graph=True)
    with using(step.ops):
        paddle.jit.save(static, prefix, input_spec=specs)
