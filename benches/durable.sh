#!/usr/bin/env bash
# What durability costs over HTTP: `mailroom serve` with its journal (fsync = "always": every
# 202/200 waits for its record to be on disk, concurrent ones sharing an fsync) beside the same
# server with storage.kind = "memory", in the same run, rounds interleaved. Two workloads at 64
# connections: `echo` with ?wait=true (accept, run, answer the outcome) and `submit` (202 only:
# the acknowledgement is the fsync). Prints medians, the ratio journal / memory, and the
# journal's fsyncs per second and messages per fsync (from /metrics before and after each run).
#
# Usage: bash benches/durable.sh   (DURATION=10 REPEAT=3 by default). Installs wrk if missing.
# Loopback only. The journal is written under target/durable/ (on this machine's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
REPEAT="${REPEAT:-3}"
OUT=target/durable
mkdir -p "$OUT"
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "building the release binary"
cargo build --release -q --bin mailroom

MEM=127.0.0.1:18280; JRN=127.0.0.1:18281
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_up() { for _ in $(seq 1 100); do curl -sf "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }
for a in $MEM $JRN; do
  if curl -s -m 1 "http://$a/healthz" >/dev/null 2>&1; then echo "something already listens on $a; stop it first" >&2; exit 1; fi
done
start() { # ADDR KIND
  rm -rf "$OUT/data-${1##*:}"
  env MAILROOM_SERVER__BIND="$1" MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_STORAGE__KIND="$2" \
      MAILROOM_STORAGE__PATH="$OUT/data-${1##*:}" RUST_LOG=warn \
      target/release/mailroom serve --config benches/load.toml >"$OUT/mailroom-${1##*:}.log" 2>&1 &
  PIDS+=("$!"); wait_up "$1"
}
start "$MEM" memory
start "$JRN" journal

metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
accepted() { curl -s "http://$1/metrics" | awk '/^mailroom_messages_accepted_total/ {s+=$2} END {print s+0}'; }

# once NAME ADDR PATH → appends "name rps p50 p99 non2xx fsyncs_per_s msgs_per_fsync"
once() {
  local name=$1 addr=$2 path=$3
  local f0 a0 f1 a1
  f0=$(metric "$addr" mailroom_journal_fsyncs_total); a0=$(accepted "$addr")
  BODY='{"kind":"echo","payload":{"hello":"world","n":42}}' \
    wrk -t2 -c64 -d"${DURATION}s" --timeout 10s --latency -s benches/post.lua "http://$addr$path" >"$OUT/wrk.txt" 2>&1 || true
  f1=$(metric "$addr" mailroom_journal_fsyncs_total); a1=$(accepted "$addr")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$OUT/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt"); non2xx=${non2xx:-0}
  local fs=$(( f1 - f0 )) msgs=$(( a1 - a0 ))
  echo "$name ${rps:-0} ${p50:-?} ${p99:-?} $non2xx $(( fs / DURATION )) $(( fs > 0 ? msgs / fs : 0 ))" | tee -a "$OUT/raw.txt"
}

rm -f "$OUT/raw.txt"
W='/v1/messages?wait=true'; B='/v1/messages'
for a in $MEM $JRN; do  # warm-up, not counted
  BODY='{"kind":"echo","payload":1}' wrk -t2 -c64 -d2s -s benches/post.lua "http://$a$W" >/dev/null 2>&1 || true
done
for _ in $(seq 1 "$REPEAT"); do
  once echo/memory "$MEM" "$W"; once echo/journal "$JRN" "$W"
  once submit/memory "$MEM" "$B"; once submit/journal "$JRN" "$B"
done
du -sb "$OUT/data-${JRN##*:}" | awk '{print "journal folder after the runs: " $1 " bytes"}'

python3 - "$OUT/raw.txt" "$DURATION" "$REPEAT" <<'PY' | tee "$OUT/results.md"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, non2xx, fps, mpf = line.split()
    rows.setdefault(name, []).append((float(rps), p50, p99, int(non2xx), int(fps), int(mpf)))
med = {n: statistics.median(r[0] for r in v) for n, v in rows.items()}
print(f"\n{sys.argv[3]} interleaved runs of {sys.argv[2]} s each, 64 connections; medians.\n")
print("| workload | storage | req/s | p50 | p99 | non-2xx | fsyncs/s | messages per fsync |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for n, v in rows.items():
    r = sorted(v, key=lambda r: r[0])[len(v) // 2]
    wl, st = n.split("/")
    fs = f"{r[4]:,}" if st == "journal" else "–"
    mpf = f"{r[5]:,}" if st == "journal" else "–"
    print(f"| {wl} | {st} | {med[n]:,.0f} | {r[1]} | {r[2]} | {sum(x[3] for x in v)} | {fs} | {mpf} |")
print("\n| ratio | value | goal |\n|---|---:|---|")
for wl in ("echo", "submit"):
    a, b = f"{wl}/journal", f"{wl}/memory"
    if a in med and med.get(b):
        print(f"| {wl}: journal (fsync always) / memory | {med[a] / med[b]:.2f} | ≥ 0.7 |")
PY
