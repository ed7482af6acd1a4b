#!/usr/bin/env bash
# Container tests against a real Docker engine: builds the image with compose, checks the
# image contract, runs the compose stack under its own project name and host port, and proves
# the runtime properties (routes from the host and from a sibling container, uid 10001,
# read-only root, logs on the host that survive restart and down/up, unhealthy on a full log
# disk, fast clean `docker stop`, restart after kill -9, first run by a normal user), and runs
# the plain `docker run` recipe of docs/deploy.md (its own network, --prepare-logs, the
# hardened run, a sibling calling it by container name, the log readable on the host) with the
# same flags.
# Prints PASS/FAIL per check, then "N passed, N failed"; exits 1 if any check failed.
# Removes its containers, networks, temp dirs, mounts and test user, even on failure.
#
# Usage: scripts/container-test.sh
# Needs: a Docker engine, docker-compose 1.29 or `docker compose` (COMPOSE="docker compose"),
# curl and python3 on the host. Run as root for the checks that need it (tmpfs mount,
# kill -9 of the container's process, a throwaway user); as non-root those are SKIPped,
# and under CI=true a SKIP counts as a failure.
# Environment (defaults in brackets):
#   BUILDER_IMAGE [rust:1.95-slim-bookworm]  Rust toolchain image passed to the build
#   CURL_IMAGE    [curlimages/curl:8.11.1]   image whose entrypoint is curl, for sibling calls
#   COMPOSE       [docker-compose]           compose command
#   DOCKER        [docker]                   docker CLI (BuildKit check uses DOCKER_BUILDKIT=1)
#   CT_PORT [18080], CT_USER_PORT [18081], CT_RUN_PORT [18082]
#                                            host ports, published on 127.0.0.1 only
#   CT_IMAGE [api:ctest]                     tag of the image under test (removed afterwards)
#   CT_BUILDKIT [1]                          also build with BuildKit (0 to skip)
#   CT_MAX_IMAGE_BYTES [1572864]             image size budget
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
CURL_IMAGE=${CURL_IMAGE:-curlimages/curl:8.11.1}
read -ra COMPOSE <<<"${COMPOSE:-docker-compose}"
DOCKER=${DOCKER:-docker}
PORT=${CT_PORT:-18080}
USER_PORT=${CT_USER_PORT:-18081}
RUN_PORT=${CT_RUN_PORT:-18082}  # the docker run recipe's
IMAGE=${CT_IMAGE:-api:ctest}
PROJECT=apictest$$            # compose project: containers, network and labels are ours alone
UPROJECT=${PROJECT}u          # the normal user's stack
RUN_NET=$PROJECT-net          # the docker run recipe's network and container
RUN_NAME=$PROJECT-api
TUSER=apictest                # throwaway normal user (root only), marked by its GECOS field
TUSER_MARK="api container test, throwaway"
# 1.5 MiB: issue 13 raised the budget from 1 MiB so the release profile can be opt-level 3
# (fewer instructions per request; figures in docs/performance.md).
MAX_IMAGE_BYTES=${CT_MAX_IMAGE_BYTES:-1572864}
GRACE_SECS=5                  # compose.yaml's GRACE
STOP_LIMIT=3                  # `docker stop` must take well under GRACE: at most this

WORK=$(mktemp -d /tmp/api-ctest.XXXXXX)
chmod 755 "$WORK"
DIR=$WORK/root/api            # the stack run as root, from a copy of the working tree
UDIR=$WORK/user/api           # the normal user's clone
mounted='' created_user='' images=()
is_root() { [ "$(id -u)" = 0 ]; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  note "cleanup"
  for p in "$PROJECT" "$UPROJECT"; do
    for c in $("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$p"); do
      "$DOCKER" rm -f "$c" >/dev/null
    done
    for n in $("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$p"); do
      "$DOCKER" network rm "$n" >/dev/null
    done
  done
  for c in $("$DOCKER" ps -aq --filter "label=api-ctest=$PROJECT"); do "$DOCKER" rm -f "$c" >/dev/null; done
  "$DOCKER" rm -f "$RUN_NAME" >/dev/null 2>&1
  "$DOCKER" network rm "$RUN_NET" >/dev/null 2>&1
  [ -n "$mounted" ] && umount "$mounted"
  rm -rf "$WORK"
  [ -n "$created_user" ] && userdel -r "$TUSER" 2>/dev/null
  # --no-prune keeps the untagged build layers, so the next run's build is cached.
  for i in "${images[@]}"; do "$DOCKER" rmi --no-prune "$i" >/dev/null 2>&1; done
  exit_with_report "$rc"
}
on_exit cleanup

