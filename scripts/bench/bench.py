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
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MUSL_TARGET = "x86_64-unknown-linux-musl"
SERVER_CPU = 0
CLIENT_CPU = 1

# ---------------------------------------------------------------- processes

STARTED = []  # every Popen this program made, for cleanup


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def cleanup():
    """Stop every process we started that is still running."""
    live = [p for p in STARTED if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + 3
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                p.kill()
                p.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                pass


def popen(argv, **kw):
    p = subprocess.Popen(argv, **kw)
    STARTED.append(p)
    return p


def set_affinity(cpus):
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def all_cpus():
    return set(range(os.cpu_count() or 1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------- /proc


def proc_tree(pid):
    """pid and all its descendants (nginx: master and workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_ticks(pid):
    """utime + stime of the process tree, in clock ticks."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state); utime is field 14, stime field 15
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_busy_ticks(cpus):
    """Busy (non-idle) ticks of the given CPUs, or of all CPUs if None."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in vals]
            # user nice system idle iowait irq softirq steal
            total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return total


def status_kib(pid, key):
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over the tree, KiB."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_fds(pid):
    n = 0
    for p in proc_tree(pid):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


# --------------------------------------------------------------------- HTTP

PROBE = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def probe_status(port, timeout=1.0):
    """Status code of one GET /health, or None if nobody answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(PROBE)
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ servers


def read_response(sock, buf=b""):
    """Reads one HTTP/1.1 answer (Content-Length framing) from `sock`, after
    what is already in `buf`; returns (head, bytes left over after it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerFailed("connection closed by the server")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerFailed("connection closed mid-body")
        rest += chunk
    return head, rest[need:]


class ServerFailed(Exception):
    pass


class Server:
    """One server process (api or nginx) started for one measured run."""

    def __init__(self, variant, workers, cpus, workdir, extra_env=None,
                 wrapper=()):
        self.variant = variant
        self.workers = workers
        self.cpus = cpus
        self.dir = tempfile.mkdtemp(prefix=variant["name"] + "-", dir=workdir)
        self.port = free_port()
        self.proc = None
        self.startup_ms = None
        self.log_path = None
        kind = variant["kind"]
        if kind == "api":
            self.log_path = os.path.join(self.dir, "api.log")
            env = dict(os.environ)
            env.update(
                HOST="127.0.0.1",
                PORT=str(self.port),
                LOG_FILE=self.log_path,
                LOG_LEVEL=variant["log_level"],
                WORKERS=str(workers),
            )
            env.update(extra_env or {})
            self.argv = list(wrapper) + [variant["binary"]]
            self.env = env
            self.stop_signal = signal.SIGTERM
        elif kind == "nginx":
            access = "off"
            if variant["access_log"]:
                self.log_path = os.path.join(self.dir, "access.log")
                access = self.log_path
            with open(os.path.join(HERE, "nginx.conf.in")) as f:
                conf = f.read()
            conf = (
                conf.replace("@DIR@", self.dir)
                .replace("@PORT@", str(self.port))
                .replace("@WORKERS@", str(workers))
                .replace("@ACCESS_LOG@", access)
            )
            conf_path = os.path.join(self.dir, "nginx.conf")
            with open(conf_path, "w") as f:
                f.write(conf)
            self.argv = [variant["binary"], "-p", self.dir, "-c", conf_path,
                         "-e", os.path.join(self.dir, "error.log")]
            self.env = dict(os.environ)
            # nginx's graceful stop is SIGQUIT; SIGTERM is its fast stop.
            self.stop_signal = signal.SIGQUIT
        else:
            raise ValueError(kind)

    def start(self, timeout=10.0):
        out = open(os.path.join(self.dir, "stdout"), "wb")
        err = open(os.path.join(self.dir, "stderr"), "wb")
        # Pin by setting our own affinity just around the spawn: the child
        # inherits it (same effect as `taskset -c 0 api`) and no taskset
        # exec is counted in the start-up time.
        mine = os.sched_getaffinity(0)
        set_affinity(self.cpus)
        try:
            t0 = time.perf_counter()
            self.proc = popen(self.argv, env=self.env, cwd=self.dir,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        finally:
            os.sched_setaffinity(0, mine)
            out.close()
            err.close()
        deadline = t0 + timeout
        attempts = 0
        while True:
            attempts += 1
            status = probe_status(self.port)
            if status == 200:
                self.startup_ms = (time.perf_counter() - t0) * 1000
                return
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.variant['name']} exited with {self.proc.returncode} "
                    f"before answering: {self.stderr_tail()}")
            if time.perf_counter() > deadline or attempts > 200000:
                raise ServerFailed(
                    f"{self.variant['name']} gave no 200 on GET /health within "
                    f"{timeout:.0f} s (last status {status}): {self.stderr_tail()}")
            time.sleep(0.0001)

    def stderr_tail(self):
        try:
            with open(os.path.join(self.dir, "stderr"), "rb") as f:
                data = f.read()[-600:]
            return data.decode("utf-8", "replace").strip() or "(no stderr)"
        except OSError:
            return "(no stderr)"

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=10.0):
        """Graceful stop; returns (ms from signal to exit, exit code)."""
        t0 = time.perf_counter()
        self.proc.send_signal(self.stop_signal)
        try:
            rc = self.proc.wait(timeout=timeout)
            return (time.perf_counter() - t0) * 1000, rc
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None, "killed after %.0f s" % timeout

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def remove(self, keep):
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------- wrk

WORKLOADS = {
    "health": {"label": "GET /health", "lua": "health.lua", "path": "/health"},
    "events": {"label": "POST /events", "lua": "events.lua", "path": "/events"},
}


def run_wrk(port, workload, threads, conns, duration, cpus, timeout_s=5):
    """Run wrk once; returns the parsed BENCH line plus wrk's own CPU time."""
    w = WORKLOADS[workload]
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s",
            f"--timeout={timeout_s}s", "-s", os.path.join(HERE, w["lua"]),
            f"http://127.0.0.1:{port}{w['path']}"]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] + argv
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise ServerFailed("wrk did not finish in time")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode("utf-8", "replace")
    m = re.search(r"^BENCH (\{.*\})$", text, re.M)
    if p.returncode != 0 or not m:
        raise ServerFailed(f"wrk failed (rc {p.returncode}): "
                           f"{err.decode('utf-8', 'replace').strip()[-400:]}")
    res = json.loads(m.group(1))
    res["client_cpu_s"] = ((after.ru_utime - before.ru_utime)
                           + (after.ru_stime - before.ru_stime))
    res["wrk_output"] = text
    return res


# --------------------------------------------------------------- log checks

EVENT_MARK = b'"msg":"event"'


def scan_log(path, parse_events):
    """Count lines, event records and lines that are not whole JSON objects.

    With parse_events, every line is checked to start with '{' and end with
    '}', and each event record is parsed as JSON; otherwise only lines are
    counted (fast path for the big GET access logs)."""
    res = {"lines": 0, "events": 0, "broken": 0, "bytes": 0}
    if not path or not os.path.exists(path):
        res["missing"] = True
        return res
    res["bytes"] = os.path.getsize(path)
    with open(path, "rb") as f:
        if not parse_events:
            last = b"\n"
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                res["lines"] += chunk.count(b"\n")
                last = chunk[-1:]
            if last != b"\n":
                res["broken"] += 1  # a last line without its newline
            return res
        for line in f:
            res["lines"] += 1
            if not line.endswith(b"\n"):
                res["broken"] += 1
            body = line.rstrip(b"\n")
            if not (body.startswith(b"{") and body.endswith(b"}")):
                res["broken"] += 1
                continue
            if EVENT_MARK in body:
                try:
                    rec = json.loads(body)
                except ValueError:
                    res["broken"] += 1
                    continue
                if rec.get("msg") == "event":
                    res["events"] += 1
    return res


# -------------------------------------------------------------- one run


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


# -------------------------------------------------------------- profile


PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?(\S+)\s+\[(.)\]\s+(.*?)\s*$")
MALLOC = re.compile(r"malloc|free|realloc|calloc|tcache|unlink_chunk|"
                    r"consolidate|alloc_slot|alloc_group|get_meta|enframe|"
                    r"__rust_alloc|__rust_dealloc|__rdl_")


def component(dso, kind, sym):
    """Which part of the stack a sampled symbol belongs to."""
    if kind == "k":
        return "kernel"
    if MALLOC.search(sym):
        return "allocator (malloc/free)"
    if re.search(r"mem(move|cpy|set|cmp)", sym):
        return "mem* copies"
    if dso.startswith("libc") or dso.startswith("ld-linux"):
        return "libc, other"
    name = sym.lstrip("<&*").removeprefix("dyn ").removeprefix("mut ")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if not m:
        return f"{dso}, unnamed"
    crate = m.group(1)
    if crate in ("core", "alloc", "std"):
        return "rust std/core"
    return crate


def perf_rows(data, *extra):
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none",
                          *extra], capture_output=True, timeout=600)
    rows = []
    for line in rep.stdout.decode("utf-8", "replace").splitlines():
        m = PERF_LINE.match(line)
        if m:
            rows.append((float(m.group(1)),
                         float(m.group(2)) if m.group(2) else None,
                         m.group(3), m.group(4), m.group(5)))
    return rows


