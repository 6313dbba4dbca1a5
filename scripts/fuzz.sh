#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/, bodies in fuzz/harness.rs)
# with libFuzzer, each for SECONDS (default 900), and prints per target the
# executions and whether it crashed. A crash's input is kept under
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ once fixed
# so `cargo test --test fuzz` replays it on stable Rust from then on.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and installs
# cargo-fuzz (pinned, from crates.io) under ~/.cache/baton/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-900}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dsl cloudevents records engine)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "scripts/fuzz.sh: cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 2
fi
version=0.13.2
root="$HOME/.cache/baton/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --version "$version" --locked --root "$root" >&2
fi
export PATH="$root/bin:$PATH"

mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  # Seeds: what the suite replays, and for definitions the examples.
  cp fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null || true
  [ "$t" != dsl ] || cp examples/*.yaml "$corpus"/
  log="fuzz/logs/$t.log"
  set +e
  cargo +nightly fuzz run "$t" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ $rc -eq 0 ]; then
    echo "$t: ${execs:-?} executions in ${seconds}s, no crash"
  else
    echo "$t: CRASH after ${execs:-?} executions (exit $rc); see $log and fuzz/artifacts/$t/"
  fi
done