# ---- helpers -------------------------------------------------------------------------------

# compose for the root stack, with the environment compose.yaml reads
dc() { API_PUBLISH=127.0.0.1:$PORT compose "$@"; }
cid_of() { # container id of a service of project $1
  "$DOCKER" ps -aq --filter "label=com.docker.compose.project=$1" \
    --filter "label=com.docker.compose.service=$2" | head -n 1
}

# http METHOD URL [JSON]: sets CODE and BODY (curl on the host, loopback only)
http() {
  local args=(-sS --max-time 5 -o "$WORK/body" -w '%{http_code}' -X "$1")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
  CODE=$(curl "${args[@]}" "$2" 2>"$WORK/curl.err") || CODE="curl-failed:$(cat "$WORK/curl.err")"
  BODY=$(cat "$WORK/body" 2>/dev/null)
}
# sib METHOD URL [JSON]: the same from a sibling container on the stack's network
sib() {
  local args=(-sS --max-time 5 -w '\n%{http_code}' -X "$1")
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
  local out
  out=$(timeout 60 "$DOCKER" run --rm --label "api-ctest=$PROJECT" --network "${PROJECT}_backend" \
    --read-only --cap-drop ALL --security-opt no-new-privileges:true \
    "$CURL_IMAGE" "${args[@]}" "$2" 2>&1) || true
  CODE=$(tail -n 1 <<<"$out")
  BODY=$(sed '$d' <<<"$out")
}
is_json_with() { # is_json_with JSON PY_EXPR: the body parses and PY_EXPR(v) holds
  python3 -c "import json,sys; v=json.loads(sys.argv[1]); sys.exit(0 if ($2) else 1)" "$1" 2>/dev/null
}
expect() { # expect WHAT WANT_CODE PY_EXPR
  if [ "$CODE" = "$2" ] && is_json_with "$BODY" "$3"; then pass "$1"; else fail "$1: got $CODE $BODY"; fi
}
routes() { # routes CALLER LABEL: the three routes through `http` or `sib` against base URL $3
  local call=$1 label=$2 base=$3
  $call GET "$base/"
  expect "$label GET / is 200 JSON" 200 "isinstance(v, dict) and len(v) > 0"
  $call GET "$base/health"
  expect "$label GET /health is 200 {\"status\":\"ok\"}" 200 "v == {'status': 'ok'}"
  $call POST "$base/events" "{\"type\":\"ctest-$label\"}"
  expect "$label POST /events is 201" 201 "isinstance(v, dict)"
}
log_has() { grep -q "ctest-$2" "$1"; }   # log_has FILE TAG: an event record is in the file
all_json_lines() {
  python3 -c '
import json, sys
n = 0
for line in open(sys.argv[1]):
    assert isinstance(json.loads(line), dict); n += 1
assert n > 0' "$1" 2>/dev/null
}
prefix_kept() { # prefix_kept FILE SIZE SHA: the first SIZE bytes are unchanged (appended only)
  [ "$(head -c "$2" "$1" | sha256sum | cut -d' ' -f1)" = "$3" ] && [ "$(stat -c %s "$1")" -gt "$2" ]
}

# ---- 0. preflight --------------------------------------------------------------------------
note "preflight"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers ($DOCKER info)"
"${COMPOSE[@]}" version >/dev/null 2>&1 || die "${COMPOSE[*]} not found"
for tool in curl python3; do command -v "$tool" >/dev/null || die "$tool is needed on the host"; done
figure "engine $("$DOCKER" version -f '{{.Server.Version}}'); compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n 1)"
for p in "$PORT" "$USER_PORT" "$RUN_PORT"; do
  port_free "$p" || die "127.0.0.1:$p is in use (set CT_PORT / CT_USER_PORT / CT_RUN_PORT)"
done
"$DOCKER" image inspect "$CURL_IMAGE" >/dev/null 2>&1 || "$DOCKER" pull -q "$CURL_IMAGE" >/dev/null ||
  die "no curl image $CURL_IMAGE (set CURL_IMAGE)"

# The stack runs from a copy of the working tree (what a commit would hold) without logs/:
# the engine then creates ./logs root-owned, the harder first-run case.
copy_tree "$REPO" "$DIR" || die "copy the working tree"
rm -rf "$DIR/logs"

