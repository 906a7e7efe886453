"""The ``ernie-paddle`` command: a click group; each command lives in its own module here."""

import click

from ernie_paddle.cli._common import run_guarded


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ernie-paddle")
def cli():
    """ERNIE 4.5 on PaddlePaddle: convert, inspect, run, prove parity, serve."""


def _register():
    from ernie_paddle.cli import (
        chat_cmd,
        convert_cmd,
        demo_cmd,
        export_cmd,
        generate_cmd,
        inspect_cmd,
        memory_cmd,
        parity_cmd,
        quantize_cmd,
        serve_cmd,
        usage_cmd,
    )

    for module in (convert_cmd, demo_cmd, inspect_cmd, memory_cmd, generate_cmd, parity_cmd, serve_cmd, chat_cmd,
                   usage_cmd, quantize_cmd, export_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv=None):
    """Console entry point: user errors print one line and exit 2, never a traceback."""
    return run_guarded(cli, argv)