def profile(variant, workload, args, out_dir):
    """perf record on the pinned server under wrk, then three summaries.

    Call graphs are unwound with DWARF (.eh_frame): a release Rust build has
    no frame pointers, so `-g` (frame pointers) would cut every stack short
    and make the inclusive ('children') figures meaningless."""
    res = {"variant": variant["name"], "workload": workload}
    srv = Server(variant, 1, {SERVER_CPU}, args.workdir)
    data = os.path.join(out_dir, f"perf-{variant['name']}-{workload}.data")
    secs = args.profile_duration
    try:
        srv.start()
        perf = popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999",
                      "--call-graph", "dwarf,16384", "-p", str(srv.pid),
                      "-o", data, "--", "sleep", str(secs + 1)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        t0 = cpu_ticks(srv.pid)
        w = run_wrk(srv.port, workload, 1, args.connections, secs,
                    {CLIENT_CPU})
        t1 = cpu_ticks(srv.pid)
        perf.communicate(timeout=secs + 60)
        srv.stop()
        res["requests"] = w["requests"]
        res["cpu_us_per_req"] = (t1 - t0) / CLK_TCK * 1e6 / max(1, w["requests"])
        flat = perf_rows(data, "--no-children", "--sort", "dso,sym",
                         "--percent-limit", "0")
        comp = {}
        for pct, _, dso, kind, sym in flat:
            c = component(dso, kind, sym)
            comp[c] = comp.get(c, 0.0) + pct
        res["components"] = sorted(comp.items(), key=lambda kv: -kv[1])
        res["top"] = [(pct, dso, sym) for pct, _, dso, kind, sym in
                      flat[: args.profile_top]]
        incl = perf_rows(data, "--children", "--sort", "dso,sym",
                         "--percent-limit", "0.5")
        keep = []
        for children, self_pct, dso, kind, sym in incl:
            own = ("api::" in sym and not sym.startswith("api::main")
                   and "{{closure}}" not in sym)
            libc_entry = (dso.startswith("libc") and "__libc_start" not in sym
                          and not sym.startswith("_start"))
            if own or libc_entry:
                keep.append((children, self_pct, dso, sym))
        res["inclusive"] = keep[: args.profile_top]
        res["data"] = data
    except (ServerFailed, subprocess.SubprocessError, OSError) as e:
        res["error"] = str(e)
    finally:
        srv.kill()
        srv.remove(args.keep_logs)
    return res


