"""The tensors a config implies, in Paddle naming, with their Paddle-layout shapes.

Used to refuse a checkpoint whose tensors contradict its config (missing tensors, wrong shapes,
tensors the config has no place for) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ernie_paddle.config.text import ErnieConfig


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    required: bool = True


def _linear(out: dict, key: str, shape: tuple[int, int], use_bias: bool) -> None:
    out[f"{key}.weight"] = Expected(shape)
    if use_bias:
        out[f"{key}.bias"] = Expected((shape[1],))


def _mlp(out: dict, mod: str, hidden: int, inter: int, use_bias: bool) -> None:
    _linear(out, f"{mod}.up_gate_proj", (hidden, 2 * inter), use_bias)
    _linear(out, f"{mod}.down_proj", (inter, hidden), use_bias)


def _block(out: dict, cfg: ErnieConfig, prefix: str, moe: bool) -> None:
    h, b = cfg.hidden_size, cfg.use_bias
    out[f"{prefix}.input_layernorm.weight"] = Expected((h,))
    out[f"{prefix}.post_attention_layernorm.weight"] = Expected((h,))
    _linear(out, f"{prefix}.self_attn.qkv_proj", (h, cfg.q_size + 2 * cfg.kv_size), b)
    _linear(out, f"{prefix}.self_attn.o_proj", (cfg.q_size, h), b)
    if not moe:
        _mlp(out, f"{prefix}.mlp", h, cfg.intermediate_size, b)
        return
    e = cfg.moe_num_experts
    out[f"{prefix}.mlp.gate.weight"] = Expected((h, e))
    out[f"{prefix}.mlp.moe_statics.e_score_correction_bias"] = Expected((1, e), required=False)
    for j in range(e):
        _mlp(out, f"{prefix}.mlp.experts.{j}", h, cfg.moe_intermediate_size, b)
    if cfg.moe_num_shared_experts > 0:
        _mlp(out, f"{prefix}.mlp.shared_experts", h, cfg.shared_intermediate_size, b)


def expected_paddle_tensors(cfg: ErnieConfig, mtp_layers: int | None = None) -> dict[str, Expected]:
    """Every Paddle key the config implies. ``mtp_layers`` overrides the config's MTP count."""
    if cfg.family == "vl":
        from converters.layout_vl import expected_vl_tensors

        return expected_vl_tensors(cfg)
    h, v = cfg.hidden_size, cfg.vocab_size
    out: dict[str, Expected] = {"ernie.embed_tokens.weight": Expected((v, h)),
                                "ernie.norm.weight": Expected((h,))}
    for i in range(cfg.num_hidden_layers):
        _block(out, cfg, f"ernie.layers.{i}", cfg.is_moe_layer(i))
    n_mtp = cfg.num_nextn_predict_layers if mtp_layers is None else mtp_layers
    for j in range(n_mtp):
        _block(out, cfg, f"ernie.mtp_block.{j}", moe=False)
        out[f"ernie.mtp_emb_norm.{j}.weight"] = Expected((h,))
        out[f"ernie.mtp_hidden_norm.{j}.weight"] = Expected((h,))
        _linear(out, f"ernie.mtp_linear_proj.{j}", (2 * h, h), cfg.use_bias)
    if cfg.tie_word_embeddings:
        out["lm_head.weight"] = Expected((v, h), required=False)
    else:
        out["lm_head.weight"] = Expected((h, v))
    return out


def mtp_layers_in(paddle_keys) -> int:
    """How many MTP layers the keys hold (some releases carry MTP weights without the config key)."""
    idx = [int(k.split(".")[2]) for k in paddle_keys if k.startswith("ernie.mtp_emb_norm.")]
    return max(idx) + 1 if idx else 0
