#!/usr/bin/env python3
"""python_client.py — submit a batch to a running `mailroom serve`, poll until every message is
done, and print a table. Standard library only.

Usage: python3 examples/scripts/python_client.py [--url URL] [--count N]
(the URL defaults to $MAILROOM_URL, else http://127.0.0.1:8080; $MAILROOM_TOKEN adds a bearer
token). Exits 1 if the server answers something the API does not document, or a message does not
finish in time.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def call(url, method="GET", body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("MAILROOM_URL", "http://127.0.0.1:8080"))
    p.add_argument("--count", type=int, default=12)
    args = p.parse_args()
    base, token = args.url.rstrip("/"), os.environ.get("MAILROOM_TOKEN")

    kinds = [
        ("sleep", lambda i: {"ms": 50 + 25 * (i % 4)}),
        ("primes", lambda i: {"limit": 5000 * (i + 1)}),
        ("hash", lambda i: {"data": f"item-{i}", "rounds": 100}),
        ("echo", lambda i: {"i": i}),
    ]
    messages = [{"kind": k, "payload": f(i)} for i in range(args.count) for k, f in [kinds[i % len(kinds)]]]
    messages.append({"kind": "no-such-kind", "payload": {}})
    print(f"submitting {len(messages)} messages in one batch to {base}")
    status, body = call(f"{base}/v1/batch", "POST", {"messages": messages}, token)
    if status != 200:
        print(f"batch failed: HTTP {status} {body}", file=sys.stderr)
        return 1
    results = body["results"]
    ids = [r.get("id") for r in results]
    rejected = [r for r in results if r.get("status") == "rejected"]
    print(f"accepted {sum(1 for i in ids if i)}, rejected {len(rejected)}")

    outcomes, deadline = {}, time.time() + 30
    while len(outcomes) < sum(1 for i in ids if i) and time.time() < deadline:
        for i in ids:
            if i and i not in outcomes:
                s, o = call(f"{base}/v1/messages/{i}?wait_ms=1000", token=token)
                if s != 200:
                    print(f"status of {i}: HTTP {s} {o}", file=sys.stderr)
                    return 1
                if o["status"] not in ("queued", "delayed", "running"):
                    outcomes[i] = o
    print(f"\n{'#':>2}  {'kind':<14} {'status':<10} {'run ms':>8}  result")
    for n, (m, r) in enumerate(zip(messages, results)):
        if r.get("status") == "rejected":
            print(f"{n:>2}  {m['kind']:<14} {'rejected':<10} {'':>8}  {r['code']} {r['error']['message']}")
            continue
        o = outcomes.get(r["id"])
        if o is None:
            print(f"{n:>2}  {m['kind']:<14} {'unfinished':<10}")
            continue
        print(f"{n:>2}  {o['kind']:<14} {o['status']:<10} {o['timings']['run_ms']:>8.2f}  {json.dumps(o.get('result', o.get('error')))}")
    done = [o for o in outcomes.values() if o["status"] == "completed"]
    print(f"\n{len(done)} completed, {len(rejected)} rejected, {len(ids) - len(rejected) - len(outcomes)} unfinished")
    ok = len(done) == len(messages) - 1 and len(rejected) == 1 and rejected[0]["code"] == 422
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
