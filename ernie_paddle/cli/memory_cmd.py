"""``ernie-paddle memory``: plan weights, KV cache and workspace for a model folder, repo id or family."""

from __future__ import annotations

import json

import click

from ernie_paddle.planning.memory import QUANTIZATIONS, plan, summary_lines
from ernie_paddle.planning.model_ref import default_quantization, load_config


@click.command("memory")
@click.argument("model")
@click.option("--quantization", "-q", type=click.Choice(QUANTIZATIONS), default=None,
              help="Weight storage (default: what the config declares, else its dtype).")
@click.option("--context", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Tokens per sequence held in the KV cache.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Concurrent sequences.")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel ranks.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True,
              help="cpu: unquantized weights are float32 (no bf16 kernels on Paddle CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def memory(model, quantization, context, batch, tp, device, as_json):
    """Memory needed to serve MODEL (a folder, a cached repo id, or a family: 0.3B, 21B-A3B, 300B-A47B,
    VL-28B-A3B, VL-424B-A47B); counts ALL experts of an MoE model."""
    cfg = load_config(model)
    if quantization is None and not cfg.quantization_config:
        quantization = default_quantization(model)
    p = plan(cfg, quantization=quantization, context=context, batch=batch, tp=tp, device=device, model=model)
    click.echo(json.dumps(p.to_dict(), indent=2) if as_json else "\n".join(summary_lines(p)))


COMMANDS = [memory]
