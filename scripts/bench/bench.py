#!/usr/bin/env python3
"""Benchmark harness for the api service (driven by scripts/bench.sh).

Python 3 standard library only.  Run it through scripts/bench.sh, which
installs wrk and nginx when missing, raises the open-file limit and kills
everything this program started if it dies.

What one measured run is:

  1. spawn the server (pinned to CPU 0 unless --unpinned section), time from
     spawn to the first "200" answer on GET /health, polled with a tight
     connect loop;
  2. read VmRSS (idle RSS);
  3. optional warm-up with wrk;
  4. read utime+stime from /proc/PID/stat (server process tree), run wrk
     (pinned to CPU 1, 64 keep-alive connections, fixed duration), read
     utime+stime again -> server CPU microseconds per completed request;
  5. read VmHWM (peak RSS), send SIGTERM (nginx: SIGQUIT, its graceful
     stop), time until the process has exited, and check its exit code;
  6. check the log: for POST /events, every 201 that wrk counted has its
     event record and no record lacks a request; with access logging on,
     every answered request has its access record after the graceful exit.

Rounds are interleaved (A B C A B C ...), so slow drifts of a shared machine
hit every server alike; the report gives medians and min-max, and ratios
computed per round (paired) so that the noise common to a round cancels.

Nothing here asserts a timing: targets are printed next to the figures, but
the exit status only reflects broken runs and failed correctness checks.

This file holds the command line and the order of the phases.  The rest:

  procs.py      processes this program started, CPU pinning, /proc figures
  servers.py    one server process (api or nginx), its start and stop
  workloads.py  wrk runs, request bursts, log checks
  runner.py     one measured run, idle connections, the rounds
  profiling.py  perf profiles and callgrind instruction counts
  build.py      cargo builds (--rev), the machine and tools for the header
  sync.py       POST /events with EVENT_SYNC=none and data, fdatasync latency
  report.py     the Markdown report, one function per section
"""


import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from build import MUSL_TARGET, REPO, build, describe
from procs import CLIENT_CPU, Interrupted, cleanup, on_signal
from profiling import instruction_runs, profile_runs
from report import render
from runner import idle_connection_runs, pinned_rounds, scaling_rounds
from sync import sync_rounds
from workloads import WORKLOADS

# The api-*-rot variants' settings: rotation and retention on, at a size no run reaches.
ROTATION_ON = {"LOG_MAX_BYTES": "1GiB", "LOG_KEEP": "3", "LOG_MAX_AGE": "7d"}


def main():
    args, variants_wanted, workloads, conn_steps = parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return run(args, variants_wanted, workloads, conn_steps)
    except Interrupted as e:
        print(f"interrupted ({e}); stopping everything started", flush=True)
        return 130
    finally:
        cleanup()