# ---- 1. build and image contract -----------------------------------------------------------
note "build (${COMPOSE[*]}: legacy builder for v1, BuildKit for v2)"
images+=("$IMAGE")
t0=$(now)
dc build --force-rm >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; die "compose build"; }
pass "compose build ($(secs "$t0" "$(now)")s)"

note "image contract"
inspect() { "$DOCKER" image inspect -f "$1" "$IMAGE"; }
check "user is 10001:10001" [ "$(inspect '{{.Config.User}}')" = 10001:10001 ]
check "workdir is /app" [ "$(inspect '{{.Config.WorkingDir}}')" = /app ]
check "entrypoint is exec-form [/api]" [ "$(inspect '{{json .Config.Entrypoint}}')" = '["/api"]' ]
check "exposes 8000/tcp" [ "$(inspect '{{json .Config.ExposedPorts}}')" = '{"8000/tcp":{}}' ]
check "healthcheck is exec-form /api --healthcheck" \
  [ "$(inspect '{{json .Config.Healthcheck.Test}}')" = '["CMD","/api","--healthcheck"]' ]
hc=$(inspect '{{with .Config.Healthcheck}}{{.Interval}} {{.Timeout}} {{.StartPeriod}} {{.Retries}}{{end}}')
check "healthcheck sets interval, timeout, start period, retries ($hc ns)" \
  bash -c "[ \$(wc -w <<<'$hc') = 4 ] && ! grep -qw 0 <<<'$hc'"
check "has org.opencontainers.image labels" \
  [ -n "$(inspect '{{index .Config.Labels "org.opencontainers.image.title"}}')" ]
size=$(inspect '{{.Size}}')
figure "image size: $size bytes ($(python3 -c "print(round($size/1048576, 3))") MiB)"
check "image size $size <= $MAX_IMAGE_BYTES bytes" [ "$size" -le "$MAX_IMAGE_BYTES" ]

# The image's own files (Docker adds /dev, /etc/hosts... to every container; ignore those).
tmpc=$("$DOCKER" create --label "api-ctest=$PROJECT" "$IMAGE")
"$DOCKER" export "$tmpc" | tar -tvf - >"$WORK/files"
"$DOCKER" rm "$tmpc" >/dev/null
own=$(awk '{print $6, $2}' "$WORK/files" | grep -vE '^(\.dockerenv|dev/|etc/|proc/|sys/)' | sort)
want=$(printf '%s\n' 'api root/root' 'app/ root/root' 'app/logs/ 10001/10001')
check "image holds only /api (root) and /app/logs (10001): no shell, no libc" [ "$own" = "$want" ]
[ "$own" = "$want" ] || printf '  %s\n' "$own"
check "no shell: running /bin/sh fails" \
  bash -c "! $DOCKER run --rm --label api-ctest=$PROJECT --entrypoint /bin/sh $IMAGE -c true >/dev/null 2>&1"
check "binary is static (runs with nothing else in the image)" \
  bash -c "$DOCKER run --rm --label api-ctest=$PROJECT --network none $IMAGE --version >/dev/null"

# Without log-init, a root-owned log directory: exit 1 with one line saying what to do.
mkdir -p "$WORK/rootlogs" && chmod 755 "$WORK/rootlogs"
out=$(timeout 30 "$DOCKER" run --rm --label "api-ctest=$PROJECT" --network none --read-only \
  -v "$WORK/rootlogs:/app/logs" "$IMAGE" 2>&1); code=$?
check "unwritable log dir: exit 1 naming uid 10001 and the fix (got $code)" \
  bash -c "[ $code = 1 ] && grep -q 'uid 10001' <<<\"\$1\" && grep -q 'prepare-logs' <<<\"\$1\"" _ "$out"
echo "  it said: $(tail -n 1 <<<"$out")"

