"""``ernie-paddle demo``: the main job on built-in tiny models (nothing downloaded)."""

import click

COMMANDS = []


@click.command()
@click.option("--cache", type=click.Path(path_type=str), default=None,
              help="Where the demo models go (default: $ERNIE_PADDLE_HOME/demo or ~/.cache/ernie-paddle/demo).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary lines.")
def demo(cache, quiet):
    """Make tiny ERNIE 4.5 checkpoints, convert them both ways, inspect, run and check parity."""
    from ernie_paddle.devkit.demo import run_demo

    ctx = run_demo(cache, echo=click.echo, quiet=True)
    click.echo(f"demo models are in {ctx.cache}")


COMMANDS.append(demo)
