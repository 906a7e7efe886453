"""``ernie-paddle quantize``: write a quantized Paddle checkpoint in the released layout."""

import click

COMMANDS = []


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--method", type=click.Choice(["wint8", "wint4", "fp8"]), required=True)
@click.option("--max-shard-size", default="5GB", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def quantize(model, out, method, max_shard_size, overwrite, quiet):
    """Quantize MODEL (HF or Paddle, unquantized) into the Paddle checkpoint OUT."""
    from converters.quantize import quantize as run

    counts = run(model, out, method, overwrite=overwrite, max_shard_size=max_shard_size, quiet=quiet)
    if not quiet:
        click.echo(f"quantized {counts['quantized']} linears with {method}, kept {counts['kept']} tensors "
                   f"-> {out}")


COMMANDS.append(quantize)
