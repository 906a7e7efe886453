"""bench_scale.py's figures: disk plan, the planner's figure per step, the targets of issue 17, tables.

Planner figures (MB = 2^20 bytes), each with its basis in the step's ``planner_basis``:
- export: ``ernie_paddle.planning.export_peak.export_peak`` of the exported checkpoint (process baseline, the
  small float32 tensors kept for the parameter file, and the largest tensor group in flight: its source and
  stored bytes, and a float32 copy when ``--direct`` quantizes on the fly);
- generate: ``plan(cfg, "wint4", context=prompt + new tokens, batch=1, device="cpu").host_bytes_per_rank``
  (every weight resident);
- export_bf16: the streaming export peak of the bf16 checkpoint (its weights stay bf16);
- mmap: ``plan(..., "bf16", mmap=True)`` (resident: the non-expert weights, KV cache and workspace; the
  routed experts mapped) + the mapped pages the runtime keeps before it drops them
  (``planning.host_ram.MAPPED_BUDGET`` of RAM) + one token's experts (``mapped_bytes_per_token``): VmHWM counts the
  mapped pages a step touches;
- quantize: issue 17's streaming bound, the largest tensor in float32 + 600 MB (the planner has no figure for
  a checkpoint-to-checkpoint conversion);
- the checkpoint writer, the GGUF writers and llama.cpp: none.
"""

from __future__ import annotations

import math

MB = 1 << 20
RSS_LIMIT_MB = 20 * 1024  # "never above 20 GB"
STREAM_SLACK = 600 * MB
PLANNER_STEPS = ("quantize_wint4", "export_wint4", "generate_wint4", "export_bf16", "mmap_bf16")
OUR_STEPS = ("write_bf16", *PLANNER_STEPS)


def planner_figures(cfg, context: int, direct: bool = False) -> dict[str, tuple[float | None, str]]:
    """step -> (planner MB or None, basis); ``direct``: the export quantizes the bf16 checkpoint on the fly."""
    from ernie_paddle.planning.export_peak import export_peak_bytes
    from ernie_paddle.planning.host_ram import MAPPED_BUDGET, host_ram_bytes
    from ernie_paddle.planning.memory import inventory, plan
    from ernie_paddle.quant.config import online

    def serving(quantization: str, **extra) -> float:
        p = plan(cfg, quantization=quantization, context=context, batch=1, device="cpu", **extra)
        return p.host_bytes_per_rank / MB

    stream = (4 * max(t.k * t.n for t in inventory(cfg)) + STREAM_SLACK) / MB
    if direct:
        export, source = export_peak_bytes(cfg, "wint4") / MB, "the bf16 checkpoint, quantized on the fly"
    else:
        quantized = cfg.replace(quantization_config=online("wint4").to_dict(cfg.num_hidden_layers))
        export, source = export_peak_bytes(quantized) / MB, "the wint4 checkpoint"
    mapped = plan(cfg, quantization="bf16", context=context, batch=1, device="cpu", mmap=True)
    budget = int(MAPPED_BUDGET * (host_ram_bytes() or 8 << 30))
    return {
        "quantize_wint4": (stream, "issue 17 streaming bound: largest tensor in float32 + 600 MB"),
        "export_wint4": (export, f"planner: streaming export peak of {source}"),
        "generate_wint4": (serving("wint4"), f"planner: wint4 resident, cpu, context {context}, batch 1"),
        "export_bf16": (export_peak_bytes(cfg) / MB, "planner: streaming export peak of the bf16 checkpoint"),
        "mmap_bf16": ((mapped.host_bytes_per_rank + budget + mapped.mapped_bytes_per_token) / MB,
                      f"planner: bf16 mmap resident (cpu, context {context}) + the runtime's mapped-page budget "
                      f"({MAPPED_BUDGET:.0%} of RAM) + one token's experts"),
    }


