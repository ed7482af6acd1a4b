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
import http.client
import json
import os
import threading
import time
import urllib.parse

FORGED_CLIENT = "203.0.113.7"  # TEST-NET-3: never a real client


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--tag", required=True, help="event type and request id prefix")
    ap.add_argument("--out", required=True, help="JSON summary path")
    ap.add_argument("--stop-file", help="stop once this file exists")
    ap.add_argument("--duration", type=float, default=120, help="seconds, at most")
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rate", type=float, default=800, help="requests per second in all")
    ap.add_argument("--timeout", type=float, default=10, help="seconds per request")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url)
    lock = threading.Lock()
    start = time.monotonic()
    end = start + args.duration
    stop = threading.Event()
    sent = [0]
    counts = {}          # "GET 200" -> n
    failures = []        # (seconds since start, method, what)
    acked = []           # [event id, request id] of every 201
    posted = []          # request id of every POST sent
    per_thread_interval = args.conns / args.rate if args.rate > 0 else 0

    def stopping():
        if stop.is_set():
            return True
        if time.monotonic() >= end or (args.stop_file and os.path.exists(args.stop_file)):
            stop.set()
        return stop.is_set()

    def worker(w):
        conn = None
        n = 0
        next_at = time.monotonic()
        while not stopping():
            with lock:
                if sent[0] >= args.max_requests:
                    stop.set()
                    break
                sent[0] += 1
            method = "POST" if n % 2 else "GET"
            rid = f"{args.tag}-{w}-{n}"
            headers = {"X-Request-Id": rid, "X-Forwarded-For": FORGED_CLIENT}
            body = None
            if method == "POST":
                headers["Content-Type"] = "application/json"
                body = json.dumps({"type": args.tag, "data": {"w": w, "n": n}})
                with lock:
                    posted.append(rid)
            n += 1
            what = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
                conn.request(method, "/events" if method == "POST" else "/", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
                want = 201 if method == "POST" else 200
                if status != want:
                    what = f"status {status}: {data[:200]!r}"
                elif method == "POST":
                    with lock:
                        acked.append([json.loads(data)["id"], rid])
                key = f"{method} {status}"
            except Exception as e:  # refused, reset, timeout, a bad answer: all failures
                what = f"{type(e).__name__}: {e}"
                key = f"{method} {type(e).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                counts[key] = counts.get(key, 0) + 1
                if what is not None:
                    failures.append([round(time.monotonic() - start, 3), method, what])
            if what is not None:
                time.sleep(0.05)  # do not spin on a dead balancer
            if per_thread_interval:
                next_at += per_thread_interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.timeout + 5)
    elapsed = time.monotonic() - start
    summary = {
        "requests": sum(counts.values()),
        "failed": len(failures),
        "seconds": round(elapsed, 2),
        "counts": counts,
        "failures": failures[:50],
        "acked": acked,
        "posted": posted,
        "forged_client": FORGED_CLIENT,
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
