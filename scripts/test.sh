#!/usr/bin/env bash
# The project's test command: installs the test broker (Apache Kafka, pinned
# in scripts/kafka/pom.xml, from Maven Central) when it is missing, then runs
# every test, the example scenarios, and the benchmarks in test mode (each
# benchmark runs once to prove it works), and schemathesis (PyPI) for the
# admin API's contract test, Chromium with playwright-core for the
# console's browser test, and AsyncAPI's JSON Schema. Each test binary that needs the
# broker starts its own on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/kafka.sh install
# The admin API's contract test runs schemathesis against the served document.
BATON_SCHEMATHESIS="$(bash scripts/schemathesis.sh)"
export BATON_SCHEMATHESIS
# The console's browser test drives Debian's Chromium with playwright-core (npm).
BATON_CHROMIUM="$(bash scripts/browser.sh)"
export BATON_CHROMIUM
# AsyncAPI 3.1's JSON Schema (npm, @asyncapi/specs) for tests/asyncapi.rs.
BATON_ASYNCAPI_SCHEMA="$(bash scripts/asyncapi.sh)"
export BATON_ASYNCAPI_SCHEMA

cargo test --all-targets --no-fail-fast
cargo test --doc
