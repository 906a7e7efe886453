"""The ERNIE 4.5 text decoder: parameters named exactly like the Paddle checkpoint keys."""

from __future__ import annotations

import paddle
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.models.blocks import MLP, Attention
from ernie_paddle.models.kv_cache import KVCache
from ernie_paddle.models.layers import NEG_INF, Linear, RMSNorm, causal_mask, rope_cos_sin
from ernie_paddle.models.moe import SparseMoE
from ernie_paddle.models.ops import active_ops


class DecoderLayer(nn.Layer):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); the MLP is dense or sparse MoE."""

    def __init__(self, config: ErnieConfig, moe: bool, sparse_mlp: type[nn.Layer] = SparseMoE):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = sparse_mlp(config) if moe else MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None):
        """x [B, T, H] after this block; cos/sin, mask and cache in the active op set's form."""
        op = active_ops()
        x = self.self_attn(op.norm(self.input_layernorm, x), cos, sin, mask, cache, residual=x)
        return self.mlp(op.norm(self.post_attention_layernorm, x), residual=x)


class ErnieModel(nn.Layer):
    """Embeddings, decoder layers, final norm and (when configured) the MTP module.

    The MTP module (``mtp_block``, ``mtp_emb_norm``, ``mtp_hidden_norm``, ``mtp_linear_proj``) is built so
    that its weights load, but ordinary next-token logits never use it.
    """

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))
        self.layers = nn.LayerList([DecoderLayer(config, config.is_moe_layer(i))
                                    for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        n_mtp = config.num_nextn_predict_layers
        if n_mtp:
            h = config.hidden_size
            self.mtp_block = nn.LayerList([DecoderLayer(config, moe=False) for _ in range(n_mtp)])
            self.mtp_emb_norm = nn.LayerList([RMSNorm(h, config.rms_norm_eps) for _ in range(n_mtp)])
            self.mtp_hidden_norm = nn.LayerList([RMSNorm(h, config.rms_norm_eps) for _ in range(n_mtp)])
            self.mtp_linear_proj = nn.LayerList([Linear(2 * h, h) for _ in range(n_mtp)])

    def forward(self, input_ids: paddle.Tensor, cache: KVCache | None = None,
                attention_mask: paddle.Tensor | None = None) -> paddle.Tensor:
        """Final-normed hidden states [B, T, H] for ``input_ids`` [B, T] after what ``cache`` holds.

        ``attention_mask`` [B, T] marks real (1) and padding (0) tokens of this call; with a cache, the
        mask of earlier calls is remembered there.
        """
        b, t = input_ids.shape
        state = cache if cache is not None else KVCache(0)
        positions, key_mask = state.positions_and_mask(b, t, attention_mask)
        mask = None
        if key_mask is not None:
            s = key_mask.shape[1]
            allowed = (causal_mask(t, s) == 0).unsqueeze(0) & key_mask.unsqueeze(1)
            mask = paddle.where(allowed, paddle.zeros([1], "float32"),
                                paddle.full([1], NEG_INF, "float32")).unsqueeze(1)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        x = self.decode(self.embed_tokens(input_ids), cos, sin, mask, cache.layers if cache is not None else None)
        if cache is not None:
            cache.advance(t, key_mask)
        return self.norm(x)

    def decode(self, x: paddle.Tensor, cos, sin, mask, caches=None) -> paddle.Tensor:
        """The decoder stack over embeddings x [B, T, H] (dygraph and the exported program alike);
        ``caches``: one per layer, in the active op set's form, or None."""
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, caches[i] if caches is not None else None)
        return x


class ErnieForCausalLM(nn.Layer):
    """``ernie`` + LM head; the head is the embedding (tied) or ``lm_head.weight`` [H, V] (untied)."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.ernie = ErnieModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Layer()
            self.lm_head.weight = self.lm_head.create_parameter(
                [config.hidden_size, config.vocab_size], default_initializer=nn.initializer.Constant(0.0))
        self._head_t: paddle.Tensor | None = None

    def new_cache(self, capacity: int = 0) -> KVCache:
        return KVCache(self.config.num_hidden_layers, capacity)

    def cache_head_transpose(self) -> None:
        """Keep a [H, V] copy of a tied head: a plain matmul is faster than a transposed one on CPU."""
        if self.config.tie_word_embeddings:
            self._head_t = self.ernie.embed_tokens.weight.t().contiguous()

    def head(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """Float32 logits for hidden states [..., H]."""
        if not self.config.tie_word_embeddings:
            logits = paddle.matmul(hidden, self.lm_head.weight)
        elif self._head_t is not None:
            logits = paddle.matmul(hidden, self._head_t)
        else:
            logits = paddle.matmul(hidden, self.ernie.embed_tokens.weight, transpose_y=True)
        return logits.astype("float32")

    def forward(self, input_ids: paddle.Tensor, cache: KVCache | None = None,
                attention_mask: paddle.Tensor | None = None, last_only: bool = False) -> paddle.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with ``last_only``) in float32."""
        hidden = self.ernie(input_ids, cache, attention_mask)
        return self.head(hidden[:, -1:] if last_only else hidden)
