#!/usr/bin/env bash
# Installs schemathesis (PyPI, pinned) into a virtual environment under
# ~/.cache/baton/ for the admin API's contract test (tests/operate.rs), and
# prints the path of its executable. Later runs reuse the environment.
set -euo pipefail

VERSION=4.32.5
DIR="${BATON_CACHE:-$HOME/.cache/baton}/schemathesis-$VERSION"
BIN="$DIR/bin/schemathesis"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "$BIN"
    exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 is missing: install Python 3.9 or newer (with venv and pip)" >&2; exit 1; }
rm -rf "$DIR"
python3 -m venv "$DIR" || { echo "error: python3 -m venv failed: install the python3-venv package" >&2; exit 1; }
"$DIR/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$BIN" --version >&2
echo "$BIN"
