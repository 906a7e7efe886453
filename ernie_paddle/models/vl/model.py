"""ERNIE 4.5 VL in Paddle: vision tower + resampler + a text decoder with 3-D RoPE and multimodal MoE.

Parameter names equal the Paddle checkpoint keys: ``ernie.*`` (text, resampler) and ``vision_model.*``.
Attention, dense MLP and RMSNorm are the text model's layers; only the MoE and RoPE differ.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.config.vl import hw_sections, moe_layers, vision_spec
from ernie_paddle.models.ernie import DecoderLayer
from ernie_paddle.models.kv_cache import KVCache
from ernie_paddle.models.layers import RMSNorm
from ernie_paddle.models.vl.moe import VLSparseMoE
from ernie_paddle.models.vl.resampler import Resampler
from ernie_paddle.models.vl.rope3d import rope_3d_cos_sin
from ernie_paddle.models.vl.vision import VisionTransformer


class VLDecoderLayer(DecoderLayer):
    """The text block with the multimodal MoE, whose forward needs the vision-token mask."""

    def __init__(self, config: ErnieConfig, moe: bool):
        super().__init__(config, moe, VLSparseMoE)

    def forward(self, x, cos, sin, cache=None, vision_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, None, cache)
        h = self.post_attention_layernorm(x)
        return x + (self.mlp(h, vision_mask) if isinstance(self.mlp, VLSparseMoE) else self.mlp(h))


class ErnieVLModel(nn.Layer):
    """The ``ernie.`` part: embeddings, decoder layers, final norm and the resampler."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.hw = hw_sections(config)
        sparse = set(moe_layers(config))
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)))
        self.layers = nn.LayerList([VLDecoderLayer(config, i in sparse) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.resampler_model = Resampler(vision_spec(config), config.hidden_size, config.rms_norm_eps)

    def forward(self, embeds: paddle.Tensor, positions: np.ndarray, vision_mask: np.ndarray | None = None,
                cache: KVCache | None = None) -> paddle.Tensor:
        """Final-normed hidden states [B, T, H] for input embeddings [B, T, H] at positions [3, B, T]."""
        cos, sin = rope_3d_cos_sin(positions, self.config.head_dim, self.config.rope_theta, self.hw)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.layers[i] if cache is not None else None, vision_mask)
        if cache is not None:
            cache.advance(embeds.shape[1], None)
        return self.norm(x)


class ErnieVLForConditionalGeneration(nn.Layer):
    """``ernie`` + ``vision_model`` + LM head (tied to the embedding, or ``lm_head.weight`` [H, V])."""

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = config
        self.ernie = ErnieVLModel(config)
        self.vision_model = VisionTransformer(vision_spec(config))
        if not config.tie_word_embeddings:
            self.lm_head = nn.Layer()
            self.lm_head.weight = self.lm_head.create_parameter(
                [config.hidden_size, config.vocab_size], default_initializer=nn.initializer.Constant(0.0))

    def new_cache(self, capacity: int = 0) -> KVCache:
        return KVCache(self.config.num_hidden_layers, capacity)

    def vision_embeddings(self, pixel_values: np.ndarray, grid_thw: np.ndarray) -> paddle.Tensor:
        """One text-sized embedding per merged image/video token, [M, H], in placeholder order."""
        pixels = paddle.to_tensor(np.asarray(pixel_values, dtype=np.float32))
        features = self.vision_model(pixels, grid_thw)
        return self.ernie.resampler_model(features, grid_thw)

    def embed(self, input_ids: np.ndarray, vision: list[tuple[np.ndarray, paddle.Tensor]] = ()) -> paddle.Tensor:
        """Token embeddings [B, T, H] with each (placeholder mask, embeddings) pair written in, row-major."""
        ids = np.asarray(input_ids, dtype=np.int64)
        x = self.ernie.embed_tokens(paddle.to_tensor(ids))
        b, t, h = x.shape
        flat = x.reshape([b * t, h])
        for mask, emb in vision:
            idx = np.nonzero(np.asarray(mask).reshape(-1))[0]
            if idx.size != emb.shape[0]:
                raise ValueError(f"{idx.size} placeholder tokens but {emb.shape[0]} vision embeddings")
            flat = paddle.scatter(flat, paddle.to_tensor(idx, dtype="int64"), emb.astype(flat.dtype))
        return flat.reshape([b, t, h])

    def head(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """Float32 logits for hidden states [..., H]."""
        if self.config.tie_word_embeddings:
            logits = paddle.matmul(hidden, self.ernie.embed_tokens.weight, transpose_y=True)
        else:
            logits = paddle.matmul(hidden, self.lm_head.weight)
        return logits.astype("float32")

    def forward(self, embeds: paddle.Tensor, positions: np.ndarray, vision_mask: np.ndarray | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> paddle.Tensor:
        """Logits [B, T, V] (or [B, 1, V]) for input embeddings at 3-D positions."""
        hidden = self.ernie(embeds, positions, vision_mask, cache)
        return self.head(hidden[:, -1:] if last_only else hidden)