def parse_args():
    ap = argparse.ArgumentParser(
        prog="scripts/bench.sh",
        description="Benchmark the api against itself with logging off and "
                    "against nginx (see scripts/bench/bench.py).")
    ap.add_argument("--quick", action="store_true",
                    help="short development run: 2 s runs, 2 rounds, no "
                         "warm-up, 1 scaling round, 1,000 idle connections")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (10)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up (1)")
    ap.add_argument("--rounds", type=int, help="pinned rounds (5)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--variants",
                    default="api-info,api-off,api-info-musl,nginx,bare,bare-musl",
                    help="comma list from api-info, api-off, api-info-musl, "
                         "api-off-musl, api-info-rot, api-info-rot-musl (built-in "
                         "log rotation on), api-info-musl-metrics (the metrics "
                         "listener on), nginx, nginx-nolog, bare, bare-musl "
                         "(a bare hyper server, scripts/bench/bare/)")
    ap.add_argument("--workloads", default="health,events")
    ap.add_argument("--scale-rounds", type=int, help="rounds of the unpinned "
                    "2-core run (3; 0 skips it)")
    ap.add_argument("--scale-workers", type=int, default=2)
    ap.add_argument("--scale-wrk-threads", type=int, default=2)
    ap.add_argument("--conn-steps", help="idle connection counts "
                    "(1000,2000,3000,4000; empty skips)")
    ap.add_argument("--conn-cap", type=int, default=4096,
                    help="MAX_CONNECTIONS for the idle-connection run")
    ap.add_argument("--no-pinned", action="store_true",
                    help="skip the pinned rounds")
    ap.add_argument("--profile", action="store_true",
                    help="also perf-profile the pinned api (GET info, GET off, "
                         "POST info)")
    ap.add_argument("--profile-only", action="store_true",
                    help="only the perf profiles")
    ap.add_argument("--instructions", action="store_true",
                    help="also count instructions per request with valgrind's "
                         "callgrind (deterministic, whatever the machine "
                         "is doing)")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the callgrind counts")
    ap.add_argument("--sync", action="store_true",
                    help="also POST /events with EVENT_SYNC=none and data at "
                         "--sync-conns connections, and the disk's fdatasync "
                         "latency")
    ap.add_argument("--sync-only", action="store_true",
                    help="only the EVENT_SYNC runs")
    ap.add_argument("--sync-conns", default="1,16,64",
                    help="connection counts of the EVENT_SYNC runs (1,16,64)")
    ap.add_argument("--instr-requests", default="1000,3000",
                    help="the two request counts whose difference gives "
                         "instructions per request (1000,3000)")
    ap.add_argument("--profile-top", type=int, default=12)
    ap.add_argument("--profile-duration", type=int, default=5,
                    help="seconds of wrk per profile (5)")
    ap.add_argument("--rev", help="build and measure this git commit "
                    "(exported with git archive) instead of the work tree")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries already built")
    ap.add_argument("--no-musl", action="store_true",
                    help="skip the musl build and its variants")
    ap.add_argument("--target-dir",
                    default=os.environ.get("CARGO_TARGET_DIR")
                    or os.path.join(REPO, "target"))
    ap.add_argument("--api", help="glibc api binary (default "
                    "TARGET_DIR/release/api)")
    ap.add_argument("--api-musl", help="musl api binary (default "
                    f"TARGET_DIR/{MUSL_TARGET}/release/api)")
    ap.add_argument("--bare", help="glibc bare server binary (default "
                    "TARGET_DIR/release/bare)")
    ap.add_argument("--bare-musl", help="musl bare server binary (default "
                    f"TARGET_DIR/{MUSL_TARGET}/release/bare)")
    ap.add_argument("--nginx", default=shutil.which("nginx")
                    or "/usr/sbin/nginx")
    ap.add_argument("--out", help="report directory (TARGET_DIR/bench)")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep each run's server directory and logs")
    ap.add_argument("--command", help=argparse.SUPPRESS)
    args = ap.parse_args()

    q = args.quick
    for name, full, quick in [("duration", 10, 2), ("warmup", 1, 0),
                              ("rounds", 5, 2), ("scale_rounds", 3, 1),
                              ("conn_steps", "1000,2000,3000,4000", "1000")]:
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.target_dir = os.path.abspath(args.target_dir)
    args.out = os.path.abspath(args.out or os.path.join(args.target_dir,
                                                        "bench"))
    variants_wanted = [v for v in args.variants.split(",") if v]
    if args.no_musl:
        variants_wanted = [v for v in variants_wanted if "musl" not in v]
    args.musl = any("musl" in v for v in variants_wanted)
    args.build_bare = any(v.startswith("bare") for v in variants_wanted)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    conn_steps = [int(n) for n in args.conn_steps.split(",") if n]
    args.instr_requests = [int(n) for n in args.instr_requests.split(",")]
    if len(args.instr_requests) != 2 or not (
            0 < args.instr_requests[0] < args.instr_requests[1]):
        ap.error("--instr-requests takes two increasing counts, e.g. 1000,3000")
    args.sync_conns = [int(n) for n in args.sync_conns.split(",") if n]
    args.only = args.profile_only or args.instructions_only or args.sync_only
    return args, variants_wanted, workloads, conn_steps


