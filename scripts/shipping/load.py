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
import json
import os
import sys
import urllib.parse

sys.dont_write_bytecode = True  # no caches left in the tree by the tests that run as root
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import loadkit  # noqa: E402  (scripts/loadkit.py)

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
    loadkit.add_run_options(ap, what="events", duration=60, most=100_000, conns=4, rate=1000)
    ap.add_argument("--big-every", type=int, default=0, help="every Nth event near MAX_BODY")
    ap.add_argument("--max-body", type=int, default=65536)
    ap.add_argument("--timeout", type=float, default=10, help="seconds per request")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    run = loadkit.Run(args, args.max_events)
    acked = []

    def worker(_):
        conn = loadkit.KeepAlive(url, args.timeout)
        for n in run.turns():
            big = args.big_every > 0 and n % args.big_every == 0
            what = None
            try:
                status, data = conn.request("POST", "/events", body(n, big, args.max_body),
                                            {"Content-Type": "application/json"})
                key = str(status)
                if status == 201:
                    with run.lock:
                        acked.append([json.loads(data)["id"], run.since()])
                else:
                    what = f"status {status}: {data[:200]!r}"
            except Exception as e:  # refused, reset, timeout: all failures
                what = f"{type(e).__name__}: {e}"
                key = type(e).__name__
                conn.close()
            run.record(key, None if what is None else [what])
        conn.close()

    run.threads(worker)
    summary = {
        "events": run.sent,
        "seconds": run.seconds(),
        "counts": run.counts,
        "failed": len(run.failures),
        "failures": run.failures[:50],
        "acked": acked,
    }
    loadkit.write_json(args.out, summary)


if __name__ == "__main__":
    main()
