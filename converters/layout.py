"""The one rule table that knows ERNIE 4.5 checkpoint key names, and the ops between the two layouts.

Paddle layout: prefix ``ernie.``, Linear weights [in, out], fused ``qkv_proj`` ([Q | K | V] on the output
axis) and fused ``up_gate_proj`` ([gate | up]), text router [H, E] fp32. HF layout: prefix ``model.``,
Linear weights [out, in], separate q/k/v and gate/up, router [E, H] fp32. Both directions and the
runtime's on-the-fly loading read this table; nothing else spells a checkpoint key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

# Ops (Paddle side <-> HF side)
COPY, T, QKV, QKV_BIAS, GATE_UP, GATE_UP_BIAS, LM_HEAD, DROP = (
    "copy", "transpose", "qkv", "qkv_bias", "gate_up", "gate_up_bias", "lm_head", "drop")
FP32_SUFFIXES = ("mlp.gate.weight", "mlp.gate.weight_1", "moe_statics.e_score_correction_bias")

_PLACEHOLDERS = {"B": r"(?:layers|mtp_block)\.\d+", "E": r"\d+", "N": r"\d+"}


@dataclass(frozen=True)
class Rule:
    """Paddle key pattern, HF key pattern(s) and the op between them. {B}=block, {E}=expert, {N}=MTP."""

    paddle: str
    hf: tuple[str, ...]
    op: str

    @cached_property
    def paddle_re(self) -> re.Pattern:
        return _compile(self.paddle)

    @cached_property
    def hf_res(self) -> tuple[re.Pattern, ...]:
        return tuple(_compile(p) for p in self.hf)


def _compile(pattern: str) -> re.Pattern:
    out = re.escape(pattern)
    for name, rx in _PLACEHOLDERS.items():
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(out + r"\Z")


def _linear(paddle_mod: str, hf_mod: str | None = None) -> list[Rule]:
    """A plain Linear: weight transposed, optional bias copied."""
    hf_mod = hf_mod or paddle_mod
    return [Rule(f"ernie.{paddle_mod}.weight", (f"model.{hf_mod}.weight",), T),
            Rule(f"ernie.{paddle_mod}.bias", (f"model.{hf_mod}.bias",), COPY)]


def _gated(mod: str) -> list[Rule]:
    """A SwiGLU MLP: fused up_gate <-> gate_proj + up_proj (gate FIRST), down transposed."""
    pair = (f"model.{mod}.gate_proj", f"model.{mod}.up_proj")
    return [Rule(f"ernie.{mod}.up_gate_proj.weight", tuple(p + ".weight" for p in pair), GATE_UP),
            Rule(f"ernie.{mod}.up_gate_proj.bias", tuple(p + ".bias" for p in pair), GATE_UP_BIAS),
            *_linear(f"{mod}.down_proj")]


def _norm(mod: str) -> Rule:
    return Rule(f"ernie.{mod}.weight", (f"model.{mod}.weight",), COPY)


_QKV = tuple(f"model.{{B}}.self_attn.{p}_proj" for p in "qkv")
TEXT_RULES: tuple[Rule, ...] = (
    _norm("embed_tokens"),
    _norm("norm"),
    _norm("{B}.input_layernorm"),
    _norm("{B}.post_attention_layernorm"),
    Rule("ernie.{B}.self_attn.qkv_proj.weight", tuple(p + ".weight" for p in _QKV), QKV),
    Rule("ernie.{B}.self_attn.qkv_proj.bias", tuple(p + ".bias" for p in _QKV), QKV_BIAS),
    *_linear("{B}.self_attn.o_proj"),
    *_gated("{B}.mlp"),
    *_gated("{B}.mlp.experts.{E}"),
    *_gated("{B}.mlp.shared_experts"),
    Rule("ernie.{B}.mlp.gate.weight", ("model.{B}.mlp.gate.weight",), T),
    Rule("ernie.{B}.mlp.moe_statics.e_score_correction_bias",
         ("model.{B}.mlp.moe_statics.e_score_correction_bias",), COPY),
    Rule("ernie.{B}.mlp.moe_statics.expert_usage", ("model.{B}.mlp.moe_statics.expert_usage",), DROP),
    _norm("mtp_emb_norm.{N}"),
    _norm("mtp_hidden_norm.{N}"),
    *_linear("mtp_linear_proj.{N}"),
    Rule("lm_head.weight", ("lm_head.weight",), LM_HEAD),
    Rule("lm_head.bias", ("lm_head.bias",), COPY),
)


# Quantized linears replace ``P.weight`` by these tensors. Variant -> (Paddle suffix, HF suffix or None).
# "q": FP8 (or int) weight bytes; "s": the FP8 128x128 scale grid (HF ``weight_scale_inv``); Paddle-only
# tensors (WINT2 codes, activation scales) have no HF counterpart and convert only Paddle -> Paddle.
QUANT_VARIANTS = {"q": ("quant_weight", "weight"), "s": ("weight_scale", "weight_scale_inv"),
                  "super_scales": ("super_scales", None), "code_scale": ("code_scale", None),
                  "code_zp": ("code_zp", None), "activation_scale": ("activation_scale", None)}
LINEAR_OPS = (T, QKV, GATE_UP)


@dataclass(frozen=True)
class Match:
    """A key matched to a rule: the rule, placeholder values, HF slot, and quantized-tensor variant."""

    rule: Rule
    groups: tuple[tuple[str, str], ...]
    slot: int = 0
    variant: str = ""

    def paddle_key(self) -> str:
        key = self.rule.paddle.format(**dict(self.groups))
        return _swap_suffix(key, QUANT_VARIANTS[self.variant][0]) if self.variant else key

    def hf_keys(self) -> list[str]:
        keys = [p.format(**dict(self.groups)) for p in self.rule.hf]
        if not self.variant:
            return keys
        hf_suffix = QUANT_VARIANTS[self.variant][1]
        return [_swap_suffix(k, hf_suffix) for k in keys] if hf_suffix else []

    def weight_key(self) -> str:
        """The Paddle ``.weight`` key of the linear this tensor belongs to."""
        return self.rule.paddle.format(**dict(self.groups))


def is_linear_weight(key: str) -> bool:
    """Whether Paddle key ``key`` is the ``weight`` of a Linear (the tensors quantization replaces)."""
    m = match_paddle(key) if key.endswith(".weight") else None
    return m is not None and not m.variant and m.rule.op in LINEAR_OPS


def _swap_suffix(key: str, suffix: str) -> str:
    return key.rsplit(".", 1)[0] + "." + suffix


def _match_one(key: str, rules, hf: bool) -> Match | None:
    for rule in rules:
        patterns = rule.hf_res if hf else (rule.paddle_re,)
        for slot, rx in enumerate(patterns):
            m = rx.match(key)
            if m:
                return Match(rule, tuple(sorted(m.groupdict().items())), slot)
    return None


def match_paddle(key: str, rules=TEXT_RULES) -> Match | None:
    found = _match_one(key, rules, hf=False)
    if found is not None:
        return found
    base, _, suffix = key.rpartition(".")
    for variant, (p_suffix, _h) in QUANT_VARIANTS.items():
        if suffix == p_suffix:
            m = _match_one(base + ".weight", rules, hf=False)
            if m is not None and m.rule.op in LINEAR_OPS:
                return Match(m.rule, m.groups, 0, variant)
    return None


def match_hf(key: str, rules=TEXT_RULES) -> Match | None:
    found = _match_one(key, rules, hf=True)
    if found is not None or not key.endswith(".weight_scale_inv"):
        return found
    m = _match_one(_swap_suffix(key, "weight"), rules, hf=True)
    return Match(m.rule, m.groups, m.slot, "s") if m is not None and m.rule.op in LINEAR_OPS else None


# ---------------------------------------------------------------------------- ops
def drops(op: str, cfg: ErnieConfig) -> bool:
    """Whether this op writes nothing (usage buffers; lm_head when tied, since both sides re-tie it)."""
    return op == DROP or (op == LM_HEAD and cfg.tie_word_embeddings)


def _split_points(op: str, cfg: ErnieConfig, width: int, block: int = 1) -> list[int]:
    """Where the fused output axis splits; ``block`` > 1 for a scale grid (the cut must fall on a block edge)."""
    if op in (QKV, QKV_BIAS):
        points = [cfg.q_size, cfg.q_size + cfg.kv_size]
    else:
        points = [width * block // 2]
    if block > 1 and any(p % block for p in points):
        raise ErnieError(f"splitting the fused tensor at {points} would cut a {block}-wide FP8 scale block "
                         f"(q/kv sizes and MLP widths must be multiples of {block} to convert FP8 to HF)")
    return [p // block for p in points]


def to_hf(op: str, arr: np.ndarray, cfg: ErnieConfig, block: int = 1) -> list[np.ndarray]:
    """Paddle tensor -> the HF tensor(s) of its rule, in the rule's HF order (``block``: FP8 scale grid)."""
    if op in (T, LM_HEAD):
        return [np.ascontiguousarray(arr.T)]
    if op == COPY:
        return [arr]
    parts = np.split(arr, _split_points(op, cfg, arr.shape[-1], block), axis=-1)
    if op in (QKV, GATE_UP):
        return [np.ascontiguousarray(p.T) for p in parts]
    return [np.ascontiguousarray(p) for p in parts]


