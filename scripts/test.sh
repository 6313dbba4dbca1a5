#!/usr/bin/env bash
# The project's test command: installs the test broker when it is missing,
# then runs every test, the example scenarios, and the benchmarks in test
# mode (each benchmark runs once to prove it works).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kafka-protocol broker the integration tests start (design: nisshi 0.7.0
# with SQLite storage). It needs a newer rustc than stable, hence nightly.
NISSHI_ROOT="${BATON_CACHE:-$HOME/.cache/baton}/nisshi"
if [ ! -x "$NISSHI_ROOT/bin/nisshi" ]; then
  echo "Installing the test broker (nisshi 0.7.0) into $NISSHI_ROOT; the first time takes about 17 minutes."
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "error: the nightly toolchain is needed to build the test broker (rustup toolchain install nightly)" >&2
    exit 1
  fi
  cargo +nightly install nisshi@0.7.0 --locked --features dynostore,libsql --root "$NISSHI_ROOT"
fi
export BATON_NISSHI="$NISSHI_ROOT/bin/nisshi"

cargo test --all-targets
cargo test --doc
