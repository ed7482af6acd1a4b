#!/usr/bin/env bash
# Bounded soak of the api under mixed load, reporting its resident memory (RSS), open file
# descriptors and threads over time. Not part of CI: it runs for minutes, not seconds.
#
#   scripts/soak.sh                         3 minutes, a sample every 10 s
#   scripts/soak.sh --duration 600 --interval 15
#   API_BIN=target/release/api scripts/soak.sh      (use that binary; no build)
#
# The load, all on 127.0.0.1 and all bounded by --duration: kept-alive POST /events of mixed
# sizes, GET / and /health, slowloris clients (cut at HEADER_TIMEOUT=2s), clients that vanish
# mid-request (FIN and RST), malformed requests, bodies over the limit (413), and a
# logrotate-style rename + SIGHUP every 30 s (each rotated file is checked line by line, then
# deleted, so the disk use stays small). After the load it waits for the connections to
# close, sends SIGTERM and checks the exit.
#
# Verdict (exit status): 0 when RSS drift (end of load minus the first sample after warm-up)
# stays under --max-rss-drift-kib (default 8192), the open descriptors return to the
# baseline once idle, no answer was a 5xx, no log line was torn and the exit was 0;
# 1 otherwise; 2 for a setup error. The samples are also written as CSV to target/soak/.
# Needs python3 (standard library only) and, without API_BIN, cargo.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ -z "${API_BIN:-}" ]]; then
  cargo build --release --quiet
  API_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/api"
fi
[[ -x "$API_BIN" ]] || cannot_run "no executable at $API_BIN"
command -v python3 >/dev/null || cannot_run "python3 is needed"
out_dir="${CARGO_TARGET_DIR:-$repo/target}/soak"
mkdir -p "$out_dir"

exec python3 - "$API_BIN" "$out_dir" "$@" <<'PY'
import argparse, asyncio, json, os, random, shutil, signal, socket, struct, subprocess, sys, tempfile, threading, time

p = argparse.ArgumentParser(prog="scripts/soak.sh")
p.add_argument("bin")
p.add_argument("out_dir")
p.add_argument("--duration", type=float, default=180, help="seconds of load (default 180)")
p.add_argument("--interval", type=float, default=10, help="seconds between samples (default 10)")
p.add_argument("--max-rss-drift-kib", type=int, default=8192)
a = p.parse_args()
assert 10 <= a.duration <= 6 * 3600, "--duration must be 10 s to 6 h"

work = tempfile.mkdtemp(prefix="api-soak-")
log = os.path.join(work, "logs", "api.log")
env = dict(os.environ, HOST="127.0.0.1", PORT="0", LOG_FILE=log, HEADER_TIMEOUT="2s",
           BODY_TIMEOUT="2s", IDLE_TIMEOUT="5s", MAX_CONNECTIONS="512", GRACE="5s")
