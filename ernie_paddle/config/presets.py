"""Built-in ERNIE 4.5 family configs (release hyper-parameters, spec/checkpoint_layouts.md section 1.2).

Values the spec marks INFERRED/UNCONFIRMED are chosen so that the published totals come out:
21B-A3B carries no MTP layer (21.8B only without one), 300B-A47B carries one (300.5B only with it);
VL-424B reuses the 300B text shape with 64 vision experts of width 1536 (about 424B).
"""

from __future__ import annotations

import copy

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

_COMMON = {"vocab_size": 103424, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 131072, "use_bias": False, "hidden_act": "silu",
           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 128,
           "torch_dtype": "bfloat16"}

# DFNRope ViT of the VL releases (HF-vl defaults documented as VL-28B) and the resampler factors.
_VISION = {"depth": 32, "hidden_size": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
           "in_channels": 3, "spatial_merge_size": 2}

PRESETS: dict[str, dict] = {
    "0.3B": {**_COMMON, "architectures": ["Ernie4_5ForCausalLM"], "model_type": "ernie4_5",
             "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 18,
             "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "21B-A3B": {**_COMMON, "architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe",
                "hidden_size": 2560, "intermediate_size": 12288, "num_hidden_layers": 28,
                "num_attention_heads": 20, "num_key_value_heads": 4, "tie_word_embeddings": True,
                "moe_num_experts": 64, "moe_k": 6, "moe_intermediate_size": 1536,
                "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_layer_end_index": 27,
                "moe_layer_interval": 1, "num_nextn_predict_layers": 0},
    "300B-A47B": {**_COMMON, "architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe",
                  "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 54,
                  "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False,
                  "moe_num_experts": 64, "moe_k": 8, "moe_intermediate_size": 3584,
                  "moe_num_shared_experts": 0, "moe_layer_start_index": 3, "moe_layer_end_index": 53,
                  "moe_layer_interval": 1, "num_nextn_predict_layers": 1},
    "VL-28B-A3B": {**_COMMON, "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
                   "model_type": "ernie4_5_moe_vl", "hidden_size": 2560, "intermediate_size": 12288,
                   "num_hidden_layers": 28, "num_attention_heads": 20, "num_key_value_heads": 4,
                   "tie_word_embeddings": True, "moe_num_experts": [64, 64], "moe_k": 6,
                   "moe_intermediate_size": [1536, 512], "moe_num_shared_experts": 2,
                   "moe_layer_start_index": [1, 1], "moe_layer_end_index": [29, 28],
                   "moe_layer_interval": 1, "vision_config": dict(_VISION),
                   "spatial_conv_size": 2, "temporal_conv_size": 2},
    "VL-424B-A47B": {**_COMMON, "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"],
                     "model_type": "ernie4_5_moe_vl", "hidden_size": 8192, "intermediate_size": 28672,
                     "num_hidden_layers": 54, "num_attention_heads": 64, "num_key_value_heads": 8,
                     "tie_word_embeddings": False, "moe_num_experts": [64, 64], "moe_k": 8,
                     "moe_intermediate_size": [3584, 1536], "moe_num_shared_experts": 0,
                     "moe_layer_start_index": [3, 3], "moe_layer_end_index": [53, 53],
                     "moe_layer_interval": 1, "vision_config": dict(_VISION),
                     "spatial_conv_size": 2, "temporal_conv_size": 2},
}


def preset_name(name: str) -> str | None:
    """The preset a family name or repo id names (``21b-a3b``, ``baidu/ERNIE-4.5-21B-A3B-PT``), or None."""
    tail = name.rsplit("/", 1)[-1].upper().replace("ERNIE-4.5-", "")
    for key in sorted(PRESETS, key=len, reverse=True):
        k = key.upper()
        if tail == k or tail.startswith(k + "-"):
            return key
    return None


def preset_dict(name: str) -> dict:
    key = preset_name(name)
    if key is None:
        raise ErnieError(f"unknown model family {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[key])


def preset_config(name: str) -> ErnieConfig:
    """The preset as a parsed ``ErnieConfig``."""
    return ErnieConfig.from_dict(preset_dict(name))
