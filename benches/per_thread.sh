#!/usr/bin/env bash
# Where the CPU goes, per thread, under one wrk workload: starts `mailroom serve` (release) with
# benches/load.toml, warms up for 2 s, then runs wrk for SECONDS while reading each thread's CPU
# time and context switches from /proc, and prints them per request. This is how the request
# path's cost per CPU job was measured (BENCHMARKS.md, "CPU scaling").
#
# Usage: bash benches/per_thread.sh BODY CONNECTIONS SECONDS [ENV=VALUE ...]
#   bash benches/per_thread.sh '{"kind":"primes","payload":{"limit":20000}}' 16 10
#   bash benches/per_thread.sh '{"kind":"primes","payload":{"limit":20000}}' 16 10 MAILROOM_POOLS__CPU__THREADS=1
#
# Threads: `mailroom` (tid first) is the main thread, where the System arbiter runs the CPU
# routes' workers and actix's SyncArbiter forwarder; `mailroom-cpu-N` are the pool's threads; the
# `actix-rt|system` threads are the I/O arbiter(s) (created first) and the HTTP workers. Needs wrk
# (benches/load.sh installs it). Loopback only (127.0.0.1:18080).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,11p "$0"; exit 2; }
BODY=$1; CONNS=$2; SECS=$3; shift 3
ADDR=127.0.0.1:18080
OUT=target/load
mkdir -p "$OUT"
if curl -s -m 1 "http://$ADDR/healthz" >/dev/null 2>&1; then echo "something already listens on $ADDR; stop it first" >&2; exit 1; fi
cargo build --release -q --bin mailroom
env MAILROOM_SERVER__BIND=$ADDR MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
    RUST_LOG=warn "$@" target/release/mailroom serve --config benches/load.toml >"$OUT/per_thread.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.1; done
URL="http://$ADDR/v1/messages?wait=true"

# tid:name ticks(utime+stime) context-switches(voluntary+involuntary), one line per thread
snapshot() {
  for t in /proc/$PID/task/*; do
    local stat name switches
    stat=$(sed 's/.*) //' "$t/stat")
    name=$(tr ' ' _ <"$t/comm")
    switches=$(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")
    echo "$(basename "$t"):$name $(echo "$stat" | awk '{print $12 + $13}') $switches"
  done | sort -t: -k1,1n
}

BODY="$BODY" wrk -t2 -c"$CONNS" -d2s -s benches/post.lua "$URL" >/dev/null
snapshot >"$OUT/threads.before"
BODY="$BODY" wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s benches/post.lua "$URL" >"$OUT/per_thread.wrk"
snapshot >"$OUT/threads.after"
RPS=$(awk '/Requests\/sec/ {print $2}' "$OUT/per_thread.wrk")
echo "requests/s: $RPS   (p50 $(awk '$1=="50%" {print $2}' "$OUT/per_thread.wrk"), p99 $(awk '$1=="99%" {print $2}' "$OUT/per_thread.wrk"))"
TICK=$(getconf CLK_TCK)
join <(sort "$OUT/threads.before") <(sort "$OUT/threads.after") | sort -t: -k1,1n |
  awk -v s="$SECS" -v r="$RPS" -v hz="$TICK" '
    BEGIN { printf "%-28s %8s %10s %10s\n", "thread", "cores", "us/req", "switches/req" }
    { cpu = ($4 - $2) / hz; total += cpu
      printf "%-28s %8.2f %10.1f %10.2f\n", $1, cpu / s, cpu * 1e6 / (r * s), ($5 - $3) / (r * s) }
    END { printf "%-28s %8.2f %10.1f\n", "all threads", total / s, total * 1e6 / (r * s) }'
