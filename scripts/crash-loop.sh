#!/usr/bin/env bash
# The long form of the crash test (tests/crash.rs): `baton run` killed with
# SIGKILL many times at random moments while orders flow, then every command
# checked with a read_committed consumer and the raw-batch oracle.
#
#   bash scripts/crash-loop.sh [KILLS] [ORDERS]     (default: 20 kills, 300 orders)
#
# It prints the figures at the end: kills, orders, commands checked, lost,
# duplicated, aborted records and the time from a kill to the next restore.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/kafka.sh install
BATON_CRASH_KILLS="${1:-20}" BATON_CRASH_ORDERS="${2:-300}" \
  cargo test --release --test crash killing_baton_mid_stream -- --nocapture 2>&1 |
  grep -E "crash test|round|test result|panicked|missing|twice"
