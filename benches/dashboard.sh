#!/usr/bin/env bash
# What the dashboard costs the server. The page polls GET /v1/overview once a second: with the
# last 10 seconds of history at each poll (`history=10`), and the whole 300 once when it opens.
# For each, wrk drives the endpoint flat out for DURATION seconds while the server's own CPU time
# is read from /proc before and after: CPU time per poll = CPU seconds / polls. Also the bytes of
# one answer, and the server's CPU while idle (the once-a-second sampling included). Rounds are
# interleaved; medians are printed, with what N open dashboards cost at one poll a second each.
#
# Usage: bash benches/dashboard.sh   (DURATION=10 REPEAT=3 by default). Installs wrk if missing.
# Loopback only. The server's journal goes under target/dashboard/.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
REPEAT="${REPEAT:-3}"
OUT=target/dashboard
mkdir -p "$OUT"
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
echo "building the release binary"
cargo build --release -q --bin mailroom

ADDR=127.0.0.1:18290
if curl -s -m 1 "http://$ADDR/healthz" >/dev/null 2>&1; then
  echo "something already listens on $ADDR; stop it first" >&2; exit 1
fi
rm -rf "$OUT/data"
env MAILROOM_SERVER__BIND="$ADDR" MAILROOM_STORAGE__PATH="$OUT/data" RUST_LOG=warn \
  target/release/mailroom serve --config benches/load.toml >"$OUT/mailroom.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.1; done

# Something to show: finished messages on every route, and a dead letter.
for k in echo sleep primes hash; do
  case $k in
    echo) p='{"n":1}' ;; sleep) p='{"ms":1}' ;; primes) p='{"limit":1000}' ;; hash) p='{"data":"x","rounds":10}' ;;
  esac
  for _ in $(seq 1 20); do
    curl -s -X POST "http://$ADDR/v1/messages" -H 'content-type: application/json' \
      -d "{\"kind\":\"$k\",\"payload\":$p}" >/dev/null
  done
done
routes=$(curl -s "http://$ADDR/v1/routes" | grep -o '"kind":' | wc -l)
sleep 2

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
seq_now() { curl -s "http://$ADDR/v1/overview" | grep -o '"history_seq":[0-9]*' | cut -d: -f2; }

# Let the ring fill (300 samples, five minutes), so the whole history is as large as it gets;
# the server's CPU over that wait is its idle cost (the sampling included).
echo "waiting for the history to fill (five minutes)"
t0=$(cpu_ticks); w0=$(date +%s.%N)
while [ "$(seq_now)" -lt 301 ]; do sleep 5; done
t1=$(cpu_ticks); w1=$(date +%s.%N)
idle_ms=$(awk -v t=$(( t1 - t0 )) -v hz="$HZ" -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", t / hz / (b - a) * 1000}')

# once HISTORY → "history polls_per_s cpu_us_per_poll"
once() {
  local t0 t1 polls
  t0=$(cpu_ticks)
  wrk -t1 -c4 -d"${DURATION}s" "http://$ADDR/v1/overview?history=$1" >"$OUT/wrk.txt" 2>&1
  t1=$(cpu_ticks)
  polls=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
  awk -v h="$1" -v n="$polls" -v d="$DURATION" -v t=$(( t1 - t0 )) -v hz="$HZ" \
    'BEGIN {printf "%s %.0f %.1f\n", h, n / d, t / hz / n * 1e6}' | tee -a "$OUT/raw.txt"
}
: >"$OUT/raw.txt"
for r in $(seq 1 "$REPEAT"); do
  echo "round $r"
  once 10
  once 300
done

small=$(curl -s "http://$ADDR/v1/overview?history=10" | wc -c)
whole=$(curl -s "http://$ADDR/v1/overview?history=300" | wc -c)

echo
echo "server: $(nproc) cores, $routes routes, wrk -t1 -c4 -d${DURATION}s, medians of $REPEAT rounds"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for h in 10 300; do
  rps=$(awk -v h=$h '$1==h {print $2}' "$OUT/raw.txt" | median)
  us=$(awk -v h=$h '$1==h {print $3}' "$OUT/raw.txt" | median)
  bytes=$([ "$h" = 10 ] && echo "$small" || echo "$whole")
  echo "history=$h: $rps polls/s flat out, ${us} µs of server CPU per poll, $bytes bytes per answer"
done
us10=$(awk '$1==10 {print $3}' "$OUT/raw.txt" | median)
awk -v us="$us10" 'BEGIN {
  for (n = 1; n <= 100; n *= 10)
    printf "%d open dashboards (one poll a second each): %.3f %% of one core\n", n, n * us / 1e6 * 100 }'
echo "idle server (sampling once a second, no dashboard open): ${idle_ms} ms of CPU per second (over the five minutes' wait; /proc counts in ticks of $(( 1000 / HZ )) ms)"
