#!/usr/bin/env python3
"""Overload benchmark (driven by scripts/overload-bench.sh): how long a new
client's GET /health takes while slow and idle connections try to hold every
connection slot, and the server's memory meanwhile.  Not a test: nothing here
asserts a timing; targets are printed next to the figures.

One run, per server and flood:

  1. start the server with its default settings (api: MAX_CONNECTIONS 1024,
     or --max-connections; nginx: worker_connections 1024 and its default
     timeouts);
  2. in a child process, open the flood and keep it up, as slowloris does:
     idle keep-alive connections (one GET /health answered, then silence)
     and slowloris connections (a request head that never ends), opened
     2,000 a second (--rate); every
     cycle (15 s, slowloris's default, or 1 s: --cycles) one more header
     line on each slow connection, and the connections the server closed
     opened again (the "-now" floods reopen their idle connections as soon
     as the server closes them, whatever the cycle);
  3. once every connection of the flood has been attempted, start --honest
     keep-alive clients in this process, each sending GET /health back to
     back on its connection (checking before each reuse that the server has
     not closed it, and sending a request again on a new connection when the
     server closed the old one before any byte of the answer: that is a
     retry), and 20 probes, one every 250 ms, each a new connection sending
     GET /health: the time from connect to the whole answer (or the probe
     timeout);
  4. read the server's RSS (VmRSS, and VmHWM for the peak) and open
     descriptors, stop the honest clients and the flood, stop the server.

Traffic goes to 127.0.0.1 only; every phase is bounded in time.
"""

import argparse
import asyncio
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import cleanup, open_fds, status_kib  # noqa: E402
from servers import PROBE, Server, ServerFailed, read_response  # noqa: E402

FLOODS = {
    "mixed": {"idle": 500, "loris": 1500},
    "slowloris": {"idle": 0, "loris": 10000},
    # Keep-alive clients that send one request and park.
    "keepalive": {"idle": 2000, "loris": 0},
    # The same, reconnecting as soon as they are closed.
    "keepalive-now": {"idle": 2000, "loris": 0, "now": True},
}
KEEP = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# ------------------------------------------------------------------ flood


