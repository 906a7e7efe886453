"""``ernie-paddle memory``: plan weights, KV cache and workspace for a model folder, repo id or family."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from ernie_paddle.planning.export_peak import export_peak
from ernie_paddle.planning.host_ram import host_ram_bytes, ram_advice
from ernie_paddle.planning.memory import GiB, format_rows, format_table, human, plan, summary_lines
from ernie_paddle.planning.model_ref import default_quantization, load_config
from ernie_paddle.planning.storage import QUANTIZATIONS


@click.command("memory")
@click.argument("model")
@click.option("--quantization", "-q", type=click.Choice(QUANTIZATIONS), default=None,
              help="Weight storage (default: what the config declares, else its dtype).")
@click.option("--context", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Tokens per sequence held in the KV cache.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Concurrent sequences.")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel ranks.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True,
              help="cpu: the predictor holds every weight in its stored format (bf16 2 bytes, quantized "
                   "formats compact); the dygraph engine (VL, --tp) widens unquantized weights to float32.")
@click.option("--mmap", is_flag=True,
              help="CPU: the routed experts served mapped from the export (--mmap / --offload-folder of "
                   "generate and serve): resident = the non-expert weights, KV cache and workspace.")
@click.option("--ram", type=click.FloatRange(min=0, min_open=True), default=None,
              help="CPU: host RAM in GB (2^30 bytes) to check the plan against (default: this machine's).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (per-format rows under \"formats\").")
def memory(model, quantization, context, batch, tp, device, mmap, ram, as_json):
    """Memory needed to serve MODEL (a folder, a cached repo id, or a family: 0.3B, 21B-A3B, 300B-A47B,
    VL-28B-A3B, VL-424B-A47B); counts ALL experts of an MoE model, and compares every storage format."""
    cfg = load_config(model)
    if quantization is None and not cfg.quantization_config:
        quantization = default_quantization(model)
    options = dict(context=context, batch=batch, tp=tp, device=device)
    p = plan(cfg, quantization=quantization, model=model, mmap=mmap, **options)
    rows = format_rows(cfg, **options)
    extra, lines = {}, []
    if device == "cpu":
        ram_bytes = int(ram * GiB) if ram else host_ram_bytes()
        extra["ram_bytes"], extra["advice"] = ram_bytes, ram_advice(p, ram_bytes) if ram_bytes else []
        lines = extra["advice"]
        if p.engine == "predictor":
            peak = export_peak(cfg, quantization)
            extra["export_peak"] = {**asdict(peak), "total": peak.total}
            lines = [f"export peak      {human(peak.total)} (streaming: {human(peak.baseline)} process, "
                     f"{human(peak.source + peak.stored + peak.float32)} for the largest group {peak.group})",
                     *lines]
    if as_json:
        click.echo(json.dumps({**p.to_dict(), **extra, "formats": rows}, indent=2))
    else:
        click.echo("\n".join([*summary_lines(p), *lines, "", "per format:", *format_table(rows)]))


COMMANDS = [memory]
