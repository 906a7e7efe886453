"""The one table of ERNIE 4.5 checkpoint keys, and every fact the project asks about a key.

Text models (spec 2.1/2.2). Paddle layout: prefix ``ernie.``, Linear weights [in, out], fused ``qkv_proj``
([Q | K | V] on the output axis) and fused ``up_gate_proj`` ([gate | up]), router [H, E] fp32. HF layout:
prefix ``model.``, Linear weights [out, in], separate q/k/v and gate/up, router [E, H] fp32. MTP layers are
``mtp_block.N`` decoder blocks plus two norms and a [2H, H] projection per layer.

VL models (spec 2.3/2.4): the routers ``mlp.gate.weight`` (text) and ``mlp.gate.weight_1`` (vision) are
[H, E] fp32 in BOTH layouts (copied, not transposed); the correction bias is [2, E] (row 0 text, row 1
vision); experts ``0..E_t-1`` are text experts and ``E_t..`` vision experts of another width; the vision
tower keeps its fused ``attn.qkv`` (only transposed, like every vision and resampler Linear). Vision keys
are ``vision_model.*`` in Paddle (``ernie.vision_model.*`` also accepted) and ``model.vision_model.*`` in
HF (unprefixed ``vision_model.*`` also accepted); the canonical spelling is what transformers writes.

A ``Rule`` pairs a Paddle pattern with its HF pattern(s) and the op between them (``layout_ops``), and says
what the tensor is: its Paddle-layout shape in a config, its tensor-parallel axis, whether it stays fp32,
whether a linear quantization may replace it, and its memory kind. Conversion, inspection, quantization,
the TP split, the memory planner and the runtimes read these facts; nothing else spells a checkpoint key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from converters.layout_ops import COPY, DROP, GATE_UP, GATE_UP_BIAS, LINEAR_OPS, LM_HEAD, QKV, QKV_BIAS, T
from ernie_paddle.config.text import VL, ErnieConfig
from ernie_paddle.config.vl import VisionSpec
from ernie_paddle.io.checkpoint import HF_PREFIX as _H
from ernie_paddle.io.checkpoint import PADDLE_PREFIX as _P

# Tensor-parallel axes: COLUMN cuts the output axis (fused parts cut one by one), ROW the input axis.
COLUMN, ROW = "column", "row"
# Memory kinds: quantizable decoder linears, routed experts, vocabulary matrices, high-precision vectors
# (norms, biases), fp32 router tensors, the vision tower and resampler.
LINEAR, EXPERT, EMBED, NORM, FP32, VISION = "linear", "expert", "embed", "norm", "fp32", "vision"
# Scopes: which instances of a config hold a rule (see ``converters.expected``).
MODEL, HEAD, BLOCK, DENSE_MLP, EXPERTS, SHARED, ROUTER, MTP = (
    "model", "head", "block", "dense_mlp", "experts", "shared", "router", "mtp")
VISION_TOWER, VISION_BLOCK, RESAMPLER = "vision_tower", "vision_block", "resampler"

_LAYER, _MTP_BLOCK = "layers", "mtp_block"  # the blocks {B} stands for: ``layers.N`` and ``mtp_block.N``
_PLACEHOLDERS = {"B": rf"(?:{_LAYER}|{_MTP_BLOCK})\.\d+", "E": r"\d+", "N": r"\d+"}
Shape = Callable[["Dims"], tuple[int, ...]]


@dataclass(frozen=True)
class Dims:
    """The sizes a rule's shape reads: one config's, with ``I`` the width of the MLP being built."""

    H: int
    V: int
    Q: int
    KV: int
    E: int = 0        # (text) routed experts
    EV: int = 0       # VL vision experts
    R: int = 1        # correction-bias rows (1 text, 2 VL)
    tied: bool = True
    I: int = 0        # noqa: E741
    vis: VisionSpec | None = None


@dataclass(frozen=True)
class Rule:
    """Paddle key pattern, HF key pattern(s), the op between them, and what the tensor is.

    {B}=block (``layers.N`` or ``mtp_block.N``), {E}=expert, {N}=MTP layer or vision block.
    """

    paddle: str
    hf: tuple[str, ...]
    op: str
    scope: str = MODEL
    shape: Shape | None = None  # Paddle-layout shape in a config; None: no config expects it
    tp: str = ""                # COLUMN or ROW; "": replicated on every rank
    kind: str = NORM            # memory kind
    fp32: bool = False          # kept float32 whatever the checkpoint dtype
    bias: bool = False          # a text Linear bias: present only with ``use_bias``
    optional: bool = False      # a config allows it to be absent
    vision: bool = False        # VL vision modality (tower, resampler, vision router)

    @property
    def quantizable(self) -> bool:
        """Whether a linear quantization may store this tensor as ``quant_weight`` + scales."""
        return self.op in LINEAR_OPS and not self.fp32

    @cached_property
    def paddle_re(self) -> re.Pattern:
        return _compile(self.paddle)

    @cached_property
    def hf_res(self) -> tuple[re.Pattern, ...]:
        return tuple(_compile(p) for p in self.hf)


class AliasRule(Rule):
    """A vision rule: the Paddle key may carry ``ernie.``, the HF key may lack ``model.``."""

    @cached_property
    def paddle_re(self) -> re.Pattern:
        return re.compile(f"(?:{re.escape(_P)})?" + _compile(self.paddle).pattern)

    @cached_property
    def hf_res(self) -> tuple[re.Pattern, ...]:
        return tuple(re.compile(f"(?:{re.escape(_H)})?" + _compile(p.removeprefix(_H)).pattern)
                     for p in self.hf)


def block(index: int, mtp: bool = False) -> str:
    """What {B} stands for: main decoder layer ``index``, or MTP layer ``index``."""
    return f"{_MTP_BLOCK if mtp else _LAYER}.{index}"


def _compile(pattern: str) -> re.Pattern:
    out = re.escape(pattern)
    for name, rx in _PLACEHOLDERS.items():
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(out + r"\Z")


# ---------------------------------------------------------------------------- text table
def _h(d: Dims) -> tuple[int, ...]:
    return (d.H,)


def _linear(mod: str, scope: str, shape: Shape, tp: str = "", kind: str = LINEAR) -> list[Rule]:
    """A plain Linear: weight transposed, optional bias copied."""
    return [Rule(f"{_P}{mod}.weight", (f"{_H}{mod}.weight",), T, scope, shape, tp, kind),
            Rule(f"{_P}{mod}.bias", (f"{_H}{mod}.bias",), COPY, scope, lambda d: shape(d)[1:], tp, bias=True)]


def _gated(mod: str, scope: str, kind: str = LINEAR) -> list[Rule]:
    """A SwiGLU MLP of width I: fused up_gate <-> gate_proj + up_proj (gate FIRST), down transposed."""
    pair = (f"{_H}{mod}.gate_proj", f"{_H}{mod}.up_proj")
    return [Rule(f"{_P}{mod}.up_gate_proj.weight", tuple(p + ".weight" for p in pair), GATE_UP, scope,
                 lambda d: (d.H, 2 * d.I), COLUMN, kind),
            Rule(f"{_P}{mod}.up_gate_proj.bias", tuple(p + ".bias" for p in pair), GATE_UP_BIAS, scope,
                 lambda d: (2 * d.I,), COLUMN, bias=True),
            *_linear(f"{mod}.down_proj", scope, lambda d: (d.I, d.H), ROW, kind)]


def _norm(mod: str, scope: str, shape: Shape = _h, kind: str = NORM) -> Rule:
    return Rule(f"{_P}{mod}.weight", (f"{_H}{mod}.weight",), COPY, scope, shape, kind=kind)


_QKV = tuple(f"{_H}{{B}}.self_attn.{p}_proj" for p in "qkv")
_ROUTER = Rule(f"{_P}{{B}}.mlp.gate.weight", (f"{_H}{{B}}.mlp.gate.weight",), T, ROUTER,
               lambda d: (d.H, d.E), kind=FP32, fp32=True)
_CORRECTION_BIAS = Rule(f"{_P}{{B}}.mlp.moe_statics.e_score_correction_bias",
                        (f"{_H}{{B}}.mlp.moe_statics.e_score_correction_bias",), COPY, ROUTER,
                        lambda d: (d.R, d.E), kind=FP32, fp32=True, optional=True)
_MTP_EMB_NORM = _norm("mtp_emb_norm.{N}", MTP)
HEAD_RULE = Rule("lm_head.weight", ("lm_head.weight",), LM_HEAD, HEAD,
                 lambda d: (d.V, d.H) if d.tied else (d.H, d.V), kind=EMBED)
TEXT_RULES: tuple[Rule, ...] = (
    _norm("embed_tokens", MODEL, lambda d: (d.V, d.H), EMBED),
    _norm("norm", MODEL),
    _norm("{B}.input_layernorm", BLOCK),
    _norm("{B}.post_attention_layernorm", BLOCK),
    Rule(f"{_P}{{B}}.self_attn.qkv_proj.weight", tuple(p + ".weight" for p in _QKV), QKV, BLOCK,
         lambda d: (d.H, d.Q + 2 * d.KV), COLUMN, LINEAR),
    Rule(f"{_P}{{B}}.self_attn.qkv_proj.bias", tuple(p + ".bias" for p in _QKV), QKV_BIAS, BLOCK,
         lambda d: (d.Q + 2 * d.KV,), COLUMN, bias=True),
    *_linear("{B}.self_attn.o_proj", BLOCK, lambda d: (d.Q, d.H), ROW),
    *_gated("{B}.mlp", DENSE_MLP),
    *_gated("{B}.mlp.experts.{E}", EXPERTS, EXPERT),
    *_gated("{B}.mlp.shared_experts", SHARED),
    _ROUTER,
    _CORRECTION_BIAS,
    Rule(f"{_P}{{B}}.mlp.moe_statics.expert_usage", (f"{_H}{{B}}.mlp.moe_statics.expert_usage",), DROP, ROUTER,
         kind=""),
    _MTP_EMB_NORM,
    _norm("mtp_hidden_norm.{N}", MTP),
    *_linear("mtp_linear_proj.{N}", MTP, lambda d: (2 * d.H, d.H)),  # replicated under TP
    HEAD_RULE,
    Rule("lm_head.bias", ("lm_head.bias",), COPY, HEAD),
)
# Widths (config attribute) of the MLP scopes: what a ``{B}.mlp*`` rule's ``I`` is in a text config.
MLP_WIDTHS = {DENSE_MLP: "intermediate_size", EXPERTS: "moe_intermediate_size", SHARED: "shared_intermediate_size"}


# ---------------------------------------------------------------------------- VL table
def _tower(mod: str, scope: str, shape: Shape, weight_op: str = T, bias: bool = True) -> list[Rule]:
    """A vision-tower or resampler module: Linear weights transposed (norms copied); bias of the output width."""
    cls, paddle = (AliasRule, mod) if mod.startswith("vision_model.") else (Rule, _P + mod)
    facts = dict(scope=scope, kind=VISION, vision=True)
    rules = [cls(f"{paddle}.weight", (f"{_H}{mod}.weight",), weight_op, shape=shape, **facts)]
    if bias:
        rules.append(cls(f"{paddle}.bias", (f"{_H}{mod}.bias",), COPY, shape=lambda d: shape(d)[-1:], **facts))
    return rules


_VIT_LINEARS = {"attn.qkv": lambda d: (d.vis.hidden, 3 * d.vis.hidden),
                "attn.proj": lambda d: (d.vis.hidden, d.vis.hidden),
                "mlp.fc1": lambda d: (d.vis.hidden, d.vis.intermediate),
                "mlp.fc2": lambda d: (d.vis.intermediate, d.vis.hidden)}
VISION_RULES: tuple[Rule, ...] = (
    *_tower("vision_model.patch_embed.proj", VISION_TOWER, lambda d: (d.vis.patch_dim, d.vis.hidden), bias=False),
    *(r for mod, shape in _VIT_LINEARS.items()
      for r in _tower(f"vision_model.blocks.{{N}}.{mod}", VISION_BLOCK, shape)),
    *(r for mod in ("norm1", "norm2")
      for r in _tower(f"vision_model.blocks.{{N}}.{mod}", VISION_BLOCK, lambda d: (d.vis.hidden,), COPY)),
    *_tower("vision_model.ln", VISION_TOWER, lambda d: (d.vis.hidden,), COPY),
)
_SD: Shape = lambda d: (d.vis.spatial_dim, d.vis.spatial_dim)  # noqa: E731
RESAMPLER_RULES: tuple[Rule, ...] = (
    *_tower("resampler_model.spatial_linear.0", RESAMPLER, _SD),
    *_tower("resampler_model.spatial_linear.2", RESAMPLER, _SD),
    *_tower("resampler_model.temporal_linear.0", RESAMPLER,
            lambda d: (d.vis.spatial_dim * d.vis.temporal_merge, d.vis.spatial_dim)),
    *_tower("resampler_model.temporal_linear.2", RESAMPLER, _SD),
    *(r for seq in ("spatial_linear", "temporal_linear")
      for r in _tower(f"resampler_model.{seq}.3", RESAMPLER, lambda d: (d.vis.spatial_dim,), COPY)),
    *_tower("resampler_model.mlp", RESAMPLER, lambda d: (d.vis.spatial_dim, d.H)),
    *_tower("resampler_model.after_norm", RESAMPLER, _h, COPY, bias=False),
)
ROUTER_RULES: tuple[Rule, ...] = (
    Rule(_ROUTER.paddle, _ROUTER.hf, COPY, ROUTER, _ROUTER.shape, kind=FP32, fp32=True),
    Rule(_ROUTER.paddle + "_1", (_ROUTER.hf[0] + "_1",), COPY, ROUTER, lambda d: (d.H, d.EV), kind=FP32,
         fp32=True, vision=True),
)
# First match wins: the VL routers shadow the text router rule (which transposes).
VL_RULES: tuple[Rule, ...] = (*VISION_RULES, *RESAMPLER_RULES, *ROUTER_RULES, *TEXT_RULES)


def rules_for(cfg: ErnieConfig) -> tuple[Rule, ...]:
    return VL_RULES if cfg.family == VL else TEXT_RULES


def canonical_paddle_key(key: str) -> str:
    """``ernie.vision_model.*`` -> ``vision_model.*``; every other key unchanged."""
    return key.removeprefix(_P) if key.startswith(_P + "vision_model.") else key


# ---------------------------------------------------------------------------- matching
# Quantized linears replace ``P.weight`` by these tensors. Variant -> (Paddle suffix, HF suffix or None).
# "q": FP8 (or int) weight bytes; "s": the FP8 128x128 scale grid (HF ``weight_scale_inv``); Paddle-only
# tensors (WINT2 codes, activation scales) have no HF counterpart and convert only Paddle -> Paddle.
QUANT_VARIANTS = {"q": ("quant_weight", "weight"), "s": ("weight_scale", "weight_scale_inv"),
                  "super_scales": ("super_scales", None), "code_scale": ("code_scale", None),
                  "code_zp": ("code_zp", None), "activation_scale": ("activation_scale", None)}
QUANT_SUFFIXES = tuple(p for p, _h in QUANT_VARIANTS.values())
_HF_SCALE = QUANT_VARIANTS["s"][1]


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

    @property
    def expert(self) -> int | None:
        """The routed expert index, None outside routed experts."""
        e = dict(self.groups).get("E")
        return None if e is None else int(e)

    @property
    def layer(self) -> int | None:
        """The main decoder layer index, None outside them (MTP blocks included)."""
        block = dict(self.groups).get("B", "")
        return int(block.split(".")[1]) if block.startswith(_LAYER + ".") else None

    @property
    def mtp(self) -> bool:
        """Whether the tensor belongs to an MTP layer."""
        return self.rule.scope == MTP or dict(self.groups).get("B", "").startswith(_MTP_BLOCK + ".")


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
    if found is not None or not key.endswith("." + _HF_SCALE):
        return found
    m = _match_one(_swap_suffix(key, "weight"), rules, hf=True)
    return Match(m.rule, m.groups, m.slot, "s") if m is not None and m.rule.op in LINEAR_OPS else None


# ---------------------------------------------------------------------------- facts about a key
# The bias is told without its parent module: transformers' model nests it under ``mlp.gate``.
_BIAS_SUFFIX = _CORRECTION_BIAS.paddle.partition(".mlp.")[2]
FP32_SUFFIXES = tuple(dict.fromkeys(_BIAS_SUFFIX if r is _CORRECTION_BIAS else r.paddle.rpartition("}.")[2]
                                    for r in VL_RULES if r.fp32))


def is_linear_weight(key: str) -> bool:
    """Whether Paddle key ``key`` is the ``weight`` of a Linear (the tensors quantization replaces)."""
    m = match_paddle(key) if key.endswith(".weight") else None
    return m is not None and not m.variant and m.rule.op in LINEAR_OPS


def is_fp32_key(key: str) -> bool:
    """Whether the tensor (either layout) stays float32: the routers and the correction bias."""
    return key.endswith(FP32_SUFFIXES)


def is_correction_bias(key: str) -> bool:
    """Whether the tensor (either layout) is the aux-free router's correction bias."""
    return key.endswith(_BIAS_SUFFIX)


