#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with the pins of pins.txt and mode_pax
# installed in editable mode. Idempotent: when .venv/.pins-installed matches pins.txt and
# setup.py, it does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MODE_PAX_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.pins-installed"
want=$(cat pins.txt setup.py | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

section() {  # prints the requirement lines of one [section] of pins.txt
  awk -v s="[$1]" '/^\[/{on=($0==s); next} on && NF && $1 !~ /^#/' pins.txt
}

index=$("$PYTHON" -m pip config get global.index-url 2>/dev/null || echo https://pypi.org/simple)
if ! "$PYTHON" -m pip download --no-deps --quiet -d "$(mktemp -d)" "pip" >/dev/null 2>&1; then
  echo "setup_env: cannot reach the Python package index ($index)." >&2
  echo "  mode_pax installs its pinned packages from PyPI; check the network or set" >&2
  echo "  PIP_INDEX_URL to a reachable mirror, then rerun this command." >&2
  exit 2
fi

pip_install() {  # pip install, without the machine's notes about its absent local mirrors
  "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}

echo "setup_env: creating $VENV with the pins of pins.txt (a few minutes, about 3.4 GB) ..." >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
rm -f "$stamp"
pip_install --upgrade pip
pip_install $(section resolved)
pip_install --no-deps $(section no-deps)
pip_install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "setup_env: $VENV is ready." >&2
