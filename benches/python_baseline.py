#!/usr/bin/env python3
"""The same API written the seed's way, for the load benchmark (benches/load.sh): one asyncio
event loop with aiohttp, `asyncio.sleep` for `sleep`, an aiohttp client session for `fetch`, and a
ProcessPoolExecutor for the CPU kinds (`primes`, `hash`). Only `POST /v1/messages?wait=true` is
implemented — the route the benchmark drives.

Run: python3 benches/python_baseline.py --port 8091   (needs aiohttp)
"""
import argparse
import asyncio
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def primes(limit):
    count = 0
    for n in range(2, limit + 1):
        d, prime = 2, True
        while d * d <= n:
            if n % d == 0:
                prime = False
                break
            d += 1
        count += prime
    return {"count": count}


def hash_rounds(data, rounds):
    digest = hashlib.sha256(data.encode()).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return {"sha256": digest.hex()}


async def submit(request):
    try:
        body = await request.json()
        kind, payload = body["kind"], body.get("payload")
    except Exception as e:  # noqa: BLE001 — any bad body is a 400
        return web.json_response({"status": 400, "detail": str(e)}, status=400)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    pool = request.app["pool"]
    if kind == "echo":
        result = payload
    elif kind == "sleep":
        await asyncio.sleep(payload["ms"] / 1000)
        result = {"slept_ms": payload["ms"]}
    elif kind == "fetch":
        async with request.app["client"].get(payload["url"]) as res:
            text = await res.read()
            result = {"status": res.status, "bytes": len(text)}
    elif kind == "primes":
        result = await loop.run_in_executor(pool, primes, payload["limit"])
    elif kind == "hash":
        result = await loop.run_in_executor(pool, hash_rounds, payload["data"], payload["rounds"])
    else:
        return web.json_response({"status": 422, "detail": f"no route for {kind}"}, status=422)
    return web.json_response({
        "id": str(uuid.uuid4()), "kind": kind, "status": "completed", "result": result,
        "timings": {"total_ms": (time.perf_counter() - started) * 1000},
    })


async def start(app):
    app["client"] = ClientSession(connector=TCPConnector(limit=1024), timeout=ClientTimeout(total=10))
    app["pool"] = ProcessPoolExecutor(max_workers=os.cpu_count())


async def stop(app):
    await app["client"].close()
    app["pool"].shutdown()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8091)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/v1/messages", submit)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