# Compose v2 builds with BuildKit, v1 with the legacy builder: the Dockerfile must suit both.
# DOCKER_BUILDKIT=1 needs the buildx plugin from CLI 23 on; a 20.10 CLI has BuildKit built in.
if [ "${CT_BUILDKIT:-1}" = 1 ]; then
  cli_major=$("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
  if "$DOCKER" buildx version >/dev/null 2>&1 || [ "${cli_major:-99}" -lt 23 ]; then
    images+=("$IMAGE-buildkit")
    if DOCKER_BUILDKIT=1 timeout 1800 "$DOCKER" build -q --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
      -t "$IMAGE-buildkit" "$DIR" >"$WORK/bk.log" 2>&1; then
      bk=$("$DOCKER" image inspect -f '{{.Config.User}} {{.Size}}' "$IMAGE-buildkit")
      check "BuildKit build gives the same contract ($bk)" [ "$bk" = "10001:10001 $size" ]
    else
      tail -n 20 "$WORK/bk.log"; fail "BuildKit build (DOCKER_BUILDKIT=1 $DOCKER build)"
    fi
  else
    skip "BuildKit build: $DOCKER has no buildx plugin (set DOCKER to a CLI with BuildKit)"
  fi
fi

# ---- 2. the plain `docker run` recipe -------------------------------------------------------
# The commands of docs/deploy.md, "Without compose: docker run", flag for flag; only the image
# tag, the names, the host port and the curl image are this run's own. The log directory is made by
# the engine (root-owned), the case --prepare-logs is there for.
note "docker run recipe (network $RUN_NET, 127.0.0.1:$RUN_PORT)"
RUNDIR=$WORK/run
mkdir -p "$RUNDIR" && cp -a "$DIR/." "$RUNDIR/" && rm -rf "$RUNDIR/logs"
images+=("$IMAGE-run")
# Each step runs in $RUNDIR, so "$PWD/logs" is the recipe's ./logs.
if ! (cd "$RUNDIR" && timeout 1800 "$DOCKER" build -q --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
  -t "$IMAGE-run" .) >"$WORK/run-build.log" 2>&1; then
  tail -n 20 "$WORK/run-build.log"; fail "recipe: docker build"
elif ! "$DOCKER" network create "$RUN_NET" >/dev/null; then
  fail "recipe: docker network create $RUN_NET"
else
  out=$(cd "$RUNDIR" && timeout 60 "$DOCKER" run --rm --user 0:0 --cap-drop ALL --cap-add CHOWN \
    --cap-add FOWNER --network none -v "$PWD/logs:/app/logs" "$IMAGE-run" --prepare-logs 10001:10001 2>&1)
  code=$?
  check "recipe: --prepare-logs as a one-shot root container exits 0 ($out)" [ "$code" = 0 ]
  check "recipe: ./logs then belongs to 10001:10001, mode 755" \
    [ "$(stat -c '%u:%g %a' "$RUNDIR/logs" 2>/dev/null)" = "10001:10001 755" ]
  (cd "$RUNDIR" && timeout 60 "$DOCKER" run -d --name "$RUN_NAME" --user 10001:10001 --read-only \
    --cap-drop ALL --security-opt no-new-privileges:true -v "$PWD/logs:/app/logs" \
    --network "$RUN_NET" -p "127.0.0.1:$RUN_PORT:8000" "$IMAGE-run" >/dev/null)
  check "recipe: the service starts" [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$RUN_NAME" 2>/dev/null)" = true ]
  check "recipe: healthy" wait_health "$RUN_NAME" healthy 60
  out=$(timeout 60 "$DOCKER" run --rm --network "$RUN_NET" "$CURL_IMAGE" -s "http://$RUN_NAME:8000/health" 2>&1)
  check "recipe: a sibling container gets {\"status\":\"ok\"} from http://$RUN_NAME:8000/health (got $out)" \
    [ "$out" = '{"status":"ok"}' ]
  # Access records reach the file within 200 ms; the probes of --healthcheck are not logged
  # at info, so an access record for /health is the sibling's.
  for ((i = 0; i < 20; i++)); do
    grep -q '"msg":"access".*"path":"/health"' "$RUNDIR/logs/api.log" 2>/dev/null && break
    sleep 0.2
  done
  if is_root && command -v setpriv >/dev/null; then
    check "recipe: an unprivileged host uid (65534) reads the sibling's request in logs/api.log" \
      setpriv --reuid 65534 --regid 65534 --clear-groups grep -q '"msg":"access".*"path":"/health"' "$RUNDIR/logs/api.log"
  else
    check "recipe: the host reads the sibling's request in logs/api.log" \
      grep -q '"msg":"access".*"path":"/health"' "$RUNDIR/logs/api.log"
  fi
  http GET "http://127.0.0.1:$RUN_PORT/health"
  expect "recipe: GET /health from the host on 127.0.0.1:$RUN_PORT" 200 "v == {'status': 'ok'}"
  check "recipe: port published on 127.0.0.1 only" \
    [ "$("$DOCKER" port "$RUN_NAME" 8000/tcp | sort -u)" = "127.0.0.1:$RUN_PORT" ]
fi
"$DOCKER" rm -f "$RUN_NAME" >/dev/null 2>&1
"$DOCKER" network rm "$RUN_NET" >/dev/null 2>&1

# ---- 3. compose up, healthy ----------------------------------------------------------------
note "compose up (project $PROJECT, 127.0.0.1:$PORT)"
t0=$(now)
dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; dc logs --no-color | tail -n 20; die "compose up"; }
API=$(cid_of "$PROJECT" api)
[ -n "$API" ] || die "no api container"
wait_health "$API" healthy 60 || { dc logs --no-color | tail -n 20; die "api healthy within 60s"; }
t_healthy=$(secs "$t0" "$(now)")
pass "api healthy after up"
figure "up -> healthy: ${t_healthy}s (healthcheck interval 5s)"
INIT=$(cid_of "$PROJECT" log-init)
check "log-init ran once and exited 0" [ "$("$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$INIT")" = "exited 0" ]
echo "  log-init said: $("$DOCKER" logs "$INIT" 2>&1 | tail -n 1)"