async def flood(port, idle, loris, cycle, rate, now, ready_fd, stats, finish):
    """Opens `idle` + `loris` connections, `rate` a second, and keeps them up
    until SIGTERM, as slowloris does: every `cycle` seconds one more header
    line on each slow connection, and the connections the server closed
    opened again (idle ones at once if `now`)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    attempted = 0
    all_attempted = asyncio.Event()

    def to_tick():
        return cycle - ((loop.time() - t0) % cycle)

    async def one(i, is_idle):
        nonlocal attempted
        first = True
        # Paced, as slowloris opens its sockets one after the other: each slow
        # connection sends its first line as soon as it is connected.
        await asyncio.sleep(i / rate)
        while True:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5)
            except (OSError, asyncio.TimeoutError):
                stats["connect_failed"] += 1
                r = None
            if first:
                first = False
                attempted += 1
                if attempted == idle + loris:
                    all_attempted.set()
            if r is None:
                await asyncio.sleep(to_tick())
                continue
            stats["opened"] += 1
            try:
                if is_idle:
                    w.write(KEEP)
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
                    if b" 200 " not in head.split(b"\r\n", 1)[0]:
                        raise ConnectionError("not 200")
                    await r.read(15)  # {"status":"ok"}
                    if await r.read(1) == b"":  # silence until closed
                        stats["idle_closed"] += 1
                else:
                    w.write(b"GET /?%d HTTP/1.1\r\nHost: 127.0.0.1\r\n" % i)
                    while True:
                        try:
                            data = await asyncio.wait_for(r.read(4096), to_tick())
                        except asyncio.TimeoutError:
                            w.write(b"X-Slow: %d\r\n" % i)
                            await w.drain()
                            continue
                        if not data:
                            stats["loris_closed"] += 1
                            break
            except (OSError, ConnectionError, asyncio.IncompleteReadError,
                    asyncio.TimeoutError):
                stats["errors"] += 1
            finally:
                w.close()
            if is_idle and now:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(to_tick())

    # Held here: the event loop keeps only weak references to its tasks.
    tasks = [asyncio.create_task(one(i, i < idle)) for i in range(idle + loris)]
    await all_attempted.wait()
    os.write(ready_fd, b"r")
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    # Stop here, without cancelling the connection tasks: with thousands of
    # them, asyncio.wait_for can lose a cancellation (a known CPython bug)
    # and asyncio.run would then wait forever. The kernel closes the sockets.
    stats["tasks_failed"] = sum(t.done() for t in tasks)
    finish()


def run_flood(port, idle, loris, cycle, rate, now, ready_fd, out_path):
    """The child process: holds the flood until SIGTERM, then writes its
    counters to out_path and exits."""
    stats = {"opened": 0, "connect_failed": 0, "idle_closed": 0,
             "loris_closed": 0, "errors": 0}

    def finish():
        with open(out_path, "w") as f:
            json.dump(stats, f)
        os._exit(0)

    asyncio.run(flood(port, idle, loris, cycle, rate, now, ready_fd, stats,
                      finish))


# ------------------------------------------------------------------ probes


def probe(port, timeout):
    """Seconds from connect to the whole answer of one GET /health, and its
    status line (or the error). A probe that got no answer counts as the whole
    timeout, so that a refusal cannot pass for a fast answer."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.001, timeout - (time.perf_counter() - t0)))
            s.sendall(PROBE)
            head, _ = read_response(s)
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
    except (OSError, ServerFailed) as e:
        return timeout, f"failed: {type(e).__name__}"
    return time.perf_counter() - t0, status


def probes(port, n, every, timeout):
    results = [None] * n

    def run(i):
        results[i] = probe(port, timeout)

    threads = []
    for i in range(n):
        t = threading.Thread(target=run, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(every)
    for t in threads:
        t.join()
    return results


# ------------------------------------------------------------------ honest clients


KEEP_ID = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: honest\r\n\r\n"


def closed_while_idle(s):
    """Whether the server has closed `s` while it sat idle (or sent something
    unasked), as HTTP clients check before reusing a pooled connection."""
    readable, _, _ = select.select([s], [], [], 0)
    return bool(readable)


def honest_client(port, stop, timeout, out):
    """GET /health back to back on one keep-alive connection until `stop`
    (at most 100,000 requests), counting what happened (see the module's
    doc)."""
    st = {"answered": 0, "retried": 0, "found_closed": 0,
          "closing_answers": 0, "failed": 0}
    s = None
    try:
        for _ in range(100000):
            if stop.is_set():
                break
            if s is not None and closed_while_idle(s):
                st["found_closed"] += 1
                s.close()
                s = None
            reused = s is not None
            first = b""
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", port),
                                                 timeout=timeout)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(KEEP_ID)
                first = s.recv(65536)
                if not first:
                    raise ConnectionResetError("closed before the answer")
                head, _ = read_response(s, first)
            except (OSError, ServerFailed):
                # Closed before any byte of the answer, on a connection that
                # had served: sent again on a new connection. Anything else
                # is a failure.
                st["retried" if reused and not first else "failed"] += 1
                if s is not None:
                    s.close()
                s = None
                continue
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                st["failed"] += 1
            else:
                st["answered"] += 1
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                st["closing_answers"] += 1
                s.close()
                s = None
    finally:
        if s is not None:
            s.close()
        out.append(st)


# ------------------------------------------------------------------ runs


