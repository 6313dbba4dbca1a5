#!/usr/bin/env bash
# Checks baton's dependencies with cargo-deny (deny.toml): licences
# compatible with Apache-2.0, crates from crates.io only, no wildcard
# versions, duplicate versions reported; and the RustSec advisories when the
# advisory database can be fetched (it lives on GitHub: a machine that
# reaches package registries only says so and checks the rest, or checks a
# local clone of it offline).
#
#   bash scripts/deny.sh
#   BATON_ADVISORY_DB=path/to/advisory-db bash scripts/deny.sh
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
if [ -n "${BATON_ADVISORY_DB:-}" ]; then
  # A local clone of the advisory database (a mirror kept where GitHub is out
  # of reach): checked offline, and its age said, since a stale copy misses
  # what was published after it.
  [ -d "$BATON_ADVISORY_DB/crates" ] || {
    echo "scripts/deny.sh: BATON_ADVISORY_DB=$BATON_ADVISORY_DB is not a clone of the RustSec advisory database (no crates/ in it)" >&2
    exit 1
  }
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  # cargo-deny looks for the default database's clone under this name.
  cp -r "$BATON_ADVISORY_DB" "$scratch/advisory-db-3157b0e258782691"
  sed "s|^\[advisories\]|[advisories]\ndb-path = \"$scratch\"|" deny.toml >"$scratch/deny.toml"
  echo "scripts/deny.sh: advisories from $BATON_ADVISORY_DB (last change $(git -C "$BATON_ADVISORY_DB" log -1 --format=%cs 2>/dev/null || echo unknown))" >&2
  "$deny" --log-level warn --config "$scratch/deny.toml" --offline check --hide-inclusion-graph advisories
elif timeout 60 "$deny" --log-level error fetch db >/dev/null 2>&1; then
  "$deny" --log-level warn check --hide-inclusion-graph advisories
else
  echo "scripts/deny.sh: advisories NOT checked: the RustSec advisory database (github.com/rustsec/advisory-db) cannot be fetched from here; set BATON_ADVISORY_DB to a local clone of it to check offline" >&2
fi