# ---- 4. routes from the host and from a sibling container ----------------------------------
note "routes"
routes http host "http://127.0.0.1:$PORT"
routes sib sibling "http://api:8000"
check "port published on 127.0.0.1 only" \
  [ "$("$DOCKER" port "$API" 8000/tcp | sort -u)" = "127.0.0.1:$PORT" ]

# ---- 5. process: uid, capabilities, read-only root -----------------------------------------
note "process"
check "root filesystem is read-only (HostConfig)" [ "$("$DOCKER" inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$API")" = true ]
pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$API")
if [ -r "/proc/$pid/status" ]; then
  check "process runs as uid/gid 10001" \
    [ "$(awk '/^Uid:|^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status" | sort -u)" = "10001 10001 10001 10001" ]
  check "process has no capabilities" grep -qE '^CapEff:\s+0+$' "/proc/$pid/status"
  check "process has no_new_privs" grep -qE '^NoNewPrivs:\s+1$' "/proc/$pid/status"
  check "process sees / mounted read-only" \
    bash -c "awk '\$5 == \"/\" {print \$6}' /proc/$pid/mountinfo | grep -qE '(^|,)ro(,|$)'"
else
  skip "process uid/caps/mounts (cannot read /proc/$pid)"
fi
check "docker top shows uid 10001" bash -c "$DOCKER top $API -o pid,uid,comm | grep -qE '^[0-9]+ +10001 +api$'"

# The container-level checks of the CIS Docker Benchmark, as docker-bench-security's sections
# 4 and 5 run them (scripts/cis-container.py says which and why the others are left out).
note "CIS Docker Benchmark, container checks"
# A crash prints no verdict, or fewer than it should: no verdict at all, or a non-zero exit
# without a FAIL line, is a failure of its own.
cis_rc=0
DOCKER="$DOCKER" python3 "$REPO/scripts/cis-container.py" "$API" >"$WORK/cis.out" || cis_rc=$?
cis_verdicts=0 cis_fails=0
while IFS=$'\t' read -r verdict what; do
  cis_verdicts=$((cis_verdicts + 1))
  if [ "$verdict" = PASS ]; then pass "CIS $what"; else fail "CIS $what"; cis_fails=$((cis_fails + 1)); fi
done <"$WORK/cis.out"
if [ "$cis_verdicts" -eq 0 ]; then
  fail "CIS: scripts/cis-container.py gave no verdict (exit $cis_rc)"
elif [ "$cis_rc" -ne 0 ] && [ "$cis_fails" -eq 0 ]; then
  fail "CIS: scripts/cis-container.py exited $cis_rc without a FAIL line"
fi

# ---- 6. logs on the host -------------------------------------------------------------------
note "logs on the host"
LOG=$DIR/logs/api.log
check "./logs/api.log exists on the host" [ -f "$LOG" ]
check "host and sibling events are in ./logs/api.log" bash -c "grep -q ctest-host '$LOG' && grep -q ctest-sibling '$LOG'"
check "every log line is a JSON object" all_json_lines "$LOG"
check "log is 0644 in a 0755 directory" [ "$(stat -c %a "$LOG") $(stat -c %a "$DIR/logs")" = "644 755" ]
if is_root && command -v setpriv >/dev/null; then
  check "an unprivileged host uid (65534) can read it" \
    setpriv --reuid 65534 --regid 65534 --clear-groups grep -q ctest-host "$LOG"
