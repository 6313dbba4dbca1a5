#!/usr/bin/env bash
# Scale-out on one machine: the order-to-cash load on a 12-partition input
# topic with 1, then 2, then 3 baton processes of one consumer group, each a
# process of its own; throughput per process count, the ratio to one
# process, the CPU each process spent, and the time until every shard runs
# again after one of three processes is killed (SIGKILL).
#
#   bash scripts/scale-out.sh [ORDERS] [PROCESS COUNTS]   (default: 20000 orders, 1,2,3)
#
# Starts Apache Kafka as the tests do (installing it first when needed);
# the figures go to bench-results/scale-out.{txt,json}. The suite runs the
# short form (tests/bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/kafka.sh install
cargo build --release --bin baton
./target/release/baton bench --scale-out --out bench-results \
  --orders "${1:-20000}" --processes "${2:-1,2,3}"