# ------------------------------------------------------------ callgrind

REQUESTS = {
    "health": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "events": (b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: 36\r\n\r\n"
               b'{"type":"bench.tick","data":{"n":1}}'),
}


def http_burst(port, workload, total, conns, timeout=300):
    """Send `total` requests over `conns` keep-alive connections, one in
    flight on each at a time (like wrk); returns {status: count}."""
    req = REQUESTS[workload]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60)
             for _ in range(min(conns, total))]
    bufs = [b""] * len(socks)
    counts = {}
    deadline = time.monotonic() + timeout
    sent = 0
    try:
        while sent < total:
            if time.monotonic() > deadline:
                raise ServerFailed("request burst took too long")
            batch = socks[: total - sent]
            for s in batch:
                s.sendall(req)
            sent += len(batch)
            for i, s in enumerate(batch):
                head, bufs[i] = read_response(s, bufs[i])
                st = int(head[9:12])
                counts[st] = counts.get(st, 0) + 1
    finally:
        for s in socks:
            s.close()
    return counts


def callgrind_run(variant, workload, n, args, out_file):
    """Instructions (Ir) of the whole server process for n requests."""
    wrapper = ["valgrind", "--tool=callgrind", "--quiet",
               f"--callgrind-out-file={out_file}"]
    srv = Server(variant, 1, {SERVER_CPU}, args.workdir, wrapper=wrapper)
    try:
        srv.start(timeout=120)
        counts = http_burst(srv.port, workload, n, args.connections)
        stop_ms, rc = srv.stop(timeout=120)
        if rc != 0:
            raise ServerFailed(f"exit status {rc} under callgrind")
        with open(out_file) as f:
            text = f.read()
        m = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.M)
        if not m:
            raise ServerFailed("no totals in the callgrind output")
        res = {"ir": int(m.group(1)), "counts": counts}
        if workload == "events":
            scan = scan_log(srv.log_path, parse_events=True)
            res["events"] = scan["events"]
        return res
    finally:
        srv.kill()
        srv.remove(args.keep_logs)


def instructions(variant, workload, args, out_dir):
    """Ir per request from two runs (n1, n2 requests): the difference
    cancels start-up and shutdown.  callgrind counts user-space
    instructions only; the kernel's share (syscalls, TCP) is not in it."""
    n1, n2 = args.instr_requests
    res = {"variant": variant["name"], "workload": workload, "n1": n1,
           "n2": n2, "checks": []}
    try:
        runs = []
        for n in (n1, n2):
            out = os.path.join(out_dir, f"callgrind-{variant['name']}-"
                                        f"{workload}-{n}.out")
            r = callgrind_run(variant, workload, n, args, out)
            want = 201 if workload == "events" else 200
            if r["counts"].get(want, 0) != n:
                res["checks"].append(f"statuses {r['counts']} for {n} "
                                     "requests")
            if workload == "events" and r["events"] != n:
                res["checks"].append(f"{r['events']} event records for {n} "
                                     "201s")
            runs.append(r)
            res["out"] = out
        res["ir_per_req"] = (runs[1]["ir"] - runs[0]["ir"]) / (n2 - n1)
        res["ir_fixed"] = runs[0]["ir"] - res["ir_per_req"] * n1
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no",
                              "--threshold=99", res["out"]],
                             capture_output=True, timeout=300)
        top = []
        for line in ann.stdout.decode("utf-8", "replace").splitlines():
            m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
            if m and "PROGRAM TOTALS" not in line:
                fn = m.group(3)
                fn = re.sub(r"^(\?\?\?|\S+?\.(?:c|S|h|rs|cc)):(?!:)", "", fn)
                obj = re.search(r"\s*\[([^\[\]]*)\]$", fn)
                if obj:
                    fn = fn[: obj.start()] + f"  ({os.path.basename(obj.group(1))})"
                top.append((float(m.group(2)), fn))
        res["top"] = top[: args.profile_top]
    except (ServerFailed, subprocess.SubprocessError, OSError) as e:
        res["checks"].append(f"{type(e).__name__}: {e}")
    return res


