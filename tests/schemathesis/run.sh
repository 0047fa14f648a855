#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis, every check on:
# starts `mailroom serve` on a free loopback port with tests/schemathesis/config.toml, runs a
# bounded number of examples per operation, and fails on any mismatch.
#
#   bash tests/schemathesis/run.sh [EXAMPLES]      (default 50 per operation)
#
# Needs the `st` command: SCHEMATHESIS=/path/to/st, else `st` on PATH (SCHEMATHESIS_PHASES picks
# its phases; all four by default). .ci/run installs it in a
# virtual environment. Excluded, each for a documented reason:
#   use_after_free — DELETE /v1/messages/{id} cancels; the message stays readable (status
#                    "cancelled"), as the API documents.
set -euo pipefail
cd "$(dirname "$0")/../.."
examples="${1:-50}"
st="${SCHEMATHESIS:-st}"
bin="${MAILROOM_BIN:-target/debug/mailroom}"
[ -x "$bin" ] || cargo build --quiet --bin mailroom
log="$(mktemp)"
journal="$(mktemp -d)"  # the server's journal (its default storage), fresh for each run
MAILROOM_STORAGE__PATH="$journal" "$bin" serve --config tests/schemathesis/config.toml > "$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$log" "$journal"' EXIT
addr=""
for _ in $(seq 1 200); do
  addr="$(sed -n 's/.*mailroom is serving.*addr=\([0-9.:]*\).*/\1/p' "$log" | head -1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "mailroom did not start:"; cat "$log"; exit 1; }
echo "== schemathesis against http://$addr ($examples examples per operation)"
"$st" run "http://$addr/openapi.json" \
  --checks all --exclude-checks use_after_free \
  --phases "${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful}" \
  --max-examples "$examples" --workers 2 --seed 1 \
  --generation-deterministic 2>&1
