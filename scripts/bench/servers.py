"""One server process (the api, the bare hyper server or nginx) for one measured run: start it, time
its first 200, stop it gracefully; and the small HTTP/1.1 readers used to
probe it."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from procs import free_port, popen, set_affinity

HERE = os.path.dirname(os.path.abspath(__file__))


class ServerFailed(Exception):
    """A run could not be measured: the server or the load generator failed."""


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


class Server:
    """One server process (api, bare or nginx) started for one measured run."""

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
        if kind == "bare":
            self.env = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port),
                            WORKERS=str(workers))
            self.argv = list(wrapper) + [variant["binary"]]
            self.stop_signal = signal.SIGTERM
        elif kind == "api":
            self.log_path = os.path.join(self.dir, "api.log")
            env = dict(os.environ)
            env.update(
                HOST="127.0.0.1",
                PORT=str(self.port),
                LOG_FILE=self.log_path,
                LOG_LEVEL=variant["log_level"],
                WORKERS=str(workers),
            )
            env.update(variant.get("env", {}))
            env.update(extra_env or {})
            self.argv = list(wrapper) + [variant["binary"]]
            self.env = env
            self.stop_signal = signal.SIGTERM
        elif kind == "nginx":
            access = "off"
            if variant["access_log"]:
                self.log_path = os.path.join(self.dir, "access.log")
                access = self.log_path
            conf_in = variant.get("conf", "nginx.conf.in")
            with open(os.path.join(HERE, conf_in)) as f:
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
