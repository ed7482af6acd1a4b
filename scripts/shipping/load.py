#!/usr/bin/env python3
"""POST load for scripts/shipping-test.sh: events whose records test a shipper's exactness.

CONNS threads, each on one kept-alive connection to URL, POST /events at most RATE a second
in all, until STOP_FILE exists, DURATION seconds have passed or MAX_EVENTS were sent. Each
event's data holds what a careless shipper would change: quotes of both kinds, backslashes,
\\u0000, a line separator, non-ASCII text, a number no float holds; every BIG_EVERY-th event
is padded to just under MAX_BODY bytes (the service's MAX_BODY_BYTES), so a shipper that cuts
long lines loses it. With one connection, the order of the answers is the order of the
records in the log.

Writes a JSON summary to OUT: counts per status, the failures (first 50), and every 201 as
[event id, seconds since start] in the order the answers came. Exit status 0 whatever the
results; the caller judges them.
"""

import argparse
import http.client
import json
import os
import threading
import time
import urllib.parse

# Each of these must reach the database exactly as the service wrote it.
TRICKY = "it's \"quoted\" \\ back\\slash \u0000 \u2028 grüße 😀 ''"


def body(n, big, max_body):
    data = {"n": n, "s": TRICKY, "huge": "PLACEHOLDER"}
    text = json.dumps({"type": "ship.test", "data": data}, ensure_ascii=False, separators=(",", ":"))
    # A number beyond any float's range and precision, written as JSON text.
    text = text.replace('"PLACEHOLDER"', "1" + "0" * 40 + ".000000000000000000001e400")
    if big:
        pad = max_body - len(text.encode()) - len(',"pad":""') - 16
        text = text[:-2] + ',"pad":"' + "p" * pad + '"}}'
    return text.encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--out", required=True, help="JSON summary path")
    ap.add_argument("--stop-file", help="stop once this file exists")
    ap.add_argument("--duration", type=float, default=60, help="seconds, at most")
    ap.add_argument("--max-events", type=int, default=100_000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1000, help="events per second in all")
    ap.add_argument("--big-every", type=int, default=0, help="every Nth event near MAX_BODY")
    ap.add_argument("--max-body", type=int, default=65536)
    ap.add_argument("--timeout", type=float, default=10, help="seconds per request")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    lock = threading.Lock()
    start = time.monotonic()
    end = start + args.duration
    stop = threading.Event()
    sent = [0]
    counts = {}
    failures = []
    acked = []
    per_thread_interval = args.conns / args.rate if args.rate > 0 else 0

    def stopping():
        if not stop.is_set() and (
            time.monotonic() >= end or (args.stop_file and os.path.exists(args.stop_file))
        ):
            stop.set()
        return stop.is_set()

    def worker():
        conn = None
        next_at = time.monotonic()
        while not stopping():
            with lock:
                if sent[0] >= args.max_events:
                    stop.set()
                    break
                sent[0] += 1
                n = sent[0]
            big = args.big_every > 0 and n % args.big_every == 0
            what = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
                conn.request("POST", "/events", body(n, big, args.max_body),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    conn = None
                key = str(resp.status)
                if resp.status == 201:
                    with lock:
                        acked.append([json.loads(data)["id"], round(time.monotonic() - start, 3)])
                else:
                    what = f"status {resp.status}: {data[:200]!r}"
            except Exception as e:  # refused, reset, timeout: all failures
                what = f"{type(e).__name__}: {e}"
                key = type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                counts[key] = counts.get(key, 0) + 1
                if what is not None:
                    failures.append([round(time.monotonic() - start, 3), what])
            if what is not None:
                time.sleep(0.05)
            if per_thread_interval:
                next_at += per_thread_interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.timeout + 5)
    summary = {
        "events": sent[0],
        "seconds": round(time.monotonic() - start, 2),
        "counts": counts,
        "failed": len(failures),
        "failures": failures[:50],
        "acked": acked,
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
