#!/usr/bin/env bash
# Checks baton's dependencies with cargo-deny (deny.toml): licences
# compatible with Apache-2.0, crates from crates.io only, no wildcard
# versions, duplicate versions reported; and the RustSec advisories when the
# advisory database can be fetched (it lives on GitHub: a machine that
# reaches package registries only says so and checks the rest).
#
#   bash scripts/deny.sh
#
# Installs cargo-deny (pinned, from crates.io) under ~/.cache/baton/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
root="${BATON_CACHE:-$HOME/.cache/baton}/cargo-deny-$version"
if [ ! -x "$root/bin/cargo-deny" ]; then
  echo "Installing cargo-deny $version into $root" >&2
  cargo install cargo-deny --version "$version" --locked --root "$root" >&2
fi
deny="$root/bin/cargo-deny"

"$deny" --log-level warn check --hide-inclusion-graph licenses bans sources
if timeout 60 "$deny" --log-level error fetch db >/dev/null 2>&1; then
  "$deny" --log-level warn check --hide-inclusion-graph advisories
else
  echo "scripts/deny.sh: advisories NOT checked: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be fetched from here" >&2
fi
