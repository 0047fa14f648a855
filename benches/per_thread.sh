#!/usr/bin/env bash
# Where the CPU goes, per thread, under one wrk workload: starts `mailroom serve` (release) with
# benches/load.toml, warms up for 2 s, then runs wrk for SECONDS while reading each thread's CPU
# time, sleeps (voluntary context switches) and preemptions (involuntary ones) from /proc, and
# prints them per request. This is how the request path's cost per CPU job was measured
# (BENCHMARKS.md, "CPU scaling" and "The per-request CPU budget").
#
# Usage: bash benches/per_thread.sh BODY CONNECTIONS SECONDS [ENV=VALUE ...]
#   bash benches/per_thread.sh '{"kind":"primes","payload":{"limit":20000}}' 16 10
#   bash benches/per_thread.sh '{"kind":"primes","payload":{"limit":20000}}' 16 10 MAILROOM_POOLS__CPU__THREADS=1
#   SERVER=bare bash benches/per_thread.sh '{"kind":"primes","payload":{"limit":20000}}' 16 10 BARE_CPU_THREADS=2
# SERVER=bare measures benches/bare_echo.rs instead of Mailroom (with BARE_CPU_THREADS=N: the bare
# thread pool, the least a design that keeps CPU work off the HTTP threads pays).
#
# Threads: `mailroom` (tid first) is the main thread, where the System arbiter runs the CPU
# routes' workers and actix's SyncArbiter forwarder; `mailroom-cpu-N` are the pool's threads; the
# `actix-rt|system` threads are the I/O arbiter(s) (created first) and the HTTP workers (the bare
# server's pool threads are the unnamed `bare_echo` ones after its main thread). Needs wrk
# (benches/load.sh installs it). Loopback only (127.0.0.1:18080).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,13p "$0"; exit 2; }
BODY=$1; CONNS=$2; SECS=$3; shift 3
ADDR=127.0.0.1:18080
OUT=target/load
mkdir -p "$OUT"
if curl -s -m 1 "http://$ADDR/healthz" >/dev/null 2>&1; then echo "something already listens on $ADDR; stop it first" >&2; exit 1; fi
if [ "${SERVER:-mailroom}" = bare ]; then
  cargo build --release -q --example bare_echo
  env "$@" target/release/examples/bare_echo $ADDR >"$OUT/per_thread.log" 2>&1 &
  URL_PATH=/v1/messages
else
  cargo build --release -q --bin mailroom
  env MAILROOM_SERVER__BIND=$ADDR MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
      RUST_LOG=warn "$@" target/release/mailroom serve --config benches/load.toml >"$OUT/per_thread.log" 2>&1 &
  URL_PATH='/v1/messages?wait=true'
fi
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.1; done
URL="http://$ADDR$URL_PATH"

# tid:name ticks(utime+stime) voluntary-switches involuntary-switches, one line per thread
snapshot() {
  for t in /proc/$PID/task/*; do
    local stat name switches
    stat=$(sed 's/.*) //' "$t/stat")
    name=$(tr ' ' _ <"$t/comm")
    switches=$(awk '/^voluntary_ctxt_switches/ {v = $2} /nonvoluntary_ctxt_switches/ {n = $2} END {print v, n}' "$t/status")
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
    BEGIN { printf "%-28s %8s %10s %12s %12s\n", "thread", "cores", "us/req", "sleeps/req", "preempts/req" }
    { cpu = ($5 - $2) / hz; total += cpu
      printf "%-28s %8.2f %10.1f %12.2f %12.2f\n", $1, cpu / s, cpu * 1e6 / (r * s), ($6 - $3) / (r * s), ($7 - $4) / (r * s) }
    END { printf "%-28s %8.2f %10.1f\n", "all threads", total / s, total * 1e6 / (r * s) }'
