"""Processes and /proc: every process the benchmark starts, CPU pinning, and
the CPU time, memory and descriptors of a server's process tree."""

import os
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = 0
CLIENT_CPU = 1

STARTED = []  # every Popen this program made, for cleanup


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
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