# --------------------------------------------------------------- summary


def med_range(values, fmt):
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))})"


def f_int(v):
    return f"{v:,.0f}"


def f2(v):
    return f"{v:.2f}"


def f_ms_us(v):
    return f"{v / 1000:.2f}"


def f_mib(v):
    return f"{v / 1024:.2f}"


def f_ms(v):
    return f"{v:.1f}"


def paired_ratios(num, den, key="cpu_us_per_req"):
    """Per-round ratios num/den (both dicts round -> run)."""
    out = []
    for rnd, a in num.items():
        b = den.get(rnd)
        if a and b and a.get(key) and b.get(key):
            out.append(a[key] / b[key])
    return out


def ratio_row(label, ratios, target):
    tgt = f"≤ {target:.2f}" if target is not None else "–"
    if not ratios:
        return f"| {label} | – | – | {tgt} | – |"
    m = statistics.median(ratios)
    rng = f"{min(ratios):.3f}–{max(ratios):.3f}" if len(ratios) > 1 else "–"
    met = "–"
    if target is not None:
        met = "yes" if m <= target else "**no**"
    return f"| {label} | {m:.3f} | {rng} | {tgt} | {met} |"


def by_round(runs, variant, workload, section):
    return {r["round"]: r for r in runs
            if r["variant"] == variant and r["workload"] == workload
            and r["section"] == section and r["ok"]}


