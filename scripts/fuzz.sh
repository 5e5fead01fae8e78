#!/usr/bin/env bash
# Fuzzes every decoder of bytes that another process sends (the targets in fuzz/, one per
# entry of `topoccl::fuzzing`) for SECONDS each (default 20), starting from the committed
# corpus in fuzz/corpus/TARGET. Inputs that find new paths go to a scratch directory, so
# the committed corpus changes only when someone minimises into it
# (`cargo fuzz cmin TARGET`). A crash stops the run with the input saved under
# fuzz/artifacts/TARGET/ and a non-zero exit.
#
# The targets are built as cargo-fuzz builds them (libFuzzer, SanitizerCoverage with
# 8-bit counters, PC table and compare tracing, `--cfg fuzzing`, debug assertions and
# overflow checks) on the stable toolchain, so neither nightly nor cargo-fuzz is needed;
# with both installed, `cd fuzz && cargo +nightly fuzz run TARGET` adds AddressSanitizer.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# `--target` keeps the instrumentation out of build scripts and procedural macros.
cargo build --release --locked --target "$host" --bins
for t in "${targets[@]}"; do
  [ -f "fuzz_targets/$t.rs" ] || { echo "no fuzz target '$t'; there are: $(ls fuzz_targets | sed 's/\.rs$//' | tr '\n' ' ')" >&2; exit 2; }
  scratch=$(mktemp -d)
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzzing $t for ${secs}s"
  log=$scratch.log
  status=0
  "target/$host/release/$t" "$scratch" "corpus/$t" -max_total_time="$secs" \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
  rm -rf "$scratch"
  if [ "$status" != 0 ]; then
    grep -E -A20 'panicked|ERROR' "$log" | head -40 >&2 || tail -40 "$log" >&2
    rm -f "$log"
    echo "fuzz target $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  rm -f "$log"
done
