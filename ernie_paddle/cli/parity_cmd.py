"""``ernie-paddle parity``: this runtime vs transformers on the same weights; exit 1 past a threshold."""

import json
from pathlib import Path

import click

from ernie_paddle.cli._tp import run_distributed, tp_options
from ernie_paddle.errors import ErnieError

COMMANDS = []


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--reference", type=click.Path(path_type=str), default=None,
              help="HF folder for transformers (default: MODEL, mapped to HF layout in memory if Paddle).")
@click.option("--prompts-file", type=click.Path(path_type=Path), default=None,
              help="Prompts (token ids, or text with a tokenizer); default: fixed random prompts.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True,
              help="Length of the greedy continuations compared.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write metrics here.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Max abs logit difference allowed.")
@click.option("--engine", type=click.Choice(["auto", "predictor", "dygraph"]), default="auto", show_default=True,
              help="predictor: exported Paddle Inference program (auto: wherever the model supports it).")
@tp_options
def parity(model, reference, prompts_file, max_new_tokens, json_out, atol, engine, tp, moe_parallel, nnodes,
           master):
    """Compare MODEL's logits and greedy continuations with transformers' ERNIE 4.5 (fp32, CPU).

    With --tp every rank runs the transformers reference too (it is compared on rank 0's console).
    """
    try:
        from converters.parity import format_table, run_parity
    except ImportError as exc:
        raise ErnieError(f"parity needs torch and transformers (pip install 'ernie-paddle[parity]'): "
                         f"{exc}") from None
    from ernie_paddle.api import choose_engine, load

    engine = choose_engine(model, engine, tp=tp)
    prompts = None
    if prompts_file is not None:
        from ernie_paddle.cli.generate_cmd import collect_prompts

        prompts, _ = collect_prompts(model, (), (), prompts_file)
    runtime = None
    if run_distributed(tp, nnodes, master):
        runtime = load(model, dtype="float32", device="cpu", engine=engine, tp=tp, moe=moe_parallel)
    result = run_parity(model, reference, prompts, max_new_tokens=max_new_tokens, atol=atol, engine=engine,
                        runtime=runtime)
    click.echo(format_table(result))
    if json_out is not None and (runtime is None or runtime.comm.rank == 0):
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not result["passed"]:
        raise click.exceptions.Exit(1)


COMMANDS.append(parity)
