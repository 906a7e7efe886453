"""``python -m ernie_paddle`` runs the CLI."""

from ernie_paddle.cli import main

main()
