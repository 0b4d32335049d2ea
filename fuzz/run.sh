#!/usr/bin/env bash
# Runs the cargo-fuzz targets, each for a bounded time, from and into the
# corpus under fuzz/corpus/TARGET (committed seeds plus what the fuzzer
# keeps), and prints the executions of each. Crashes land in
# fuzz/artifacts/TARGET/ and make the script exit non-zero.
#
#   fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh union check
#
# Needs a nightly toolchain (libFuzzer's sanitizer coverage) and
# cargo-fuzz (`cargo install cargo-fuzz`); the targets that build layers
# need root (trusted.* attributes, device nodes). The stable test suite
# replays the corpus on its own (tests/fuzz_replay.rs).
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
all=(options marker_values markers lower_index union check image_layer image_archive)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
cargo +nightly fuzz build -O
mkdir -p logs
failed=0
printf '%-14s %12s %10s %8s\n' target executions exec/s corpus
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1; then
    failed=1
    echo "$t: CRASH, see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "logs/$t.log" | tail -n 1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "logs/$t.log" | tail -n 1)
  printf '%-14s %12s %10s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$(ls "corpus/$t" | wc -l)"
done
exit $failed