def disk_phases(cfg, checkpoint_bytes: int, shard_bytes: int, direct: bool, gguf_sizes: dict) -> dict:
    """Bytes on disk at the fullest moment of each phase (bf16 checkpoint B, quantized checkpoint Q,
    export E at the planner's compact wint4 size, GGUFs; the bf16 export consumes B's shards as it streams,
    and the bf16 GGUF is drawn again from the generator once B is gone)."""
    from ernie_paddle.planning.memory import plan

    p = plan(cfg, quantization="wint4", device="cpu")
    b, q, e = checkpoint_bytes, p.checkpoint_bytes, p.weight_bytes
    phases = {"write_bf16": b, "export_wint4": b + e if direct else b + q + e}
    if not direct:
        phases["quantize_wint4"] = b + q
    if "Q4_0" in gguf_sizes:
        phases["gguf_q4_0"] = b + gguf_sizes["Q4_0"]
    phases["export_bf16"] = b + shard_bytes
    if "BF16" in gguf_sizes:
        phases["gguf_bf16"] = gguf_sizes["BF16"]
    return phases


def _ok(step: dict | None) -> bool:
    return bool(step) and step["status"] == "ok"


def targets(steps: dict[str, dict], decode: dict[str, dict], shard_bytes: int) -> list[dict]:
    """Issue 17's targets for the steps of this run; a step that did not run meets none of its targets."""
    out = []

    def add(name, value, goal, met):
        out.append({"name": name, "value": value, "goal": goal, "met": bool(met)})

    for name in (n for n in OUR_STEPS if n in steps):  # quantize_wint4 is no step of a --direct run
        step = steps[name]
        peak = step["peak_rss_mb"] if _ok(step) else None
        label = "completes with peak RSS < 20 GB" if name == "mmap_bf16" else "peak RSS < 20 GB"
        add(f"{name}: {label}", peak, f"< {RSS_LIMIT_MB} MB", peak is not None and peak < RSS_LIMIT_MB)
        if name == "write_bf16":
            bound = shard_bytes / MB + 300
            add(f"{name}: peak RSS <= one shard + 300 MB", peak, f"<= {bound:.0f} MB",
                peak is not None and peak <= bound)
        elif name in PLANNER_STEPS:
            figure = step["planner_mb"]
            ratio = round(peak / figure, 3) if peak is not None and figure else None
            add(f"{name}: peak RSS <= 1.1x the planner's figure", ratio, "<= 1.1",
                ratio is not None and ratio <= 1.1)
    ours, theirs = decode.get("ours wint4"), decode.get("llama.cpp Q4_0")
    ratio = None
    if _ok(ours) and _ok(theirs) and theirs["tok_s"] > 0:
        ratio = round(ours["tok_s"] / theirs["tok_s"], 3)
    add("decode tok/s: ours wint4 / llama.cpp Q4_0", ratio, ">= 1.0", ratio is not None and ratio >= 1.0)
    return out


def _cell(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header, *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def tables(report: dict) -> str:
    steps = _table(["step", "status", "wall s", "peak RSS MB", "planner MB", "note"],
                   [[s["name"], s["status"], s["wall_s"], s["peak_rss_mb"], s["planner_mb"], s.get("reason", "")]
                    for s in report["steps"]])
    decode = _table(["engine", "status", "tok/s", "prefill ms", "peak RSS MB", "disk MB/token", "load s"],
                    [[d["engine"], d["status"], d.get("tok_s"), d.get("prefill_ms"), d.get("peak_rss_mb"),
                      d.get("disk_read_mb_per_token"), d.get("load_s")] for d in report["decode"]])
    goals = _table(["target", "value", "goal", "met"],
                   [[t["name"], t["value"], t["goal"], "yes" if t["met"] else "NO"] for t in report["targets"]])
    verdict = "all targets met" if report["targets_met"] else "targets not met"
    return "\n".join([*steps, "", *decode, "", *goals, "", verdict])
