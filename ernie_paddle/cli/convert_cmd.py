"""``ernie-paddle convert``: Paddle <-> HF layout, streaming, atomic."""

import click

COMMANDS = []


@click.command()
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option("--to", "to", type=click.Choice(["paddle", "hf"]), default=None,
              help="Target layout (default: the other one).")
@click.option("--dtype", type=click.Choice(["keep", "bfloat16", "float16", "float32"]), default="keep",
              show_default=True, help="Cast floating tensors (router and correction bias stay fp32).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="e.g. 5GB, 500MB.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists (only once the job succeeded).")
@click.option("--tp", type=int, default=None,
              help="Split into N per-rank Paddle checkpoints (DST/rank0..rank{N-1}).")
@click.option("--merge", is_flag=True, help="Join per-rank checkpoints written by --tp back into one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print nothing on success.")
def convert(src, dst, to, dtype, max_shard_size, overwrite, tp, merge, quiet):
    """Convert checkpoint folder SRC into DST in the other layout, or split/merge it for tensor parallel."""
    from converters.convert import convert as run
    from converters.tp_split import merge as run_merge
    from converters.tp_split import split as run_split

    if tp is not None or merge:
        if merge and tp is not None:
            raise click.UsageError("--tp and --merge exclude each other")
        if merge:
            run_merge(src, dst, overwrite=overwrite, quiet=quiet)
        else:
            run_split(src, dst, tp, overwrite=overwrite, quiet=quiet)
        if not quiet:
            click.echo(f"{'merged' if merge else f'split into {tp} ranks'} -> {dst}")
        return
    r = run(src, dst, to=to, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite, quiet=quiet)
    if not quiet:
        click.echo(f"converted {r.source_format} -> {r.target_format}: {r.tensors_in} -> {r.tensors_out} "
                   f"tensors, {r.bytes_out / 1e6:.1f} MB in {r.shards} shard(s), {r.seconds:.2f} s "
                   f"({r.bytes_out / 1e6 / max(r.seconds, 1e-9):.0f} MB/s) -> {dst}")


COMMANDS.append(convert)