proc = subprocess.Popen([a.bin], env=env, cwd=work, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def cleanup():
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(work, ignore_errors=True)

addr = None
deadline = time.time() + 10
while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
        break
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if rec.get("msg") == "listening":
        addr = rec["addr"]
        break
if addr is None:
    cleanup()
    sys.exit("soak: the api did not start listening")
host, port = addr.rsplit(":", 1)
port = int(port)
def drain_stderr():
    # Keep reading, so the api never blocks on a full pipe.
    for _ in proc.stderr:
        pass
threading.Thread(target=drain_stderr, daemon=True).start()

pid = proc.pid
def proc_sample():
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(next(l.split()[1] for l in status.splitlines() if l.startswith(k + ":")))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return field("VmRSS"), fds, field("Threads")

counts = {}
def count(key):
    counts[key] = counts.get(key, 0) + 1
stop = asyncio.Event()

async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return status, body

async def keepalive_client(kind, n):
    rng = random.Random(n)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for _ in range(rng.randint(20, 400)):
                if stop.is_set():
                    break
                if kind == "events":
                    data = "x" * rng.choice([0, 10, 100, 1000, 8000])
                    body = json.dumps({"type": "soak.event", "data": {"n": n, "pad": data}}).encode()
                    req = (b"POST /events HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body)) + body
                else:
                    path = rng.choice([b"/", b"/health", b"/health", b"/nope"])
                    req = b"GET " + path + b" HTTP/1.1\r\nHost: soak\r\n\r\n"
                writer.write(req)
                status, _ = await asyncio.wait_for(read_response(reader), 10)
                count(status)
            writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            count("client-error")
            await asyncio.sleep(0.05)

async def slowloris():
    async def one():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            head = b"GET /health HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"y" * 200
            for b in head:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0.1)
            count("slowloris-not-cut")
        except (OSError, ConnectionError):
            count("slowloris-cut")
    tasks = set()
    while not stop.is_set():
        for _ in range(10):
            t = asyncio.ensure_future(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        await asyncio.sleep(1)
    for t in list(tasks):
        t.cancel()

async def vanish():
    rng = random.Random(7)
    body = b'{"type":"soak.vanish","data":"' + b"v" * 500 + b'"}'
    full = (b"POST /events HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(full[: rng.randint(0, len(full))])
            await writer.drain()
            await asyncio.sleep(rng.random() * 0.05)
            if rng.random() < 0.5:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            count("vanished")
        except OSError:
            count("client-error")
        await asyncio.sleep(0.02)

HOSTILE = [
    b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[[[[[",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe\",\"msg\":\"forged\r\n\r\n",
]

async def hostile():
    rng = random.Random(11)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(rng.choice(HOSTILE))
            try:
                status, _ = await asyncio.wait_for(read_response(reader), 5)
                count(status)
            except (asyncio.IncompleteReadError, ConnectionError):
                count("closed")
            writer.close()
        except (OSError, asyncio.TimeoutError):
            count("client-error")
        await asyncio.sleep(0.01)

torn_total = [0]
def check_file(path):
    torn = lines = 0
    with open(path, "rb") as f:
        for line in f:
            lines += 1
            try:
                json.loads(line)
            except ValueError:
                torn += 1
            if not line.endswith(b"\n"):
                torn += 1
    return lines, torn

async def rotate():
    k = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 30)
            return
        except asyncio.TimeoutError:
            pass
        k += 1
        rotated = f"{log}.{k}"
        os.rename(log, rotated)
        os.kill(pid, signal.SIGHUP)
        for _ in range(500):
            if os.path.exists(log):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # late records still land in the renamed file
        lines, torn = await asyncio.get_running_loop().run_in_executor(None, check_file, rotated)
        torn_total[0] += torn
        os.remove(rotated)
        count("rotations")

samples = []
def print_sample(t, phase):
    rss, fds, threads = proc_sample()
    samples.append((round(t, 1), phase, rss, fds, threads))
    served = sum(v for k, v in counts.items() if isinstance(k, int))
    print(f"{t:8.1f}  {phase:6} {rss:9d} {fds:5d} {threads:8d} {served:10d}", flush=True)

async def sampler(start):
    while not stop.is_set():
        print_sample(time.time() - start, "load")
        try:
            await asyncio.wait_for(stop.wait(), a.interval)
        except asyncio.TimeoutError:
            pass

async def main():
    start = time.time()
    print(f"soak: {a.bin} on {addr}, {a.duration:.0f} s of load, pid {pid}")
    print(f"{'t (s)':>8}  {'phase':6} {'RSS KiB':>9} {'fds':>5} {'threads':>8} {'answers':>10}")
    print_sample(0, "idle")
    tasks = [asyncio.ensure_future(c) for c in
             [keepalive_client("events", i) for i in range(16)]
             + [keepalive_client("reads", 100 + i) for i in range(8)]
             + [slowloris(), vanish(), hostile(), rotate(), sampler(start)]]
    await asyncio.sleep(a.duration)
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    print_sample(time.time() - start, "end")
    await asyncio.sleep(8)  # IDLE_TIMEOUT 5 s: kept-alive connections close
    print_sample(time.time() - start, "idle")

try:
    asyncio.run(main())
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    lines, torn = check_file(log) if os.path.exists(log) else (0, 0)
    torn_total[0] += torn
finally:
    cleanup()

csv = os.path.join(a.out_dir, time.strftime("soak-%Y%m%d-%H%M%S.csv"))
with open(csv, "w") as f:
    f.write("t_s,phase,rss_kib,fds,threads\n")
    for s in samples:
        f.write(",".join(map(str, s)) + "\n")

warm_at = min(30, a.duration / 4)
load = [s for s in samples if s[1] == "load"]
warm = next((s for s in load if s[0] >= warm_at), load[0] if load else samples[0])
end = [s for s in samples if s[1] == "end"][0]
base_fds = samples[0][3]
idle_fds = samples[-1][3]
rss_max = max(s[2] for s in samples)
drift = end[2] - warm[2]
fives = {k: v for k, v in counts.items() if isinstance(k, int) and k >= 500}
print()
print(f"answers by status: { {k: v for k, v in sorted(counts.items(), key=str)} }")
print(f"RSS: {warm[2]} KiB after warm-up (t={warm[0]} s), {end[2]} KiB at the end of the load, "
      f"max {rss_max} KiB: drift {drift:+d} KiB")
print(f"open fds: {base_fds} before the load, max {max(s[3] for s in samples)} during it, "
      f"{idle_fds} once idle; threads {samples[0][4]} -> {samples[-1][4]}")
print(f"log: {torn_total[0]} torn lines over {counts.get('rotations', 0)} rotations; exit {code}")
print(f"samples: {csv}")
problems = []
if drift > a.max_rss_drift_kib:
    problems.append(f"RSS grew {drift} KiB (> {a.max_rss_drift_kib})")
if idle_fds > base_fds + 2:
    problems.append(f"{idle_fds - base_fds} descriptors left open")
if fives:
    problems.append(f"5xx answers: {fives}")
if torn_total[0]:
    problems.append(f"{torn_total[0]} torn log lines")
if code != 0:
    problems.append(f"exit {code} after SIGTERM")
if counts.get("slowloris-not-cut"):
    problems.append(f"{counts['slowloris-not-cut']} slowloris clients were never cut")
print("verdict: " + ("flat" if not problems else "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
