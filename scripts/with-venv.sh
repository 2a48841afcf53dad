#!/usr/bin/env bash
# Run a command inside the project's virtual environment (.venv), creating it on first use and
# re-installing when pyproject.toml or scripts/constraints.txt changes.
# Usage: bash scripts/with-venv.sh COMMAND [ARGS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${DAP_PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.dap-install-stamp"
want="$(cat "$root/pyproject.toml" "$root/scripts/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    echo "[dap] creating virtual environment in $venv" >&2
    "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[dap] installing the package and its dependencies (first run only)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || true
    "$venv/bin/python" -m pip install --quiet -c "$root/scripts/constraints.txt" -e "$root[dev]" >&2
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"
