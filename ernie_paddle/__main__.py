"""``python -m ernie_paddle`` runs the CLI."""

from .cli import main

main()
