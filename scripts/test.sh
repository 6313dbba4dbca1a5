#!/usr/bin/env bash
# The project's test command: every test, the example scenarios and the
# benchmarks in test mode (each benchmark runs once to prove it works).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets
cargo test --doc
