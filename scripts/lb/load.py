#!/usr/bin/env python3
"""Load through a load balancer, for scripts/swarm-test.sh and scripts/lb-test.sh.

CONNS threads, each on one kept-alive connection to URL (reconnecting when the server says
Connection: close), send GET / and POST /events in turn, at most RATE requests per second
in all, until STOP_FILE exists, DURATION seconds have passed or MAX_REQUESTS were sent. Every
request carries a unique X-Request-Id (TAG-<thread>-<n>) and a forged X-Forwarded-For, which
a correctly configured service must not believe. Anything but 200 for GET and 201 for POST is
a failure: a refused or reset connection, a timeout, any other status.

Writes a JSON summary to OUT: counts per method and status, the failures (first 50, with the
time since start), the id and request id of every 201, the request ids of every POST sent.
Exit status 0 whatever the results; the caller judges them (scripts/lb/verify.py).
"""

import argparse
import json
import os
import sys
import urllib.parse

sys.dont_write_bytecode = True  # no caches left in the tree by the tests that run as root
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import loadkit  # noqa: E402  (scripts/loadkit.py)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--tag", required=True, help="event type and request id prefix")
    loadkit.add_run_options(ap, what="requests", duration=120, most=200_000, conns=8, rate=800)
    ap.add_argument("--timeout", type=float, default=10, help="seconds per request")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    run = loadkit.Run(args, args.max_requests)
    # run.counts: "GET 200" -> n; run.failures: [seconds since start, method, what]
    acked = []           # [event id, request id] of every 201
    posted = []          # request id of every POST sent

    def worker(w):
        conn = loadkit.KeepAlive(url, args.timeout)
        n = 0
        for _ in run.turns():
            method = "POST" if n % 2 else "GET"
            rid = f"{args.tag}-{w}-{n}"
            headers = {"X-Request-Id": rid, "X-Forwarded-For": loadkit.FORGED_CLIENT}
            body = None
            if method == "POST":
                headers["Content-Type"] = "application/json"
                body = json.dumps({"type": args.tag, "data": {"w": w, "n": n}})
                with run.lock:
                    posted.append(rid)
            n += 1
            what = None
            try:
                status, data = conn.request(method, "/events" if method == "POST" else "/", body,
                                            headers)
                want = 201 if method == "POST" else 200
                if status != want:
                    what = f"status {status}: {data[:200]!r}"
                elif method == "POST":
                    with run.lock:
                        acked.append([json.loads(data)["id"], rid])
                key = f"{method} {status}"
            except Exception as e:  # refused, reset, timeout, a bad answer: all failures
                what = f"{type(e).__name__}: {e}"
                key = f"{method} {type(e).__name__}"
                conn.close()
            run.record(key, None if what is None else [method, what])
        conn.close()

    run.threads(worker)
    summary = {
        "requests": sum(run.counts.values()),
        "failed": len(run.failures),
        "seconds": run.seconds(),
        "counts": run.counts,
        "failures": run.failures[:50],
        "acked": acked,
        "posted": posted,
        "forged_client": loadkit.FORGED_CLIENT,
    }
    loadkit.write_json(args.out, summary)


if __name__ == "__main__":
    main()
