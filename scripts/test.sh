#!/usr/bin/env bash
# The project's test command: installs the test broker (Apache Kafka, pinned
# in scripts/kafka/pom.xml, from Maven Central) when it is missing, then runs
# every test, the example scenarios, and the benchmarks in test mode (each
# benchmark runs once to prove it works). Each test binary that needs the
# broker starts its own on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/kafka.sh install

cargo test --all-targets
cargo test --doc
