#!/usr/bin/env python3
"""Judges a run of scripts/shipping-test.sh: the events table against the log files and the
load's acknowledgements. Prints "PASS ...", "FAIL ..." and "FIGURE ..." lines for the calling
script to count.

  verify.py all LOAD.json LOG_DIR TABLE.tsv
      every acknowledged event is in the table (missing = 0), each stored record is its log
      line byte for byte, nothing is in the table that is not in the logs, no line rejected;
      a repeat is only ever a counted redelivery.
  verify.py state STATE_DIR LOG_DIR
      prints the shipper's state (rsyslog imfile's state files) as TSV: inode, offset, then
      the size, name and first line (hex) of the log file with that inode.
  verify.py retention --before B.json --outage O.json --state S.tsv LOG_DIR TABLE.tsv
      the shipper was down while retention deleted files: the events lost are exactly the
      outage's events that are in no file left, every event in a file left was shipped, and
      the shipper's state at the start of the outage (S.tsv) covered its whole file, which
      is gone.

TABLE.tsv: id, deliveries, record as hex (psql COPY); REJECTED count as the last line
"#rejected N". The load files are scripts/shipping/load.py summaries.
"""

import argparse
import glob
import json
import os
import re
import sys

# The fixed start of an event record, as the shipper's filter and ship_event() read it.
EVENT = re.compile(rb'^\{"ts":"[^"]+","level":"[a-z]+","msg":"event","host":"(?:[^"\\]|\\.)*","id":"([^"]+)",')

results = {"pass": 0, "fail": 0}