else
  skip "read the log as another uid (needs root and setpriv)"
fi

size0=$(stat -c %s "$LOG"); sha0=$(head -c "$size0" "$LOG" | sha256sum | cut -d' ' -f1)
dc restart >"$WORK/restart.log" 2>&1 || { cat "$WORK/restart.log"; fail "compose restart"; }
CODE=none
wait_health "$API" healthy 60 && http POST "http://127.0.0.1:$PORT/events" '{"type":"ctest-after-restart"}'
check "after compose restart: healthy, event 201 ($CODE)" [ "$CODE" = 201 ]
check "after compose restart: log appended, not truncated" bash -c "$(declare -f prefix_kept); prefix_kept '$LOG' $size0 $sha0 && grep -q ctest-after-restart '$LOG'"

size0=$(stat -c %s "$LOG"); sha0=$(head -c "$size0" "$LOG" | sha256sum | cut -d' ' -f1)
dc down >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "compose down"; }
dc up -d >"$WORK/up2.log" 2>&1 || { cat "$WORK/up2.log"; die "compose up after down"; }
OLD=$API; API=$(cid_of "$PROJECT" api)
# shellcheck disable=SC2016  # expanded by the inner bash
check "down + up made a new container" bash -c '[ -n "$1" ] && [ "$1" != "$2" ]' _ "$API" "$OLD"
CODE=none
wait_health "$API" healthy 60 && http POST "http://127.0.0.1:$PORT/events" '{"type":"ctest-after-down-up"}'
check "after down + up: healthy, event 201 ($CODE)" [ "$CODE" = 201 ]
check "after down + up: log appended, not truncated" bash -c "$(declare -f prefix_kept); prefix_kept '$LOG' $size0 $sha0 && grep -q ctest-after-down-up '$LOG'"

# ---- 7. docker stop: fast and clean; kill -9: restarted ------------------------------------
note "stop and crash"
t0=$(now)
"$DOCKER" stop "$API" >/dev/null
t_stop=$(secs "$t0" "$(now)")
figure "docker stop: ${t_stop}s (GRACE ${GRACE_SECS}s, stop_grace_period 10s)"
check "docker stop took ${t_stop}s <= ${STOP_LIMIT}s" python3 -c "import sys; sys.exit(0 if $t_stop <= $STOP_LIMIT else 1)"
check "exit code after SIGTERM is 0" [ "$("$DOCKER" inspect -f '{{.State.ExitCode}} {{.State.OOMKilled}}' "$API")" = "0 false" ]
check "the log records SIGTERM and the drain" \
  bash -c "tail -n 5 '$LOG' | grep 'shutdown requested' | grep -q SIGTERM && tail -n 5 '$LOG' | grep -q drained"

"$DOCKER" start "$API" >/dev/null && wait_health "$API" healthy 60
if is_root; then
  restarts0=$("$DOCKER" inspect -f '{{.RestartCount}}' "$API")
  pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$API")
  kill -KILL "$pid"
  ok=''
  for ((i = 0; i < 60; i++)); do
    read -r count running npid < <("$DOCKER" inspect -f '{{.RestartCount}} {{.State.Running}} {{.State.Pid}}' "$API")
    if [ "$count" -gt "$restarts0" ] && [ "$running" = true ] && [ "$npid" != "$pid" ]; then ok=1; break; fi
    sleep 0.5
  done
  check "kill -9 of the process: restarted by the restart policy" [ -n "$ok" ]
  check "healthy again after the crash" wait_health "$API" healthy 60
else
  skip "kill -9 from the host (needs root)"
fi

