#!/usr/bin/env python3
"""tcp_client.py — talk to Mailroom's TCP source: send lines of JSON, read one answer per line.

Usage: python3 examples/scripts/tcp_client.py [--host 127.0.0.1] [--port 7070] [--token T]
(--token defaults to $MAILROOM_TOKEN; when the server has tokens, every line carries one)
Sends a few messages (and one bad line) with a "ref" each, prints the answers as they arrive
(in the order messages finish), and exits 1 if any line is left without its one answer.
"""
import argparse
import json
import os
import socket
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--token", default=os.environ.get("MAILROOM_TOKEN"))
    args = p.parse_args()
    lines = [
        {"ref": "slow", "kind": "sleep", "payload": {"ms": 200}},
        {"ref": "echo", "kind": "echo", "payload": {"hello": "tcp"}},
        {"ref": "primes", "kind": "primes", "payload": {"limit": 10000}},
        {"ref": "unknown", "kind": "teleport", "payload": {}},
    ]
    with socket.create_connection((args.host, args.port), timeout=30) as s:
        for line in lines:
            print(f"-> {json.dumps(line)}")
            sent = dict(line, token=args.token) if args.token else line
            s.sendall((json.dumps(sent) + "\n").encode())
        print("-> not json")
        s.sendall(b"not json\n")
        s.shutdown(socket.SHUT_WR)  # done sending; the answers still come back
        answers = [json.loads(l) for l in s.makefile("r", encoding="utf-8") if l.strip()]
    for a in answers:
        detail = a.get("result") if a["status"] != "rejected" else f"{a['code']} {a['error']['message']}"
        print(f"<- ref {json.dumps(a.get('ref')):<10} {a['status']:<10} {json.dumps(detail)}")
    refs = {a.get("ref") for a in answers}
    missing = [l["ref"] for l in lines if l["ref"] not in refs]
    if len(answers) != len(lines) + 1 or missing:
        print(f"expected {len(lines) + 1} answers, got {len(answers)}; missing {missing}", file=sys.stderr)
        return 1
    print(f"{len(answers)} answers for {len(lines) + 1} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
