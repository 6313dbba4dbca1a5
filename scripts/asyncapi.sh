#!/usr/bin/env bash
# The JSON Schema of AsyncAPI 3.1.0 from @asyncapi/specs (npm, pinned), for
# the test that validates `baton asyncapi` output (tests/asyncapi.rs).
# Fetches the package into ~/.cache/baton/ when missing (npm pack: no
# dependencies, no install scripts) and prints the schema's path.
set -euo pipefail

VERSION=6.11.1
DIR="${BATON_CACHE:-$HOME/.cache/baton}/asyncapi-specs-$VERSION"
SCHEMA="$DIR/package/schemas/3.1.0.json"

if [ -f "$SCHEMA" ]; then
    echo "$SCHEMA"
    exit 0
fi
command -v npm >/dev/null || { echo "error: npm is missing: install Node.js 18 or newer (Debian: apt-get install nodejs npm)" >&2; exit 1; }
rm -rf "$DIR"
mkdir -p "$DIR"
(cd "$DIR" && npm pack --silent "@asyncapi/specs@$VERSION" >/dev/null) ||
    { echo "error: npm could not fetch @asyncapi/specs@$VERSION" >&2; exit 1; }
tar -xzf "$DIR/asyncapi-specs-$VERSION.tgz" -C "$DIR"
[ -f "$SCHEMA" ] || { echo "error: @asyncapi/specs@$VERSION holds no schemas/3.1.0.json" >&2; exit 1; }
echo "$SCHEMA"
