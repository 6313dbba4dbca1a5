#!/usr/bin/env bash
# The long forms of the fault tests, each with the order-to-cash load and
# simulated services, checked with a read_committed consumer at the end
# (every order invoiced, every command exactly once, the audit trail of every
# shard rebuilding its changelog). Each prints its figures.
#
#   bash scripts/faults.sh [outage|rebalance|slow|crash|all]   (default: all)
#
#   outage     the broker stopped for BATON_FAULT_OUTAGE_SECS (default 30) mid-run
#   rebalance  three processes, one killed and started again BATON_FAULT_REBALANCES times (20)
#   slow       the warehouse stops reading its commands for BATON_FAULT_HOLD_SECS (60)
#   crash      `baton run` SIGKILLed 20 times (scripts/crash-loop.sh)
#
# BATON_FAULT_RATE sets the orders per second (default 20). The suite runs
# the short forms of the same tests (tests/faults.rs, tests/crash.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/kafka.sh install
export BATON_FAULT_OUTAGE_SECS="${BATON_FAULT_OUTAGE_SECS:-30}"
export BATON_FAULT_REBALANCES="${BATON_FAULT_REBALANCES:-20}"
export BATON_FAULT_HOLD_SECS="${BATON_FAULT_HOLD_SECS:-60}"

fault() {
  cargo test --release --test faults "$1" -- --nocapture 2>&1 |
    grep -E "^(broker outage|rebalance loop|slow consumer|cycle)|test result|panicked|missing|duplicated:|timed out"
}

case "${1:-all}" in
  outage) fault a_broker_outage ;;
  rebalance) fault a_rebalance_loop ;;
  slow) fault a_stopped_consumer ;;
  crash) bash scripts/crash-loop.sh ;;
  all)
    fault a_broker_outage
    fault a_rebalance_loop
    fault a_stopped_consumer
    bash scripts/crash-loop.sh
    ;;
  *) echo "usage: scripts/faults.sh [outage|rebalance|slow|crash|all]" >&2; exit 2 ;;
esac
