#!/usr/bin/env bash
# curl.sh — drive a running `mailroom serve` with curl: submit, wait, poll, cancel, batch.
#
# Usage: examples/scripts/curl.sh            (server at $MAILROOM_URL, default http://127.0.0.1:8080)
# Needs curl and python3 (to read JSON fields). Prints each step; exits non-zero on the first
# answer that is not what the API documents.
set -euo pipefail

URL="${MAILROOM_URL:-http://127.0.0.1:8080}"
AUTH=()
if [[ -n "${MAILROOM_TOKEN:-}" ]]; then AUTH=(-H "Authorization: Bearer ${MAILROOM_TOKEN}"); fi

fail() { echo "FAIL: $*" >&2; exit 1; }
# field JSON PATH: prints a field of a JSON document (PATH like .status or .result.count)
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].strip(".").split("."):
    v = v[int(k)] if isinstance(v, list) else v.get(k)
print(v if not isinstance(v,(dict,list)) else json.dumps(v))' "$1" "$2"; }
# call METHOD PATH [BODY]: sets CODE and BODY
call() {
  local out
  if [[ $# -ge 3 ]]; then
    out=$(curl -sS "${AUTH[@]}" -X "$1" "$URL$2" -H 'content-type: application/json' -d "$3" -w $'\n%{http_code}')
  else
    out=$(curl -sS "${AUTH[@]}" -X "$1" "$URL$2" -w $'\n%{http_code}')
  fi
  CODE="${out##*$'\n'}"; BODY="${out%$'\n'*}"
}
expect() { [[ "$CODE" == "$1" ]] || fail "expected HTTP $1, got $CODE: $BODY"; }

echo "== health"
call GET /healthz; expect 200; echo "$BODY"

echo "== submit and wait: primes up to 10000"
call POST '/v1/messages?wait=true' '{"kind":"primes","payload":{"limit":10000}}'; expect 200
[[ "$(field "$BODY" .result.count)" == 1229 ]] || fail "primes: $BODY"
echo "count = $(field "$BODY" .result.count), ran $(field "$BODY" .timings.run_ms) ms"

echo "== submit, then poll until it finishes: sleep 300 ms"
call POST /v1/messages '{"kind":"sleep","payload":{"ms":300}}'; expect 202
ID=$(field "$BODY" .id); echo "accepted $ID ($(field "$BODY" .status))"
for _ in $(seq 1 50); do
  call GET "/v1/messages/$ID"; expect 200
  STATUS=$(field "$BODY" .status); echo "  $STATUS"
  [[ "$STATUS" == completed ]] && break
  sleep 0.1
done
[[ "$STATUS" == completed ]] || fail "sleep did not finish: $BODY"

echo "== long-poll: one request that waits for the outcome"
call POST /v1/messages '{"kind":"sleep","payload":{"ms":200}}'; expect 202
call GET "/v1/messages/$(field "$BODY" .id)?wait_ms=5000"; expect 200
[[ "$(field "$BODY" .status)" == completed ]] || fail "long-poll: $BODY"
echo "completed: $(field "$BODY" .result)"

echo "== delay a message, then cancel it"
call POST /v1/messages '{"kind":"echo","payload":"later","delay_ms":60000}'; expect 202
ID=$(field "$BODY" .id); echo "accepted $ID ($(field "$BODY" .status))"
call DELETE "/v1/messages/$ID"; expect 200
echo "cancel: $(field "$BODY" .status)"
call DELETE "/v1/messages/$ID"; expect 409
echo "cancel again: 409 $(field "$BODY" .detail)"

echo "== batch: outcomes in order, the bad one rejected on its own"
call POST /v1/batch '{"wait":true,"messages":[{"kind":"sleep","payload":{"ms":100}},{"kind":"nope"},{"kind":"hash","payload":{"data":"abc","rounds":1}}]}'
expect 200
for i in 0 1 2; do
  s=$(field "$BODY" ".results.$i.status")
  if [[ $s == rejected ]]; then d="$(field "$BODY" ".results.$i.code") $(field "$BODY" ".results.$i.error.message")"
  else d=$(field "$BODY" ".results.$i.result"); fi
  echo "  [$i] $s $d"
done
[[ "$(field "$BODY" .results.1.code)" == 422 ]] || fail "batch: $BODY"
[[ "$(field "$BODY" .results.2.result.sha256)" == ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad ]] || fail "hash: $BODY"

echo "== a bad request gets a problem+json answer"
call POST /v1/messages '{"kind": '; expect 400
echo "400: $(field "$BODY" .detail)"

echo "OK: every step answered as documented"
