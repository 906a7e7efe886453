"""Memory planner: parameters, resident weight bytes (ALL experts), KV cache, workspace, per-rank TP figures.

Tensor parallel split (per rank): attention heads and dense/shared MLP columns are divided by ``tp``;
routed experts are divided whole (expert parallel, ``ceil(E/tp)`` per rank); embedding and LM head are
vocab-parallel (``ceil(V/tp)`` rows); norms, routers, correction bias, MTP projection and the vision tower
are replicated. KV heads are divided while ``tp <= kv_heads``, then replicated (one per rank).

How each engine holds the weights (``Holding``, per memory kind of ``converters.rules``):
- CPU predictor (what ``--engine auto``, the CLI default, runs for a text model on one rank): every weight
  in its stored format. Linears in the scheme's format: bf16 2 bytes, quantized ones in the compiled
  operators' kernel form (the checkpoint's bytes, bf16 per-channel and super scales widened to float32:
  ``linear_bytes(..., kernel=True)``); the embedding and an untied head in the checkpoint's float format
  (a tied head is the embedding itself); norms, routers and the correction bias float32; no MTP layers
  (the step program does not use them); KV cache float32; the attention operator streams the keys (no
  [T, S] score matrix).
- CPU dygraph (VL models, ``--tp``, ``engine="dygraph"``): Paddle CPU has no bf16 kernels, so every
  unquantized tensor is float32; quantized linears in the kernel form. A tied head also gets a transposed
  float32 copy (``ErnieForCausalLM.cache_head_transpose``) unless the model is quantized; eager attention
  holds the score matrix.
- GPU: unquantized tensors in the checkpoint dtype (bf16), quantized linears as the checkpoint stores them;
  routers and correction bias float32.

Memory-mapped (``mmap=True``: the CPU predictor serving its export's weight file mapped, ``--mmap`` /
``--offload-folder``): every token reads all non-expert weights, so they count as resident; the routed
experts (most of an MoE) are ``mapped_bytes``, paged in from the file as the router picks them and held
only as far as the page cache has room (``mapped_bytes_per_token``: what one token reads of them at most).
A dense model has no routed experts: its mmap plan maps nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from converters.expected import Entry, tensor_entries
from converters.layout_ops import GATE_UP, GATE_UP_BIAS, LM_HEAD, QKV, QKV_BIAS
from converters.rules import EMBED, EXPERT, FP32, NORM, ROW, VISION, is_correction_bias
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.storage import (
    QUANTIZATIONS,
    Holding,
    Scheme,
    cdiv,
    engine_for,
    holding,
    linear_bytes,
    scheme_for,
)

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
        count = cdiv(count, tp)
    elif rule.op in (QKV, QKV_BIAS):
        n = (cfg.num_attention_heads // tp + 2 * max(1, cfg.num_key_value_heads // tp)) * cfg.head_dim
    elif rule.op in (GATE_UP, GATE_UP_BIAS):
        n = 2 * cdiv(n // 2, tp)
    elif rule.tp == ROW and len(e.shape) == 2:
        k = cdiv(k, tp)
    elif rule.kind == EMBED:
        k, n = (k, cdiv(n, tp)) if rule.op == LM_HEAD else (cdiv(k, tp), n)
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
def tensor_bytes(t: Tensor, scheme: Scheme, held: Holding, count: int | None = None) -> int:
    """Bytes of ``count`` (default: all) of the tensors ``t`` stands for, held as ``held`` says."""
    count = t.count if count is None else count
    if t.mtp and not held.mtp:
        return 0
    if t.kind == FP32:
        return 4 * t.k * t.n * count
    per_element = {EMBED: held.embed, NORM: held.norm, VISION: held.vision}.get(t.kind)
    if per_element is not None:
        return per_element * t.k * t.n * count
    q = scheme.dense
    if t.kind == EXPERT:
        q = "wint4" if scheme.moe == "wint2" and t.layer <= scheme.moe_w4_end else scheme.moe
    return linear_bytes(t.k, t.n, q, held.linear, held.kernel) * count


# --------------------------------------------------------------------------- plan
@dataclass
class MemoryPlan:
    """All figures in bytes or counts; ``*_per_rank`` are for one tensor-parallel rank. With ``mmap`` the
    weight figures are the resident part and ``mapped_bytes`` the routed experts served from the file."""

    model: str
    family: str
    device: str
    engine: str
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
    mmap: bool = False
    mapped_bytes: int = 0
    mapped_bytes_per_token: int = 0
    fit: dict = field(default_factory=dict)

    def resident_bytes(self) -> int:
        """What a loaded, idle process holds on one rank: weights plus the runtime (no KV, no activations)."""
        return self.weight_bytes_per_rank + self.runtime_bytes_per_rank

    def to_dict(self) -> dict:
        return asdict(self)


def plan(cfg: ErnieConfig, *, quantization: str | None = None, context: int = 4096, batch: int = 1,
         tp: int = 1, device: str = "gpu", engine: str = "auto", model: str = "", mmap: bool = False) -> MemoryPlan:
    """MemoryPlan memory for ``cfg`` served with ``batch`` sequences of ``context`` tokens on ``tp`` ranks
    by ``engine`` (see ``engine_for``); ``mmap``: the CPU predictor with its routed experts mapped."""
    if device not in ("cpu", "gpu"):
        raise ErnieError(f"--device must be cpu or gpu, not {device!r}")
    if context < 1 or batch < 1:
        raise ErnieError("--context and --batch must be positive")
    scheme = scheme_for(quantization, cfg)
    engine = engine_for(cfg, scheme, device, tp, engine)
    held = holding(cfg, scheme, device, engine)
    if mmap and (device != "cpu" or engine != "predictor"):
        raise ErnieError(f"--mmap maps the weight file of a CPU predictor export; this plan is {engine} on "
                         f"{device} ({cfg.family} model, tp={tp}): plan it with --device cpu on one rank")
    stored = 4 if cfg.dtype == "float32" else 2
    disk, disk_scheme = Holding(stored, stored, stored, stored), scheme if scheme.quantized else Scheme("bf16", "bf16")
    whole, rank = inventory(cfg, 1), inventory(cfg, tp)
    wide = device == "cpu" or held.linear == 4  # KV cache and activations in float32
    kv_b = 4 if wide else 2
    kv_heads = max(1, cfg.num_key_value_heads // tp)
    kv_tok = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * kv_b
    kv_tok_rank = 2 * cfg.num_hidden_layers * kv_heads * cfg.head_dim * kv_b
    dygraph_cpu = device == "cpu" and engine == "dygraph"
    copies_head = dygraph_cpu and cfg.tie_word_embeddings and not scheme.quantized  # see runtime.text
    head_copy = 4 * cdiv(cfg.vocab_size, tp) * cfg.hidden_size if copies_head else 0
    mapped = [t for t in whole if mmap and t.kind == EXPERT]  # mmap plans run on one rank
    mapped_bytes = sum(tensor_bytes(t, scheme, held) for t in mapped)
    weights_rank = sum(tensor_bytes(t, scheme, held) for t in rank) + head_copy - mapped_bytes
    act = _activations(cfg, 4 if wide else 2, dygraph_cpu, tp, context, batch)
    runtime = CPU_RUNTIME_BYTES if device == "cpu" else GPU_RUNTIME_BYTES
    kv_rank = kv_tok_rank * context * batch
    total = weights_rank + kv_rank + act + runtime
    # GPU host side: the runtime plus two float32 copies of the largest tensor (the loader streams groups).
    staging = 2 * 4 * max(t.k * t.n for t in rank)
    host = total if device == "cpu" else GPU_HOST_RUNTIME_BYTES + staging
    name = "fp32" if dygraph_cpu and not scheme.quantized else scheme.name  # dygraph CPU computes in float32
    p = MemoryPlan(model=model, family=cfg.family, device=device, engine=engine, quantization=name, tp=tp,
                   context=context, batch=batch,
                   params_total=sum(t.params for t in whole),
                   params_active=sum(t.active_params for t in whole),
                   params_mtp=sum(t.params for t in whole if t.mtp),
                   params_vision=sum(t.params for t in whole if t.kind == VISION),
                   checkpoint_bytes=sum(tensor_bytes(t, disk_scheme, disk) for t in whole),
                   weight_bytes=sum(tensor_bytes(t, scheme, held) for t in whole) + head_copy * tp - mapped_bytes,
                   weight_bytes_per_rank=weights_rank,
                   active_weight_bytes_per_token=sum(tensor_bytes(t, scheme, held, _active(t)) for t in whole),
                   kv_bytes_per_token=kv_tok, kv_bytes=kv_tok * context * batch, kv_bytes_per_rank=kv_rank,
                   activation_bytes_per_rank=act, runtime_bytes_per_rank=runtime, total_bytes_per_rank=total,
                   host_bytes_per_rank=host, mmap=mmap, mapped_bytes=mapped_bytes,
                   mapped_bytes_per_token=sum(tensor_bytes(t, scheme, held, _active(t)) for t in mapped))
    p.fit = fit(p, cfg, quantization)
    return p


def _active(t: Tensor) -> int:
    return t.count if t.active < 0 else t.active


def _activations(cfg, act_b: int, eager_scores: bool, tp: int, context: int, batch: int) -> int:
    """Peak workspace of one layer while prefilling ``batch`` x ``context`` tokens on one rank; the compiled
    kernels decode quantized weights in registers (no dequantized copy), and only eager CPU attention
    (``eager_scores``) holds the float32 score matrix."""
    heads, kv = cfg.num_attention_heads // tp, max(1, cfg.num_key_value_heads // tp)
    mlp = cdiv(cfg.intermediate_size, tp)
    if cfg.is_moe:
        mlp = max(mlp, cdiv((cfg.moe_k + cfg.moe_num_shared_experts) * cfg.moe_intermediate_size, tp))
    h, hd, tokens = cfg.hidden_size, cfg.head_dim, batch * context
    per_token = 3 * h + (2 * heads + 2 * kv) * hd + 3 * mlp
    scores = batch * heads * context * context * 4 if eager_scores else 0
    logits = batch * cdiv(cfg.vocab_size, tp) * 4
    return tokens * per_token * act_b + scores + logits


def fit(p: MemoryPlan, cfg: ErnieConfig, quantization: str | None) -> dict:
    """The smallest common card (GPU) or host RAM size (CPU) that holds one rank; else a --tp hint. A CPU
    predictor plan of an MoE model adds ``mmap``: the same served with its routed experts mapped."""
    if p.device == "cpu":
        found = _host_fit(p.total_bytes_per_rank * p.tp)
        if p.engine == "predictor" and not p.mmap and cfg.is_moe:
            q = plan(cfg, quantization=quantization, context=p.context, batch=p.batch, device="cpu",
                     engine="predictor", mmap=True)
            found["mmap"] = {"resident": q.total_bytes_per_rank, "mapped": q.mapped_bytes, **q.fit}
        return found
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


def _host_fit(need: int) -> dict:
    for gb in HOST_RAM_GB:
        if need <= gb * GiB * HOST_USABLE:
            return {"kind": "host_ram", "name": f"{gb} GB host RAM", "gb": gb}
    return {"kind": "none", "name": f"more than {HOST_RAM_GB[-1]} GB host RAM"}


def human(n: float) -> str:
    """Bytes as GiB/MiB text."""
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _fit_text(f: dict) -> str:
    text = f"{f['count']} x {f['name']}" if f.get("kind") == "gpu" else f["name"]
    return text + (f" (try --tp {f['min_tp']})" if f.get("min_tp") else "")


def summary_lines(p: MemoryPlan) -> list[str]:
    """Human-readable planner output."""
    return [
        f"model            {p.model} ({p.family}), {p.quantization} on {p.device}, tp={p.tp}, {p.engine} engine",
        f"parameters       {p.params_total / 1e9:.2f}B total, {p.params_active / 1e9:.2f}B active per token"
        f" (MTP {p.params_mtp / 1e9:.2f}B, vision {p.params_vision / 1e9:.2f}B)",
        f"checkpoint       {human(p.checkpoint_bytes)}",
        _weights_line(p),
        f"kv cache         {human(p.kv_bytes_per_token)}/token; {human(p.kv_bytes)} for batch {p.batch} x"
        f" {p.context} tokens ({human(p.kv_bytes_per_rank)}/rank)",
        f"activations      {human(p.activation_bytes_per_rank)}/rank (prefill peak)",
        f"runtime          {human(p.runtime_bytes_per_rank)}/rank",
        f"total per rank   {human(p.total_bytes_per_rank)} (host {human(p.host_bytes_per_rank)})",
        f"fits             {_fit_text(p.fit)}",
        *([f"mmap             {human(m['resident'])} resident + {human(m['mapped'])} routed experts mapped "
           f"(--mmap): fits {_fit_text(m)}"] if (m := p.fit.get("mmap")) else []),
    ]


def _weights_line(p: MemoryPlan) -> str:
    if p.mmap and not p.mapped_bytes:
        return f"weights          {human(p.weight_bytes)} resident (--mmap maps routed experts only; this model has none)"
    if p.mmap:
        return (f"weights          {human(p.weight_bytes)} resident (all but the routed experts) + "
                f"{human(p.mapped_bytes)} mapped (routed experts, up to {human(p.mapped_bytes_per_token)} "
                f"read per token)")
    return (f"weights          {human(p.weight_bytes)} resident (all experts), {human(p.weight_bytes_per_rank)}/rank;"
            f" {human(p.active_weight_bytes_per_token)} read per token")


ROW_FIELDS = ("quantization", "engine", "weight_bytes", "weight_bytes_per_rank", "kv_bytes_per_rank",
              "activation_bytes_per_rank", "runtime_bytes_per_rank", "total_bytes_per_rank", "fit")


def format_rows(cfg: ErnieConfig, formats: tuple[str, ...] = QUANTIZATIONS, **options) -> dict[str, dict]:
    """``ROW_FIELDS`` of the plan for each storage format in ``formats`` (``options``: ``plan``'s, but
    ``quantization``)."""
    return {q: {k: getattr(p, k) for k in ROW_FIELDS}
            for q in formats for p in (plan(cfg, quantization=q, **options),)}


def format_table(rows: dict[str, dict]) -> list[str]:
    """``format_rows`` as text, one line per format; a format the engine widens shows both (bf16>fp32)."""
    lines = [f"{'format':<10} {'weights/rank':>12} {'kv/rank':>11} {'workspace':>11} {'total/rank':>11}  fits"]
    for q, r in rows.items():
        label = q if r["quantization"] == q else f"{q}>{r['quantization']}"
        work = r["activation_bytes_per_rank"] + r["runtime_bytes_per_rank"]
        lines.append(f"{label:<10} {human(r['weight_bytes_per_rank']):>12} {human(r['kv_bytes_per_rank']):>11} "
                     f"{human(work):>11} {human(r['total_bytes_per_rank']):>11}  {_fit_text(r['fit'])}")
    return lines
