"""EVENT_SYNC: what a durable 201 costs.  POST /events at a few connection
counts with EVENT_SYNC=none and =data, interleaved by round (pinned: server
on CPU 0 with one worker, wrk on CPU 1), and the latency of one fdatasync on
the disk that holds the logs, so the figures can be read on another disk."""

import argparse
import os
import time

from runner import measure, print_run


def fdatasync_latency(directory, n=200, size=256):
    """Append `size` bytes and fdatasync, n times, in a file of `directory`
    (what the writer thread does per batch); microseconds per sync."""
    path = os.path.join(directory, "fdatasync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    try:
        os.fsync(fd)
        for _ in range(n):
            os.write(fd, b"x" * (size - 1) + b"\n")
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"n": n, "bytes": size, "p50_us": times[n // 2],
            "p99_us": times[min(n - 1, n * 99 // 100)],
            "mean_us": sum(times) / n}


def sync_rounds(variant, args):
    """Rounds of POST /events at each of args.sync_conns connections, with
    EVENT_SYNC=none and data; then the disk's fdatasync latency."""
    runs = []
    for rnd in range(1, args.rounds + 1):
        print(f"EVENT_SYNC round {rnd}/{args.rounds}", flush=True)
        for conns in args.sync_conns:
            sub = argparse.Namespace(**dict(vars(args), connections=conns))
            for mode in ("none", "data"):
                r = measure(variant, "events", sub, pinned=True, workers=1,
                            wrk_threads=1, extra_env={"EVENT_SYNC": mode})
                r.update(section="sync", round=rnd, sync=mode,
                         connections=conns)
                runs.append(r)
                print(f"  EVENT_SYNC={mode:4} c={conns:<3}", end="")
                print_run(r)
    latency = fdatasync_latency(args.workdir)
    print(f"fdatasync: median {latency['p50_us']:.0f} µs, "
          f"p99 {latency['p99_us']:.0f} µs", flush=True)
    return runs, latency
