"""The tensors a config implies, derived from the rule table: Paddle key, rule and Paddle-layout shape.

Each rule's ``scope`` says where it occurs; this module walks a config's instances of every scope (the
decoder layers with their dense MLP or routed and shared experts, the MTP layers, the VL vision tower)
and asks each rule for its shape there. Used to refuse a checkpoint whose tensors contradict its config
before anything is written, and by the memory planner as its tensor inventory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from converters import rules as R
from converters.layout_ops import drops
from ernie_paddle.config.text import VL, ErnieConfig
from ernie_paddle.config.vl import moe_layers, pair, vision_spec


@dataclass(frozen=True)
class Expected:
    shape: tuple[int, ...]
    required: bool = True


@dataclass(frozen=True)
class Entry:
    """One tensor a config implies and where it sits (``layer``: main decoder layer index, else -1)."""

    key: str
    rule: R.Rule
    shape: tuple[int, ...]
    required: bool = True
    layer: int = -1
    mtp: bool = False
    vision: bool = False  # VL vision modality: tower, resampler, vision router and vision experts


def _by_scope(table: tuple[R.Rule, ...]) -> dict[str, list[R.Rule]]:
    """Rules per scope in table order; a pattern shadowed by an earlier rule is left out."""
    out: dict[str, list[R.Rule]] = {}
    seen: set[str] = set()
    for rule in table:
        if rule.paddle not in seen and rule.shape is not None:
            seen.add(rule.paddle)
            out.setdefault(rule.scope, []).append(rule)
    return out


_SCOPED = {id(t): _by_scope(t) for t in (R.TEXT_RULES, R.VL_RULES)}


def _dims(cfg: ErnieConfig, experts: tuple[int, int]) -> R.Dims:
    return R.Dims(H=cfg.hidden_size, V=cfg.vocab_size, Q=cfg.q_size, KV=cfg.kv_size, E=experts[0],
                  EV=experts[1], R=2 if cfg.family == VL else 1, tied=cfg.tie_word_embeddings,
                  vis=vision_spec(cfg) if cfg.family == VL else None)


def tensor_entries(cfg: ErnieConfig, mtp_layers: int | None = None) -> list[Entry]:
    """Every tensor the config implies (canonical Paddle keys). ``mtp_layers`` overrides the MTP count."""
    vl = cfg.family == VL
    table = _SCOPED[id(R.rules_for(cfg))]
    (e_t, e_v), (i_t, i_v) = ((pair(cfg, "moe_num_experts"), pair(cfg, "moe_intermediate_size")) if vl else
                              ((cfg.moe_num_experts, 0), (cfg.moe_intermediate_size, 0)))
    base = _dims(cfg, (e_t, e_v))
    widths: dict[int, R.Dims] = {}
    out: list[Entry] = []

    def add(scope: str, subs: dict, width: int = 0, layer: int = -1, mtp: bool = False,
            vision: bool = False) -> None:
        d = widths.get(width) or widths.setdefault(width, dataclasses.replace(base, I=width))
        for r in table.get(scope, ()):
            if r.bias and not cfg.use_bias:
                continue
            out.append(Entry(r.paddle.format(**subs), r, tuple(r.shape(d)), not (r.optional or drops(r.op, cfg)),
                             layer, mtp, vision or r.vision))

    add(R.MODEL, {})
    sparse = set(moe_layers(cfg) if vl else cfg.moe_layers)
    for i in range(cfg.num_hidden_layers):
        block = {"B": R.block(i)}
        add(R.BLOCK, block, layer=i)
        if i not in sparse:
            add(R.DENSE_MLP, block, cfg.intermediate_size, layer=i)
            continue
        add(R.ROUTER, block, layer=i)
        for j in range(e_t + e_v):
            add(R.EXPERTS, {**block, "E": j}, i_t if j < e_t else i_v, layer=i, vision=j >= e_t)
        if cfg.moe_num_shared_experts > 0:
            add(R.SHARED, block, i_t * cfg.moe_num_shared_experts, layer=i)
    n_mtp = 0 if vl else cfg.num_nextn_predict_layers if mtp_layers is None else mtp_layers
    for j in range(n_mtp):
        block = {"B": R.block(j, mtp=True), "N": j}
        add(R.BLOCK, block, mtp=True)
        add(R.DENSE_MLP, block, cfg.intermediate_size, mtp=True)
        add(R.MTP, block, mtp=True)
    if vl:
        add(R.VISION_TOWER, {})
        for n in range(base.vis.depth):
            add(R.VISION_BLOCK, {"N": n})
        add(R.RESAMPLER, {})
    add(R.HEAD, {})
    return out


def expected_tensors(cfg: ErnieConfig, mtp_layers: int | None = None) -> dict[str, Expected]:
    """Every Paddle key (canonical spelling) the config implies, with its Paddle-layout shape."""
    return {e.key: Expected(e.shape, e.required) for e in tensor_entries(cfg, mtp_layers)}
