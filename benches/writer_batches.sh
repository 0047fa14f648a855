#!/usr/bin/env bash
# The journal writer's batches under sleep load, seen from its system calls: one server build
# with the journal (64 MiB segments, so a segment closes and is compacted within the run), wrk
# with 1,000 connections of 100 ms sleeps for SECONDS (default 25), and `strace -T` on the
# writer thread only (its writes and fdatasyncs; the other threads are not traced). Prints the
# rate, the compactions (from the server's debug log), the largest batch (bytes written between
# two fdatasyncs) with the time from its first write to the end of its fdatasync, and the
# slowest batch. For an A/B of two builds, alternate them:
#
#   for r in 1 2; do for b in /tmp/old /tmp/new; do BIN=$b bash benches/writer_batches.sh; done; done
#
# Needs wrk (as benches/load.sh) and strace. Loopback only (127.0.0.1:18191).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/mailroom}
SECS=${1:-25}
ADDR=127.0.0.1:18191
DIR=$(mktemp -d)
OUT=target/load
mkdir -p "$OUT"
MAILROOM_SERVER__BIND=$ADDR MAILROOM_DISPATCH__CAPACITY=100000 MAILROOM_POOLS__IO__CONCURRENCY=4096 \
  MAILROOM_STORAGE__PATH="$DIR/data" RUST_LOG=warn,mailroom_actors=debug \
  "$BIN" serve --config benches/load.toml >"$OUT/writer_batches.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do curl -sf "http://$ADDR/healthz" >/dev/null && break; sleep 0.1; done
kill -0 $PID 2>/dev/null || { echo "the server did not start: $OUT/writer_batches.log" >&2; exit 1; }
WRITER=$(grep -l '^mailroom-journa' /proc/$PID/task/*/comm | head -1 | xargs dirname | xargs basename)
strace -T -tt -p "$WRITER" -e trace=fdatasync,write,pwrite64,writev -o "$OUT/writer_batches.strace" 2>/dev/null &
TRACE=$!
sleep 0.5
BODY='{"kind":"sleep","payload":{"ms":100}}' wrk -t2 -c1000 -d"${SECS}s" -s benches/post.lua \
  "http://$ADDR/v1/messages?wait=true" >"$OUT/writer_batches.wrk"
kill $TRACE; wait $TRACE 2>/dev/null || true
echo "$(basename "$BIN"): $(awk '/Requests\/sec/ {print $2}' "$OUT/writer_batches.wrk") req/s," \
  "compactions: $(grep -c 'storage: compacted' "$OUT/writer_batches.log" || true)"
awk '
function ts(x,  a) { split(x, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
/write/ { n = $(NF - 1); if (s == 0) start = ts($1); s += n }
/fdatasync/ {
  t = $NF; gsub(/[<>]/, "", t)
  if (s > 0) { d = ts($1) + t - start; if (s > m) { m = s; md = d }; if (d > dm) { dm = d; ds = s } }
  s = 0
}
END { printf "  largest batch %d bytes, %.1f ms from its first write to its fsync end; slowest batch %.1f ms (%d bytes)\n", m, md * 1000, dm * 1000, ds }
' "$OUT/writer_batches.strace"
