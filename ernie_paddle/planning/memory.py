"""Memory planner: parameters, resident weight bytes (ALL experts), KV cache, workspace, per-rank TP figures.

Tensor parallel split (per rank): attention heads and dense/shared MLP columns are divided by ``tp``;
routed experts are divided whole (expert parallel, ``ceil(E/tp)`` per rank); embedding and LM head are
vocab-parallel (``ceil(V/tp)`` rows); norms, routers, correction bias, MTP projection and the vision tower
are replicated. KV heads are divided while ``tp <= kv_heads``, then replicated (one per rank).

CPU: Paddle CPU has no bf16 kernels, so unquantized tensors are resident in float32 whatever the
checkpoint dtype; quantized storage stays compact and each layer is dequantized to float32 when used.
A tied head also gets a transposed float32 copy on CPU (``ErnieForCausalLM.cache_head_transpose``), except in
quantized models, which keep memory low instead (eager engine; the predictor's CPU export has no copy, so
the figure is an upper bound for it).
GPU: unquantized tensors stay in the checkpoint dtype (bf16); routers and correction bias are fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from converters.expected import Entry, tensor_entries
from converters.layout_ops import GATE_UP, GATE_UP_BIAS, LM_HEAD, QKV, QKV_BIAS
from converters.rules import EMBED, EXPERT, FP32, ROW, is_correction_bias
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError

QUANTIZATIONS = ("fp32", "bf16", "wint8", "wint4", "fp8", "wint2")
GiB = 1 << 30
# (nominal GB, names): cards hold about that many GiB; GPU_USABLE of it is usable (reserve, fragmentation).
GPUS = ((16, "T4 / V100 16GB"), (24, "L4 / A10 / RTX 4090"), (40, "A100 40GB"),
        (48, "L40S / RTX 6000 Ada"), (80, "A100 80GB / H100 80GB"), (96, "H20 96GB"),
        (141, "H200 / H20 141GB"))
GPU_USABLE = 0.90
HOST_RAM_GB = (8, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
HOST_USABLE = 0.85
CPU_RUNTIME_BYTES = 320 << 20   # Python + paddle + ernie_paddle (300 MiB RSS measured after loading a tiny model)
GPU_RUNTIME_BYTES = 1 << 30     # CUDA context and allocator reserve, per rank
GPU_HOST_RUNTIME_BYTES = 2 << 30  # host RSS of a paddle-gpu process before any weight


@dataclass(frozen=True)
class Scheme:
    """Storage of decoder linears: ``dense`` for attention/dense/shared MLP, ``moe`` for routed experts;
    routed experts in MoE layers <= ``moe_w4_end`` use wint4 (the WINT2 release recipe)."""

    dense: str
    moe: str
    moe_w4_end: int = -1

    @property
    def quantized(self) -> bool:
        return self.dense not in ("fp32", "bf16") or self.moe not in ("fp32", "bf16")

    @property
    def name(self) -> str:
        return self.dense if self.dense == self.moe else ("wint2" if self.moe == "wint2" else
                                                            f"{self.dense}+{self.moe}")


def scheme_for(quantization: str | None, cfg: ErnieConfig) -> Scheme:
    """The scheme a ``--quantization`` name means, or (None) what the config declares."""
    if quantization is None:
        return _scheme_from_config(cfg)
    if quantization not in QUANTIZATIONS:
        raise ErnieError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "wint2":
        return Scheme("wint8", "wint2", _w4_end(cfg.quantization_config or {}))
    return Scheme(quantization, quantization)


_QNAMES = {"block_wise_fp8": "fp8", "fp8": "fp8", "wint8": "wint8", "wint4": "wint4", "w4w2": "wint2",
           "wint2": "wint2"}


def _scheme_from_config(cfg: ErnieConfig) -> Scheme:
    qc = cfg.quantization_config
    if not qc:
        return Scheme(*(["fp32"] * 2)) if cfg.dtype == "float32" else Scheme("bf16", "bf16")
    q = qc.get("quantization") or qc.get("quant_method")
    if q == "wint2":
        return Scheme("wint8", "wint2", _w4_end(qc))
    if q == "mix_quant":
        dense, moe = _QNAMES.get(qc.get("dense_quant_type")), _QNAMES.get(qc.get("moe_quant_type"))
        if dense and moe:
            return Scheme(dense, moe, _w4_end(qc) if moe == "wint2" else -1)
    elif q in _QNAMES:
        return Scheme(_QNAMES[q], _QNAMES[q])
    raise ErnieError(f"quantization_config {qc} is not one the planner knows; pass --quantization")


def _w4_end(qc: dict) -> int:
    w4 = (qc.get("moe_quant_config") or {}).get("moe_w4_quant_config") or {}
    return int(w4.get("quant_end_layer", 6))


@dataclass(frozen=True)
class Tensor:
    """``count`` tensors of shape [k, n] (Paddle in, out) on one rank; ``active`` of them used per token."""

    name: str
    k: int
    n: int
    count: int
    kind: str          # linear | expert | embed | norm | fp32 | vision (``converters.rules`` memory kinds)
    layer: int = -1
    active: int = -1   # -1: all of them
    mtp: bool = False

    @property
    def params(self) -> int:
        return self.k * self.n * self.count

    @property
    def active_params(self) -> int:
        return self.k * self.n * (self.count if self.active < 0 else self.active)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def inventory(cfg: ErnieConfig, tp: int = 1) -> list[Tensor]:
    """Every weight of the model (MTP and vision tower included) as held by one tensor-parallel rank.

    The config's expected tensors (``converters.expected``) grouped by rule: one entry per rule for the
    decoder layers, one per rule and MoE layer for routed experts and routers, MTP apart.
    """
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    if tp < 1 or nh % tp or (nkv % tp and tp % nkv):
        raise ErnieError(f"--tp {tp} does not divide {nh} attention heads / {nkv} KV heads")
    return [_rank_tensor(e, count, cfg, tp) for e, count in _grouped(cfg)]


_GROUPED: dict[str, list[tuple[Entry, int]]] = {}


def _grouped(cfg: ErnieConfig) -> list[tuple[Entry, int]]:
    """(first entry, count) per group of the config's counted tensors; cached, ``plan`` asks repeatedly."""
    ident = repr(cfg)
    if ident not in _GROUPED:
        groups: dict[tuple, list] = {}
        for e in tensor_entries(cfg):
            if not (e.required or (cfg.moe_use_aux_free and is_correction_bias(e.key))):
                continue  # a tied head, or a correction bias the config does not use
            by_layer = e.rule.kind in (EXPERT, FP32)
            key = (e.rule.paddle, e.layer if by_layer else -1, e.mtp, e.vision, e.shape)
            groups.setdefault(key, [e, 0])[1] += 1
        if len(_GROUPED) >= 16:
            _GROUPED.clear()
        _GROUPED[ident] = [(e, n) for e, n in groups.values()]
    return _GROUPED[ident]


