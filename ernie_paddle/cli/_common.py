"""Shared CLI plumbing: turning ErnieError into exit status 2 with a one-line message."""

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
