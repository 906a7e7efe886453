"""ERNIE 4.5 VL config: the transformers-native nested dialect <-> the flat release form, and derived specs.

Flat form (original ``-PT`` / ``-Paddle``): text hyper-parameters at the top level, ``moe_num_experts`` etc.
as [text, vision] lists, ``vision_config`` (depth, embed_dim, num_heads, mlp_ratio, ...), ``im_patch_id``,
``spatial_conv_size``/``temporal_conv_size``, ``freq_allocation``. transformers-native: ``text_config`` and
``vision_config`` sub-dicts, ``mlp_layer_types``, ``rope_parameters.mrope_section``, ``image_token_id``.
``ErnieConfig`` holds the flat form; ``to_native`` renders the nested one for HF output.
"""

from __future__ import annotations

from dataclasses import dataclass

from ernie_paddle.errors import ErnieError

TOKEN_DEFAULTS = {"image_token_id": 100295, "image_start_token_id": 101304, "image_end_token_id": 101305,
                  "video_token_id": 103367, "video_start_token_id": 101306, "video_end_token_id": 101307}
_TEXT_EXTRAS = ("use_cache", "initializer_range", "output_router_logits", "router_aux_loss_coef")
_TEXT_SKIP = {"model_type", "mlp_layer_types", "rope_parameters", "moe_num_experts", "moe_intermediate_size",
              "dtype", "torch_dtype", "transformers_version", "architectures", "tie_word_embeddings"}
ARCH = "Ernie4_5_VLMoeForConditionalGeneration"


def is_native(raw) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("text_config"), dict)


def _placement(types: list[str], path) -> tuple[int, int, int]:
    """(start, end, interval) reproducing ``mlp_layer_types``; ErnieError if no such triple exists."""
    sparse = [i for i, t in enumerate(types) if t == "sparse"]
    if not sparse:
        return len(types), -1, 1
    start, end = sparse[0], sparse[-1]
    for interval in range(1, len(types) + 1):
        want = [i for i in range(len(types)) if (i + 1) % interval == 0 and start <= i <= end]
        if want == sparse:
            return start, end, interval
    raise ErnieError(f"mlp_layer_types {types} is not a start/end/interval MoE placement", path)


def flatten_native(raw: dict, path=None) -> dict:
    """A transformers-native VL config dict -> the flat form ``ErnieConfig.from_dict`` reads."""
    t, v = dict(raw["text_config"]), dict(raw.get("vision_config") or {})
    flat = {k: val for k, val in t.items() if k not in _TEXT_SKIP}
    n = int(t.get("num_hidden_layers", 28))
    e = int(t.get("moe_num_experts", 64))
    flat["moe_num_experts"] = [e, e]
    flat["moe_intermediate_size"] = list(t.get("moe_intermediate_size") or [1536, 512])
    start, end, interval = _placement(t.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1), path)
    flat.update(moe_layer_start_index=[start, start], moe_layer_end_index=[end, end], moe_layer_interval=interval)
    rope = t.get("rope_parameters") or {}
    mrope = list(rope.get("mrope_section") or [22, 22, 20])
    if len(mrope) != 3 or mrope[0] != mrope[1]:
        raise ErnieError(f"mrope_section {mrope} must be [hw, hw, t] with equal height/width parts", path)
    flat["rope_parameters"] = {"rope_type": "default", "rope_theta": rope.get("rope_theta", 500000.0)}
    flat.update(rope_3d=True, freq_allocation=mrope[2])
    hidden = int(v.get("hidden_size", 1280))
    vrope = v.get("rope_parameters") or {}
    flat["vision_config"] = {
        "depth": v.get("depth", 32), "embed_dim": hidden, "hidden_size": hidden, "num_heads": v.get("num_heads", 16),
        "intermediate_size": v.get("intermediate_size", 4 * hidden), "in_channels": v.get("in_channels", 3),
        "patch_size": v.get("patch_size", 14), "spatial_merge_size": v.get("spatial_merge_size", 2),
        "hidden_act": v.get("hidden_act", "quick_gelu"), "layer_norm_eps": v.get("rms_norm_eps", 1e-6),
        "rope_theta": vrope.get("rope_theta", 10000.0)}
    flat["spatial_conv_size"] = v.get("spatial_merge_size", 2)
    flat["temporal_conv_size"] = v.get("temporal_merge_size", 2)
    for key, default in TOKEN_DEFAULTS.items():
        flat["im_patch_id" if key == "image_token_id" else key] = raw.get(key, default)
    flat["architectures"] = raw.get("architectures") or [ARCH]
    flat["model_type"] = raw.get("model_type", "ernie4_5_vl_moe")
    flat["dtype"] = raw.get("dtype") or raw.get("torch_dtype") or t.get("dtype") or "bfloat16"
    flat["tie_word_embeddings"] = raw.get("tie_word_embeddings", t.get("tie_word_embeddings", True))
    return flat


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower's hyper-parameters, whichever dialect they came from."""

    depth: int
    hidden: int
    heads: int
    intermediate: int
    in_channels: int
    patch_size: int
    spatial_merge: int
    temporal_merge: int
    eps: float
    act: str
    rope_theta: float

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size ** 2

    @property
    def spatial_dim(self) -> int:
        return self.hidden * self.spatial_merge ** 2


