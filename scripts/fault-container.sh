#!/usr/bin/env bash
# Container-level faults against the api image, each under load, with every acknowledged
# event accounted for:
#   1. kill -9 of the container's process (PID 1) while clients post events: the restart
#      policy brings it back healthy, the log keeps growing, every 201 is in the log once and
#      no line is torn;
#   2. `docker stop` of a busy container: exit 0 within the grace period, no acknowledged
#      event lost, no torn line;
#   3. a full disk: /app/logs is a 256 KiB tmpfs; events answer 503 (never 201 without a
#      record), the container turns unhealthy, and once space returns it is healthy and
#      accepting events again without a restart.
# Prints PASS/FAIL per check and "N passed, N failed"; exits 1 if any check failed, 2 if it
# cannot run. Self-contained: its own network, containers and temp dirs (all named
# apifault<pid>), host ports on 127.0.0.1 only, removed on exit however it exits.
#
# Usage: scripts/fault-container.sh [IMAGE]        (default api:fault; must exist)
# Build the image first, e.g. `docker build -t api:fault .` (add --build-arg
# BUILDER_IMAGE=... where no registry is reachable). Needs root (kill -9 of the container's
# process, writing into its tmpfs through /proc), a Docker engine, curl and python3.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE=${1:-api:fault}
DOCKER=${DOCKER:-docker}
NAME=apifault$$
WORK=$(mktemp -d /tmp/apifault.XXXXXX)
containers=()

cleanup() {
  trap - EXIT INT TERM HUP
  for c in "${containers[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
  "$DOCKER" network rm "$NAME" >/dev/null 2>&1
  rm -rf "$WORK"
}
on_exit cleanup

[ "$(id -u)" = 0 ] || cannot_run "run as root (kill -9 of PID 1 in the container, /proc/<pid>/root)"
command -v curl >/dev/null || cannot_run "needs curl and python3"
command -v python3 >/dev/null || cannot_run "needs curl and python3"
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || cannot_run "no image $IMAGE: build it first"
"$DOCKER" network create "$NAME" >/dev/null || cannot_run "cannot create network $NAME"

state() { "$DOCKER" inspect -f "$1" "$2" 2>/dev/null; }
host_pid() { state '{{.State.Pid}}' "$1"; }

# The load: CONCURRENCY threads post events on kept-alive connections for DURATION seconds
# (reconnecting across restarts), writing each acknowledged event id to OUT, one per line.
cat >"$WORK/load.py" <<'PY'
import http.client, json, sys, threading, time
port, tag, out, duration, conc = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
lock = threading.Lock()
ids, statuses = [], {}
def worker(w):
    end = time.time() + duration
    n = 0
    conn = None
    while time.time() < end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = json.dumps({"type": tag, "data": {"w": w, "n": n, "pad": "p" * ((w * 131 + n * 17) % 3000)}})
            conn.request("POST", "/events", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            with lock:
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
                if r.status == 201:
                    ids.append(json.loads(data)["id"])
            n += 1
        except Exception:
            with lock:
                statuses["error"] = statuses.get("error", 0) + 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)
threads = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
for t in threads: t.start()
for t in threads: t.join()
with open(out, "w") as f:
    f.write("\n".join(ids) + ("\n" if ids else ""))
print("  load %s: %s" % (tag, json.dumps(statuses, sort_keys=True, default=str)), file=sys.stderr)
PY

# Checks a log against acknowledged ids: every id there exactly once, no torn line.
cat >"$WORK/check.py" <<'PY'
import json, sys
log, acked_files = sys.argv[1], sys.argv[2:]
acked = [l.strip() for f in acked_files for l in open(f) if l.strip()]
raw = open(log, "rb").read()
counts, torn, lines = {}, 0, 0
for line in raw.split(b"\n"):
    if not line:
        continue
    lines += 1
    try:
        rec = json.loads(line)
    except ValueError:
        torn += 1
        continue
    if rec.get("msg") == "event":
        counts[rec["id"]] = counts.get(rec["id"], 0) + 1
if raw and not raw.endswith(b"\n"):
    torn += 1
missing = [i for i in acked if i not in counts]
doubled = [i for i, n in counts.items() if n > 1]
print("  log: %d lines, %d events; %d acknowledged, %d missing, %d logged twice, %d torn lines"
      % (lines, len(counts), len(acked), len(missing), len(doubled), torn), file=sys.stderr)
sys.exit(0 if acked and not missing and not doubled and not torn else 1)
PY

