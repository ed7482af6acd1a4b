#!/usr/bin/env python3
"""Load for scripts/multinode-test.sh: keep-alive GET / and POST /events through nginx.

CONNS connections (asyncio, one process: a thread per connection would cost more CPU than
the service under test) each send GET / and POST /events in turn, at most RATE requests per
second in all, until STOP_FILE exists, DURATION seconds have passed or MAX_REQUESTS were sent.
A connection reconnects when the server closes it or a request fails. Every request carries
a unique X-Request-Id (TAG-<conn>-<n>) and a forged X-Forwarded-For that a correctly
configured service must not believe. Anything but 200 for GET and 201 for POST is a failure:
a refused, reset or closed connection, a timeout, any other status.

Unlike scripts/lb/load.py this keeps every request's start and end time, which the judge
(verify.py) needs to tell which requests were in flight at a node's death and how long the
service took to recover from it.

Writes a JSON summary to OUT: "start" (Unix time), per request [conn, n, start ms, duration
ms, outcome] with outcome the HTTP status or a failure kind, the event id of every 201 by
request id. Exit status 0 whatever the results; the caller judges them.
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # no caches left in the tree by the tests that run as root
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import loadkit  # noqa: E402  (scripts/loadkit.py)


class Failed(Exception):
    """A request that got no proper answer; the message is its kind."""


async def read_response(reader):
    """(status, headers dict with lower-case names, body) of one HTTP/1.1 response."""
    line = await reader.readline()
    if not line:
        raise Failed("closed")
    if not line.endswith(b"\n"):
        raise Failed("truncated")
    parts = line.split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise Failed("bad status line") from None
    headers = {}
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise Failed("truncated")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise Failed("truncated") from None
    return status, headers, body


def kind_of(exc):
    """A short name for why a request failed."""
    if isinstance(exc, Failed):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (BrokenPipeError, asyncio.IncompleteReadError)):
        return "closed"
    return type(exc).__name__


async def run(args):
    host, _, port = args.target.partition(":")
    start_wall = time.time()
    start = time.monotonic()
    end = start + args.duration
    interval = args.conns / args.rate
    sent = 0
    stop = False
    requests = []  # [conn, n, start ms, duration ms, outcome]
    acked = {}  # request id -> event id

    def stopping():
        nonlocal stop
        if not stop and (
            time.monotonic() >= end
            or sent >= args.max_requests
            or (args.stop_file and os.path.exists(args.stop_file))
        ):
            stop = True
        return stop

    async def conn_loop(w):
        nonlocal sent
        reader = writer = None
        n = 0
        # Spread the connections' first requests over one interval.
        next_at = time.monotonic() + interval * w / args.conns
        while not stopping():
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - interval)
            sent += 1
            rid = f"{args.tag}-{w}-{n}"
            if n % 2:
                body = json.dumps({"type": args.tag, "data": {"w": w, "n": n}}).encode()
                head = (
                    f"POST /events HTTP/1.1\r\nHost: api\r\nX-Request-Id: {rid}\r\n"
                    f"X-Forwarded-For: {loadkit.FORGED_CLIENT}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                want = 201
            else:
                body = b""
                head = (
                    f"GET / HTTP/1.1\r\nHost: api\r\nX-Request-Id: {rid}\r\n"
                    f"X-Forwarded-For: {loadkit.FORGED_CLIENT}\r\n\r\n"
                )
                want = 200
            t0 = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, int(port)), args.timeout
                    )
                writer.write(head.encode() + body)
                status, headers, data = await asyncio.wait_for(
                    read_response(reader), args.timeout - (time.monotonic() - t0)
                )
                outcome = status
                if status == want == 201:
                    acked[rid] = json.loads(data)["id"]
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
            except Exception as e:  # refused, reset, timeout, a bad answer: all failures
                outcome = kind_of(e)
                if writer is not None:
                    writer.close()
                    writer = None
            t1 = time.monotonic()
            requests.append([w, n, round((t0 - start) * 1000), round((t1 - t0) * 1000), outcome])
            n += 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(conn_loop(w) for w in range(args.conns)))
    return {
        "tag": args.tag,
        "start": start_wall,
        "seconds": round(time.monotonic() - start, 2),
        "conns": args.conns,
        "rate": args.rate,
        "forged_client": loadkit.FORGED_CLIENT,
        "requests": requests,
        "acked": acked,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of nginx")
    ap.add_argument("--tag", required=True, help="event type and request id prefix")
    loadkit.add_run_options(ap, what="requests", duration=120, most=500_000, conns=16, rate=1500)
    ap.add_argument("--timeout", type=float, default=15, help="seconds per request")
    args = ap.parse_args()
    loadkit.write_json(args.out, asyncio.run(run(args)), separators=(",", ":"))


if __name__ == "__main__":
    main()
