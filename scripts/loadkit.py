"""What the load generators and verifiers under scripts/lb, scripts/multinode and
scripts/shipping share: their common options, the threaded paced load of lb and shipping
(multinode's is asyncio), the summary file, and the client address as the logs write it.

Not a script: each of them puts this directory on sys.path and imports it.
"""

import http.client
import ipaddress
import json
import os
import threading
import time

FORGED_CLIENT = "203.0.113.7"  # TEST-NET-3: never a real client


def add_run_options(ap, *, what, duration, most, conns, rate):
    """--out, --stop-file, --duration, --max-WHAT, --conns and --rate, with these defaults."""
    ap.add_argument("--out", required=True, help="JSON summary path")
    ap.add_argument("--stop-file", help="stop once this file exists")
    ap.add_argument("--duration", type=float, default=duration, help="seconds, at most")
    ap.add_argument(f"--max-{what}", type=int, default=most)
    ap.add_argument("--conns", type=int, default=conns)
    ap.add_argument("--rate", type=float, default=rate, help=f"{what} per second in all")


def write_json(path, data, **dump_args):
    """Writes data to path whole or not at all: a reader never sees half a summary."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, **dump_args)
    os.replace(path + ".tmp", path)


def unmapped(addr):
    """An IPv4 client as a.b.c.d also when a dual-stack listener wrote ::ffff:a.b.c.d."""
    try:
        ip = ipaddress.ip_address(addr)
    except (TypeError, ValueError):
        return addr
    return str(getattr(ip, "ipv4_mapped", None) or ip)


class KeepAlive:
    """One kept-alive HTTP/1.1 connection, opened when a request needs it and dropped when
    the server says Connection: close or the caller closes it after a failure."""

    def __init__(self, url, timeout):
        self.host, self.port, self.timeout = url.hostname, url.port, timeout
        self.conn = None

    def request(self, method, path, body, headers):
        """(status, body) of one request."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.request(method, path, body, headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.close()
        return resp.status, data

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class Run:
    """A load of CONNS threads sending at most RATE requests a second in all, until STOP_FILE
    exists, DURATION seconds have passed or MOST requests were sent; it counts the outcomes
    by key and keeps the failures with the time since the start."""

    def __init__(self, args, most):
        self.args, self.most = args, most
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.end = self.start + args.duration
        self.stop = threading.Event()
        self.sent = 0
        self.counts = {}
        self.failures = []
        self.interval = args.conns / args.rate if args.rate > 0 else 0

    def stopping(self):
        if not self.stop.is_set() and (
            time.monotonic() >= self.end
            or (self.args.stop_file and os.path.exists(self.args.stop_file))
        ):
            self.stop.set()
        return self.stop.is_set()

    def turns(self):
        """One thread's requests: yields the number of each (1, 2, ... over all threads) until
        the run stops, and keeps the thread to its share of the rate."""
        next_at = time.monotonic()
        while not self.stopping():
            with self.lock:
                if self.sent >= self.most:
                    self.stop.set()
                    break
                self.sent += 1
                n = self.sent
            yield n
            if self.interval:
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()

    def since(self):
        """Seconds since the start, to the millisecond."""
        return round(time.monotonic() - self.start, 3)

    def record(self, key, failure=None):
        """Counts one outcome; a failure (a list) is kept after the time since the start, and
        the thread pauses, so that it does not spin on a dead server."""
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            if failure is not None:
                self.failures.append([self.since()] + failure)
        if failure is not None:
            time.sleep(0.05)

    def threads(self, worker):
        """Runs worker(w) in CONNS threads, w = 0, 1, ..., and waits for them (each at most
        as long as the run, one request and a margin)."""
        threads = [threading.Thread(target=worker, args=(w,), daemon=True)
                   for w in range(self.args.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.args.duration + self.args.timeout + 5)

    def seconds(self):
        """Seconds since the start, to the hundredth."""
        return round(time.monotonic() - self.start, 2)