run() { # name port log-volume-args... ; starts a container of the image
  local c=$1 port=$2; shift 2
  containers+=("$c")
  "$DOCKER" run -d --name "$c" --network "$NAME" -p "127.0.0.1:$port:8000" "$@" "$IMAGE" >/dev/null
}
lines_of() { wc -l <"$1" 2>/dev/null || echo 0; }

# ---- 1. kill -9 under load, restart policy -----------------------------------------------
echo "== kill -9 of PID 1 under load (restart: unless-stopped)"
c=$NAME-kill port=$(free_port) logs=$WORK/kill
mkdir -p "$logs" && chown 10001:10001 "$logs"
if run "$c" "$port" --restart unless-stopped -v "$logs:/app/logs" && wait_health "$c" healthy 30; then
  python3 "$WORK/load.py" "$port" kill "$WORK/kill.acked" 12 8 &
  load=$!
  sleep 3
  before=$(lines_of "$logs/api.log")
  restarts=$(state '{{.RestartCount}}' "$c")
  kill -9 "$(host_pid "$c")"
  sleep 2
  check "restart policy restarted it after kill -9" \
    test "$(state '{{.RestartCount}}' "$c")" -gt "$restarts"
  check "healthy again after the restart" wait_health "$c" healthy 30
  wait "$load"
  after=$(lines_of "$logs/api.log")
  check "the log kept growing after the restart ($before -> $after lines)" test "$after" -gt "$before"
  check "every acknowledged event in the log once, no torn line" \
    python3 "$WORK/check.py" "$logs/api.log" "$WORK/kill.acked"
else
  fail "kill: the container did not become healthy"
fi

# ---- 2. docker stop on a busy container --------------------------------------------------
echo "== docker stop under load"
c=$NAME-stop port=$(free_port) logs=$WORK/stop
mkdir -p "$logs" && chown 10001:10001 "$logs"
if run "$c" "$port" -e GRACE=5s -v "$logs:/app/logs" && wait_health "$c" healthy 30; then
  python3 "$WORK/load.py" "$port" stop "$WORK/stop.acked" 6 8 &
  load=$!
  sleep 3
  t0=$(date +%s.%N)
  "$DOCKER" stop -t 15 "$c" >/dev/null
  took=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
  wait "$load"
  check "docker stop exits 0 (took ${took}s)" test "$(state '{{.State.ExitCode}}' "$c")" = 0
  check "stopped within the 5 s grace period plus margin" python3 -c "import sys; sys.exit($took >= 10)"
  check "every acknowledged event in the log once, no torn line" \
    python3 "$WORK/check.py" "$logs/api.log" "$WORK/stop.acked"
  check "the shutdown was logged" grep -q '"msg":"drained; shutting down"' "$logs/api.log"
else
  fail "stop: the container did not become healthy"
fi

# ---- 3. disk full: /app/logs on a 256 KiB tmpfs ------------------------------------------
echo "== full disk (tmpfs at /app/logs)"
c=$NAME-full port=$(free_port)
if run "$c" "$port" --tmpfs /app/logs:rw,size=256k,uid=10001,gid=10001,mode=0755 &&
  wait_health "$c" healthy 30; then
  dir=/proc/$(host_pid "$c")/root/app/logs
  head -c $((192 * 1024)) /dev/zero >"$dir/filler" 2>/dev/null
  python3 "$WORK/load.py" "$port" full "$WORK/full.acked" 4 4 2>"$WORK/full.load"
  cat "$WORK/full.load" >&2
  check "events answered 201 then 503, nothing else" \
    python3 -c "import json,sys; s=json.loads(open('$WORK/full.load').read().split(': ',1)[1]); sys.exit(not (s.get('201') and s.get('503') and set(s) <= {'201','503'}))"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
  check "/health answers 503 on the full disk (got $code)" test "$code" = 503
  check "the container turns unhealthy" wait_health "$c" unhealthy 40
  cp "$dir/api.log" "$WORK/full.log"
  check "every 201 has its record, no torn line" python3 "$WORK/check.py" "$WORK/full.log" "$WORK/full.acked"
  started=$(state '{{.State.StartedAt}}' "$c")
  rm -f "$dir/filler"
  check "healthy again once space returns" wait_health "$c" healthy 40
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"type":"after.space"}' "http://127.0.0.1:$port/events")
  check "events accepted again (got $code)" test "$code" = 201
  check "without a restart" test "$(state '{{.State.StartedAt}}' "$c")" = "$started"
else
  fail "full: the container did not become healthy"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
