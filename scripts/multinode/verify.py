#!/usr/bin/env python3
"""Judge one phase of scripts/multinode-test.sh: load.py's summary against every node's logs.

Prints "PASS ...", "FAIL ..." and "FIGURE ..." lines for the calling script to count.
Checks, for the events and requests of this phase (its tag):
  - the load sent requests; without --kill none failed; with --kill every failed request was
    in flight when the node died (started before the kill, still unanswered at it), no
    surviving node logged it, and there are no more of them than requests in flight then;
  - every acknowledged event (201) is in exactly one node's log files, exactly once;
  - no event record without its 201 and no request written twice, except, with --kill, the
    records of requests in flight at the kill that only the killed node's disk holds (the
    node wrote them, then died before nginx passed the 201 on);
  - no torn line, except with --kill at most the last line of each file on the killed node;
  - the access records of the load name the client nginx saw (--client), not nginx and not
    the X-Forwarded-For the load forges.
Figures: requests, failures by kind, acknowledged events per node, the slowest request;
with --kill also the events only the killed node holds, and the answers per second after
the kill: how long they stayed below half the load's rate.
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


def read_node(log_dir, tag):
    """Per file: its records of this phase and its torn lines (line numbers, last flag)."""
    files = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "*.log"))):
        with open(path, "rb") as f:
            raw_lines = f.read().split(b"\n")
        # A file ending in "\n" splits into its lines and one empty string.
        tail_complete = raw_lines[-1] == b""
        if tail_complete:
            raw_lines.pop()
        recs, torn = [], []
        for i, raw in enumerate(raw_lines):
            last = i == len(raw_lines) - 1
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                torn.append(last)
                continue
            if last and not tail_complete:
                torn.append(True)  # a whole object, but its newline never reached the disk
            rid = str(rec.get("request_id", ""))
            if (rec.get("msg") == "event" and rec.get("type") == tag) or (
                rec.get("msg") == "access" and rid.startswith(tag + "-")
            ):
                recs.append(rec)
        files[path] = (recs, torn, len(raw_lines))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", help="load.py's JSON summary")
    ap.add_argument("--node", action="append", default=[], metavar="NAME=DIR",
                    help="a node and the host directory holding its log files (repeat)")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--client", help="address every access record of the load must name")
    ap.add_argument("--label", default="")
    ap.add_argument("--killed", help="the node that was killed in this phase")
    ap.add_argument("--kill", nargs=2, type=float, metavar=("FROM", "TO"),
                    help="Unix times just before and just after the kill")
    args = ap.parse_args()
    label = f"{args.label}: " if args.label else ""

    def check(ok, what):
        print(f"{'PASS' if ok else 'FAIL'} {label}{what}")

    def figure(what):
        print(f"FIGURE {label}{what}")

    with open(args.summary) as f:
        s = json.load(f)
    reqs = s["requests"]  # [conn, n, start ms, duration ms, outcome]
    acked = s["acked"]  # request id -> event id
    t0 = s["start"]

    def rid(r):
        return f"{args.tag}-{r[0]}-{r[1]}"

    def ok(r):
        return r[4] == (201 if r[1] % 2 else 200)

    failed = [r for r in reqs if not ok(r)]
    kinds = collections.Counter(
        f"{'POST' if r[1] % 2 else 'GET'} {r[4]}" for r in failed
    )
    posts = sum(1 for r in reqs if r[1] % 2)
    figure(f"{len(reqs)} requests ({len(reqs) - posts} GET, {posts} POST) in {s['seconds']}s "
           f"over {s['conns']} connections; {len(failed)} failed"
           + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))})" if kinds else ""))
    check(len(reqs) > 0, f"the load sent requests ({len(reqs)})")
    slowest = max(reqs, key=lambda r: r[3], default=None)
    if slowest:
        figure(f"slowest request {slowest[3]} ms (sent at +{slowest[2] / 1000:.1f}s, {slowest[4]}); "
               f"{sum(1 for r in reqs if r[3] >= 1000)} took 1 s or more")

    nodes = dict(n.split("=", 1) for n in args.node)
    logs = {name: read_node(d, args.tag) for name, d in nodes.items()}
    survivors = [n for n in nodes if n != args.killed]

    # Requests in flight at the kill: sent before it ended, not answered before it began.
    in_flight = set()
    if args.kill:
        k0, k1 = ((k - t0) * 1000 for k in args.kill)
        in_flight = {rid(r) for r in reqs if r[2] <= k1 and r[2] + r[3] >= k0}

    seen_by_survivor = set()
    for n in survivors:
        for recs, _, _ in logs[n].values():
            seen_by_survivor.update(str(r.get("request_id")) for r in recs)

    if not args.kill:
        check(not failed, f"0 failed requests (got {len(failed)})")
    else:
        stray = [r for r in failed if rid(r) not in in_flight]
        answered = [r for r in failed if rid(r) in seen_by_survivor]
        check(not stray, f"every failed request was in flight at the kill "
                         f"({len(failed)} failed, {len(stray)} sent after it)")
        check(not answered, f"no failed request was logged by a surviving node ({len(answered)})")
        check(len(failed) <= len(in_flight),
              f"failures within the bound: {len(failed)} <= {len(in_flight)} requests in flight at the kill")
    for r in failed[:10]:
        print(f"  failure: {rid(r)} sent at +{r[2] / 1000:.3f}s, after {r[3]} ms: {r[4]}")

    # Events of this phase on every node: event id -> [(node, file)], request id -> [event id].
    where = collections.defaultdict(list)
    by_rid = collections.defaultdict(list)
    clients = collections.Counter()
    torn_bad = torn_ok = 0
    for n, files in logs.items():
        for path, (recs, torn, _) in files.items():
            for rec in recs:
                if rec.get("msg") == "event":
                    where[rec.get("id")].append((n, path))
                    by_rid[str(rec.get("request_id"))].append((rec.get("id"), n))
                else:
                    clients[unmapped(rec.get("client"))] += 1
            for last in torn:
                if n == args.killed and args.kill and last and len(torn) == 1:
                    torn_ok += 1
                else:
                    torn_bad += 1
    figure(f"{sum(len(f) for f in logs.values())} log files on {len(logs)} nodes, "
           f"{sum(len(v) for v in where.values())} event records of this phase")
    check(any(logs.values()), "log files found on the nodes")
    check(torn_bad == 0, f"no torn line ({torn_bad}"
          + (f"; {torn_ok} cut last line(s) on the killed node" if torn_ok else "") + ")")

    acked_ids = set(acked.values())
    missing = [i for i in acked_ids if not where.get(i)]
    doubled = [i for i in acked_ids if len(where.get(i, [])) > 1]
    check(not missing and not doubled,
          f"every acknowledged event is in exactly one node's log, once ({len(acked_ids)} events; "
          f"{len(missing)} missing, {len(doubled)} more than once)")
    per_node = collections.Counter(where[i][0][0] for i in acked_ids if where.get(i))
    figure("acknowledged events by node: " + ", ".join(f"{n} {per_node[n]}" for n in nodes))

    # Records with no 201 behind them, and request ids written more than once.
    unacked = [(i, locs) for i, locs in where.items() if i not in acked_ids]

    def allowed(rid_, locs):
        """Written only on the killed node, for a request in flight when it died."""
        return args.kill and rid_ in in_flight and all(n == args.killed for n, _ in locs)

    rid_of = {}
    for r_id, evs in by_rid.items():
        for ev, _ in evs:
            rid_of[ev] = r_id
    bad_unacked = [i for i, locs in unacked if not allowed(rid_of.get(i), locs)]
    check(not bad_unacked, f"no event written without its 201, but on the killed node for a "
                           f"request in flight at the kill ({len(bad_unacked)} elsewhere)")
    twice = {r: evs for r, evs in by_rid.items() if len(evs) > 1}
    bad_twice = [r for r, evs in twice.items()
                 if not (args.kill and r in in_flight
                         and sum(1 for ev, _ in evs if ev in acked_ids) <= 1
                         and all(n == args.killed for ev, n in evs if ev not in acked_ids))]
    check(not bad_twice, f"no request written twice, but a POST nginx sent again after the node "
                         f"died ({len(bad_twice)} other; {len(twice) - len(bad_twice)} such)")
    if args.kill:
        figure(f"{per_node[args.killed]} acknowledged events of this phase live only on the killed "
               f"node's disk ({args.killed}); {len(unacked)} written there but never acknowledged")

    if args.client:
        seen = ", ".join(f"{c} x{n}" for c, n in clients.most_common(5))
        check(sum(clients.values()) > 0 and set(clients) == {args.client},
              f"access records name the client {args.client}, not nginx or the forged "
              f"{s['forged_client']} (seen: {seen or 'none'})")

    if args.kill:
        stall(reqs, (args.kill[0] - t0) * 1000, s["rate"], figure)


def stall(reqs, kill_ms, rate, figure):
    """The answers per second after the kill, against the load's own rate (on a shared
    machine the rate measured just before the kill may be a dip already)."""
    per_s = collections.Counter(int((r[2] + r[3] - kill_ms) // 1000) for r in reqs)
    first = [per_s[i] for i in range(15)]
    low = [i for i, n in enumerate(first) if n < rate / 2]
    figure(f"answers per second from the kill on (load: {rate:.0f}/s): "
           + " ".join(map(str, first[:12])))
    figure(f"near-stall after the kill: {max(low) + 1 if low else 0}s "
           f"(to the end of the last second with less than half the load's rate; "
           f"{len(low)} such seconds)")
    late = [r for r in reqs if r[2] >= kill_ms]
    slow = max(late, key=lambda r: r[3], default=None)
    if slow:
        figure(f"slowest request sent after the kill: {slow[3]} ms; "
               f"{sum(1 for r in late if r[3] >= 1000)} sent after it took 1 s or more")

if __name__ == "__main__":
    main()
