"""``ernie-paddle generate``: run the model on token ids or text and print the continuation."""

from pathlib import Path

import click

from ernie_paddle.cli._common import mmap_options
from ernie_paddle.cli._tp import run_distributed, tp_options
from ernie_paddle.errors import ErnieError

COMMANDS = []


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ErnieError(f"--prompt-ids must be integers separated by commas, got {text!r}") from None
    if not ids:
        raise ErnieError("--prompt-ids is empty")
    return ids


def load_tokenizer(model: str):
    """The checkpoint's tokenizer; an ErnieError when the folder has none."""
    try:
        from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer
    except ImportError:
        raise ErnieError("text prompts need a tokenizer, which this installation lacks; "
                         "pass --prompt-ids instead", model) from None
    return ErnieTokenizer.from_folder(model)


def collect_prompts(model, prompts, prompt_ids, prompts_file):
    """(list of id lists, tokenizer or None) from exactly one of the three prompt options."""
    given = [bool(prompts), bool(prompt_ids), prompts_file is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of --prompt, --prompt-ids or --prompts-file")
    if prompt_ids:
        return [parse_ids(p) for p in prompt_ids], None
    if prompts_file is not None:
        from ernie_paddle.runtime.generation import read_prompts_file

        items = read_prompts_file(prompts_file)
    else:
        items = list(prompts)
    if all(isinstance(p, list) for p in items):
        return items, None
    tok = load_tokenizer(model)
    return [p if isinstance(p, list) else tok.encode(p) for p in items], tok


def _fmt(ids) -> str:
    return ",".join(str(int(i)) for i in ids)


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (needs the checkpoint's tokenizer).")
@click.option("--prompt-ids", multiple=True, help='Prompt token ids, e.g. "1,2,3" (repeat for a batch).')
@click.option("--prompts-file", type=click.Path(path_type=Path), help="One prompt per line, or JSON.")
@click.option("--max-new-tokens", type=int, default=None, help="Default: generation_config.json or 64.")
@click.option("--min-new-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None, help="Sampling temperature (enables sampling).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling mass (enables sampling).")
@click.option("--top-k", type=int, default=None, help="Sample from the k best tokens (enables sampling).")
@click.option("--repetition-penalty", type=float, default=None)
@click.option("--stop-ids", default=None, help='Stop token ids, e.g. "2" ("" disables stopping).')
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated.")
@click.option("--device", default=None, help="cpu or gpu[:N] (default: gpu when available).")
@click.option("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default).")
@click.option("--engine", type=click.Choice(["auto", "predictor", "dygraph"]), default="auto", show_default=True,
              help="predictor: exported Paddle Inference program (auto: wherever the model supports it).")
@click.option("--speculative", type=click.Choice(["mtp"]), default=None,
              help="Speculative decoding: draft with the checkpoint's MTP layer, verify with the model "
                   "(dygraph engine).")
@click.option("--num-draft", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tokens drafted per step with --speculative.")
@click.option("--image", "images", multiple=True,
              help="Image for an ERNIE 4.5 VL model: a local path or a data: URL (repeatable).")
@click.option("--quantization", type=click.Choice(["wint8", "wint4", "fp8"]), default=None,
              help="Quantize the linears on load (weight-only int8/int4 or block-wise FP8). "
                   "Prequantized checkpoints load quantized without it.")
@click.option("--activations", type=click.Choice(["auto", "float32", "int8"]), default=None,
              help="Activations of wint8/wint4 linears on the predictor: float32 (exact) or int8 (integer dot "
                   "products, as llama.cpp's Q8_0/Q4_0). Default auto: int8 with the compiled CPU operators.")
@mmap_options
@tp_options
def generate(model, prompts, prompt_ids, prompts_file, max_new_tokens, min_new_tokens, temperature, top_p,
             top_k, repetition_penalty, stop_ids, seed, stream, device, dtype, engine, speculative, num_draft,
             images, tp, moe_parallel, nnodes, master, quantization=None, activations=None, mmap=None,
             offload_folder=None):
    """Generate a continuation of each prompt with the model in MODEL (Paddle or HF folder).

    Greedy unless --temperature, --top-p or --top-k is given. Token-id prompts print new token ids, one
    line per prompt; text prompts print the decoded text.
    """
    from ernie_paddle.api import choose_engine, load

    options = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
                   top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
    if stop_ids is not None:
        options["stop_token_ids"] = parse_ids(stop_ids) if stop_ids.strip() else []
    if images:
        if len(prompts) != 1 or prompt_ids or prompts_file:
            raise click.UsageError("--image goes with exactly one --prompt")
        from ernie_paddle.cli.vl_cmd import run_vl

        run_vl(model, prompts[0], images, {k: v for k, v in options.items() if v is not None}, stream,
               device, dtype)
        return
    batch, tok = collect_prompts(model, prompts, prompt_ids, prompts_file)
    if stop_ids is None and tok is not None and tok.stop_token_ids:
        options["stop_token_ids"] = tok.stop_token_ids
    if speculative:  # the MTP draft runs on the eager model
        options.update(speculative=speculative, num_draft=num_draft)
    engine = choose_engine(model, engine, quantization, speculative, tp, device,
                           mapped=bool(mmap) or offload_folder is not None)
    run_distributed(tp, nnodes, master)  # outside a job, --tp N re-runs this command on N ranks and exits
    runtime = load(model, dtype=dtype, device=device, engine=engine, quantization=quantization, tp=tp,
                   moe=moe_parallel, activations=activations, mmap=mmap, offload_folder=offload_folder)
    if stream:
        _stream(runtime, batch, tok, options)
    else:
        out = runtime.generate(batch, **options)
        width = max(map(len, batch))
        for row in out[:, width:]:
            click.echo(_fmt(row) if tok is None else tok.decode(row.tolist(), skip_special_tokens=True))
    stats = runtime.speculative_stats if speculative else None
    if stats is not None:
        click.echo(f"speculative mtp: acceptance rate {stats.acceptance_rate:.3f} ({stats.accepted}/"
                   f"{stats.drafted} drafts), {stats.tokens_per_forward:.2f} tokens per main-model forward",
                   err=True)


def _stream(runtime, batch, tok, options) -> None:
    if tok is not None and len(batch) == 1:
        detok = tok.detokenizer()
        for step in runtime.stream(batch, **options):
            click.echo(detok.add([int(step[0])]), nl=False)
        click.echo(detok.flush())
        return
    for step in runtime.stream(batch, **options):  # one line per step, one id per prompt
        click.echo(_fmt(step) if len(batch) > 1 else str(int(step[0])))


COMMANDS.append(generate)
