# Sourced by scripts/demo.sh and scripts/test.sh: create .venv if missing and install the package.
# Set ERNIE_PADDLE_SKIP_INSTALL=1 to reuse an existing environment as it is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "${ERNIE_PADDLE_SKIP_INSTALL:-0}" != "1" ]; then
  stamp=".venv/.installed-$(cat setup.cfg setup.py | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test]"
    touch "$stamp"
  fi
fi
export PATH="$ROOT/.venv/bin:$PATH"
