"""``ernie-paddle inspect``: what a checkpoint holds and every inconsistency in it."""

import json

import click

COMMANDS = []


@click.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(path, as_json):
    """Describe the checkpoint at PATH; exit 1 when it has problems."""
    from converters.inspect import format_report, inspect_checkpoint

    report = inspect_checkpoint(path)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report["problems"]:
        raise click.exceptions.Exit(1)


COMMANDS.append(inspect)
