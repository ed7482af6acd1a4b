"""Where the time goes: perf profiles of the pinned server under wrk, and
callgrind's user-space instruction counts per request."""

import os
import re
import shutil
import subprocess
import time

from procs import CLIENT_CPU, CLK_TCK, SERVER_CPU, cpu_ticks, popen
from servers import Server, ServerFailed
from workloads import http_burst, run_wrk, scan_log

# ---------------------------------------------------------------- perf

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


# ----------------------------------------------------------- callgrind

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


# --------------------------------------------------------------- phases

PROFILED = [("api-info", "health"), ("api-off", "health"),
            ("api-info", "events"), ("api-off", "events")]


def profile_runs(catalogue, workloads, args):
    if not shutil.which("perf"):
        raise SystemExit("perf not found (apt-get install linux-perf)")
    profiles = []
    for name, w in PROFILED:
        v = dict(catalogue[name], name=name)
        if w not in workloads:
            continue
        print(f"profiling {name} {w}", flush=True)
        profiles.append(profile(v, w, args, args.out))
    return profiles


def instruction_runs(variants, workloads, args):
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    instr = []
    for w in workloads:
        for v in variants:
            if v["kind"] == "nginx" or (v["kind"] == "bare" and w != "health"):
                continue
            print(f"callgrind {v['name']} {w} "
                  f"({'/'.join(map(str, args.instr_requests))} requests)",
                  flush=True)
            c = instructions(v, w, args, args.out)
            instr.append(c)
            print(f"  {c.get('ir_per_req', 0):,.0f} instructions/request"
                  + (" FAILED: " + "; ".join(c["checks"])
                     if c["checks"] else ""), flush=True)
    return instr
