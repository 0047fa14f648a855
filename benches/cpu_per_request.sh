#!/usr/bin/env bash
# CPU time and voluntary context switches per `echo` request (`POST /v1/messages?wait=true`), read
# from /proc for the server process while oha sends N requests over 64 connections; four
# `mailroom serve` variants and two bare actix-web handlers, REPEAT interleaved rounds, medians.
# The variants: memory or journal storage, each with HTTP workers running the async routes
# (`pools.io.on_http_workers`, the default) and without (every message handed to the I/O arbiter
# and back). Beside them the bare handler, and the bare handler that fsyncs each request body to
# a file before answering (group commit: the least a durable answer costs). Installs oha with
# cargo if it is missing. Loopback only.
#
# Usage: bash benches/cpu_per_request.sh          (N=100000 REPEAT=3)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
REPEAT="${REPEAT:-3}"
OUT=target/cpu
mkdir -p "$OUT"
command -v oha >/dev/null || { cargo install -q --locked oha; export PATH="$HOME/.cargo/bin:$PATH"; }
cargo build --release -q --bin mailroom --example bare_echo
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
declare -A PID
start() { # NAME PORT env...
  local name=$1 port=$2; shift 2
  if curl -s -m 1 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then echo "something listens on $port" >&2; exit 1; fi
  rm -rf "$OUT/data-$port"
  env MAILROOM_SERVER__BIND=127.0.0.1:$port MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_STORAGE__PATH="$OUT/data-$port" \
    RUST_LOG=warn "$@" target/release/mailroom serve --config benches/load.toml >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!; PIDS+=("$!")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; exit 1
}
start memory 18280 MAILROOM_STORAGE__KIND=memory
start memory-hop 18281 MAILROOM_STORAGE__KIND=memory MAILROOM_POOLS__IO__ON_HTTP_WORKERS=false
start journal 18282
start journal-hop 18283 MAILROOM_POOLS__IO__ON_HTTP_WORKERS=false
start_bare() { # NAME PORT env...
  local name=$1 port=$2; shift 2
  if curl -s -m 1 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then echo "something listens on $port" >&2; exit 1; fi
  env "$@" target/release/examples/bare_echo "127.0.0.1:$port" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!; PIDS+=("$!")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; exit 1
}
rm -f "$OUT/bare-journal"
start_bare bare 18290
start_bare bare-durable 18291 BARE_JOURNAL="$OUT/bare-journal"
declare -A PORT=([memory]=18280 [memory-hop]=18281 [journal]=18282 [journal-hop]=18283 [bare]=18290 [bare-durable]=18291)
switches() { local s=0 t; for t in /proc/$1/task/*; do s=$((s + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status"))); done; echo $s; }
ECHO='{"kind":"echo","payload":{"hello":"world","n":42}}'
rm -f "$OUT/raw.txt"
for _ in $(seq 1 "$REPEAT"); do
  for name in memory memory-hop journal journal-hop bare bare-durable; do
    pid=${PID[$name]}; path="/v1/messages?wait=true"; [[ "$name" = bare* ]] && path=/v1/messages
    cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat"); sw0=$(switches "$pid")
    oha -n "$N" -c 64 --no-tui --output-format json -m POST -H 'content-type: application/json' \
      -d "$ECHO" "http://127.0.0.1:${PORT[$name]}$path" >"$OUT/oha.json"
    cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat"); sw1=$(switches "$pid")
    python3 - "$name" "$OUT/oha.json" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$((sw1 - sw0))" "$N" <<'PY' | tee -a "$OUT/raw.txt"
import json, sys
name, path, ticks, hz, switches, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
d = json.load(open(path))
ok = d["statusCodeDistribution"].get("200", 0)
assert ok == n, f"{name}: {ok} of {n} answered 200"
print(name, round(d["summary"]["requestsPerSec"]), ticks / hz * 1e6 / n, switches / n)
PY
  done
done
python3 - "$OUT/raw.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, cpu, sw = line.split()
    rows.setdefault(name, []).append((float(rps), float(cpu), float(sw)))
print("\n| server | req/s | CPU µs per request | context switches per request |")
print("|---|---:|---:|---:|")
for name, v in rows.items():
    m = lambda i: statistics.median(x[i] for x in v)
    print(f"| {name} | {m(0):,.0f} | {m(1):.1f} | {m(2):.2f} |")
PY
