#!/usr/bin/env python3
"""Judge a run of scripts/lb/load.py against the log files the replicas wrote.

Prints one line per check, "PASS ..." or "FAIL ...", and "FIGURE ..." lines; the calling
shell script counts them. Checks:
  - the load sent requests, and none failed (no refused, reset or timed-out connection, no
    status other than 200 for GET and 201 for POST);
  - every acknowledged event (201) is in the log files exactly once, and no request was
    written twice (a retried POST would share its request id) or without its 201;
  - no torn line: every line of every *.log file in LOG_DIR is one JSON object;
  - with --client: the access records of the load's requests all name that client address
    (the host as the balancer saw it), not the balancer's own and not the forged
    X-Forwarded-For the load sends.
"""

import argparse
import collections
import glob
import json
import os
import sys

sys.dont_write_bytecode = True  # no caches left in the tree by the tests that run as root
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from loadkit import unmapped  # noqa: E402  (scripts/loadkit.py)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", help="load.py's JSON summary")
    ap.add_argument("log_dir", help="directory holding the replicas' *.log files")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--client", help="address every access record of the load must name")
    ap.add_argument("--label", default="", help="prefix of each line")
    args = ap.parse_args()
    label = f"{args.label}: " if args.label else ""

    def check(ok, what):
        print(f"{'PASS' if ok else 'FAIL'} {label}{what}")

    with open(args.summary) as f:
        s = json.load(f)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(s["counts"].items()))
    print(f"FIGURE {label}{s['requests']} requests in {s['seconds']}s, {s['failed']} failed ({counts})")
    check(s["requests"] > 0, f"the load sent requests ({s['requests']})")
    check(s["failed"] == 0, f"0 failed requests (got {s['failed']})")
    for t, method, what in s["failures"][:10]:
        print(f"  failure at {t}s: {method} {what}")

    files = sorted(glob.glob(os.path.join(args.log_dir, "*.log")))
    lines = torn = 0
    event_ids = collections.Counter()
    event_rids = collections.Counter()
    clients = collections.Counter()
    prefix = args.tag + "-"
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        for raw in data.split(b"\n"):
            if not raw:
                continue
            lines += 1
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                torn += 1
                continue
            if rec.get("msg") == "event" and rec.get("type") == args.tag:
                event_ids[rec.get("id")] += 1
                event_rids[rec.get("request_id")] += 1
            elif rec.get("msg") == "access" and str(rec.get("request_id", "")).startswith(prefix):
                clients[unmapped(rec.get("client"))] += 1
    print(f"FIGURE {label}{len(files)} log file(s), {lines} lines, {sum(event_ids.values())} events of this run")
    check(bool(files), f"log files found in {args.log_dir}")
    check(torn == 0, f"0 torn lines (got {torn} of {lines})")

    acked = s["acked"]
    missing = [i for i, _ in acked if event_ids[i] == 0]
    doubled = [i for i, _ in acked if event_ids[i] > 1]
    check(not missing and not doubled,
          f"every 201 event is in the logs exactly once ({len(acked)} events; "
          f"{len(missing)} missing, {len(doubled)} more than once)")
    twice = [r for r, n in event_rids.items() if n > 1]
    check(not twice, f"no request written twice (request ids with 2+ event records: {len(twice)})")
    extra = sum(event_ids.values()) - len(acked)
    check(extra == 0, f"no event written without its 201 reaching the client ({extra})")

    if args.client:
        seen = ", ".join(f"{c} x{n}" for c, n in clients.most_common(5))
        check(sum(clients.values()) > 0 and set(clients) == {args.client},
              f"access records name the client {args.client}, not the balancer or the forged "
              f"{s['forged_client']} (seen: {seen or 'none'})")


if __name__ == "__main__":
    main()
