"""``ernie-paddle export``: a checkpoint -> a self-describing Paddle Inference folder."""

import time

import click

COMMANDS = []


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--max-seq-len", type=click.IntRange(2), default=None,
              help="Longest prompt + continuation the export accepts (default: max_position_embeddings).")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Most sequences run together.")
@click.option("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default).")
@click.option("--device", default="cpu", show_default=True, help="Device the export is meant for (cpu, gpu).")
@click.option("--quantization", type=click.Choice(["wint8", "wint4", "fp8"]), default=None,
              help="Quantize on load and export the compact weights, like a quantized checkpoint (CPU with the "
                   "compiled operators; elsewhere the program multiplies by dequantized float32 copies).")
@click.option("--weights", type=click.Choice(["auto", "float32", "bf16"]), default="auto", show_default=True,
              help="Stored format of the CPU program's float weights: linears that are not quantized, the "
                   "embedding (auto: bf16 for a bf16 checkpoint).")
@click.option("--activations", type=click.Choice(["auto", "float32", "int8"]), default=None,
              help="Activations of wint8/wint4 linears: int8 runs them on int8-quantized activations (integer "
                   "dot products, as llama.cpp's Q8_0/Q4_0; close to, not equal to, the float32 logits); "
                   "float32 is the exact mode. Default auto: int8 with the compiled CPU operators.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the export succeeded).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def export(model, out, max_seq_len, max_batch, dtype, device, quantization, weights, activations, overwrite, quiet):
    """Export checkpoint MODEL (Paddle or HF folder) to OUT: the prefill/decode step program, its parameters,
    the normalized config, tokenizer and generation files, and a manifest with digests."""
    from ernie_paddle.runtime.predictor import export as run

    start = time.perf_counter()
    folder = run(model, out, max_seq_len=max_seq_len, max_batch=max_batch, dtype=dtype, device=device,
                 overwrite=overwrite, quantization=quantization, weights=weights, activations=activations)
    if not quiet:
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        click.echo(f"exported {model} -> {folder} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")


COMMANDS.append(export)
