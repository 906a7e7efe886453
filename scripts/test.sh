#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite. Extra arguments go to pytest (e.g. -m slow).
source "$(dirname "$0")/_setup_env.sh"
ruff check .
exec python -m pytest -q "$@"
