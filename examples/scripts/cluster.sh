#!/usr/bin/env bash
# cluster.sh — three Mailroom nodes sharing the work through NATS JetStream, on loopback.
#
# Starts nats-server (JetStream in a temp folder) and three `mailroom serve` nodes joined to it,
# submits a mixed load round-robin across the nodes, reads each outcome from a node other than
# the one that accepted it, and prints where each message ran. Stops everything on exit.
#
# Usage: examples/scripts/cluster.sh [MESSAGES]        (default 30)
# Environment:
#   NATS_SERVER   nats-server 2.10 or newer (default: .ci/venv/bin/nats-server, which
#                 `bash .ci/run` installs, else nats-server on the PATH)
#   MAILROOM_BIN  the mailroom binary (default: target/release/mailroom, built if missing)
#   NATS_PORT     default 14222; NODE_PORTS default "18081 18082 18083"
# Needs curl and python3. Exits non-zero if a message does not end as it should.
set -euo pipefail
cd "$(dirname "$0")/../.."

N="${1:-30}"
NATS_PORT="${NATS_PORT:-14222}"
read -r -a PORTS <<< "${NODE_PORTS:-18081 18082 18083}"
NAMES=(node-a node-b node-c)
NATS="${NATS_SERVER:-}"
if [[ -z "$NATS" ]]; then
  if [[ -x .ci/venv/bin/nats-server ]]; then NATS=.ci/venv/bin/nats-server; else NATS=nats-server; fi
fi
command -v "$NATS" >/dev/null 2>&1 || { echo "no nats-server: run 'bash .ci/run' or set NATS_SERVER" >&2; exit 2; }
BIN="${MAILROOM_BIN:-target/release/mailroom}"
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN"
  cargo build --release -q
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].strip(".").split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else (v if not isinstance(v,(dict,list)) else json.dumps(v)))' "$1" "$2"; }
wait_for() { # URL: until it answers 200, 20 s at most
  for _ in $(seq 1 200); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" == 200 ]] && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; return 1
}

echo "== nats-server on 127.0.0.1:$NATS_PORT ($("$NATS" --version))"
"$NATS" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

for i in 0 1 2; do
  mkdir -p "$WORK/${NAMES[$i]}"
  cat > "$WORK/${NAMES[$i]}/config.toml" <<EOF
[server]
bind = "127.0.0.1:${PORTS[$i]}"

[cluster]
nats_url = "nats://127.0.0.1:$NATS_PORT"
name = "example"
node = "${NAMES[$i]}"

[routes.echo]
[routes.sleep]
[routes.primes]
[routes.chaos]
retries = 1
backoff_ms = 50
EOF
  (cd "$WORK/${NAMES[$i]}" && exec "$BIN" serve --config config.toml > log 2>&1) &
  PIDS+=($!)
done
for i in 0 1 2; do
  wait_for "http://127.0.0.1:${PORTS[$i]}/readyz" || { tail -n 20 "$WORK/${NAMES[$i]}/log" >&2; exit 1; }
done
echo "== three nodes up: ${NAMES[*]} on ports ${PORTS[*]}"

IDS=(); AT=(); WANT=()
for ((m = 0; m < N; m++)); do
  i=$((m % 3))
  case $((m % 5)) in
    0|1) body="{\"kind\":\"sleep\",\"payload\":{\"ms\":200}}"; want=completed ;;
    2) body="{\"kind\":\"echo\",\"payload\":{\"n\":$m}}"; want=completed ;;
    3) body="{\"kind\":\"primes\",\"payload\":{\"limit\":20000}}"; want=completed ;;
    4) if ((m % 10 == 4)); then
         body="{\"kind\":\"chaos\",\"payload\":{\"mode\":\"error\",\"message\":\"boom\"}}"; want=dead
       else
         body="{\"kind\":\"echo\",\"payload\":{\"later\":$m},\"delay_ms\":300}"; want=completed
       fi ;;
  esac
  out=$(curl -sS -X POST "http://127.0.0.1:${PORTS[$i]}/v1/messages" -H 'content-type: application/json' -d "$body")
  id=$(field "$out" .id)
  [[ -n "$id" ]] || { echo "FAIL: ${NAMES[$i]} refused $body: $out" >&2; exit 1; }
  IDS+=("$id"); AT+=("$i"); WANT+=("$want")
done
echo "== submitted $N messages round-robin; reading each from another node"

printf '%-26s  %-6s  %-11s  %-7s  %-9s  %s\n' id kind accepted_on ran_on status attempts
declare -A RAN=()
for ((m = 0; m < N; m++)); do
  reader=$(( (AT[m] + 1) % 3 ))
  out=$(curl -sS "http://127.0.0.1:${PORTS[$reader]}/v1/messages/${IDS[m]}?wait_ms=20000")
  status=$(field "$out" .status); node=$(field "$out" .node)
  printf '%-26s  %-6s  %-11s  %-7s  %-9s  %s\n' "${IDS[m]}" "$(field "$out" .kind)" \
    "${NAMES[${AT[m]}]}" "${node:--}" "$status" "$(field "$out" .attempts)"
  [[ "$status" == "${WANT[m]}" ]] || { echo "FAIL: ${IDS[m]} is $status, expected ${WANT[m]}" >&2; exit 1; }
  RAN[${node:--}]=$(( ${RAN[${node:--}]:-0} + 1 ))
done
echo "== where the messages ran"
for n in "${!RAN[@]}"; do echo "  $n: ${RAN[$n]}"; done | sort
echo "== dead letters (any node lists the cluster's): $(curl -sS "http://127.0.0.1:${PORTS[2]}/v1/dead-letters" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["dead_letters"]))')"
echo "OK: $N messages, each read from a node that did not accept it, each ended as expected"