def _rank_tensor(e: Entry, count: int, cfg: ErnieConfig, tp: int) -> Tensor:
    """``count`` tensors like ``e`` as one rank holds them: heads and MLP widths divided by ``tp``, routed
    experts divided whole (``ceil(E/tp)`` per rank), the vocabulary ``ceil(V/tp)`` rows; the rest replicated."""
    rule = e.rule
    k, n = e.shape if len(e.shape) == 2 else (1, e.shape[0])
    if rule.kind == EXPERT:
        count = _cdiv(count, tp)
    elif rule.op in (QKV, QKV_BIAS):
        n = (cfg.num_attention_heads // tp + 2 * max(1, cfg.num_key_value_heads // tp)) * cfg.head_dim
    elif rule.op in (GATE_UP, GATE_UP_BIAS):
        n = 2 * _cdiv(n // 2, tp)
    elif rule.tp == ROW and len(e.shape) == 2:
        k = _cdiv(k, tp)
    elif rule.kind == EMBED:
        k, n = (k, _cdiv(n, tp)) if rule.op == LM_HEAD else (_cdiv(k, tp), n)
    if e.mtp or e.vision:
        active = 0
    elif rule.kind == EXPERT:
        active = min(cfg.moe_k, count)
    elif rule.kind == EMBED and rule.op != LM_HEAD:
        active = count if cfg.tie_word_embeddings else 0  # the input embedding is a lookup
    else:
        active = -1
    return Tensor(e.key, k, n, count, rule.kind, e.layer, active, e.mtp)


# --------------------------------------------------------------------------- bytes
def linear_bytes(k: int, n: int, q: str, hp: int) -> int:
    """Bytes of one [k, n] linear stored as ``q`` (spec/quantized_formats.md); ``hp`` for fp32/bf16."""
    if q == "fp32":
        return 4 * k * n
    if q == "bf16":
        return hp * k * n
    if q == "wint8":
        return k * n + 2 * n
    if q == "wint4":
        return _cdiv(k * n, 2) + 2 * n
    if q == "fp8":
        return k * n + 4 * _cdiv(k, 128) * _cdiv(n, 128)
    if q == "wint2":  # quant_weight [K/4,N] u8, local scales [K/128,N] u8, super bf16, code scale/zp f32
        return _cdiv(k, 4) * n + _cdiv(k, 128) * n + 2 * n + 8 * n
    raise ErnieError(f"unknown storage {q!r}")


def tensor_bytes(t: Tensor, scheme: Scheme, hp: int, count: int | None = None) -> int:
    count = t.count if count is None else count
    if t.kind == "fp32":
        return 4 * t.k * t.n * count
    if t.kind in ("embed", "norm", "vision"):
        return hp * t.k * t.n * count
    q = scheme.dense
    if t.kind == "expert":
        q = "wint4" if scheme.moe == "wint2" and t.layer <= scheme.moe_w4_end else scheme.moe
    return linear_bytes(t.k, t.n, q, hp) * count


def _hp(scheme: Scheme, device: str, cfg: ErnieConfig) -> int:
    """Bytes per element of unquantized tensors on ``device``."""
    if device == "cpu" or scheme.dense == "fp32" or cfg.dtype == "float32":
        return 4
    return 2


# --------------------------------------------------------------------------- plan
@dataclass
class MemoryPlan:
    """All figures in bytes or counts; ``*_per_rank`` are for one tensor-parallel rank."""

    model: str
    family: str
    device: str
    quantization: str
    tp: int
    context: int
    batch: int
    params_total: int
    params_active: int
    params_mtp: int
    params_vision: int
    checkpoint_bytes: int
    weight_bytes: int
    weight_bytes_per_rank: int
    active_weight_bytes_per_token: int
    kv_bytes_per_token: int
    kv_bytes: int
    kv_bytes_per_rank: int
    activation_bytes_per_rank: int
    runtime_bytes_per_rank: int
    total_bytes_per_rank: int
    host_bytes_per_rank: int
    fit: dict = field(default_factory=dict)

    def resident_bytes(self) -> int:
        """What a loaded, idle process holds on one rank: weights plus the runtime (no KV, no activations)."""
        return self.weight_bytes_per_rank + self.runtime_bytes_per_rank

    def to_dict(self) -> dict:
        return asdict(self)


def plan(cfg: ErnieConfig, *, quantization: str | None = None, context: int = 4096, batch: int = 1,
         tp: int = 1, device: str = "gpu", model: str = "") -> MemoryPlan:
    """MemoryPlan memory for ``cfg`` served with ``batch`` sequences of ``context`` tokens on ``tp`` ranks."""
    if device not in ("cpu", "gpu"):
        raise ErnieError(f"--device must be cpu or gpu, not {device!r}")
    if context < 1 or batch < 1:
        raise ErnieError("--context and --batch must be positive")
    scheme = scheme_for(quantization, cfg)
    hp, disk_hp = _hp(scheme, device, cfg), 4 if cfg.dtype == "float32" else 2
    disk = scheme if scheme.quantized else Scheme("bf16", "bf16")  # as stored: checkpoint dtype
    whole, rank = inventory(cfg, 1), inventory(cfg, tp)
    kv_b = 4 if hp == 4 else 2
    kv_heads = max(1, cfg.num_key_value_heads // tp)
    kv_tok = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * kv_b
    kv_tok_rank = 2 * cfg.num_hidden_layers * kv_heads * cfg.head_dim * kv_b
    copies_head = device == "cpu" and cfg.tie_word_embeddings and not scheme.quantized  # see loading.load
    head_copy = hp * _cdiv(cfg.vocab_size, tp) * cfg.hidden_size if copies_head else 0
    weights_rank = sum(tensor_bytes(t, scheme, hp) for t in rank) + head_copy
    act = _activations(cfg, rank, scheme, hp, device, tp, context, batch)
    runtime = CPU_RUNTIME_BYTES if device == "cpu" else GPU_RUNTIME_BYTES
    kv_rank = kv_tok_rank * context * batch
    total = weights_rank + kv_rank + act + runtime
    # GPU host side: the runtime plus two float32 copies of the largest tensor (the loader streams groups).
    staging = 2 * 4 * max(t.k * t.n for t in rank)
    host = total if device == "cpu" else GPU_HOST_RUNTIME_BYTES + staging
    name = scheme.name if scheme.quantized or device == "gpu" else "fp32"  # CPU computes in float32
    p = MemoryPlan(model=model, family=cfg.family, device=device, quantization=name, tp=tp,
             context=context, batch=batch,
             params_total=sum(t.params for t in whole),
             params_active=sum(t.active_params for t in whole),
             params_mtp=sum(t.params for t in whole if t.mtp),
             params_vision=sum(t.params for t in whole if t.kind == "vision"),
             checkpoint_bytes=sum(tensor_bytes(t, disk, disk_hp) for t in whole),
             weight_bytes=sum(tensor_bytes(t, scheme, hp) for t in whole) + head_copy * tp,
             weight_bytes_per_rank=weights_rank,
             active_weight_bytes_per_token=sum(tensor_bytes(t, scheme, hp, _active(t)) for t in whole),
             kv_bytes_per_token=kv_tok, kv_bytes=kv_tok * context * batch, kv_bytes_per_rank=kv_rank,
             activation_bytes_per_rank=act, runtime_bytes_per_rank=runtime, total_bytes_per_rank=total,
             host_bytes_per_rank=host)
    p.fit = fit(p, cfg, quantization)
    return p


def _active(t: Tensor) -> int:
    return t.count if t.active < 0 else t.active


def _activations(cfg, rank, scheme, hp, device, tp, context, batch) -> int:
    """Peak workspace of one layer while prefilling ``batch`` x ``context`` tokens on one rank."""
    act_b = 4 if hp == 4 else 2
    heads, kv = cfg.num_attention_heads // tp, max(1, cfg.num_key_value_heads // tp)
    mlp = _cdiv(cfg.intermediate_size, tp)
    if cfg.is_moe:
        mlp = max(mlp, _cdiv((cfg.moe_k + cfg.moe_num_shared_experts) * cfg.moe_intermediate_size, tp))
    h, hd, tokens = cfg.hidden_size, cfg.head_dim, batch * context
    per_token = 3 * h + (2 * heads + 2 * kv) * hd + 3 * mlp
    scores = batch * heads * context * context * 4 if device == "cpu" else 0  # eager CPU attention
    logits = batch * _cdiv(cfg.vocab_size, tp) * 4
    dequant = 0
    if device == "cpu" and scheme.quantized:  # one layer's used linears dequantized to float32
        per_layer: dict[int, int] = {}
        for t in rank:
            if t.kind == "expert":
                per_layer[t.layer] = per_layer.get(t.layer, 0) + 4 * t.k * t.n * max(t.active, 0)
        shared = sum(4 * t.k * t.n for t in rank if t.kind == "linear" and not t.mtp)
        dequant = shared // max(1, cfg.num_hidden_layers) + max(per_layer.values(), default=0)
    return tokens * per_token * act_b + scores + logits + dequant


def fit(p: MemoryPlan, cfg: ErnieConfig, quantization: str | None) -> dict:
    """The smallest common card (GPU) or host RAM size (CPU) that holds one rank; else a --tp hint."""
    if p.device == "cpu":
        need = p.total_bytes_per_rank * p.tp
        for gb in HOST_RAM_GB:
            if need <= gb * GiB * HOST_USABLE:
                return {"kind": "host_ram", "name": f"{gb} GB host RAM", "gb": gb}
        return {"kind": "none", "name": f"more than {HOST_RAM_GB[-1]} GB host RAM"}
    for gb, name in GPUS:
        if p.total_bytes_per_rank <= gb * GiB * GPU_USABLE:
            return {"kind": "gpu", "name": name, "gb": gb, "count": p.tp}
    hint = None
    for tp in (2, 4, 8, 16, 32, 64):
        if tp <= p.tp or cfg.num_attention_heads % tp:
            continue
        try:
            q = plan(cfg, quantization=quantization, context=p.context, batch=p.batch, tp=tp)
        except ErnieError:
            continue
        if q.fit.get("kind") == "gpu":
            hint = tp
            break
    return {"kind": "none", "name": f"no single {GPUS[-1][0]} GB card per rank", "min_tp": hint}


def human(n: float) -> str:
    """Bytes as GiB/MiB text."""
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def summary_lines(p: MemoryPlan) -> list[str]:
    """Human-readable planner output."""
    f = p.fit
    fit_text = (f"{f['count']} x {f['name']}" if f.get("kind") == "gpu" else f["name"])
    if f.get("min_tp"):
        fit_text += f" (try --tp {f['min_tp']})"
    return [
        f"model            {p.model} ({p.family}), {p.quantization} on {p.device}, tp={p.tp}",
        f"parameters       {p.params_total / 1e9:.2f}B total, {p.params_active / 1e9:.2f}B active per token"
        f" (MTP {p.params_mtp / 1e9:.2f}B, vision {p.params_vision / 1e9:.2f}B)",
        f"checkpoint       {human(p.checkpoint_bytes)}",
        f"weights          {human(p.weight_bytes)} resident (all experts), {human(p.weight_bytes_per_rank)}/rank;"
        f" {human(p.active_weight_bytes_per_token)} read per token",
        f"kv cache         {human(p.kv_bytes_per_token)}/token; {human(p.kv_bytes)} for batch {p.batch} x"
        f" {p.context} tokens ({human(p.kv_bytes_per_rank)}/rank)",
        f"activations      {human(p.activation_bytes_per_rank)}/rank (prefill peak)",
        f"runtime          {human(p.runtime_bytes_per_rank)}/rank",
        f"total per rank   {human(p.total_bytes_per_rank)} (host {human(p.host_bytes_per_rank)})",
        f"fits             {fit_text}",
    ]
