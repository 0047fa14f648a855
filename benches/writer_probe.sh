#!/usr/bin/env bash
# One 8 s sleep cell (100 ms, 1,000 connections, wrk, POST /v1/messages?wait=true) against one
# server build with the journal, and what it cost: the server's CPU ticks (/proc/PID/stat), its
# journal writer thread's CPU ticks and voluntary context switches (/proc/PID/task/TID), and the
# journal's records and fsyncs (/metrics). For A/B runs of two builds, alternate them:
#
#   for r in 1 2 3; do for b in /tmp/old /tmp/new; do BIN=$b bash benches/writer_probe.sh; done; done
#
# KIND=memory for the in-memory store. Needs wrk (as benches/load.sh). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/mailroom}
PORT=${PORT:-18190}
KIND=${KIND:-journal}
DIR=$(mktemp -d)
trap 'kill "$P" 2>/dev/null || true; rm -rf "$DIR"' EXIT
MAILROOM_SERVER__BIND=127.0.0.1:$PORT MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
  MAILROOM_STORAGE__PATH="$DIR/journal" MAILROOM_STORAGE__KIND=$KIND RUST_LOG=warn \
  "$BIN" serve --config benches/load.toml >"$DIR/log" 2>&1 &
P=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
t0=$(awk '{print $14+$15}' "/proc/$P/stat")
rps=$(BODY='{"kind":"sleep","payload":{"ms":100}}' wrk -t2 -c1000 -d8s --timeout 10s -s benches/post.lua \
  "http://127.0.0.1:$PORT/v1/messages?wait=true" | awk '/Requests\/sec/ {print $2}')
t1=$(awk '{print $14+$15}' "/proc/$P/stat")
writer="-"
for t in /proc/$P/task/*; do
  if [ "$(cat "$t/comm")" = mailroom-journa ]; then
    writer="$(awk '{print $14+$15}' "$t/stat") ticks, $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status") wake-ups"
  fi
done
m=$(curl -s "http://127.0.0.1:$PORT/metrics")
records=$(awk '/^mailroom_journal_records_total/ {print $2}' <<<"$m")
fsyncs=$(awk '/^mailroom_journal_fsyncs_total/ {print $2}' <<<"$m")
echo "$BIN $KIND: ${rps} req/s, server $((t1 - t0)) ticks, writer ${writer}, ${records} records, ${fsyncs} fsyncs"