def check(ok, what):
    results["pass" if ok else "fail"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {what}")
    return ok


def figure(what):
    print(f"FIGURE {what}")


def log_events(log_dir):
    """{id: line bytes} of every event record in the *.log files, and the file of each."""
    lines, where, twice = {}, {}, 0
    for path in sorted(glob.glob(os.path.join(log_dir, "*.log"))):
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                m = EVENT.match(line)
                if m:
                    i = m.group(1).decode()
                    twice += i in lines
                    lines[i] = line
                    where[i] = os.path.basename(path)
    return lines, where, twice


def table(path):
    rows, rejected = {}, None
    with open(path) as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if raw.startswith("#rejected "):
                rejected = int(raw.split()[1])
                continue
            i, deliveries, hexrec = raw.split("\t")
            rows[i] = (int(deliveries), bytes.fromhex(hexrec))
    return rows, rejected


def load(path):
    with open(path) as f:
        return json.load(f)


def exact(rows, lines, ids, label):
    differ = [i for i in ids if i in rows and rows[i][1] != lines.get(i)]
    check(not differ, f"{label}: each of {len(ids)} stored records is its log line byte for byte"
          + (f" ({len(differ)} differ, e.g. {differ[0]})" if differ else ""))


def all_mode(args):
    s = load(args.load)
    rows, rejected = table(args.table)
    lines, _, twice = log_events(args.log_dir)
    acked = [a[0] for a in s["acked"]]
    check(s["events"] > 0 and s["failed"] == 0,
          f"the load: {s['events']} events sent, every one answered 201 ({s['failed']} failed)")
    if s["failed"]:
        print("  first failures:", s["failures"][:5])
    missing = [i for i in acked if i not in rows]
    check(not missing, f"every acknowledged event is in the table: missing = {len(missing)} of {len(acked)}"
          + (f" (e.g. {missing[:3]})" if missing else ""))
    check(twice == 0 and set(lines) == set(acked),
          f"the logs hold each acknowledged event once ({len(lines)} event records, {twice} twice)")
    exact(rows, lines, list(rows), "all")
    extra = [i for i in rows if i not in lines]
    check(not extra, f"nothing in the table that is not in the logs ({len(extra)})")
    check(rejected == 0, f"no line rejected by ship_event ({rejected})")
    redelivered = sum(d - 1 for d, _ in rows.values())
    repeated = sum(1 for d, _ in rows.values() if d > 1)
    check(all(d >= 1 for d, _ in rows.values()) and len(rows) == len(set(acked)),
          f"one row per event, repeats only as counted deliveries ({len(rows)} rows for {len(set(acked))} events)")
    big = sum(1 for i in rows if len(rows[i][1]) > 60000)
    figure(f"events: {len(acked)} acknowledged, {len(rows)} stored, {big} of them near MAX_BODY_BYTES")
    figure(f"redeliveries: {redelivered} (on {repeated} events), absorbed by the key")


def retention_mode(args):
    before, outage = load(args.before), load(args.outage)
    rows, rejected = table(args.table)
    lines, where, _ = log_events(args.log_dir)
    pre = [a[0] for a in before["acked"]]
    out = [a[0] for a in outage["acked"]]
    check(before["failed"] == 0 and outage["failed"] == 0 and out,
          f"the load: {len(pre)} events before the outage, {len(out)} during it, all answered 201")
    check(all(i in rows for i in pre), "every event from before the outage was shipped")
    kept = [i for i in out if i in lines]
    gone = [i for i in out if i not in lines]
    lost = [i for i in out if i not in rows]
    check(all(i in rows for i in kept),
          f"every outage event in a file left ({len(kept)}) was shipped once the shipper was back")
    exact(rows, lines, kept, "files left")
    check(gone and set(lost) == set(gone),
          f"the events lost are exactly the outage's events in deleted files: {len(lost)} lost, "
          f"{len(gone)} in no file left")
    # One connection: the answers' order is the records' order, so the deleted files held
    # the first events of the outage, and the files left the rest.
    check(out[:len(gone)] == gone, "the lost events are the outage's first ones, in one run")
    extra = [i for i in rows if i not in set(pre) | set(out)]
    check(not extra, f"nothing in the table that was not sent ({len(extra)})")
    check(rejected == 0, f"no line rejected by ship_event ({rejected})")
    # The shipper's state when it went down: one file, read to its end, and that file is
    # gone now (no file left starts with its first line).
    state = [l.split("\t") for l in open(args.state).read().splitlines() if l]
    firsts = set()
    for path in glob.glob(os.path.join(args.log_dir, "*.log")):
        with open(path, "rb") as f:
            firsts.add(f.readline().rstrip(b"\n").hex())
    ok = len(state) == 1 and state[0][1] == state[0][2] and state[0][4] not in firsts
    check(ok, "the shipper's state when it went down: "
          + (f"{state[0][3]} (inode {state[0][0]}) read to offset {state[0][1]} of its "
             f"{state[0][2]} bytes, nothing else; that file was deleted during the outage"
             if len(state) == 1 else f"{len(state)} files"))
    files = set(where[i] for i in kept)
    figure(f"retention: {len(out)} events while the shipper was down, {len(lost)} lost with the "
           f"deleted files, {len(kept)} shipped from the {len(files)} files left")
    size = sum(os.path.getsize(os.path.join(args.log_dir, f)) for f in files)
    figure(f"the service wrote {size / max(len(kept), 1):.0f} bytes per event of this load "
           f"(its event and access records, in the files left)")


def state_mode(args):
    """The state files' inode and offset, with the log file of that inode (if any)."""
    files = {}
    for path in glob.glob(os.path.join(args.log_dir, "*.log")):
        st = os.stat(path)
        with open(path, "rb") as f:
            files[str(st.st_ino)] = (st.st_size, os.path.basename(path), f.readline().rstrip(b"\n").hex())
    for path in sorted(glob.glob(os.path.join(args.state_dir, "imfile-state:*"))):
        inode = os.path.basename(path).split(":")[1]
        with open(path) as f:
            offset = json.load(f)["curr_offs"]
        size, name, first = files.get(inode, ("-", "-", "-"))
        print(f"{inode}\t{offset}\t{size}\t{name}\t{first}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("all")
    a.add_argument("load")
    a.add_argument("log_dir")
    a.add_argument("table")
    st = sub.add_parser("state")
    st.add_argument("state_dir")
    st.add_argument("log_dir")
    r = sub.add_parser("retention")
    r.add_argument("--before", required=True)
    r.add_argument("--outage", required=True)
    r.add_argument("--state", required=True)
    r.add_argument("log_dir")
    r.add_argument("table")
    args = ap.parse_args()
    {"all": all_mode, "state": state_mode, "retention": retention_mode}[args.mode](args)
    sys.exit(1 if results["fail"] else 0)


if __name__ == "__main__":
    main()