def vision_spec(cfg) -> VisionSpec:
    vc, ex = cfg.extra.get("vision_config") or {}, cfg.extra
    hidden = int(vc.get("embed_dim") or vc.get("hidden_size") or 1280)
    inter = vc.get("intermediate_size") or hidden * float(vc.get("mlp_ratio", 4))
    return VisionSpec(int(vc.get("depth", 32)), hidden, int(vc.get("num_heads", 16)), int(inter),
                      int(vc.get("in_channels", 3)), int(vc.get("patch_size", 14)),
                      int(ex.get("spatial_conv_size", vc.get("spatial_merge_size", 2))),
                      int(ex.get("temporal_conv_size", 2)), float(vc.get("layer_norm_eps", 1e-6)),
                      str(vc.get("hidden_act", "quick_gelu")), float(vc.get("rope_theta", 10000.0)))


def pair(cfg, name: str) -> tuple[int, int]:
    """A [text, vision] MoE setting (``moe_num_experts``, ``moe_intermediate_size``, ...)."""
    value = cfg.extra.get(f"{name}_list", getattr(cfg, name))
    return (int(value[0]), int(value[-1])) if isinstance(value, list) else (int(value), int(value))


def moe_layers(cfg) -> list[int]:
    """VL MoE layers: (i+1) % interval == 0 and min(start) <= i <= max(end) over both modalities."""
    start = min(pair(cfg, "moe_layer_start_index"))
    end = max(pair(cfg, "moe_layer_end_index"))
    end = cfg.num_hidden_layers - 1 if end < 0 else end
    interval = max(1, cfg.moe_layer_interval)
    return [i for i in range(cfg.num_hidden_layers) if (i + 1) % interval == 0 and start <= i <= end]


def token_ids(cfg) -> dict[str, int]:
    ex = cfg.extra
    out = {k: int(ex.get(k, d)) for k, d in TOKEN_DEFAULTS.items()}
    out["image_token_id"] = int(ex.get("im_patch_id", ex.get("image_token_id", TOKEN_DEFAULTS["image_token_id"])))
    return out


def hw_sections(cfg) -> int:
    """Rotary pairs driven by height/width together (the rest, ``freq_allocation``, by time)."""
    t = int(cfg.extra.get("freq_allocation", 20))
    hw = cfg.head_dim // 2 - t
    if hw < 0 or hw % 2:
        raise ErnieError(f"freq_allocation {t} does not fit head_dim {cfg.head_dim} (need an even remainder)")
    return hw


def to_native(cfg) -> dict:
    """The transformers-native config dict (``Ernie4_5_VLMoeConfig``) for a flat VL ``ErnieConfig``."""
    experts, inter = pair(cfg, "moe_num_experts"), pair(cfg, "moe_intermediate_size")
    if experts[0] != experts[1]:
        raise ErnieError(f"transformers' VL model needs equal text/vision expert counts, got {list(experts)}")
    layers = set(moe_layers(cfg))
    hw = hw_sections(cfg)
    text = {"model_type": "ernie4_5_vl_moe_text", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "hidden_act": cfg.hidden_act, "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_word_embeddings,
            "use_bias": cfg.use_bias, "moe_intermediate_size": list(inter), "moe_k": cfg.moe_k,
            "moe_num_experts": experts[0], "moe_num_shared_experts": cfg.moe_num_shared_experts,
            "moe_norm_min": cfg.moe_norm_min, "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "mlp_layer_types": ["sparse" if i in layers else "dense" for i in range(cfg.num_hidden_layers)],
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                "mrope_section": [hw // 2, hw // 2, cfg.head_dim // 2 - hw]}}
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        text["head_dim"] = cfg.head_dim
    text.update({k: cfg.extra[k] for k in _TEXT_EXTRAS if k in cfg.extra})
    v = vision_spec(cfg)
    vision = {"model_type": "ernie4_5_vl_moe_vision", "depth": v.depth, "hidden_size": v.hidden,
              "num_heads": v.heads, "intermediate_size": v.intermediate, "in_channels": v.in_channels,
              "patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge,
              "temporal_merge_size": v.temporal_merge, "hidden_act": v.act, "rms_norm_eps": v.eps,
              "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta}}
    out = {"architectures": [ARCH], "model_type": "ernie4_5_vl_moe", "dtype": cfg.dtype, "text_config": text,
           "vision_config": vision, "tie_word_embeddings": cfg.tie_word_embeddings}
    out.update(token_ids(cfg))
    if cfg.quantization_config is not None:
        out["quantization_config"] = cfg.quantization_config
    return out
