#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with cargo fuzz (libFuzzer), starting from the seeds
# in fuzz/corpus/<target>/ (committed) and the inputs earlier runs found in fuzz/work/<target>/
# (not committed, where new ones go); a crash is saved in fuzz/artifacts/<target>/ and fails the
# run.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Installs cargo-fuzz when it is missing. It builds on the stable toolchain: RUSTC_BOOTSTRAP=1
# lets cargo fuzz pass the sanitizer flags that are otherwise nightly-only.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in submission tcp_line; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "work/$target"
  cargo fuzz run "$target" "work/$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
done
