"""``ernie-paddle usage``: per-key usage recorded by the server (what a deployment bills by)."""

import json

import click

COMMANDS = []


@click.command()
@click.option("--data-dir", type=click.Path(path_type=str), default=None,
              help="The server's data folder (default: $ERNIE_PADDLE_HOME/server).")
@click.option("--key", "key_id", default=None, help="Only this key id (as shown in the table).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage(data_dir, key_id, as_json):
    """Requests, prompt and completion tokens per API key."""
    from pathlib import Path

    from ernie_paddle.errors import ErnieError
    from ernie_paddle.server.usage import DB_NAME, UsageStore, default_data_dir

    folder = Path(data_dir) if data_dir else default_data_dir()
    if not (folder / DB_NAME).is_file():
        raise ErnieError("no usage database here; pass the server's --data-dir", folder / DB_NAME)
    store = UsageStore(folder)
    try:
        totals = store.totals(key_id)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(totals, indent=2))
        return
    click.echo(f"{'key':<20} {'requests':>10} {'prompt':>12} {'completion':>12} {'total':>12}")
    for kid, t in totals.items():
        click.echo(f"{kid:<20} {t['requests']:>10} {t['prompt_tokens']:>12} {t['completion_tokens']:>12} "
                   f"{t['total_tokens']:>12}")


COMMANDS.append(usage)
