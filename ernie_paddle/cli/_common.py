"""Shared CLI plumbing: turning ErnieError into exit status 2 with a one-line message; options several commands
take."""

import sys

import click

from ernie_paddle.errors import ErnieError


def run_guarded(group: click.Group, argv=None) -> int:
    try:
        rc = group.main(args=argv, standalone_mode=False)
    except ErnieError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


def mmap_options(command):
    """``--mmap/--no-mmap`` and ``--offload-folder DIR``: weights mapped from an export (the predictor)."""
    command = click.option(
        "--offload-folder", type=click.Path(file_okay=False, path_type=str), default=None,
        help="Export the checkpoint into DIR (once; reused afterwards) and serve its weights memory-mapped "
             "from there: for models bigger than RAM (`ernie-paddle memory --mmap` shows what stays resident).")(command)
    return click.option(
        "--mmap/--no-mmap", default=None,
        help="Map the export's weights instead of reading them into memory: only the pages decoding touches "
             "stay resident (same results). Default: mapped when they do not fit in the memory available.")(command)