def runs_table(runs, section, variants, lines):
    lines.append("| workload | server | req/s | p50 ms | p99 ms | CPU µs/req "
                 "| server CPU % | wrk CPU % | others' CPU % "
                 "| idle RSS MiB | peak RSS MiB "
                 "| start→200 ms | SIGTERM→exit ms | checks |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for wl in WORKLOADS:
        for v in variants:
            rs = [r for r in runs if r["section"] == section
                  and r["variant"] == v and r["workload"] == wl]
            if not rs:
                continue
            ok = [r for r in rs if r["ok"]]
            measured = [r for r in rs if r.get("cpu_us_per_req")]
            probs = sorted({c for r in rs for c in r["checks"]})
            if probs:
                check = f"**{len(rs) - len(ok)} of {len(rs)} failed**: " + \
                    "; ".join(probs)[:300]
            else:
                check = f"ok ×{len(rs)}"
                ev = [r for r in rs if "events_201" in r]
                if ev:
                    extra = sum(r["log"]["events"] - r["events_201"] for r in ev)
                    check += (f" (event records = 201s + {extra} answered "
                              f"after wrk's deadline, all runs)")
            # figures come from every run that got as far as measuring, also
            # when a check failed afterwards (the checks column says so)
            lines.append(
                f"| {WORKLOADS[wl]['label']} | {v} "
                f"| {med_range([r.get('rps') for r in measured], f_int)} "
                f"| {med_range([r.get('p50_us') for r in measured], f_ms_us)} "
                f"| {med_range([r.get('p99_us') for r in measured], f_ms_us)} "
                f"| {med_range([r.get('cpu_us_per_req') for r in measured], f2)} "
                f"| {med_range([r.get('server_cpu_pct') for r in measured], f_int)} "
                f"| {med_range([r.get('client_cpu_pct') for r in measured], f_int)} "
                f"| {med_range([r.get('others_cpu_pct') for r in measured], f_int)} "
                f"| {med_range([r.get('idle_rss_kib') for r in measured], f_mib)} "
                f"| {med_range([r.get('peak_rss_kib') for r in measured], f_mib)} "
                f"| {med_range([r.get('startup_ms') for r in measured], f_ms)} "
                f"| {med_range([r.get('stop_ms') for r in measured], f_ms)} "
                f"| {check} |")


def median_of(runs, section, variant, workload, key):
    vals = [r[key] for r in runs if r["section"] == section and r["ok"]
            and r["variant"] == variant and r["workload"] == workload
            and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def render(meta, runs, conns, profiles, instr, args):
    L = []
    L.append("# api benchmark report")
    L.append("")
    L.append("Command:")
    L.append("")
    L.append("```")
    L.append(meta["command"])
    L.append("```")
    L.append("")
    L.append(f"- when: {meta['started']} (took {meta['took_s']:.0f} s); "
             f"commit {meta['commit']}")
    L.append(f"- machine: {meta['cpu']}, {meta['ncpu']} CPUs, kernel "
             f"{meta['kernel']}; load average before the run {meta['load_start']}, "
             f"at the end {meta['load_end']} (the benchmark's own load "
             "included)")
    others = [r["others_cpu_pct"] for r in runs
              if r.get("pinned") and r.get("others_cpu_pct") is not None]
    busy = float(meta["load_start"].split()[0])
    if busy > 0.5 or (others and statistics.median(others) > 5):
        L.append(f"- **the machine was busy** (load average {busy:.1f} before "
                 "the run"
                 + (f"; other processes took a median "
                    f"{statistics.median(others):.0f} % of the server's core "
                    "during the pinned runs" if others else "")
                 + "): timings and CPU/request are noisy, compare within "
                 "rounds only; instruction counts (callgrind) are not "
                 "affected")
    L.append(f"- tools: {meta['rustc']}; {meta['nginx']}; {meta['wrk']}")
    L.append(f"- binaries: {meta['binaries']}")
    if runs:
        L.append(f"- each run: fresh server, {args.warmup} s warm-up, then "
                 f"{args.duration} s of wrk with {args.connections} keep-alive "
                 f"connections; {args.rounds} rounds interleaved "
                 f"({', '.join(meta['order'])}); figures are median (min–max) "
                 f"over rounds")
        L.append("- CPU µs/req = server utime+stime (/proc/PID/stat, whole "
                 "process tree) over the wrk run ÷ requests wrk completed; "
                 "idle RSS = VmRSS after the first 200; peak RSS = VmHWM "
                 "after the run; nginx figures are master + worker; "
                 "others' CPU % = what other processes used of the "
                 "server's core during the run (of both cores, less wrk, "
                 "when unpinned): the noise indicator")
    L.append("")
    variants = meta["variants"]

    if any(r["section"] == "pinned" for r in runs):
        L.append("## Pinned: server on CPU 0 (1 worker), wrk on CPU 1 "
                 "(1 thread)")
        L.append("")
        runs_table(runs, "pinned", variants, L)
        L.append("")
        L.append("Ratios of CPU µs/request, per round (paired), median "
                 "and min–max over rounds:")
        L.append("")
        L.append("| ratio | median | min–max | target | met |")
        L.append("|---|---|---|---|---|")

        def pr(num_v, num_w, den_v, den_w):
            return paired_ratios(by_round(runs, num_v, num_w, "pinned"),
                                 by_round(runs, den_v, den_w, "pinned"))

        names = set(variants)
        wls = {r["workload"] for r in runs}
        if {"api-info", "api-off"} <= names:
            L.append(ratio_row("GET /health: api info ÷ api off",
                               pr("api-info", "health", "api-off", "health"),
                               1.05))
        if {"api-info", "nginx"} <= names:
            L.append(ratio_row("GET /health: api info ÷ nginx (access log on)",
                               pr("api-info", "health", "nginx", "health"),
                               1.00))
        if {"api-off", "nginx"} <= names:
            L.append(ratio_row("GET /health: api off ÷ nginx (access log on)",
                               pr("api-off", "health", "nginx", "health"),
                               None))
        if {"nginx", "nginx-nolog"} <= names:
            L.append(ratio_row("GET /health: nginx access log on ÷ off",
                               pr("nginx", "health", "nginx-nolog", "health"),
                               None))
        if "api-info" in names and {"health", "events"} <= wls:
            L.append(ratio_row("api info: POST /events ÷ GET /health",
                               pr("api-info", "events", "api-info", "health"),
                               1.5))
        if "api-off" in names and {"health", "events"} <= wls:
            L.append(ratio_row("api off: POST /events ÷ GET /health",
                               pr("api-off", "events", "api-off", "health"),
                               None))
        if {"api-info", "api-off"} <= names and "events" in wls:
            L.append(ratio_row("POST /events: api info ÷ api off",
                               pr("api-info", "events", "api-off", "events"),
                               None))
        if {"api-info-musl", "api-info"} <= names:
            for wl in [w for w in WORKLOADS if w in wls]:
                L.append(ratio_row(
                    f"{WORKLOADS[wl]['label']}: musl ÷ glibc (api info)",
                    pr("api-info-musl", wl, "api-info", wl), 1.10))
        L.append("")

        api_vs = [v for v in variants if v.startswith("api")]
        if api_vs:
            L.append("Absolute figures of the pinned api runs, median (worst); "
                     "'met' compares the median with the target:")
            L.append("")
            L.append("| figure | target | " + " | ".join(api_vs) + " |")
            L.append("|---|---|" + "---|" * len(api_vs))
            for label, key, fmt, target, unit in [
                ("idle RSS", "idle_rss_kib", f_mib, 1.5 * 1024, "MiB"),
                ("peak RSS after a 64-connection run", "peak_rss_kib",
                 f_mib, 4 * 1024, "MiB"),
                ("start → first 200", "startup_ms", f_ms, 10.0, "ms"),
                ("SIGTERM → exit", "stop_ms", f_ms, None, "ms"),
            ]:
                cells = []
                for v in api_vs:
                    vals = [r[key] for r in runs if r["section"] == "pinned"
                            and r["variant"] == v and r.get(key) is not None
                            and r.get("cpu_us_per_req")]
                    if not vals:
                        cells.append("–")
                        continue
                    m = statistics.median(vals)
                    cell = f"{fmt(m)} ({fmt(max(vals))})"
                    if target is not None:
                        cell += " met" if m <= target else " **not met**"
                    cells.append(cell)
                tgt = "–" if target is None else f"≤ {fmt(target)} {unit}"
                L.append(f"| {label}, {unit} | {tgt} | " + " | ".join(cells)
                         + " |")
            L.append("")

    if any(r["section"] == "scaling" for r in runs):
        L.append(f"## Both cores, no pinning: {args.scale_workers} server "
                 f"workers, wrk with {args.scale_wrk_threads} threads on the "
                 "same two cores")
        L.append("")
        L.append("wrk competes with the server for the two cores here, so "
                 "throughput cannot double; 'server CPU %' + 'wrk CPU %' shows "
                 "how the 200 % were shared.")
        L.append("")
        runs_table(runs, "scaling", variants, L)
        L.append("")
        L.append("| workload | server | req/s, 2 cores ÷ pinned 1 core "
                 "| CPU µs/req, 2 cores ÷ pinned |")
        L.append("|---|---|---|---|")
        for wl in WORKLOADS:
            for v in variants:
                a = median_of(runs, "scaling", v, wl, "rps")
                b = median_of(runs, "pinned", v, wl, "rps")
                c = median_of(runs, "scaling", v, wl, "cpu_us_per_req")
                d = median_of(runs, "pinned", v, wl, "cpu_us_per_req")
                if a and b and c and d:
                    L.append(f"| {WORKLOADS[wl]['label']} | {v} | {a / b:.2f} "
                             f"| {c / d:.2f} |")
        L.append("")
        if {"api-info-musl", "api-info"} <= set(variants):
            L.append("| ratio (2 cores, 2 workers) | median | min–max "
                     "| target | met |")
            L.append("|---|---|---|---|---|")
            for wl in [w for w in WORKLOADS
                       if any(r["workload"] == w for r in runs)]:
                L.append(ratio_row(
                    f"{WORKLOADS[wl]['label']}: musl ÷ glibc CPU/req",
                    paired_ratios(
                        by_round(runs, "api-info-musl", wl, "scaling"),
                        by_round(runs, "api-info", wl, "scaling")),
                    1.10))
            L.append("")

    if conns:
        L.append(f"## Idle keep-alive connections (server pinned, 1 worker; "
                 f"api with MAX_CONNECTIONS={args.conn_cap})")
        L.append("")
        L.append("Each connection has made one GET /health and then stays "
                 "open and idle.")
        L.append("")
        L.append("| server | open connections | server fds | VmRSS MiB "
                 "| RSS per 1,000 connections MiB |")
        L.append("|---|---|---|---|---|")
        for c in conns:
            L.append(f"| {c['variant']} | 0 | – | "
                     f"{f_mib(c['base_rss_kib']) if 'base_rss_kib' in c else '–'}"
                     f" | – |")
            for s in c["steps"]:
                L.append(f"| {c['variant']} | {s['n']:,} | {s['fds']:,} "
                         f"| {f_mib(s['rss_kib'])} "
                         f"| {f_mib(s['per_1000_kib'])} |")
            if c["checks"]:
                L.append(f"| {c['variant']} | **failed**: "
                         f"{'; '.join(c['checks'])} | | | |")
        L.append("")

    if instr:
        n1, n2 = args.instr_requests
        L.append("## Instructions per request (valgrind --tool=callgrind)")
        L.append("")
        L.append(f"User-space instructions of the whole server process, "
                 f"(Ir({n2} requests) − Ir({n1})) ÷ {n2 - n1}, with "
                 f"{args.connections} keep-alive connections each with one "
                 "request in flight. Deterministic (the same on a busy "
                 "machine), but blind to the kernel: a write(2) counts as "
                 "one instruction.")
        L.append("")
        L.append("| workload | server | instructions/request "
                 "| fixed (start-up + shutdown) | checks |")
        L.append("|---|---|---|---|---|")
        for c in instr:
            L.append(f"| {WORKLOADS[c['workload']]['label']} | {c['variant']} "
                     f"| {c.get('ir_per_req', 0):,.0f} "
                     f"| {c.get('ir_fixed', 0):,.0f} "
                     f"| {'; '.join(c['checks']) or 'ok'} |")
        L.append("")
        ir = {(c["variant"], c["workload"]): c.get("ir_per_req")
              for c in instr if not c["checks"]}
        rows = []
        for label, a, b in [
            ("GET /health: api info ÷ api off", ("api-info", "health"),
             ("api-off", "health")),
            ("api info: POST /events ÷ GET /health", ("api-info", "events"),
             ("api-info", "health")),
            ("POST /events: api info ÷ api off", ("api-info", "events"),
             ("api-off", "events")),
            ("GET /health: musl ÷ glibc (api info)",
             ("api-info-musl", "health"), ("api-info", "health")),
            ("POST /events: musl ÷ glibc (api info)",
             ("api-info-musl", "events"), ("api-info", "events")),
        ]:
            if ir.get(a) and ir.get(b):
                rows.append(f"| {label} | {ir[a] / ir[b]:.3f} |")
        if rows:
            L.append("| ratio of instructions/request | value |")
            L.append("|---|---|")
            L.extend(rows)
            L.append("")
        for c in instr:
            if c.get("top"):
                L.append(f"Top functions by own instructions, {c['variant']}, "
                         f"{WORKLOADS[c['workload']]['label']} ({n2} "
                         "requests, start-up included):")
                L.append("")
                L.append("```")
                for pct, fn in c["top"]:
                    L.append(f"{pct:6.2f}%  {fn[:160]}")
                L.append("```")
                L.append("")

    if profiles:
        L.append("## Where the api's CPU goes (perf, pinned server, 1 worker)")
        L.append("")
        L.append(f"`perf record -e cpu-clock -F 999 --call-graph dwarf` on the "
                 f"server for {args.profile_duration} s of wrk; percentages "
                 "are of the server's samples. 'self' = time in the symbol "
                 "itself; 'incl.' = with everything it calls.")
        L.append("")
        for p in profiles:
            title = f"### {p['variant']}, {WORKLOADS[p['workload']]['label']}"
            if "cpu_us_per_req" in p:
                title += f" — {p['cpu_us_per_req']:.2f} µs/req while profiled"
            L.append(title)
            L.append("")
            if "error" in p:
                L.append("error: " + p["error"])
                L.append("")
                continue
            L.append("| component (self) | % |")
            L.append("|---|---|")
            for c, pct in p["components"]:
                if pct >= 0.5:
                    L.append(f"| {c} | {pct:.1f} |")
            L.append("")
            L.append(f"Top {args.profile_top} symbols, self:")
            L.append("")
            L.append("```")
            for pct, dso, sym in p["top"]:
                L.append(f"{pct:6.2f}%  {dso[:18]:18}  {sym[:150]}")
            L.append("```")
            L.append("")
            L.append("The service's own functions (api::) and libc entry "
                     "points, inclusive:")
            L.append("")
            L.append("```")
            L.append("  incl.    self")
            for children, self_pct, dso, sym in p["inclusive"]:
                L.append(f"{children:6.2f}%  {self_pct or 0:6.2f}%  "
                         f"{sym[:150]}")
            L.append("```")
            L.append("")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------ main


def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def build(args):
    """cargo build --release (glibc) and, if wanted, the musl build.

    With --rev, the named commit is exported with `git archive` into
    TARGET_DIR/bench/src and built there, so that a committed state is
    measured whatever is uncommitted in the work tree."""
    env = dict(os.environ, CARGO_TARGET_DIR=args.target_dir)
    src = REPO
    if args.rev:
        src = os.path.join(args.target_dir, "bench", "src")
        shutil.rmtree(src, ignore_errors=True)
        os.makedirs(src)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    cmds = [["cargo", "build", "--release", "--locked"]]
    if args.musl:
        cmds.append(cmds[0] + ["--target", MUSL_TARGET])
    for cmd in cmds:
        print(f"+ (cd {src} && {' '.join(cmd)})", flush=True)
        p = popen(cmd, cwd=src, env=env)
        if p.wait() != 0:
            raise SystemExit(f"build failed: {' '.join(cmd)}")


def main():
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
    ap.add_argument("--variants", default="api-info,api-off,api-info-musl,nginx",
                    help="comma list from api-info, api-off, api-info-musl, "
                         "api-off-musl, nginx, nginx-nolog")
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
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    conn_steps = [int(n) for n in args.conn_steps.split(",") if n]
    args.instr_requests = [int(n) for n in args.instr_requests.split(",")]
    if len(args.instr_requests) != 2 or not (
            0 < args.instr_requests[0] < args.instr_requests[1]):
        ap.error("--instr-requests takes two increasing counts, e.g. 1000,3000")
    args.only = args.profile_only or args.instructions_only

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        return run(args, variants_wanted, workloads, conn_steps)
    except Interrupted as e:
        print(f"interrupted ({e}); stopping everything started", flush=True)
        return 130
    finally:
        cleanup()


def run(args, variants_wanted, workloads, conn_steps):
    started = time.time()
    load0 = os.getloadavg()  # before our own build and load
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (server on 0, wrk on 1)")
    api = args.api or os.path.join(args.target_dir, "release", "api")
    api_musl = args.api_musl or os.path.join(args.target_dir, MUSL_TARGET,
                                             "release", "api")
    if not args.no_build and not (args.api and (args.api_musl or not args.musl)):
        build(args)
    catalogue = {
        "api-info": {"kind": "api", "binary": api, "log_level": "info"},
        "api-off": {"kind": "api", "binary": api, "log_level": "off"},
        "api-info-musl": {"kind": "api", "binary": api_musl,
                          "log_level": "info"},
        "api-off-musl": {"kind": "api", "binary": api_musl,
                         "log_level": "off"},
        "nginx": {"kind": "nginx", "binary": args.nginx, "access_log": True},
        "nginx-nolog": {"kind": "nginx", "binary": args.nginx,
                        "access_log": False},
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
    meta = {
        "command": args.command or " ".join(map(shlex.quote, sys.argv)),
        "started": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "commit": (sh(["git", "-C", REPO, "rev-parse", "--short", args.rev])
                   if args.rev and not args.no_build else
                   sh(["git", "-C", REPO, "describe", "--always", "--dirty"])
                   + ("" if not args.no_build else " (prebuilt binaries)")),
        "cpu": cpu_model(),
        "ncpu": os.cpu_count(),
        "kernel": platform.release(),
        "load_start": " ".join(f"{x:.2f}" for x in load0),
        "rustc": sh(["rustc", "-V"]),
        "nginx": (sh([args.nginx, "-v"]) or subprocess.run(
            [args.nginx, "-v"], capture_output=True, text=True).stderr.strip()),
        "wrk": sh(["wrk", "-v"]).splitlines()[0] if sh(["wrk", "-v"]) else
        "wrk",
        "variants": [v["name"] for v in variants],
        "binaries": ", ".join(sorted({
            f"{v['binary']} ({os.path.getsize(v['binary']) / 1e6:.1f} MB)"
            for v in variants if v["kind"] == "api"})) or "–",
    }
    order = [f"{v['name']} {w}" for w in workloads for v in variants
             if w == "health" or v["kind"] == "api"]
    meta["order"] = order
    runs, conns, profiles, instr = [], [], [], []
    failed = False

    def note(r):
        nonlocal failed
        failed |= not r["ok"]
        if r["ok"]:
            print(f"  {r['variant']:14} {WORKLOADS[r['workload']]['label']:13}"
                  f" {r['rps']:10,.0f} req/s  {r['cpu_us_per_req']:6.2f} µs/req"
                  f"  p99 {r['p99_us'] / 1000:6.2f} ms  start "
                  f"{r['startup_ms']:5.1f} ms  stop {r['stop_ms']:5.1f} ms",
                  flush=True)
        else:
            print(f"  {r['variant']:14} {WORKLOADS[r['workload']]['label']:13}"
                  f" FAILED: {'; '.join(r['checks'])}", flush=True)

    # The orchestrator itself stays off the server's core.
    os.sched_setaffinity(0, {CLIENT_CPU})
    if not args.only and not args.no_pinned:
        for rnd in range(1, args.rounds + 1):
            print(f"pinned round {rnd}/{args.rounds}", flush=True)
            for w in workloads:
                for v in variants:
                    if w == "events" and v["kind"] != "api":
                        continue
                    r = measure(v, w, args, pinned=True, workers=1,
                                wrk_threads=1)
                    r.update(section="pinned", round=rnd)
                    runs.append(r)
                    note(r)

    if not args.only and args.scale_rounds > 0:
        os.sched_setaffinity(0, all_cpus())
        for rnd in range(1, args.scale_rounds + 1):
            print(f"2-core round {rnd}/{args.scale_rounds}", flush=True)
            for w in workloads:
                for v in variants:
                    if w == "events" and v["kind"] != "api":
                        continue
                    if v["name"] in ("api-off", "api-off-musl", "nginx-nolog"):
                        continue  # the scaling question is about the default
                    r = measure(v, w, args, pinned=False,
                                workers=args.scale_workers,
                                wrk_threads=args.scale_wrk_threads)
                    r.update(section="scaling", round=rnd)
                    runs.append(r)
                    note(r)
        os.sched_setaffinity(0, {CLIENT_CPU})

    if not args.only and conn_steps:
        print(f"idle connections {conn_steps}", flush=True)
        for v in variants:
            if v["name"] in ("api-off", "api-off-musl", "nginx-nolog"):
                continue
            c = idle_conns(v, args, conn_steps,
                           {"MAX_CONNECTIONS": str(args.conn_cap)}
                           if v["kind"] == "api" else None)
            conns.append(c)
            failed |= bool(c["checks"])
            print(f"  {v['name']:14} " + ", ".join(
                f"{s['n']}: {s['rss_kib'] / 1024:.1f} MiB" for s in c["steps"])
                + (" FAILED: " + "; ".join(c["checks"]) if c["checks"] else ""),
                flush=True)

    if args.profile or args.profile_only:
        if not shutil.which("perf"):
            raise SystemExit("perf not found (apt-get install linux-perf)")
        for name, w in [("api-info", "health"), ("api-off", "health"),
                        ("api-info", "events"), ("api-off", "events")]:
            v = dict(catalogue[name], name=name)
            if w not in workloads:
                continue
            print(f"profiling {name} {w}", flush=True)
            profiles.append(profile(v, w, args, args.out))

    if args.instructions or args.instructions_only:
        if not shutil.which("valgrind"):
            raise SystemExit("valgrind not found (apt-get install valgrind)")
        for w in workloads:
            for v in variants:
                if v["kind"] != "api":
                    continue
                print(f"callgrind {v['name']} {w} "
                      f"({'/'.join(map(str, args.instr_requests))} requests)",
                      flush=True)
                c = instructions(v, w, args, args.out)
                instr.append(c)
                failed |= bool(c["checks"])
                print(f"  {c.get('ir_per_req', 0):,.0f} instructions/request"
                      + (" FAILED: " + "; ".join(c["checks"])
                         if c["checks"] else ""), flush=True)

    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["took_s"] = time.time() - started
    report = render(meta, runs, conns, profiles, instr, args)
    path = os.path.join(args.out, "report.md")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    for p in (path, os.path.join(args.out, f"report-{stamp}.md")):
        with open(p, "w") as f:
            f.write(report)
    for r in runs:
        r.pop("wrk_output", None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": runs, "idle_connections": conns,
                   "profiles": profiles, "instructions": instr}, f, indent=1)
    if not args.keep_logs:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print()
    print(report)
    print(f"report: {path}")
    if failed:
        print("some runs failed or a check did not hold (see 'checks')")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
