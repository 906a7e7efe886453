"""Describe a checkpoint folder: format, family, dims, layer kinds, parameter counts, dtypes, the CPU memory
of each storage format it can be served in, problems."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from converters.expected import expected_tensors
from converters.rules import is_tied_head_copy, mtp_layers_in
from converters.tensor_groups import analyse
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.planning.memory import human, plan
from ernie_paddle.quant.config import ONLINE_METHODS


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def parameter_counts(analysis, cfg) -> dict[str, int]:
    """Total, MTP and active (per-token) parameters from the Paddle-layout shapes.

    A quantized linear counts once, with the shape of the weight it stands for (packed bytes and scales
    are storage, not parameters).
    """
    total = mtp = experts = 0
    expected = expected_tensors(cfg, max(cfg.num_nextn_predict_layers, 8))
    for m, _keys, pshape in analysis.groups:
        if m.variant and m.variant != "q":
            continue
        key = m.weight_key()
        n = _numel(expected[key].shape if m.variant else pshape)
        if is_tied_head_copy(key, cfg):
            continue
        total += n
        if m.mtp:
            mtp += n
        elif m.expert is not None:
            experts += n
    idle = experts * (cfg.moe_num_experts - cfg.moe_k) // cfg.moe_num_experts if cfg.is_moe else 0
    return {"total": total, "mtp": mtp, "active": total - mtp - idle}


def cpu_memory(cfg) -> dict[str, dict]:
    """Resident CPU bytes (``--engine auto``) per storage format the checkpoint can be served in: as stored
    for a quantized or VL checkpoint, else float32, bf16 and each ``--quantization``; ``weights`` and an
    idle process (weights + runtime, no KV cache). ``{"error": ...}`` when the planner cannot plan it."""
    text = cfg.family in ("dense", "moe") and not cfg.quantization_config
    try:
        plans = [plan(cfg, quantization=q, device="cpu") for q in (("fp32", "bf16", *ONLINE_METHODS) if text else (None,))]
    except ErnieError as e:
        return {"error": str(e)}
    return {p.quantization: {"engine": p.engine, "weights": p.weight_bytes, "resident": p.resident_bytes()}
            for p in plans}


def inspect_checkpoint(path: str | Path) -> dict:
    """A JSON-able report; ``problems`` lists every inconsistency found (empty when clean)."""
    ckpt = open_checkpoint(path)
    cfg = ckpt.config
    analysis = analyse(ckpt)
    kinds = ["moe" if cfg.is_moe_layer(i) else "dense" for i in range(cfg.num_hidden_layers)]
    dtypes = Counter(ckpt.dtype_code(k) for k in ckpt.keys())
    return {
        "path": str(ckpt.folder),
        "format": ckpt.format,
        "family": cfg.family,
        "architecture": cfg.to_dict(ckpt.format)["architectures"][0],
        "dims": {"vocab": cfg.vocab_size, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                 "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                 "head_dim": cfg.head_dim, "intermediate": cfg.intermediate_size,
                 "experts": cfg.moe_num_experts, "top_k": cfg.moe_k,
                 "moe_intermediate": cfg.moe_intermediate_size,
                 "shared_experts": cfg.moe_num_shared_experts},
        "layer_kinds": kinds,
        "mtp_layers": mtp_layers_in(m.paddle_key() for m, _keys, _shape in analysis.groups),
        "tied_embeddings": cfg.tie_word_embeddings,
        "config_dtype": cfg.dtype,
        "parameters": parameter_counts(analysis, cfg),
        "dtypes": dict(sorted(dtypes.items())),
        "tensors": len(ckpt.specs),
        "bytes": ckpt.total_bytes,
        "shards": [f.name for f in ckpt.files],
        "quantization": cfg.quantization_config,
        "cpu_memory": cpu_memory(cfg),
        "problems": [str(p) for p in analysis.problems],
    }


def format_report(report: dict) -> str:
    """Human-readable text for ``ernie-paddle inspect``."""
    d, p = report["dims"], report["parameters"]
    lines = [
        f"{report['path']}",
        f"  format        {report['format']} ({report['architecture']}, family {report['family']})",
        f"  dims          vocab {d['vocab']}, hidden {d['hidden']}, layers {d['layers']}, heads "
        f"{d['heads']}/{d['kv_heads']}, head_dim {d['head_dim']}, intermediate {d['intermediate']}",
    ]
    if d["experts"]:
        lines.append(f"  moe           {d['experts']} experts, top-{d['top_k']}, width "
                     f"{d['moe_intermediate']}, shared {d['shared_experts']}")
    kinds = report["layer_kinds"]
    lines += [
        f"  layers        {kinds.count('dense')} dense, {kinds.count('moe')} moe "
        f"({''.join('M' if k == 'moe' else 'D' for k in kinds)}), mtp {report['mtp_layers']}",
        f"  parameters    total {p['total']:,}, active {p['active']:,}, mtp {p['mtp']:,}",
        f"  tensors       {report['tensors']} in {len(report['shards'])} file(s), "
        f"{report['bytes'] / 1e6:.1f} MB, dtypes {report['dtypes']}",
        f"  embeddings    {'tied' if report['tied_embeddings'] else 'untied'}; config dtype "
        f"{report['config_dtype']}",
    ]
    if report["quantization"]:
        lines.append(f"  quantization  {report['quantization']}")
    memory = report["cpu_memory"]
    if "error" in memory:
        lines.append(f"  cpu memory    unknown: {memory['error']}")
    for i, (fmt, m) in enumerate(() if "error" in memory else memory.items()):
        lines.append(f"  {'cpu memory' if i == 0 else '':<13} {fmt:<6} weights {human(m['weights'])}, idle process "
                     f"{human(m['resident'])} ({m['engine']})")
    if report["problems"]:
        lines.append(f"  PROBLEMS ({len(report['problems'])}):")
        lines += [f"    - {msg}" for msg in report["problems"]]
    else:
        lines.append("  problems      none")
    return "\n".join(lines)
