#!/usr/bin/env bash
# Memory figures: RSS of `mailroom serve` (release) idle (after one message of each built-in, so
# the pools are started), then with N `echo` messages delayed by an hour (submitted through
# `POST /v1/batch` in batches of 1,000), and the per-message overhead ((loaded - idle) / N).
# Loopback only.
#
# Usage: bash benches/memory.sh            (N=100000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
ADDR=127.0.0.1:18081
if curl -s -m 1 "http://$ADDR/healthz" >/dev/null 2>&1; then echo "something already listens on $ADDR; stop it first" >&2; exit 1; fi
cargo build --release -q --bin mailroom
# A fresh journal folder: one left by an earlier run would bring its queued messages back.
DATA=target/memory-data
rm -rf "$DATA"
MAILROOM_STORAGE__PATH="$DATA" MAILROOM_DISPATCH__CAPACITY=$((N + 1000)) MAILROOM_SERVER__MAX_BATCH=1000 RUST_LOG=warn \
  target/release/mailroom serve --config benches/load.toml --bind "$ADDR" >/dev/null 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null || { echo "mailroom did not start" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
# Warm up every route once so idle includes the started pools.
curl -sf -X POST "http://$ADDR/v1/batch" -H 'content-type: application/json' -d \
  '{"wait":true,"messages":[{"kind":"echo","payload":1},{"kind":"sleep","payload":{"ms":1}},{"kind":"primes","payload":{"limit":10}},{"kind":"hash","payload":{"data":"x","rounds":1}}]}' >/dev/null
sleep 0.5
IDLE=$(rss)
python3 - "$ADDR" "$N" <<'PY'
import json, sys, urllib.request
addr, n = sys.argv[1], int(sys.argv[2])
msg = {"kind": "echo", "payload": {"order": 12345, "note": "a typical small payload"}, "delay_ms": 3600000}
body = json.dumps({"messages": [msg] * 1000}).encode()
for _ in range(n // 1000):
    req = urllib.request.Request(f"http://{addr}/v1/batch", data=body, headers={"Content-Type": "application/json"})
    res = json.loads(urllib.request.urlopen(req).read())
    assert all(r["status"] == "delayed" for r in res["results"]), res["results"][0]
PY
sleep 0.5
LOADED=$(rss)
DEPTH=$(curl -sf "http://$ADDR/metrics" | awk -F' ' '/^mailroom_queue_depth\{kind="echo"\}/ {print $2}')
python3 - "$IDLE" "$LOADED" "$N" "$DEPTH" <<'PY'
import sys
idle, loaded, n, depth = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"| idle RSS | {idle / 1024:.1f} MiB |")
print(f"| RSS with {n:,} delayed messages queued (queue depth {depth}) | {loaded / 1024:.1f} MiB |")
print(f"| per queued message | {(loaded - idle) * 1024 / n:.0f} bytes |")
PY
