#!/usr/bin/env bash
# Cluster benchmark: Mailroom nodes sharing the work through NATS JetStream, on this machine's
# loopback, in one interleaved run.
#
# - sleep 100 ms at 1,000 connections and fetch (an upstream that answers after 50 ms) at 256
#   connections, through clusters of 1, 2 and 3 nodes, the connections spread evenly over the
#   nodes (one wrk per node, run at once; their rates added);
# - echo at 64 connections through one cluster node (NATS with its default sync_interval, and
#   with sync_interval: always) against one node with the embedded journal (fsync = "always");
# - floor: the NATS server's CPU per message with no Mailroom in the loop (a bare work queue, then
#   with a cluster node's two state writes per message; benches/nats_floor.rs);
# - failover: the time from a node's kill -9 to its running message running on another node.
#
# Each measurement runs REPEAT times, the variants taking turns round by round; medians are
# printed as Markdown (and saved to target/cluster-bench/results.md), with the CPU the whole
# machine spent during each run (200 % = both cores busy), which is the ceiling on 2 cores.
#
# Usage: bash benches/cluster.sh       (DURATION=10 REPEAT=3 ONLY="sleep fetch echo floor failover")
# Needs nats-server 2.10 or newer (NATS_SERVER, else .ci/venv/bin/nats-server, which
# `bash .ci/run` installs) and wrk (installed from Debian if missing). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
REPEAT="${REPEAT:-3}"
ONLY="${ONLY:-sleep fetch echo floor failover}"
ACK_WAIT_MS="${ACK_WAIT_MS:-5000}"
OUT=target/cluster-bench
rm -rf "$OUT"; mkdir -p "$OUT"
NATS="${NATS_SERVER:-.ci/venv/bin/nats-server}"
[ -x "$NATS" ] || NATS=$(command -v nats-server) || { echo "no nats-server: run bash .ci/run" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "building release binaries"
cargo build --release -q --bin mailroom --example bare_echo --example nats_floor

PIDS=()
# Nodes first (they drain while NATS is still there), then the rest.
cleanup() {
  for p in "${NODE_PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]:-}"; do wait "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
}
trap cleanup EXIT
wait_up() { for _ in $(seq 1 200); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

# Two NATS servers: the default (fsync every 2 minutes) and one that fsyncs every write.
start_nats() { # PORT SYNC
  mkdir -p "$OUT/nats-$1"
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s"\n%s }\n' "$1" "$OUT/nats-$1/store" "$2" > "$OUT/nats-$1/nats.conf"
  "$NATS" -c "$OUT/nats-$1/nats.conf" > "$OUT/nats-$1/log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
}
start_nats 14301 ""
start_nats 14302 "sync_interval: always"

BARE=127.0.0.1:18390
target/release/examples/bare_echo "$BARE" > "$OUT/bare.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do curl -sf "http://$BARE/healthz" >/dev/null && break; sleep 0.1; done

NODE_PIDS=()
node() { # CLUSTER NAME PORT NATS_PORT → a node of CLUSTER on PORT
  local dir="$OUT/$1-$2"; mkdir -p "$dir"
  cat > "$dir/config.toml" <<EOF
[server]
bind = "127.0.0.1:$3"
[dispatch]
capacity = 100000
[pools.io]
concurrency = 4096
[fetch]
allow_hosts = ["127.0.0.1"]
[cluster]
nats_url = "nats://127.0.0.1:$4"
name = "$1"
node = "$2"
ack_wait_ms = $ACK_WAIT_MS
EOF
  (cd "$dir" && RUST_LOG=warn,async_nats=info exec "$OLDPWD/target/release/mailroom" serve --config config.toml > log 2>&1) &
  PIDS+=("$!"); NODE_PIDS+=("$!"); wait_up "127.0.0.1:$3"
}
journal_node() { # PORT → one node with the embedded journal (fsync = "always")
  local dir="$OUT/journal-$1"; mkdir -p "$dir"
  printf '[server]\nbind = "127.0.0.1:%s"\n[dispatch]\ncapacity = 100000\n[pools.io]\nconcurrency = 4096\n' "$1" > "$dir/config.toml"
  (cd "$dir" && RUST_LOG=warn exec "$OLDPWD/target/release/mailroom" serve --config config.toml > log 2>&1) &
  PIDS+=("$!"); wait_up "127.0.0.1:$1"
}

busy() { awk '/^cpu / {print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
# run NAME BODY CONNECTIONS PORT... → one wrk per port, CONNECTIONS spread over them, at once;
# appends "NAME rps p99(worst) non2xx machine-cpu%"
run() {
  local name=$1 body=$2 conns=$3; shift 3
  local n=$# i=0 p
  local before; before=$(busy)
  for p in "$@"; do
    BODY="$body" wrk -t1 -c$((conns / n)) -d"${DURATION}s" --timeout 10s --latency -s benches/post.lua \
      "http://127.0.0.1:$p/v1/messages?wait=true" > "$OUT/wrk-$i.txt" 2>&1 &
    i=$((i + 1))
  done
  wait_wrk
  local after; after=$(busy)
  python3 - "$name" "$before" "$after" "$OUT" "$n" <<'PY' | tee -a "$OUT/raw.txt"
import re, sys
name, before, after, out, n = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4], int(sys.argv[5])
rps = 0.0; p99 = 0.0; non2xx = 0
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
for i in range(n):
    t = open(f"{out}/wrk-{i}.txt").read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    rps += float(m.group(1)) if m else 0.0
    m = re.search(r"^\s+99%\s+(\S+)", t, re.M); p99 = max(p99, ms(m.group(1)) if m else 0)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t); non2xx += int(m.group(1)) if m else 0
busy = (float(after[0]) - float(before[0])) / (float(after[1]) - float(before[1])) * 200
print(f"{name} {rps:.0f} {p99:.1f} {non2xx} {busy:.0f}")
PY
}
wait_wrk() { while pgrep -x wrk >/dev/null; do sleep 0.2; done; }
warm() { # BODY PORT...
  local body=$1; shift
  for p in "$@"; do BODY="$body" wrk -t1 -c16 -d2s -s benches/post.lua "http://127.0.0.1:$p/v1/messages?wait=true" >/dev/null 2>&1 || true; done
}

SLEEP='{"kind":"sleep","payload":{"ms":100}}'
FETCH="{\"kind\":\"fetch\",\"payload\":{\"url\":\"http://$BARE/delay/50\"}}"
ECHO='{"kind":"echo","payload":{"hello":"world","n":42}}'

if [[ " $ONLY " == *" sleep "* || " $ONLY " == *" fetch "* ]]; then
  # Three clusters side by side on the default NATS server: of 1, 2 and 3 nodes. An idle node
  # only keeps one pull request per route open (2 s each).
  node one a 18301 14301
  node two a 18311 14301; node two b 18312 14301
  node three a 18321 14301; node three b 18322 14301; node three c 18323 14301
  for wl in sleep fetch; do
    [[ " $ONLY " == *" $wl "* ]] || continue
    if [ $wl = sleep ]; then body=$SLEEP; conns=1000; else body=$FETCH; conns=256; fi
    warm "$body" 18301 18311 18312 18321 18322 18323
    for _ in $(seq 1 "$REPEAT"); do
      run "$wl/1-node" "$body" $conns 18301
      run "$wl/2-nodes" "$body" $conns 18311 18312
      run "$wl/3-nodes" "$body" $conns 18321 18322 18323
    done
  done
  for p in "${NODE_PIDS[@]}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done; NODE_PIDS=()
fi

if [[ " $ONLY " == *" echo "* ]]; then
  node echo-default a 18331 14301
  node echo-always a 18332 14302
  journal_node 18333
  warm "$ECHO" 18331 18332 18333
  for _ in $(seq 1 "$REPEAT"); do
    run "echo/cluster-node" "$ECHO" 64 18331
    run "echo/cluster-node-sync-always" "$ECHO" 64 18332
    run "echo/journal-node" "$ECHO" 64 18333
  done
  for p in "${NODE_PIDS[@]}"; do kill -TERM "$p"; wait "$p" 2>/dev/null || true; done; NODE_PIDS=()
fi

if [[ " $ONLY " == *" floor "* ]]; then
  # The NATS server's own CPU per message with no Mailroom in the loop (benches/nats_floor.rs):
  # a bare durable work queue (publish with ack, pull, ack), then with the two state writes per
  # message a cluster node adds. Compare with the NATS share measured under the cluster.
  NPID=$(pgrep -f "nats-server -c $OUT/nats-14301/nats.conf")
  ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
  for _ in $(seq 1 "$REPEAT"); do
    for mode in queue state; do
      n0=$(ticks "$NPID")
      out=$(target/release/examples/nats_floor nats://127.0.0.1:14301 "$DURATION" 64 "$mode")
      n1=$(ticks "$NPID")
      msgs=$(echo "$out" | awk '{print $2}'); rate=$(echo "$out" | awk '{print $4}')
      echo "floor-$mode $rate $(( (n1 - n0) * 10000 / (msgs > 0 ? msgs : 1) ))" | tee -a "$OUT/floor.txt"
    done
  done
fi

if [[ " $ONLY " == *" failover "* ]]; then
  # A 3 s sleep accepted and running on node A; A is killed; how long until it runs on B.
  node fo a 18341 14301
  APID=${NODE_PIDS[-1]}
  node fo b 18342 14301
  for r in $(seq 1 "$REPEAT"); do
    if ! kill -0 "$APID" 2>/dev/null; then node fo a 18341 14301; APID=${NODE_PIDS[-1]}; fi
    python3 - "$APID" <<'PY' | tee -a "$OUT/failover.txt"
import json, os, sys, time, urllib.request
a, b = "http://127.0.0.1:18341", "http://127.0.0.1:18342"
def call(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))
while True:  # until one runs on A (the consumer is shared: it may land on B)
    mid = call(a + "/v1/messages", {"kind": "sleep", "payload": {"ms": 3000}})["id"]
    for _ in range(100):
        o = call(b + f"/v1/messages/{mid}")
        if o["status"] == "running":
            break
        time.sleep(0.01)
    if o.get("node") == "a":
        break
os.kill(int(sys.argv[1]), 9)
killed = time.monotonic()
while True:
    o = call(b + f"/v1/messages/{mid}")
    if o["status"] == "running" and o.get("node") == "b":
        print(f"failover {time.monotonic() - killed:.2f}")
        break
    time.sleep(0.01)
PY
    node fo a 18341 14301; APID=${NODE_PIDS[-1]}
  done
fi

python3 - "$OUT" "$DURATION" "$REPEAT" "$ACK_WAIT_MS" <<'PY' | tee "$OUT/results.md"
import os, statistics, sys
out, duration, repeat, ack = sys.argv[1:5]
rows = {}
if os.path.exists(f"{out}/raw.txt"):
    for line in open(f"{out}/raw.txt"):
        name, rps, p99, non2xx, cpu = line.split()
        rows.setdefault(name, []).append((float(rps), float(p99), int(non2xx), float(cpu)))
med = {n: statistics.median(r[0] for r in v) for n, v in rows.items()}
print(f"\n{repeat} interleaved runs of {duration} s each; medians. CPU: the whole machine's, 200 % = both cores.\n")
print("| workload | through | req/s | p99 (ms, worst wrk) | non-2xx | machine CPU |")
print("|---|---|---:|---:|---:|---:|")
for n, v in rows.items():
    wl, via = n.split("/")
    print(f"| {wl} | {via} | {med[n]:,.0f} | {statistics.median(r[1] for r in v):.1f} | {sum(r[2] for r in v)} | {statistics.median(r[3] for r in v):.0f} % |")
print("\n| ratio | value | goal |\n|---|---:|---|")
def ratio(label, a, b, goal):
    if a in med and b in med and med[b] > 0:
        print(f"| {label} | {med[a] / med[b]:.2f} | {goal} |")
for wl in ("sleep", "fetch"):
    ratio(f"{wl}: 2 nodes / 1 node", f"{wl}/2-nodes", f"{wl}/1-node", "")
    ratio(f"{wl}: 3 nodes / 1 node", f"{wl}/3-nodes", f"{wl}/1-node", "≥ 2.5 where the machine allows")
if "sleep/1-node" in med:
    print(f"| sleep: 1 node / ideal 10,000 | {med['sleep/1-node'] / 10000:.2f} | |")
ratio("echo: cluster node / journal node", "echo/cluster-node", "echo/journal-node", "≥ 0.5")
ratio("echo: cluster node (NATS sync always) / journal node", "echo/cluster-node-sync-always", "echo/journal-node", "")
if os.path.exists(f"{out}/floor.txt"):
    rows = {}
    for line in open(f"{out}/floor.txt"):
        name, rate, us = line.split()
        rows.setdefault(name, []).append((float(rate), float(us)))
    print("\n| NATS alone | messages/s | NATS server CPU per message |\n|---|---:|---:|")
    for n, v in rows.items():
        print(f"| {n} | {statistics.median(r[0] for r in v):,.0f} | {statistics.median(r[1] for r in v):.0f} µs |")
if os.path.exists(f"{out}/failover.txt"):
    t = [float(l.split()[1]) for l in open(f"{out}/failover.txt")]
    print(f"\nFailover (ack_wait_ms = {ack}): from kill -9 to running on another node, median "
          f"{statistics.median(t):.2f} s over {len(t)} runs ({', '.join(f'{x:.2f}' for x in t)}).")
PY
