#!/usr/bin/env bash
# Load benchmark: `POST /v1/messages?wait=true` against `mailroom serve` (release build), beside
# a bare actix-web handler (the HTTP ceiling), the same API written the asyncio way (Python +
# aiohttp + ProcessPoolExecutor) and the Go peer (benches/go_peer: net/http, a worker-goroutine
# pool for the CPU kinds, one shared http.Client), all in the same run. Each workload runs at a fixed concurrency
# for a fixed time, REPEAT times, the servers taking turns round by round, each turn measured
# with wrk and then with oha (TOOLS="wrk oha"; oha gives the latency percentiles up to p99.9);
# the medians and the ratios are printed as a Markdown table (and saved to target/load/results.md).
#
# Usage: bash benches/load.sh            (DURATION=10 REPEAT=3 by default; ONLY="echo sleep" to pick;
#                                          TOOLS=wrk or TOOLS=oha for one load generator only)
#
# The sleep workload runs SLEEP_DURATION (30 s by default) instead: each of its requests takes
# 100 ms, so a run starts with 100 ms in which nothing can complete and ends with 1,000 requests
# in flight that are never counted; over 10 s that is ~2% of the ideal lost to the measurement
# itself, over 30 s ~0.7%. Every server gets a 2 s warm-up run (not counted) before each workload.
# Installs what it needs: wrk and golang-go (Debian), oha (crates.io, `cargo install`),
# aiohttp (PyPI, into target/load/venv).
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
SLEEP_DURATION="${SLEEP_DURATION:-30}"
REPEAT="${REPEAT:-3}"
ONLY="${ONLY:-echo sleep fetch primes hash}"
TOOLS="${TOOLS:-wrk oha}"
OUT=target/load
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  echo "installing wrk"; (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
if [[ " $TOOLS " == *" oha "* ]] && ! command -v oha >/dev/null; then
  echo "installing oha (cargo install oha, a few minutes)"; cargo install -q --locked oha
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v go >/dev/null; then
  echo "installing golang-go"; (apt-get update -qq && apt-get install -y -qq golang-go) >/dev/null
fi
if [ ! -x "$OUT/venv/bin/python" ]; then
  echo "installing aiohttp into $OUT/venv"
  python3 -m venv "$OUT/venv" && "$OUT/venv/bin/pip" install -q aiohttp
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building release binaries"
cargo build --release -q --bin mailroom --example bare_echo
(cd benches/go_peer && go build -o "../../$OUT/go_peer" .)

MR=127.0.0.1:18080; MR1=127.0.0.1:18083; MR2=127.0.0.1:18084; PY=127.0.0.1:18091; GO=127.0.0.1:18095
BARE=127.0.0.1:18090; BARE_INLINE1=127.0.0.1:18092; BARE_POOL=127.0.0.1:18093; BARE_POOL1=127.0.0.1:18094
BARE_DURABLE=127.0.0.1:18096
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_up() { for _ in $(seq 1 100); do curl -sf "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }
# A server left over on one of our ports would be measured instead of the one just built.
for a in $MR $MR1 $MR2 $PY $GO $BARE $BARE_INLINE1 $BARE_POOL $BARE_POOL1 $BARE_DURABLE; do
  if curl -s -m 1 "http://$a/healthz" >/dev/null 2>&1; then echo "something already listens on $a; stop it first" >&2; exit 1; fi
done

MR_PIDS=()
start_mailroom() { # ADDR, then extra env assignments
  local addr=$1; shift
  # The journal (the service's default storage, fsync = "always") in a fresh folder per server.
  rm -rf "$OUT/data-${addr##*:}"
  env MAILROOM_SERVER__BIND=$addr MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
      MAILROOM_FETCH__ALLOW_HOSTS='["127.0.0.1"]' MAILROOM_STORAGE__PATH="$OUT/data-${addr##*:}" RUST_LOG=warn "$@" \
      target/release/mailroom serve --config benches/load.toml >"$OUT/mailroom-${addr##*:}.log" 2>&1 &
  local pid=$!; PIDS+=("$pid"); MR_PIDS+=("$pid"); wait_up "$addr"
  kill -0 "$pid" 2>/dev/null || { echo "mailroom exited: $(cat "$OUT/mailroom-${addr##*:}.log")" >&2; exit 1; }
}
stop_mailrooms() { for p in "${MR_PIDS[@]}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done; MR_PIDS=(); }

# once NAME URL BODY CONNECTIONS SECONDS → appends "name tool rps p50 p99 p99.9 non2xx errors"
# for each tool in TOOLS (wrk prints no p99.9: "-")
once() {
  local name=$1 url=$2 body=$3 conns=$4 secs=$5 tool
  for tool in $TOOLS; do
    if [ "$tool" = wrk ]; then
      BODY="$body" wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s --latency -s benches/post.lua "$url" >"$OUT/wrk.txt" 2>&1 || true
      local rps p50 p99 non2xx errors
      rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
      p50=$(awk '$1=="50%" {print $2}' "$OUT/wrk.txt")
      p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
      non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt"); non2xx=${non2xx:-0}
      errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$OUT/wrk.txt"); errors=${errors:-0}
      echo "$name wrk ${rps:-0} ${p50:-?} ${p99:-?} - $non2xx $errors" | tee -a "$OUT/raw.txt"
    else
      oha -z "${secs}s" -w -c "$conns" -t 10s --no-tui --output-format json -m POST \
        -H 'content-type: application/json' -d "$body" "$url" >"$OUT/oha.json" 2>"$OUT/oha.err" || true
      python3 - "$name" "$OUT/oha.json" <<'PY' | tee -a "$OUT/raw.txt"
import json, sys
name = sys.argv[1]
try:
    d = json.load(open(sys.argv[2]))
except ValueError:
    print(f"{name} oha 0 ? ? ? 0 0")
    sys.exit()
p = d["latencyPercentiles"]
ms = lambda v: "?" if v is None else f"{v * 1000:.2f}ms"
codes = d.get("statusCodeDistribution") or {}
non2xx = sum(n for c, n in codes.items() if not c.startswith("2"))
errors = sum((d.get("errorDistribution") or {}).values())
print(f"{name} oha {d['summary']['requestsPerSec']:.2f} {ms(p['p50'])} {ms(p['p99'])} {ms(p['p99.9'])} {non2xx} {errors}")
PY
    fi
  done
}

# measure BODY CONNECTIONS SECONDS NAME=URL... → a 2 s warm-up of every server, then REPEAT
# rounds in which each server is measured once, so the machine's noise falls on all of them
# alike rather than on whichever ran in a bad minute.
measure() {
  local body=$1 conns=$2 secs=$3; shift 3
  local t
  for t in "$@"; do
    BODY="$body" wrk -t2 -c"$conns" -d2s --timeout 10s -s benches/post.lua "${t#*=}" >/dev/null 2>&1 || true
  done
  for _ in $(seq 1 "$REPEAT"); do
    for t in "$@"; do once "${t%%=*}" "${t#*=}" "$body" "$conns" "$secs"; done
  done
}

rm -f "$OUT/raw.txt"
"$OUT/venv/bin/python" benches/python_baseline.py --port "${PY##*:}" >"$OUT/python.log" 2>&1 &
PIDS+=("$!"); wait_up "$PY"
"$OUT/go_peer" "$GO" >"$OUT/go.log" 2>&1 &
PIDS+=("$!"); wait_up "$GO"
# The bare servers: the HTTP ceiling (also the fetch upstream), and the CPU ceilings (idle until
# measured: their threads block on their sockets or channel).
start_bare() { # ADDR, then extra env assignments
  local addr=$1; shift
  env "$@" target/release/examples/bare_echo "$addr" >"$OUT/bare-${addr##*:}.log" 2>&1 &
  PIDS+=("$!"); wait_up "$addr"
}
start_bare "$BARE"
start_bare "$BARE_INLINE1" BARE_WORKERS=1
start_bare "$BARE_POOL" BARE_CPU_THREADS=2
start_bare "$BARE_POOL1" BARE_CPU_THREADS=1
# The journal's ceiling: echo (and sleep) answered once its body is fsynced to a file (group
# commit).
rm -f "$OUT/bare-journal"
start_bare "$BARE_DURABLE" BARE_JOURNAL="$OUT/bare-journal"

ECHO='{"kind":"echo","payload":{"hello":"world","n":42}}'
SLEEP='{"kind":"sleep","payload":{"ms":100}}'
FETCH="{\"kind\":\"fetch\",\"payload\":{\"url\":\"http://$BARE/delay/50\"}}"
PRIMES='{"kind":"primes","payload":{"limit":20000}}'
HASH='{"kind":"hash","payload":{"data":"mailroom","rounds":2000}}'
W='/v1/messages?wait=true'
B='/v1/messages'

for wl in $ONLY; do
  case $wl in
    echo)
      # The journal (the default storage), then memory, then memory with every message handed
      # from the HTTP worker to the I/O arbiter and back (pools.io.on_http_workers = false: the
      # design before HTTP workers ran the async routes themselves). Beside the bare handler,
      # the bare handler that fsyncs each body before answering (the journal's ceiling).
      start_mailroom "$MR"
      start_mailroom "$MR1" MAILROOM_STORAGE__KIND=memory
      start_mailroom "$MR2" MAILROOM_STORAGE__KIND=memory MAILROOM_POOLS__IO__ON_HTTP_WORKERS=false
      measure "$ECHO" 64 "$DURATION" "echo/mailroom=http://$MR$W" "echo/mailroom-memory=http://$MR1$W" \
        "echo/mailroom-memory-hop=http://$MR2$W" "echo/bare=http://$BARE$B" "echo/bare-durable=http://$BARE_DURABLE$B" \
        "echo/go=http://$GO$W" "echo/python=http://$PY$W"
      stop_mailrooms ;;
    sleep)
      # Every workload runs Mailroom with the journal (the default) and in memory. Beside the
      # bare timer, the bare timer that fsyncs each body while it sleeps (the journal's ceiling).
      start_mailroom "$MR"
      start_mailroom "$MR1" MAILROOM_STORAGE__KIND=memory
      measure "$SLEEP" 1000 "$SLEEP_DURATION" "sleep/mailroom=http://$MR$W" "sleep/mailroom-memory=http://$MR1$W" \
        "sleep/bare=http://$BARE$B" "sleep/bare-durable=http://$BARE_DURABLE$B" "sleep/go=http://$GO$W" \
        "sleep/python=http://$PY$W"
      stop_mailrooms ;;
    fetch)
      start_mailroom "$MR"
      start_mailroom "$MR1" MAILROOM_STORAGE__KIND=memory
      measure "$FETCH" 256 "$DURATION" "fetch/mailroom=http://$MR$W" "fetch/mailroom-memory=http://$MR1$W" \
        "fetch/go=http://$GO$W" "fetch/python=http://$PY$W"
      stop_mailrooms ;;
    primes|hash)
      body=$PRIMES; [ "$wl" = hash ] && body=$HASH
      # Beside Mailroom with two pool threads and with one: the same work computed inline on
      # the bare server's HTTP worker threads (two, then one), no dispatch at all; then on a
      # plain thread pool beside the HTTP workers (two threads, then one): the least that any
      # design keeping CPU work off the HTTP threads pays (two cross-thread hand-offs).
      start_mailroom "$MR"
      start_mailroom "$MR1" MAILROOM_POOLS__CPU__THREADS=1
      start_mailroom "$MR2" MAILROOM_STORAGE__KIND=memory
      measure "$body" 16 "$DURATION" "$wl/mailroom=http://$MR$W" "$wl/mailroom-1-thread=http://$MR1$W" \
        "$wl/mailroom-memory=http://$MR2$W" \
        "$wl/bare-inline=http://$BARE$B" "$wl/bare-inline-1-thread=http://$BARE_INLINE1$B" \
        "$wl/bare-pool=http://$BARE_POOL$B" "$wl/bare-pool-1-thread=http://$BARE_POOL1$B" \
        "$wl/go=http://$GO$W" "$wl/python=http://$PY$W"
      stop_mailrooms ;;
  esac
done

python3 - "$OUT/raw.txt" "$DURATION" "$REPEAT" "$SLEEP_DURATION" <<'PY' | tee "$OUT/results.md"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, tool, rps, p50, p99, p999, non2xx, errors = line.split()
    rows.setdefault((tool, name), []).append((float(rps), p50, p99, p999, int(non2xx), int(errors)))
tools = sorted({t for t, _ in rows}, key=lambda t: t != "wrk")
def mid(v):  # the run with the median rate
    return sorted(v, key=lambda r: r[0])[len(v) // 2]
print(f"\n{sys.argv[3]} runs of {sys.argv[2]} s each (sleep: {sys.argv[4]} s); medians; "
      "the latencies are those of the run with the median rate.\n")
print("| workload | server | tool | req/s (median) | p50 | p99 | p99.9 | non-200 | errors |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for (tool, n), v in sorted(rows.items(), key=lambda kv: (kv[0][1].split("/")[0], kv[0][1], kv[0][0] != "wrk")):
    r = mid(v)
    wl, server = n.split("/")
    med = statistics.median(x[0] for x in v)
    print(f"| {wl} | {server} | {tool} | {med:,.0f} | {r[1]} | {r[2]} | {r[3]} | {sum(x[4] for x in v)} | {sum(x[5] for x in v)} |")
print("\n| ratio | " + " | ".join(tools) + " | goal |")
print("|---|" + "---:|" * len(tools) + "---|")
meds = {t: {n: statistics.median(x[0] for x in v) for (tt, n), v in rows.items() if tt == t} for t in tools}
def ratio(label, a, b, goal):
    cells = [f"{meds[t][a] / meds[t][b]:.2f}" if a in meds[t] and meds[t].get(b) else "–" for t in tools]
    if any(c != "–" for c in cells):
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
def ideal(label, a, ideal_rate, goal):
    cells = [f"{meds[t][a] / ideal_rate:.2f}" if a in meds[t] else "–" for t in tools]
    if any(c != "–" for c in cells):
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
ratio("echo: mailroom (journal) / bare actix-web", "echo/mailroom", "echo/bare", "≥ 0.75")
ideal("sleep: mailroom / ideal 10,000", "sleep/mailroom", 10000, "≥ 0.95")
ideal("sleep: bare actix-web timer / ideal 10,000 (this machine's ceiling)", "sleep/bare", 10000, "")
ratio("sleep: mailroom / bare actix-web timer", "sleep/mailroom", "sleep/bare", "")
ideal("sleep: bare timer, fsync per body / ideal 10,000 (the journal's ceiling)", "sleep/bare-durable", 10000, "")
ratio("sleep: mailroom (journal) / bare timer, fsync per body", "sleep/mailroom", "sleep/bare-durable", "")
ratio("sleep: mailroom (memory) / bare actix-web timer", "sleep/mailroom-memory", "sleep/bare", "")
ideal("fetch: mailroom / ideal 5,120", "fetch/mailroom", 5120, "≥ 0.90")
for wl in ("primes", "hash"):
    ratio(f"{wl}: pool / one thread", f"{wl}/mailroom", f"{wl}/mailroom-1-thread", "≥ 1.8")
    ratio(f"{wl}: bare inline, 2 threads / 1 (this machine's ceiling)", f"{wl}/bare-inline", f"{wl}/bare-inline-1-thread", "")
    ratio(f"{wl}: bare thread pool, 2 threads / 1 (ceiling with CPU work off the HTTP threads)", f"{wl}/bare-pool", f"{wl}/bare-pool-1-thread", "")
    ratio(f"{wl}: mailroom pool / bare thread pool, 2 threads each", f"{wl}/mailroom", f"{wl}/bare-pool", "")
ratio("echo: mailroom (journal) / go", "echo/mailroom", "echo/go", "≥ 1.2")
ratio("echo: mailroom (memory) / go", "echo/mailroom-memory", "echo/go", "≥ 1.2")
ratio("echo: mailroom (memory) / bare actix-web", "echo/mailroom-memory", "echo/bare", "≥ 0.75")
ratio("echo: bare actix-web, fsync per answer / go (the journal's ceiling against Go)", "echo/bare-durable", "echo/go", "")
ratio("echo: mailroom (journal) / bare actix-web, fsync per answer", "echo/mailroom", "echo/bare-durable", "")
ratio("echo: mailroom (memory), on the HTTP worker / with the hop to the I/O arbiter", "echo/mailroom-memory", "echo/mailroom-memory-hop", "")
ideal("sleep: mailroom (memory) / ideal 10,000", "sleep/mailroom-memory", 10000, "≥ 0.95")
ratio("sleep: mailroom / go", "sleep/mailroom", "sleep/go", "")
ratio("fetch: mailroom / go", "fetch/mailroom", "fetch/go", "≥ 1.0 (p99 ≤ Go's)")
ratio("fetch: mailroom (memory) / go", "fetch/mailroom-memory", "fetch/go", "≥ 1.0 (p99 ≤ Go's)")
ratio("primes: mailroom / go", "primes/mailroom", "primes/go", "≥ 1.4")
ratio("primes: mailroom (memory) / go", "primes/mailroom-memory", "primes/go", "≥ 1.4")
ratio("hash: mailroom / go", "hash/mailroom", "hash/go", "≥ 1.4")
ratio("hash: mailroom (memory) / go", "hash/mailroom-memory", "hash/go", "≥ 1.4")
for wl in ("echo", "sleep", "fetch", "primes", "hash"):
    ratio(f"{wl}: mailroom / python asyncio", f"{wl}/mailroom", f"{wl}/python", "well ahead (> 1)")
PY
