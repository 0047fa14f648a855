#!/usr/bin/env bash
# Instructions per `echo` request (`POST /v1/messages?wait=true`, memory storage), counted by
# callgrind, which does not move with the machine's noise: `mailroom serve` runs under
# valgrind, takes 500 requests to warm up, then its counters are zeroed, N requests are sent
# over 16 connections, and the counters are dumped. Prints the total per request and the top
# functions by their own instructions. BIN picks another build (to compare two commits).
# Loopback only.
#
# STORAGE=journal runs it with the journal (fsync = "always", a fresh folder) instead of memory.
#
# Usage: bash benches/callgrind_echo.sh          (N=20000, BIN=target/release/mailroom, STORAGE=memory)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20000}"
OUT=target/callgrind
mkdir -p "$OUT"
command -v oha >/dev/null || { cargo install -q --locked oha; export PATH="$HOME/.cargo/bin:$PATH"; }
command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind >/dev/null)
if [ -z "${BIN:-}" ]; then cargo build --release -q --bin mailroom; BIN=target/release/mailroom; fi
PORT=18185
rm -f "$OUT"/echo.out*
rm -rf "$OUT/journal"
STORAGE="${STORAGE:-memory}"
case "$STORAGE" in
  memory|journal) ;;
  *) echo "STORAGE must be memory or journal" >&2; exit 2 ;;
esac
MAILROOM_SERVER__BIND=127.0.0.1:$PORT MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_STORAGE__KIND=$STORAGE \
  MAILROOM_STORAGE__PATH="$OUT/journal" RUST_LOG=warn \
  valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$OUT/echo.out" \
  "$BIN" serve --config benches/load.toml >"$OUT/valgrind.log" 2>&1 &
VP=$!
trap 'kill $VP 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
ECHO='{"kind":"echo","payload":{"hello":"world","n":42}}'
URL="http://127.0.0.1:$PORT/v1/messages?wait=true"
oha -n 500 -c 16 --no-tui -m POST -H 'content-type: application/json' -d "$ECHO" "$URL" >/dev/null
callgrind_control -z "$VP" >/dev/null
oha -n "$N" -c 16 --no-tui --output-format json -m POST -H 'content-type: application/json' -d "$ECHO" "$URL" >"$OUT/oha.json"
callgrind_control -d "$VP" >/dev/null
kill -TERM "$VP"; wait "$VP" || true
python3 benches/callgrind_table.py "$OUT/echo.out.1" "$N" request 20
