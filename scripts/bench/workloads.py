"""The load: wrk runs with the Lua scripts next to this file, the plain-socket
request bursts used under callgrind, and the log checks that follow a run."""

import json
import os
import re
import resource
import socket
import subprocess
import time

from procs import popen
from servers import ServerFailed, read_response

HERE = os.path.dirname(os.path.abspath(__file__))

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
