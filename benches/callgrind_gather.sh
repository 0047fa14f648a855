#!/usr/bin/env bash
# Instructions per message of the in-process `Dispatcher::gather` of 10,000 `echo` messages
# (memory storage, the store full so every outcome evicts an old one), counted by callgrind,
# which does not move with the machine's noise: `actors/benches/gather_steps.rs` gathers 12
# batches to warm up, the counters are zeroed, it gathers TIMED batches (3), and the counters
# are dumped. Prints the total per message and the top functions by their own instructions and
# by their inclusive instructions. BIN picks another build of gather_steps (to compare two
# commits: `cargo bench -p mailroom-actors --bench gather_steps --no-run` prints its path).
#
# Usage: bash benches/callgrind_gather.sh          (TIMED=3, BIN=a fresh build)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/callgrind
mkdir -p "$OUT"
command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind >/dev/null)
if [ -z "${BIN:-}" ]; then
  BIN=$(cargo bench -q -p mailroom-actors --bench gather_steps --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gather_steps" and m.get("executable"): print(m["executable"])')
fi
[ -x "$BIN" ] || { echo "no gather_steps executable (BIN=$BIN)" >&2; exit 1; }
TIMED="${TIMED:-3}"
N=$((TIMED * 10000))
rm -f "$OUT"/gather.out* "$OUT/steps.fifo" "$OUT/steps.log"
mkfifo "$OUT/steps.fifo"
GATHER_STEPS=1 TIMED=$TIMED valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$OUT/gather.out" "$BIN" <"$OUT/steps.fifo" >"$OUT/steps.log" 2>"$OUT/valgrind.log" &
VP=$!
trap '{ exec 3>&-; } 2>/dev/null || true; kill $VP 2>/dev/null || true; rm -f "$OUT/steps.fifo"' EXIT
exec 3>"$OUT/steps.fifo"
wait_for() {
  for _ in $(seq 1 1200); do
    grep -qs "$1" "$OUT/steps.log" && return 0
    kill -0 "$VP" 2>/dev/null || { cat "$OUT/valgrind.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "gather_steps did not print $1 within 10 minutes" >&2; exit 1
}
wait_for warm
callgrind_control -z "$VP" >/dev/null
echo go >&3
wait_for done
callgrind_control -d "$VP" >/dev/null
echo end >&3
wait "$VP" || true
python3 benches/callgrind_table.py "$OUT/gather.out.1" "$N" message 15 mailroom_actors::
