"""Measured runs: one server under wrk with its CPU, memory and timing figures
and the log checks, the idle keep-alive connection run, and the phases that
repeat them (pinned rounds, two-core rounds, idle connections)."""

import os
import socket
import time

from procs import (CLIENT_CPU, CLK_TCK, SERVER_CPU, all_cpus, cpu_busy_ticks,
                   cpu_ticks, open_fds, status_kib)
from servers import Server, ServerFailed, read_response
from workloads import WORKLOADS, run_wrk, scan_log

def measure(variant, workload, args, *, pinned, workers, wrk_threads,
            extra_env=None):
    srv_cpus = {SERVER_CPU} if pinned else None
    cli_cpus = {CLIENT_CPU} if pinned else None
    r = {"variant": variant["name"], "workload": workload, "pinned": pinned,
         "workers": workers, "wrk_threads": wrk_threads, "ok": False,
         "checks": []}
    srv = Server(variant, workers, srv_cpus, args.workdir, extra_env)
    try:
        srv.start()
        r["startup_ms"] = srv.startup_ms
        time.sleep(0.1)
        r["idle_rss_kib"] = status_kib(srv.pid, "VmRSS")
        warm = None
        if args.warmup > 0:
            warm = run_wrk(srv.port, workload, wrk_threads, args.connections,
                           args.warmup, cli_cpus)
        b0 = cpu_busy_ticks(srv_cpus)
        t0 = cpu_ticks(srv.pid)
        w = run_wrk(srv.port, workload, wrk_threads, args.connections,
                    args.duration, cli_cpus)
        t1 = cpu_ticks(srv.pid)
        b1 = cpu_busy_ticks(srv_cpus)
        r["peak_rss_kib"] = status_kib(srv.pid, "VmHWM")
        r["rss_after_kib"] = status_kib(srv.pid, "VmRSS")
        r["stop_ms"], r["exit"] = srv.stop()
        wall_s = w["duration_us"] / 1e6
        reqs = w["requests"]
        r.update(
            requests=reqs,
            rps=reqs / wall_s if wall_s else 0.0,
            p50_us=w["p50_us"], p90_us=w["p90_us"], p99_us=w["p99_us"],
            p999_us=w["p999_us"], max_us=w["max_us"],
            server_cpu_s=(t1 - t0) / CLK_TCK,
            client_cpu_s=w["client_cpu_s"],
            wall_s=wall_s,
            errors=w["errors"],
        )
        r["cpu_us_per_req"] = r["server_cpu_s"] * 1e6 / reqs if reqs else None
        r["server_cpu_pct"] = 100 * r["server_cpu_s"] / wall_s if wall_s else 0
        r["client_cpu_pct"] = 100 * r["client_cpu_s"] / wall_s if wall_s else 0
        # CPU time that others (not the server, and when unpinned not wrk)
        # took on the server's CPU(s) during the run: the noise indicator.
        other = (b1 - b0) / CLK_TCK - r["server_cpu_s"]
        if not pinned:
            other -= r["client_cpu_s"]
        r["others_cpu_pct"] = max(0.0, 100 * other / wall_s) if wall_s else 0
        if "status" in w:
            r["status"] = w["status"]
            r["sent"] = w["sent"]
        if r["exit"] != 0:
            r["checks"].append(f"exit status {r['exit']} after graceful stop")
        bad = {k: v for k, v in w["errors"].items() if v}
        if workload == "events":
            bad.pop("status", None)  # judged below from the status counts
        if bad:
            r["checks"].append("wrk errors " + ",".join(
                f"{k}={v}" for k, v in sorted(bad.items())))
        check_log(r, variant, workload, srv, w, warm)
        r["ok"] = not r["checks"]
    except ServerFailed as e:
        r["checks"].append(str(e))
    finally:
        srv.kill()
        srv.remove(args.keep_logs)
    return r


def check_log(r, variant, workload, srv, w, warm):
    logging_on = (variant["kind"] == "nginx" and variant["access_log"]) or (
        variant["kind"] == "api" and variant["log_level"] in ("info", "debug"))
    if workload == "events":
        scan = scan_log(srv.log_path, parse_events=True)
        r["log"] = scan
        st = w["status"]
        got201 = st["201"] + (warm["status"]["201"] if warm else 0)
        sent = w["sent"] + (warm["sent"] if warm else 0)
        r["events_201"] = got201
        r["events_sent"] = sent
        others = {}
        for counts in (st, warm["status"] if warm else {}):
            for k, v in counts.items():
                if k != "201" and v:
                    others[k] = others.get(k, 0) + v
        if others:
            r["checks"].append("non-201 answers " + ",".join(
                f"{k}={v}" for k, v in sorted(others.items())))
        if scan.get("missing"):
            r["checks"].append("no log file")
        elif scan["events"] < got201:
            r["checks"].append(
                f"{got201 - scan['events']} event(s) answered 201 but not in "
                f"the log ({scan['events']} records, {got201} 201s)")
        elif scan["events"] > sent:
            r["checks"].append(
                f"{scan['events']} event records for {sent} requests sent")
        if scan["broken"]:
            r["checks"].append(f"{scan['broken']} log line(s) not whole JSON")
    else:
        scan = scan_log(srv.log_path, parse_events=False)
        r["log"] = scan
        if scan["broken"]:
            r["checks"].append("log does not end with a whole line")
    if logging_on:
        # Every answered request has its access record once the server has
        # exited gracefully (buffered records are flushed on shutdown).  The
        # start-up probe and the warm-up are answered requests too.
        answered = w["requests"] + (warm["requests"] if warm else 0) + 1
        access = scan["lines"] - scan["events"]
        r["access_records"] = access
        if access < answered:
            r["checks"].append(
                f"{answered - access} access record(s) missing "
                f"({access} for {answered} answered requests)")