def run(args, variants_wanted, workloads, conn_steps):
    started = time.time()
    load0 = os.getloadavg()  # before our own build and load
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (server on 0, wrk on 1)")
    api = args.api or os.path.join(args.target_dir, "release", "api")
    api_musl = args.api_musl or os.path.join(args.target_dir, MUSL_TARGET,
                                             "release", "api")
    bare = args.bare or os.path.join(args.target_dir, "release", "bare")
    bare_musl = args.bare_musl or os.path.join(args.target_dir, MUSL_TARGET,
                                               "release", "bare")
    if not args.no_build and not (args.api and (args.api_musl or not args.musl)):
        build(args)
    catalogue = {
        "api-info": {"kind": "api", "binary": api, "log_level": "info"},
        "api-off": {"kind": "api", "binary": api, "log_level": "off"},
        "api-info-musl": {"kind": "api", "binary": api_musl,
                          "log_level": "info"},
        "api-off-musl": {"kind": "api", "binary": api_musl,
                         "log_level": "off"},
        # The metrics listener on (any free port): the request path counts.
        "api-info-musl-metrics": {"kind": "api", "binary": api_musl,
                                  "log_level": "info",
                                  "env": {"METRICS_PORT": "0"}},
        # Rotation on, at a size no run reaches: the cost between rotations.
        "api-info-rot": {"kind": "api", "binary": api, "log_level": "info",
                         "env": ROTATION_ON},
        "api-info-rot-musl": {"kind": "api", "binary": api_musl,
                              "log_level": "info", "env": ROTATION_ON},
        "nginx": {"kind": "nginx", "binary": args.nginx, "access_log": True},
        "nginx-nolog": {"kind": "nginx", "binary": args.nginx,
                        "access_log": False},
        "bare": {"kind": "bare", "binary": bare},
        "bare-musl": {"kind": "bare", "binary": bare_musl},
    }
    variants = []
    for name in variants_wanted:
        if name not in catalogue:
            raise SystemExit(f"unknown variant {name}")
        v = dict(catalogue[name], name=name)
        if not os.access(v["binary"], os.X_OK):
            raise SystemExit(f"{name}: no executable {v['binary']}")
        variants.append(v)

    os.makedirs(args.out, exist_ok=True)
    args.workdir = tempfile.mkdtemp(prefix="runs-", dir=args.out)
    meta = describe(args, variants, load0)
    meta["order"] = [f"{v['name']} {w}" for w in workloads for v in variants
                     if w == "health" or v["kind"] == "api"]
    runs, conns, profiles, instr = [], [], [], []
    sync_latency = None

    # The orchestrator itself stays off the server's core.
    os.sched_setaffinity(0, {CLIENT_CPU})
    if not args.only and not args.no_pinned:
        runs += pinned_rounds(variants, workloads, args)
    if not args.only and args.scale_rounds > 0:
        runs += scaling_rounds(variants, workloads, args)
    if not args.only and conn_steps:
        conns = idle_connection_runs(variants, conn_steps, args)
    if args.profile or args.profile_only:
        profiles = profile_runs(catalogue, workloads, args)
    if args.instructions or args.instructions_only:
        instr = instruction_runs(variants, workloads, args)
    if args.sync or args.sync_only:
        sync_runs, sync_latency = sync_rounds(
            dict(catalogue["api-info"], name="api-info"), args)
        runs += sync_runs
    failed = (any(not r["ok"] for r in runs) or any(c["checks"] for c in conns)
              or any(c["checks"] for c in instr))

    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["took_s"] = time.time() - started
    report = render(meta, runs, conns, profiles, instr, args, sync_latency)
    path = write_results(args, started, report, meta, runs, conns, profiles,
                         instr, sync_latency)
    print()
    print(report)
    print(f"report: {path}")
    if failed:
        print("some runs failed or a check did not hold (see 'checks')")
        return 1
    return 0


def write_results(args, started, report, meta, runs, conns, profiles, instr,
                  sync_latency):
    """report.md, a timestamped copy, and results.json; returns report.md."""
    path = os.path.join(args.out, "report.md")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    for p in (path, os.path.join(args.out, f"report-{stamp}.md")):
        with open(p, "w") as f:
            f.write(report)
    for r in runs:
        r.pop("wrk_output", None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": runs, "idle_connections": conns,
                   "profiles": profiles, "instructions": instr,
                   "fdatasync": sync_latency}, f, indent=1)
    if not args.keep_logs:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