def measure(variant, flood_name, cycle, args):
    size = dict(FLOODS[flood_name])
    size["idle"] = round(size["idle"] * args.flood_scale)
    size["loris"] = round(size["loris"] * args.flood_scale)
    # Each server with its default threads: the api one per CPU, nginx one
    # worker process.
    extra = {}
    if variant["kind"] == "api" and args.max_connections:
        extra["MAX_CONNECTIONS"] = str(args.max_connections)
    srv = Server(variant, 0 if variant["kind"] == "api" else 1, None,
                 args.workdir, extra_env=extra)
    res = {"server": variant["name"], "flood": flood_name, "cycle": cycle,
           **size}
    child = None
    honest_stop = threading.Event()
    honest_threads = []
    try:
        srv.start()
        res["base_rss_kib"] = status_kib(srv.pid, "VmRSS")
        rd, wr = os.pipe()
        out_path = os.path.join(srv.dir, "flood.json")
        child = os.fork()
        if child == 0:
            os.close(rd)
            code = 0
            try:
                run_flood(srv.port, size["idle"], size["loris"], cycle,
                          args.rate, size.get("now", False), wr, out_path)
            except BaseException:  # noqa: BLE001 - the child must exit here
                code = 1
            os._exit(code)
        os.close(wr)
        t0 = time.monotonic()
        # Every connection attempted (or the attempt timed out), then a
        # moment for the server to take them in.
        ready = os.read(rd, 1) if _wait_readable(rd, args.setup_limit) else b""
        os.close(rd)
        res["setup_s"] = time.monotonic() - t0
        if not ready:
            raise ServerFailed("the flood was not up in time")
        honest_out = []
        for _ in range(args.honest):
            t = threading.Thread(target=honest_client,
                                 args=(srv.port, honest_stop,
                                       args.probe_timeout, honest_out))
            t.start()
            honest_threads.append(t)
        time.sleep(1)
        res["fds_before_probes"] = open_fds(srv.pid)
        got = probes(srv.port, args.probes, args.every, args.probe_timeout)
        honest_stop.set()
        for t in honest_threads:
            t.join()
        honest_threads = []
        if args.honest:
            res["honest"] = {k: sum(h[k] for h in honest_out)
                             for k in honest_out[0]}
        lat = [t for t, s in got]
        res["statuses"] = sorted({s for t, s in got})
        res["ok"] = sum(1 for t, s in got if " 200 " in s + " ")
        res["median_ms"] = statistics.median(lat) * 1000
        res["max_ms"] = max(lat) * 1000
        res["rss_kib"] = status_kib(srv.pid, "VmRSS")
        res["hwm_kib"] = status_kib(srv.pid, "VmHWM")
        res["fds"] = open_fds(srv.pid)
        os.kill(child, signal.SIGTERM)
        _reap(child, 30)
        child = None
        with open(out_path) as f:
            res["flood_stats"] = json.load(f)
        if variant["kind"] == "api":
            res["counters"] = _counters(srv.port)
        res["stop_ms"], res["exit"] = srv.stop(timeout=30)
    except (ServerFailed, OSError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        honest_stop.set()
        for t in honest_threads:
            t.join()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        srv.kill()
        srv.remove(args.keep_logs)
    return res


def _reap(pid, limit):
    """Waits up to `limit` seconds for the flood to write its counters and
    exit, then kills it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.1)
    raise ServerFailed("the flood did not stop within %.0f s" % limit)


def _wait_readable(fd, limit):
    r, _, _ = select.select([fd], [], [], limit)
    return bool(r)


def _counters(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data.partition(b"\r\n\r\n")[2]).get("connections")
    except (OSError, ValueError):
        return None


def render(results, args):
    L = ["| server | flood | reopen | probes 200 | median ms | max ms | "
         "RSS MiB | peak RSS MiB | server fds | evicted idle / head | "
         "honest answered / retried / failed |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r["idle"] and r["loris"]:
            flood = f"{r['idle']:,} idle + {r['loris']:,} slowloris"
        elif r["idle"]:
            flood = f"{r['idle']:,} keep-alive"
        else:
            flood = f"{r['loris']:,} slowloris"
        reopen = "at once" if r.get("now") else f"{r['cycle']:g} s"
        if "error" in r:
            L.append(f"| {r['server']} | {flood} | {reopen} | "
                     f"{r['error']} ||||||||")
            continue
        c = r.get("counters") or {}
        ev = (f"{c.get('evicted_idle', 0):,} / {c.get('evicted_head', 0):,}"
              if "evicted_idle" in c else "–")
        h = r.get("honest")
        hon = (f"{h['answered']:,} / {h['retried']:,} / {h['failed']:,}"
               if h else "–")
        L.append(
            f"| {r['server']} | {flood} | {reopen} | "
            f"{r['ok']}/{args.probes} | "
            f"{r['median_ms']:,.1f} | {r['max_ms']:,.1f} | "
            f"{r['rss_kib'] / 1024:.1f} | {r['hwm_kib'] / 1024:.1f} | "
            f"{r['fds']:,} | {ev} | {hon} |")
    L.append("")
    L.append(f"Targets: max under 100 ms, RSS under 64 MiB. Probe timeout "
             f"{args.probe_timeout:.0f} s (a probe that got no answer counts "
             f"as that long). Honest clients: requests answered, sent again "
             f"after the server closed their connection before any byte of "
             f"the answer, and failed otherwise.")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(prog="scripts/overload-bench.sh",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", action="append", default=[],
                    metavar="NAME=PATH", help="an api binary to measure "
                    "(repeatable), e.g. api=target/release/api")
    ap.add_argument("--nginx", help="nginx binary to compare with")
    ap.add_argument("--floods", default="mixed,slowloris,keepalive,keepalive-now",
                    help="comma list of " + ", ".join(FLOODS) + " (the -now "
                    "ones run at the first cycle only: they do not wait for "
                    "it)")
    ap.add_argument("--max-connections", type=int,
                    help="the api's MAX_CONNECTIONS (default: its own, 1024)")
    ap.add_argument("--flood-scale", type=float, default=1.0,
                    help="multiplies the floods' connection counts (1), to fit "
                    "them to a smaller --max-connections")
    ap.add_argument("--honest", type=int, default=0,
                    help="keep-alive clients sending GET /health back to back "
                    "while the probes run (0)")
    ap.add_argument("--cycles", default="15,1",
                    help="seconds between the flood's rounds of header lines "
                    "and reopened connections, comma list (15: slowloris's "
                    "default; 1: reconnecting as fast as it is closed)")
    ap.add_argument("--rate", type=float, default=2000,
                    help="new flood connections a second while opening (2000)")
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--every", type=float, default=0.25,
                    help="seconds between probes (0.25)")
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    ap.add_argument("--setup-limit", type=float, default=120.0,
                    help="longest wait for the flood to be attempted (120 s)")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    variants = []
    for spec in args.api:
        name, _, path = spec.rpartition("=")
        variants.append({"kind": "api", "name": name or "api",
                         "binary": os.path.abspath(path), "log_level": "info"})
    if args.nginx:
        variants.append({"kind": "nginx", "name": "nginx",
                         "binary": args.nginx, "access_log": True,
                         "conf": "nginx-overload.conf.in"})
    if not variants:
        ap.error("nothing to measure: give --api and/or --nginx")
    args.workdir = tempfile.mkdtemp(prefix="overload-")
    results = []
    try:
        cycles = [float(c) for c in args.cycles.split(",")]
        for cycle in cycles:
            for flood_name in args.floods.split(","):
                if FLOODS[flood_name].get("now") and cycle != cycles[0]:
                    continue
                for v in variants:
                    r = measure(v, flood_name, cycle, args)
                    print(json.dumps(r), flush=True)
                    results.append(r)
    finally:
        cleanup()
        if not args.keep_logs:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print()
    print(render(results, args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
