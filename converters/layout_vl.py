"""ERNIE 4.5 VL rules in the text table's ``Rule`` form, and the tensors a VL config implies.

Differences from the text models (spec 2.3/2.4): the two routers ``mlp.gate.weight`` (text) and
``mlp.gate.weight_1`` (vision) are [H, E] fp32 in BOTH layouts (copied, not transposed); the correction bias
is [2, E] (row 0 text, row 1 vision); experts ``0..E_t-1`` are text experts and ``E_t..`` vision experts of
another width; the vision tower keeps its fused ``attn.qkv`` (only transposed, like every vision and
resampler Linear). Vision keys are ``vision_model.*`` in Paddle (``ernie.vision_model.*`` also accepted)
and ``model.vision_model.*`` in HF (unprefixed ``vision_model.*`` also accepted): the converter writes the
canonical spelling, which is what transformers' ``save_pretrained`` writes and loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from converters.layout import COPY, TEXT_RULES, Rule, T, _compile
from converters.schema import Expected, _linear, _mlp, expected_paddle_tensors
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.config.vl import moe_layers, pair, vision_spec


@dataclass(frozen=True)
class AliasRule(Rule):
    """A vision rule: the Paddle key may carry ``ernie.``, the HF key may lack ``model.``."""

    @cached_property
    def paddle_re(self) -> re.Pattern:
        return re.compile(r"(?:ernie\.)?" + _compile(self.paddle).pattern)

    @cached_property
    def hf_res(self) -> tuple[re.Pattern, ...]:
        return tuple(re.compile(r"(?:model\.)?" + _compile(p.removeprefix("model.")).pattern) for p in self.hf)


def _vision(mod: str, weight_op: str = T, bias: bool = True) -> list[Rule]:
    rules = [AliasRule(f"vision_model.{mod}.weight", (f"model.vision_model.{mod}.weight",), weight_op)]
    if bias:
        rules.append(AliasRule(f"vision_model.{mod}.bias", (f"model.vision_model.{mod}.bias",), COPY))
    return rules


def _resampler(mod: str, weight_op: str = T, bias: bool = True) -> list[Rule]:
    key = f"resampler_model.{mod}"
    rules = [Rule(f"ernie.{key}.weight", (f"model.{key}.weight",), weight_op)]
    if bias:
        rules.append(Rule(f"ernie.{key}.bias", (f"model.{key}.bias",), COPY))
    return rules


VISION_RULES: tuple[Rule, ...] = (
    *_vision("patch_embed.proj", bias=False),
    *(r for mod in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") for r in _vision(f"blocks.{{N}}.{mod}")),
    *(r for mod in ("norm1", "norm2") for r in _vision(f"blocks.{{N}}.{mod}", COPY)),
    *_vision("ln", COPY),
)
RESAMPLER_RULES: tuple[Rule, ...] = (
    *(r for seq in ("spatial_linear", "temporal_linear") for i in (0, 2) for r in _resampler(f"{seq}.{i}")),
    *(r for seq in ("spatial_linear", "temporal_linear") for r in _resampler(f"{seq}.3", COPY)),
    *_resampler("mlp"),
    *_resampler("after_norm", COPY, bias=False),
)
ROUTER_RULES: tuple[Rule, ...] = (
    Rule("ernie.{B}.mlp.gate.weight", ("model.{B}.mlp.gate.weight",), COPY),
    Rule("ernie.{B}.mlp.gate.weight_1", ("model.{B}.mlp.gate.weight_1",), COPY),
)
# First match wins: the VL routers shadow the text router rule (which transposes).
VL_RULES: tuple[Rule, ...] = (*VISION_RULES, *RESAMPLER_RULES, *ROUTER_RULES, *TEXT_RULES)


def rules_for(cfg: ErnieConfig) -> tuple[Rule, ...]:
    return VL_RULES if cfg.family == "vl" else TEXT_RULES


def canonical_paddle_key(key: str) -> str:
    """``ernie.vision_model.*`` -> ``vision_model.*``; every other key unchanged."""
    return key.removeprefix("ernie.") if key.startswith("ernie.vision_model.") else key


def expected_vl_tensors(cfg: ErnieConfig) -> dict[str, Expected]:
    """Every Paddle key (canonical spelling) a VL config implies, with its Paddle-layout shape."""
    text = cfg.replace(family="dense", num_hidden_layers=0, num_nextn_predict_layers=0)
    out = expected_paddle_tensors(text, 0)  # embeddings, final norm, lm_head
    h, b = cfg.hidden_size, cfg.use_bias
    sparse = set(moe_layers(cfg))
    (e_t, e_v), (i_t, i_v) = pair(cfg, "moe_num_experts"), pair(cfg, "moe_intermediate_size")
    for i in range(cfg.num_hidden_layers):
        p = f"ernie.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = Expected((h,))
        out[f"{p}.post_attention_layernorm.weight"] = Expected((h,))
        _linear(out, f"{p}.self_attn.qkv_proj", (h, cfg.q_size + 2 * cfg.kv_size), b)
        _linear(out, f"{p}.self_attn.o_proj", (cfg.q_size, h), b)
        if i not in sparse:
            _mlp(out, f"{p}.mlp", h, cfg.intermediate_size, b)
            continue
        out[f"{p}.mlp.gate.weight"] = Expected((h, e_t))
        out[f"{p}.mlp.gate.weight_1"] = Expected((h, e_v))
        out[f"{p}.mlp.moe_statics.e_score_correction_bias"] = Expected((2, e_t), required=False)
        for j in range(e_t + e_v):
            _mlp(out, f"{p}.mlp.experts.{j}", h, i_t if j < e_t else i_v, b)
        if cfg.moe_num_shared_experts > 0:
            _mlp(out, f"{p}.mlp.shared_experts", h, i_t * cfg.moe_num_shared_experts, b)
    v = vision_spec(cfg)
    out["vision_model.patch_embed.proj.weight"] = Expected((v.patch_dim, v.hidden))
    for n in range(v.depth):
        p = f"vision_model.blocks.{n}"
        for mod, shape in (("attn.qkv", (v.hidden, 3 * v.hidden)), ("attn.proj", (v.hidden, v.hidden)),
                           ("mlp.fc1", (v.hidden, v.intermediate)), ("mlp.fc2", (v.intermediate, v.hidden))):
            _linear(out, f"{p}.{mod}", shape, True)
        for norm in ("norm1", "norm2"):
            out[f"{p}.{norm}.weight"] = out[f"{p}.{norm}.bias"] = Expected((v.hidden,))
    out["vision_model.ln.weight"] = out["vision_model.ln.bias"] = Expected((v.hidden,))
    sd, r = v.spatial_dim, "ernie.resampler_model"
    for seq, width in (("spatial_linear", sd), ("temporal_linear", sd * v.temporal_merge)):
        _linear(out, f"{r}.{seq}.0", (width, sd), True)
        _linear(out, f"{r}.{seq}.2", (sd, sd), True)
        out[f"{r}.{seq}.3.weight"] = out[f"{r}.{seq}.3.bias"] = Expected((sd,))
    _linear(out, f"{r}.mlp", (sd, h), True)
    out[f"{r}.after_norm.weight"] = Expected((h,))
    return out