def quantizable(key: str) -> bool:
    """Whether a quantization may store the linear of ``key`` (module prefix or tensor name, Paddle or HF).

    Embeddings, the head, norms, routers and the correction bias never are; names no rule knows are left
    to the quantization config.
    """
    if is_fp32_key(key):
        return False
    for cand in (key, key + ".weight"):
        m = match_paddle(cand, VL_RULES) or match_hf(cand, VL_RULES)
        if m is not None:
            return m.rule.quantizable
    return True


def is_tied_head_copy(key: str, cfg: ErnieConfig) -> bool:
    """Whether ``key`` is an LM head that a tied config takes from the embedding instead."""
    return key == HEAD_RULE.paddle and cfg.tie_word_embeddings


def expert_index(key: str) -> int | None:
    """The routed expert a Paddle key belongs to, None for every other key."""
    m = match_paddle(key)
    return None if m is None else m.expert


def renumber_expert(key: str, index: int) -> str:
    """Paddle key ``key`` of a routed expert with the expert index replaced by ``index``."""
    m = match_paddle(key)
    assert m is not None and m.expert is not None, key
    groups = tuple((k, str(index) if k == "E" else v) for k, v in m.groups)
    return Match(m.rule, groups, m.slot, m.variant).paddle_key()


def mtp_layers_in(paddle_keys) -> int:
    """How many MTP layers the keys hold (some releases carry MTP weights without the config key)."""
    prefix = _MTP_EMB_NORM.paddle.partition("{")[0]
    idx = [int(k[len(prefix):].split(".")[0]) for k in paddle_keys if k.startswith(prefix)]
    return max(idx) + 1 if idx else 0


def mlp_width(rule: Rule, cfg: ErnieConfig) -> int:
    """The width ``I`` of the text MLP a ``{B}.mlp*`` rule belongs to."""
    return getattr(cfg, MLP_WIDTHS[rule.scope])