def to_paddle(op: str, arrs: list[np.ndarray]) -> np.ndarray:
    """HF tensor(s) of one rule -> the Paddle tensor."""
    if op in (T, LM_HEAD):
        return np.ascontiguousarray(arrs[0].T)
    if op == COPY:
        return arrs[0]
    if op in (QKV, GATE_UP):
        return np.concatenate([a.T for a in arrs], axis=-1)
    return np.concatenate(arrs, axis=-1)


def hf_shapes(op: str, shape: tuple[int, ...], cfg: ErnieConfig, block: int = 1) -> list[tuple[int, ...]]:
    """Shapes of ``to_hf``'s outputs for a Paddle input of ``shape``, without touching data."""
    if op in (T, LM_HEAD):
        return [tuple(reversed(shape))]
    if op == COPY:
        return [shape]
    width = shape[-1]
    cuts = [0, *_split_points(op, cfg, width, block), width]
    widths = [b - a for a, b in zip(cuts, cuts[1:])]
    if op in (QKV, GATE_UP):
        return [(w, shape[0]) for w in widths]
    return [(w,) for w in widths]


def paddle_shape(op: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Shape of ``to_paddle``'s output for HF inputs of ``shapes``, without touching data."""
    if op in (T, LM_HEAD):
        return tuple(reversed(shapes[0]))
    if op == COPY:
        return shapes[0]
    if op in (QKV, GATE_UP):
        return (shapes[0][1], sum(s[0] for s in shapes))
    return (sum(s[0] for s in shapes),)


def is_fp32_key(key: str) -> bool:
    return key.endswith(FP32_SUFFIXES)


def iter_paddle_tensors(ckpt, dtype: str = "keep"):
    """(Paddle key, array) for a checkpoint in either layout, mapped on the fly one group at a time."""
    from converters.plan import iter_tensors

    return iter_tensors(ckpt, "paddle", dtype)


def iter_hf_tensors(ckpt, dtype: str = "keep"):
    """(HF key, array) for a checkpoint in either layout, mapped on the fly one group at a time."""
    from converters.plan import iter_tensors

    return iter_tensors(ckpt, "hf", dtype)