# ----------------------------------------------------------- idle conns


def idle_conns(variant, args, steps, extra_env=None):
    """RSS with N idle keep-alive connections, N in steps (cumulative)."""
    res = {"variant": variant["name"], "steps": [], "checks": []}
    srv = Server(variant, 1, {SERVER_CPU}, args.workdir, extra_env)
    socks = []
    try:
        srv.start()
        time.sleep(0.1)
        base_rss = status_kib(srv.pid, "VmRSS")
        base_fds = open_fds(srv.pid)
        res["base_rss_kib"] = base_rss
        req = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 120
        for n in steps:
            while len(socks) < n:
                if time.monotonic() > deadline:
                    raise ServerFailed("idle-connection step took too long")
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                socks.append(s)
                s.sendall(req)
                head, _ = read_response(s)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ServerFailed(f"connection {len(socks)}: "
                                       f"{head[:40]!r}")
            time.sleep(0.3)
            rss = status_kib(srv.pid, "VmRSS")
            fds = open_fds(srv.pid) - base_fds
            res["steps"].append({"n": n, "rss_kib": rss, "fds": fds,
                                 "per_1000_kib": (rss - base_rss) * 1000 / n})
        res["peak_rss_kib"] = status_kib(srv.pid, "VmHWM")
        for s in socks:
            s.close()
        socks = []
        res["stop_ms"], res["exit"] = srv.stop()
    except (ServerFailed, OSError) as e:
        res["checks"].append(f"{type(e).__name__}: {e}")
    finally:
        for s in socks:
            s.close()
        srv.kill()
        srv.remove(args.keep_logs)
    return res


# --------------------------------------------------------------- phases

# The scaling and idle-connection questions are about the default set-up.
NOT_DEFAULT = ("api-off", "api-off-musl", "nginx-nolog", "bare", "bare-musl")


def print_run(r):
    if r["ok"]:
        print(f"  {r['variant']:14} {WORKLOADS[r['workload']]['label']:13}"
              f" {r['rps']:10,.0f} req/s  {r['cpu_us_per_req']:6.2f} µs/req"
              f"  p99 {r['p99_us'] / 1000:6.2f} ms  start "
              f"{r['startup_ms']:5.1f} ms  stop {r['stop_ms']:5.1f} ms",
              flush=True)
    else:
        print(f"  {r['variant']:14} {WORKLOADS[r['workload']]['label']:13}"
              f" FAILED: {'; '.join(r['checks'])}", flush=True)


def interleaved(variants, workloads, args, section, label, count, include,
                **how):
    """`count` rounds, each measuring every workload on every variant that
    `include` admits (POST /events only on the api), set up as `how` says
    (measure's pinned, workers, wrk_threads)."""
    runs = []
    for rnd in range(1, count + 1):
        print(f"{label} round {rnd}/{count}", flush=True)
        for w in workloads:
            for v in variants:
                if (w == "events" and v["kind"] != "api") or not include(v):
                    continue
                r = measure(v, w, args, **how)
                r.update(section=section, round=rnd)
                runs.append(r)
                print_run(r)
    return runs


def pinned_rounds(variants, workloads, args):
    """Interleaved rounds: server on CPU 0 with one worker, wrk on CPU 1."""
    return interleaved(variants, workloads, args, "pinned", "pinned",
                       args.rounds, lambda v: True,
                       pinned=True, workers=1, wrk_threads=1)


def scaling_rounds(variants, workloads, args):
    """Unpinned rounds: server and wrk share both cores."""
    os.sched_setaffinity(0, all_cpus())
    try:
        return interleaved(variants, workloads, args, "scaling", "2-core",
                           args.scale_rounds,
                           lambda v: v["name"] not in NOT_DEFAULT,
                           pinned=False, workers=args.scale_workers,
                           wrk_threads=args.scale_wrk_threads)
    finally:
        os.sched_setaffinity(0, {CLIENT_CPU})


def idle_connection_runs(variants, conn_steps, args):
    conns = []
    print(f"idle connections {conn_steps}", flush=True)
    for v in variants:
        if v["name"] in NOT_DEFAULT:
            continue
        c = idle_conns(v, args, conn_steps,
                       {"MAX_CONNECTIONS": str(args.conn_cap)}
                       if v["kind"] == "api" else None)
        conns.append(c)
        print(f"  {v['name']:14} " + ", ".join(
            f"{s['n']}: {s['rss_kib'] / 1024:.1f} MiB" for s in c["steps"])
            + (" FAILED: " + "; ".join(c["checks"]) if c["checks"] else ""),
            flush=True)
    return conns
