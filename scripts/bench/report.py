"""The Markdown report: one function per section, each appending lines."""

import statistics

from workloads import WORKLOADS

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


def render(meta, runs, conns, profiles, instr, args, sync_latency=None):
    L = []
    header(L, meta, runs, args)
    variants = meta["variants"]
    if any(r["section"] == "pinned" for r in runs):
        pinned_section(L, runs, variants)
    if any(r["section"] == "scaling" for r in runs):
        scaling_section(L, runs, variants, args)
    if any(r["section"] == "sync" for r in runs):
        sync_section(L, runs, sync_latency)
    if conns:
        idle_section(L, conns, args)
    if instr:
        instructions_section(L, instr, args)
    if profiles:
        profiles_section(L, profiles, args)
    return "\n".join(L) + "\n"


def header(L, meta, runs, args):
    """The command, the machine, the tools and how each run was made."""
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


def pinned_section(L, runs, variants):
    L.append("## Pinned: server on CPU 0 (1 worker), wrk on CPU 1 "
             "(1 thread)")
    L.append("")
    runs_table(runs, "pinned", variants, L)
    L.append("")
    pinned_ratios(L, runs, variants)
    pinned_absolutes(L, runs, variants)


def pinned_ratios(L, runs, variants):
    """Paired per-round ratios of CPU per request, with their targets."""
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
    if {"api-info-musl", "nginx"} <= names:
        L.append(ratio_row("GET /health: api info musl ÷ nginx (access log on)",
                           pr("api-info-musl", "health", "nginx", "health"),
                           1.00))
    if {"api-info-musl", "bare-musl"} <= names:
        L.append(ratio_row("GET /health: api info musl ÷ bare hyper musl",
                           pr("api-info-musl", "health", "bare-musl", "health"),
                           None))
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


ABSOLUTES = [  # label, key, format, target, unit
    ("idle RSS", "idle_rss_kib", f_mib, 1.5 * 1024, "MiB"),
    ("peak RSS after a 64-connection run", "peak_rss_kib", f_mib, 4 * 1024,
     "MiB"),
    ("start → first 200", "startup_ms", f_ms, 10.0, "ms"),
    ("SIGTERM → exit", "stop_ms", f_ms, None, "ms"),
]


def pinned_absolutes(L, runs, variants):
    """Memory and start/stop times of the pinned api runs against targets."""
    api_vs = [v for v in variants if v.startswith("api")]
    if not api_vs:
        return
    L.append("Absolute figures of the pinned api runs, median (worst); "
             "'met' compares the median with the target:")
    L.append("")
    L.append("| figure | target | " + " | ".join(api_vs) + " |")
    L.append("|---|---|" + "---|" * len(api_vs))
    for label, key, fmt, target, unit in ABSOLUTES:
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


def scaling_section(L, runs, variants, args):
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


def sync_section(L, runs, latency):
    L.append("## EVENT_SYNC: POST /events with none and data")
    L.append("")
    L.append("Pinned (server on CPU 0 with one worker, wrk on CPU 1), rounds "
             "interleaved; medians and min–max over rounds; data ÷ none "
             "paired by round. With data every 201 waits for an fdatasync "
             "shared by its batch.")
    L.append("")
    if latency:
        L.append(f"fdatasync on this disk (the log directory's file system, "
                 f"{latency['n']} appends of {latency['bytes']} bytes, each "
                 f"synced): median {latency['p50_us']:.0f} µs, p99 "
                 f"{latency['p99_us']:.0f} µs, mean {latency['mean_us']:.0f} "
                 "µs.")
        L.append("")
    L.append("| connections | none req/s | data req/s | data ÷ none req/s "
             "| none p99 ms | data p99 ms | target | met |")
    L.append("|---|---|---|---|---|---|---|---|")
    conns = sorted({r["connections"] for r in runs if r["section"] == "sync"})
    for c in conns:
        def pick(mode):
            return {r["round"]: r for r in runs
                    if r["section"] == "sync" and r["connections"] == c
                    and r["sync"] == mode and r["ok"]}
        none, data = pick("none"), pick("data")
        ratios = paired_ratios(data, none, key="rps")
        ratio = "–"
        met = "–"
        if ratios:
            m = statistics.median(ratios)
            ratio = f"{m:.2f}" + (f" ({min(ratios):.2f}–{max(ratios):.2f})"
                                  if len(ratios) > 1 else "")
            if c == 64:
                met = "yes" if m >= 0.75 else "**no**"
        L.append(
            f"| {c} | {med_range([r['rps'] for r in none.values()], f_int)} "
            f"| {med_range([r['rps'] for r in data.values()], f_int)} "
            f"| {ratio} "
            f"| {med_range([r['p99_us'] for r in none.values()], f_ms_us)} "
            f"| {med_range([r['p99_us'] for r in data.values()], f_ms_us)} "
            f"| {'≥ 0.75' if c == 64 else '–'} | {met} |")
    L.append("")


def idle_section(L, conns, args):
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


INSTR_RATIOS = [  # label, numerator (variant, workload), denominator
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
    ("GET /health: api info ÷ bare hyper (glibc)", ("api-info", "health"),
     ("bare", "health")),
    ("GET /health: api info musl ÷ bare hyper musl (target ≤ 1.5)",
     ("api-info-musl", "health"), ("bare-musl", "health")),
]


def instructions_section(L, instr, args):
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
    rows = [f"| {label} | {ir[a] / ir[b]:.3f} |"
            for label, a, b in INSTR_RATIOS if ir.get(a) and ir.get(b)]
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


def profiles_section(L, profiles, args):
    L.append("## Where the api's CPU goes (perf, pinned server, 1 worker)")
    L.append("")
    L.append(f"`perf record -e cpu-clock -F 999 --call-graph dwarf` on the "
             f"server for {args.profile_duration} s of wrk; percentages "
             "are of the server's samples. 'self' = time in the symbol "
             "itself; 'incl.' = with everything it calls.")
    L.append("")
    for p in profiles:
        one_profile(L, p, args)


def one_profile(L, p, args):
    title = f"### {p['variant']}, {WORKLOADS[p['workload']]['label']}"
    if "cpu_us_per_req" in p:
        title += f" — {p['cpu_us_per_req']:.2f} µs/req while profiled"
    L.append(title)
    L.append("")
    if "error" in p:
        L.append("error: " + p["error"])
        L.append("")
        return
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
