#!/usr/bin/env bash
# A/B of one workload (POST /v1/messages?wait=true) between two builds of the server, both with
# the journal, beside NEW in memory: 3 interleaved rounds of an 8 s oha cell and an 8 s wrk cell
# per server, on loopback. WL=sleep (100 ms, 1,000 connections; the default), WL=primes or
# WL=hash (benches/load.sh's bodies, 16 connections) or WL=echo (64 connections). Prints one line per cell:
#   round N NAME oha req/s p50 p99  wrk req/s p50 p99
#
#   OLD=/path/to/old/mailroom NEW=target/release/mailroom [WL=hash] bash benches/sleep_ab.sh
#
# (Build the old one with `git worktree add /tmp/old REV` and `CARGO_TARGET_DIR=... cargo build
# --release --bin mailroom` there.) Needs oha and wrk, as benches/load.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:?the old server binary}
NEW=${NEW:-target/release/mailroom}
ROUNDS=${ROUNDS:-3}
OUT=target/load
mkdir -p "$OUT"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
start() { # BIN ADDR [ENV...]
  local bin=$1 addr=$2; shift 2
  rm -rf "$OUT/ab-${addr##*:}"
  env MAILROOM_SERVER__BIND="$addr" MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
    MAILROOM_STORAGE__PATH="$OUT/ab-${addr##*:}" RUST_LOG=warn "$@" "$bin" serve --config benches/load.toml \
    >"$OUT/ab-${addr##*:}.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -sf "http://$addr/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "$addr did not come up" >&2; exit 1
}
start "$OLD" 127.0.0.1:18180
start "$NEW" 127.0.0.1:18181
start "$NEW" 127.0.0.1:18182 MAILROOM_STORAGE__KIND=memory
case "${WL:-sleep}" in
  sleep) B='{"kind":"sleep","payload":{"ms":100}}'; C=1000 ;;
  primes) B='{"kind":"primes","payload":{"limit":20000}}'; C=16 ;;
  hash) B='{"kind":"hash","payload":{"data":"mailroom","rounds":2000}}'; C=16 ;;
  echo) B='{"kind":"echo","payload":{"hello":"world","n":42}}'; C=64 ;;
  *) echo "WL is sleep, primes, hash or echo" >&2; exit 2 ;;
esac
for r in $(seq 1 "$ROUNDS"); do
  for pair in "old-journal 18180" "new-journal 18181" "new-memory 18182"; do
    set -- $pair
    url="http://127.0.0.1:$2/v1/messages?wait=true"
    o=$(oha -z 8s -w -c "$C" -t 10s --no-tui --output-format json -m POST \
          -H 'content-type: application/json' -d "$B" "$url" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; print(round(d["summary"]["requestsPerSec"]), round(p["p50"]*1000,2), round(p["p99"]*1000,2))')
    BODY="$B" wrk -t2 -c"$C" -d8s --timeout 10s --latency -s benches/post.lua "$url" >"$OUT/ab-wrk.txt" 2>&1 || true
    w=$(awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print r, p50, p99}' "$OUT/ab-wrk.txt")
    echo "round $r $1 oha $o wrk $w"
  done
done