# ---- 8. unhealthy when the log cannot be written -------------------------------------------
# A real failure: ./logs on a 256 KiB tmpfs that the test fills; writes get ENOSPC.
note "unhealthy on a full log disk"
if is_root; then
  dc down >/dev/null 2>&1
  mkdir -p "$DIR/logs"
  mount -t tmpfs -o size=256k,mode=0755 ctest-logs "$DIR/logs" && mounted=$DIR/logs
  dc up -d >"$WORK/up3.log" 2>&1 || { cat "$WORK/up3.log"; die "compose up on tmpfs"; }
  API=$(cid_of "$PROJECT" api)
  wait_health "$API" healthy 60 || die "healthy on the tmpfs log dir"
  dd if=/dev/zero of="$DIR/logs/fill" bs=4k >/dev/null 2>&1   # stops at ENOSPC
  # The log's last page may still have room: post until a write fails (bounded).
  for ((i = 0; i < 100; i++)); do
    http POST "http://127.0.0.1:$PORT/events" '{"type":"ctest-disk-full"}'
    [ "$CODE" != 201 ] && break
  done
  check "POST /events fails when the disk is full (got $CODE, not 201)" [ "$CODE" != 201 ]
  http GET "http://127.0.0.1:$PORT/health"
  check "GET /health is 503 when the log cannot be written ($CODE)" [ "$CODE" = 503 ]
  t0=$(now)
  check "container turns unhealthy" wait_health "$API" unhealthy 45
  figure "failure -> unhealthy: $(secs "$t0" "$(now)")s (interval 5s x retries 3)"
  rm -f "$DIR/logs/fill"
  check "healthy again once space returns" wait_health "$API" healthy 45
  dc down >/dev/null 2>&1
  umount "$DIR/logs" && mounted=''
else
  skip "unhealthy on a full disk (needs root to mount a tmpfs)"
fi

# ---- 9. first run by a normal user ---------------------------------------------------------
# A fresh user in the docker group clones the repo and runs compose, nothing else: the
# clone's logs/ is theirs (uid 10001 cannot write to it) until log-init hands it over.
note "first run as a normal user"
if ! is_root; then
  skip "first run as a normal user (needs root to create the user)"
else
  sock_group=$(stat -c %G /var/run/docker.sock)
  if ! id "$TUSER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash -c "$TUSER_MARK" -G "$sock_group" "$TUSER" || die "useradd $TUSER"
  fi
  [ "$(getent passwd "$TUSER" | cut -d: -f5)" = "$TUSER_MARK" ] || die "user $TUSER exists and is not ours"
  created_user=1
  uhome=$(getent passwd "$TUSER" | cut -d: -f6)
  # git refuses a repository owned by someone else unless it is marked safe (the clone
  # source belongs to root here; a real user clones from a server).
  printf '[safe]\n\tdirectory = %s\n\tdirectory = %s\n' "$REPO" "$(git -C "$REPO" rev-parse --absolute-git-dir)" \
    >"$uhome/.gitconfig" && chown "$TUSER:" "$uhome/.gitconfig"
  as_user() { runuser -u "$TUSER" -- env -i HOME="$uhome" PATH="$PATH" "$@"; }
  mkdir -p "$WORK/user" && chown "$TUSER:" "$WORK/user"
  if [ -n "$(cd "$REPO" && git status --porcelain)" ]; then
    echo "  NOTE: the working tree has uncommitted changes; the user clones HEAD"
  fi
  as_user git clone -q "$REPO" "$UDIR" || die "clone as $TUSER"
  check "the clone's logs/ belongs to $TUSER" [ "$(stat -c %U "$UDIR/logs")" = "$TUSER" ]
  ucompose() {
    (cd "$UDIR" && as_user BUILDER_IMAGE="$BUILDER_IMAGE" API_IMAGE="$IMAGE-user" \
      API_PUBLISH="127.0.0.1:$USER_PORT" timeout 1800 "${COMPOSE[@]}" -p "$UPROJECT" "$@")
  }
  images+=("$IMAGE-user")
  t0=$(now)
  if ucompose up -d --build >"$WORK/uup.log" 2>&1; then
    UAPI=$(cid_of "$UPROJECT" api)
    if wait_health "$UAPI" healthy 90; then
      pass "$TUSER: up -d --build gives a healthy container ($(secs "$t0" "$(now)")s incl. build)"
      http POST "http://127.0.0.1:$USER_PORT/events" '{"type":"ctest-normal-user"}'
      check "$TUSER: event accepted (201)" [ "$CODE" = 201 ]
      check "$TUSER: can read logs/api.log without sudo" as_user grep -q ctest-normal-user "$UDIR/logs/api.log"
    else
      fail "$TUSER: container healthy"; ucompose logs --no-color | tail -n 20
    fi
  else
    tail -n 20 "$WORK/uup.log"; fail "$TUSER: compose up -d --build"
  fi
  ucompose down >/dev/null 2>&1
fi
