#!/usr/bin/env bash
# Docker Swarm test of deploy/swarm/stack.yaml: a single-node swarm, the stack deployed by
# image ID (no registry needed) and with no published port, load sent to nginx from inside
# the nginx task's own network namespace, then
#   1. a forced rolling update of all 3 replicas under that load: 0 failed requests (no
#      refused, reset or timed-out connection, no 5xx), every 201 event in the log files
#      exactly once, no request written twice, 0 torn lines, and the access records naming
#      the client rather than nginx;
#   2. a rollout of an image whose health check fails: Swarm rolls it back by itself while the
#      service keeps answering (0 failed requests again).
# Prints PASS/FAIL per check, the figures (requests, failures, update and rollback times),
# then "N passed, N failed"; exits 1 if a check failed, 2 if it cannot run. Leaves the swarm
# and removes its stack, volume, images and temp files however it exits.
#
# Usage: scripts/swarm-test.sh
# Needs: root (the log volume is read on the host; nsenter), a Docker engine that is not part
# of a swarm (the test makes one and leaves it afterwards), curl, nsenter (util-linux),
# python3 with PyYAML.
#
# No port is published. Swarm cannot bind a published port to one address (host mode and
# ingress alike listen on all interfaces), and the rule here is to publish on 127.0.0.1 only.
# So the test deploys a copy of deploy/swarm/stack.yaml with the `ports:` of every service
# removed, and runs curl and the load generator under `nsenter -t <nginx's PID> -n`: in the
# nginx container's network namespace, where 127.0.0.1:<nginx's listen port> is nginx itself
# and nothing else. The swarm's own ports (2377, 7946) listen on 127.0.0.1 (--listen-addr).
# Environment (defaults in brackets):
#   BUILDER_IMAGE [rust:1.95-slim-bookworm]  Rust toolchain image for building the api image
#   ST_IMAGE      [built from the Dockerfile] api image to deploy instead of building one
#   NGINX_IMAGE   [nginxinc/nginx-unprivileged:1.28-alpine]  the balancer's image
#   DOCKER        [docker]                   docker CLI
#   ST_RATE [800], ST_CONNS [8]              load: requests per second in all, connections
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lb/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lb/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
NGINX_IMAGE=${NGINX_IMAGE:-nginxinc/nginx-unprivileged:1.28-alpine}
DOCKER=${DOCKER:-docker}
RATE=${ST_RATE:-800}
CONNS=${ST_CONNS:-8}
STACK=apiswarm$$              # stack: services, network, config and volume are named after it
SERVICE=${STACK}_api
WORK=$(mktemp -d /tmp/api-swarm.XXXXXX)
images=() joined='' gwbridge_before='' load_pid='' NGINX_C='' NGINX_PID=''

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  note "cleanup"
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  if [ -n "$joined" ]; then
    timeout 60 "$DOCKER" stack rm "$STACK" >/dev/null 2>&1
    # The tasks' containers stop (DRAIN_DELAY + GRACE at most) before the volume is free.
    for ((i = 0; i < 60; i++)); do
      [ -z "$("$DOCKER" ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] && break
      sleep 1
    done
    "$DOCKER" volume rm "${STACK}_logs" >/dev/null 2>&1
    timeout 60 "$DOCKER" swarm leave --force >/dev/null && echo "left the swarm"
    # `swarm init` creates docker_gwbridge if it is missing; leaving does not remove it.
    [ -z "$gwbridge_before" ] && "$DOCKER" network rm docker_gwbridge >/dev/null 2>&1
  fi
  for i in "${images[@]}"; do "$DOCKER" rmi --no-prune "$i" >/dev/null 2>&1; done
  rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

svc() { "$DOCKER" service inspect -f "$1" "$SERVICE" 2>/dev/null; }
# Running tasks of the api service as "task-id image", one per line.
running_tasks() {
  "$DOCKER" service ps -q --filter desired-state=running "$SERVICE" 2>/dev/null |
    xargs -r "$DOCKER" inspect -f '{{if eq .Status.State "running"}}{{.ID}} {{.Spec.ContainerSpec.Image}}{{end}}' 2>/dev/null |
    sed '/^$/d'
}
# watch_update WANT... : polls the service once a second, for at most 240 s, until its update
# state is one of WANT; prints each new state with its time since $t0 and keeps that time in
# SEEN[state]; sets STATE. With BEFORE set (task ids), also sets T_REPLACED to the time when
# 3 tasks were running and none of them was in BEFORE.
declare -A SEEN
watch_update() {
  local i want tasks
  SEEN=() T_REPLACED=''
  for ((i = 0; i < 240; i++)); do
    STATE=$(svc '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')
    if [ -z "${SEEN[${STATE:-none}]:-}" ]; then
      SEEN[${STATE:-none}]=$(secs "$t0" "$(now)")
      echo "  ${SEEN[${STATE:-none}]}s: ${STATE:-no update yet}"
    fi
    if [ -n "${BEFORE:-}" ] && [ -z "$T_REPLACED" ]; then
      tasks=$(running_tasks | cut -d' ' -f1 | sort)
      if [ "$(wc -l <<<"$tasks")" = 3 ] && [ -z "$(comm -12 <(echo "$BEFORE") <(echo "$tasks"))" ]; then
        T_REPLACED=$(secs "$t0" "$(now)")
        echo "  ${T_REPLACED}s: 3 new tasks running"
      fi
    fi
    for want in "$@"; do [ "$STATE" = "$want" ] && return 0; done
    sleep 1
  done
  return 1
}
# find_nginx: sets NGINX_C and NGINX_PID to the one running container of the nginx task
# and its main process; fails unless there is exactly one and it runs.
find_nginx() {
  local c pid
  NGINX_C='' NGINX_PID=''
  c=$("$DOCKER" ps -q --no-trunc --filter "label=com.docker.swarm.service.name=${STACK}_nginx" --filter status=running)
  [ -n "$c" ] && [ "$(wc -l <<<"$c")" = 1 ] || return 1
  pid=$("$DOCKER" inspect -f '{{if .State.Running}}{{.State.Pid}}{{end}}' "$c" 2>/dev/null)
  [ "${pid:-0}" -gt 0 ] 2>/dev/null || return 1
  NGINX_C=$c NGINX_PID=$pid
}
# in_nginx CMD...: CMD in the network namespace of the nginx container found last (only the
# network namespace: files and programs are the host's). There 127.0.0.1 is nginx's own
# loopback, so 127.0.0.1:$LB_PORT is nginx and no port needs publishing.
in_nginx() { nsenter -t "$NGINX_PID" -n -- "$@"; }
# same_nginx WAS: the nginx task's container and its process are still WAS ("container pid").
# A container keeps its PID while it runs and Swarm replaces a task with a new container,
# so this means the traffic sent since WAS was taken all went to that one nginx.
same_nginx() { find_nginx && [ "$NGINX_C $NGINX_PID" = "$1" ]; }

# start_load TAG SECONDS: load.py in the background, inside the nginx task's network
# namespace, until $WORK/stop-TAG exists. Looks the nginx container up again first (were
# nginx ever updated, the load follows it); stop_load checks it stayed the same one.
start_load() {
  rm -f "$WORK/stop-$1"
  find_nginx || die "no running nginx task to send the load to"
  load_nginx="$NGINX_C $NGINX_PID"
  in_nginx python3 "$REPO/scripts/lb/load.py" --url "http://127.0.0.1:$LB_PORT" --tag "$1" \
    --out "$WORK/load-$1.json" --stop-file "$WORK/stop-$1" --duration "$2" \
    --rate "$RATE" --conns "$CONNS" &
  load_pid=$!
}
stop_load() {
  touch "$WORK/stop-$1"; wait "$load_pid"; load_pid=''
  check "the load went to one nginx container throughout (${load_nginx:0:12}, pid ${load_nginx#* })" same_nginx "$load_nginx"
  [ -f "$WORK/load-$1.json" ]
}

# nginx_retries: what nginx's log says about failed attempts since the last call.
nginx_seen=0
nginx_retries() {
  local n
  "$DOCKER" logs "$NGINX_C" >"$WORK/nginx.log" 2>&1
  n=$(wc -l <"$WORK/nginx.log")
  figure "nginx sent requests on to another replica after failed attempts: $(tail -n +"$((nginx_seen + 1))" "$WORK/nginx.log" | retries)"
  nginx_seen=$n
}

# ---- 0. preflight --------------------------------------------------------------------------
note "preflight"
[ "$(id -u)" = 0 ] || cannot_run "run as root (the replicas' log files are read from their volume on the host)"
for tool in curl nsenter python3; do command -v "$tool" >/dev/null || cannot_run "needs $tool"; done
python3 -c 'import yaml' 2>/dev/null || cannot_run "needs PyYAML (python3-yaml) to render the stack without ports"
"$DOCKER" info >/dev/null 2>&1 || cannot_run "no Docker engine answers ($DOCKER info)"
swarm_state=$("$DOCKER" info -f '{{.Swarm.LocalNodeState}}')
[ "$swarm_state" = inactive ] ||
  cannot_run "this engine is already in a swarm ($swarm_state); the test makes its own and leaves it afterwards, so it will not use one that may be someone else's"
"$DOCKER" image inspect "$NGINX_IMAGE" >/dev/null 2>&1 || timeout 300 "$DOCKER" pull -q "$NGINX_IMAGE" >/dev/null ||
  cannot_run "no nginx image $NGINX_IMAGE (set NGINX_IMAGE)"
"$DOCKER" network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge_before=1
figure "engine $("$DOCKER" version -f '{{.Server.Version}}')"

# The api image: ST_IMAGE, or built here from the project's Dockerfile.
if [ -n "${ST_IMAGE:-}" ]; then
  IMAGE=$ST_IMAGE
else
  IMAGE=$STACK:test
  images+=("$IMAGE")
  t0=$(now)
  timeout 1800 "$DOCKER" build -q --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" -t "$IMAGE" "$REPO" \
    >"$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log"; die "docker build"; }
  pass "api image built ($(secs "$t0" "$(now)")s)"
fi
GOOD=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE") || die "no image $IMAGE"
NGINX_ID=$("$DOCKER" image inspect -f '{{.Id}}' "$NGINX_IMAGE")

# A /24 for the overlay network that no network of this engine overlaps.
SUBNET=$(free_net24 10.213 90)
[ -n "$SUBNET" ] || cannot_run "no free /24 in 10.213.0.0/16 for the overlay network"
SUBNET=$SUBNET.0/24

# The stack as the test deploys it: deploy/swarm/stack.yaml without the `ports:` of any
# service, since a port Swarm publishes listens on every interface (see the top). Parsed
# with PyYAML rather than cut with sed, which would have to know the indentation, the long
# and short port syntaxes and the comments inside the block. A config's or secret's `file:`
# is relative to the stack file, so it is made absolute for the copy in $WORK. Prints the
# port nginx listens on (its published port's target), which the load then uses.
STACK_FILE=$WORK/stack.yaml
LB_PORT=$(python3 - "$REPO/deploy/swarm/stack.yaml" "$STACK_FILE" <<'PY'
import os, sys, yaml
src, dst = sys.argv[1:]
with open(src) as f:
    stack = yaml.safe_load(f)
target = None
for name, svc in stack["services"].items():
    for p in svc.pop("ports", None) or []:
        if name == "nginx":
            target = p["target"] if isinstance(p, dict) else str(p).split("/")[0].split(":")[-1]
for kind in ("configs", "secrets"):
    for item in (stack.get(kind) or {}).values():
        if item and "file" in item:
            item["file"] = os.path.join(os.path.dirname(os.path.abspath(src)), item["file"])
with open(dst, "w") as f:
    yaml.safe_dump(stack, f, sort_keys=False)
print(target or "")
PY
) || die "render the stack without ports"
[ -n "$LB_PORT" ] || die "the nginx service of deploy/swarm/stack.yaml names no port"
! grep -q '^ *ports:' "$STACK_FILE" || die "the rendered stack still publishes a port"

# ---- 1. swarm and stack ----------------------------------------------------------------------
note "swarm init, stack deploy ($STACK, no published port, nginx on its own 127.0.0.1:$LB_PORT, overlay $SUBNET)"
# --listen-addr: the swarm's own ports (2377, and 7946 for gossip) on 127.0.0.1 too; the
# default is 0.0.0.0:2377.
timeout 60 "$DOCKER" swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null || die "docker swarm init"
joined=1
deploy() {
  API_IMAGE=$1 NGINX_IMAGE=$NGINX_ID API_SUBNET=$SUBNET \
    timeout 120 "$DOCKER" stack deploy --resolve-image never -c "$STACK_FILE" "$STACK"
}
t0=$(now)
deploy "$GOOD" >"$WORK/deploy.log" 2>&1 || { cat "$WORK/deploy.log"; die "docker stack deploy"; }
ok=''
for ((i = 0; i < 120; i++)); do
  if [ "$(running_tasks | wc -l)" = 3 ] && find_nginx &&
    [ "$(in_nginx curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LB_PORT/health" 2>/dev/null)" = 200 ]; then
    ok=1; break
  fi
  sleep 1
done
[ -n "$ok" ] || { "$DOCKER" service ps --no-trunc "$SERVICE" | head; die "3 healthy replicas answering through nginx within 120s"; }
pass "3 replicas healthy and answering through nginx, from its network namespace ($(secs "$t0" "$(now)")s)"
ports=$(for s in api nginx; do "$DOCKER" service inspect -f '{{range .Endpoint.Ports}}{{.PublishedPort}} {{end}}' "${STACK}_$s"; done | xargs)
check "no service of the test stack publishes a port (${ports:-none})" [ -z "$ports" ]

LOGS=$("$DOCKER" volume inspect -f '{{.Mountpoint}}' "${STACK}_logs") || die "no volume ${STACK}_logs"
# nginx sees the load's connections coming from its own loopback.
CLIENT=127.0.0.1

spec=$(svc '{{json .Spec}}')
has() { python3 -c "import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if ($1) else 1)" "$spec"; }
check "endpoint mode dnsrr (no virtual IP, which needs IPVS)" has "s['EndpointSpec']['Mode'] == 'dnsrr'"
MONITOR=$(svc '{{.Spec.UpdateConfig.Monitor}}')
ROLLBACK_MONITOR=$(svc '{{.Spec.RollbackConfig.Monitor}}')
check "update: start-first, rollback on failure, with a monitor window" \
  has "(lambda u: u['Order'] == 'start-first' and u['FailureAction'] == 'rollback' and u['Monitor'] > 0)(s['UpdateConfig'])"
check "read-only root, all capabilities dropped" \
  has "s['TaskTemplate']['ContainerSpec'].get('ReadOnly') is True and s['TaskTemplate']['ContainerSpec'].get('CapabilityDrop') == ['ALL']"
check "CPU, memory and pids limits" \
  has "all(s['TaskTemplate']['Resources']['Limits'].get(k) for k in ('NanoCPUs', 'MemoryBytes', 'Pids'))"
# stop_grace_period against the deployed DRAIN_DELAY + GRACE (the service's defaults: 0, 5s).
grace_covers_drain() {
  python3 - "$spec" <<'PY'
import json, sys
c = json.loads(sys.argv[1])["TaskTemplate"]["ContainerSpec"]
env = dict(e.split("=", 1) for e in c.get("Env") or [])
def secs(v):
    v = v.strip()
    if v.endswith("ms"):
        return float(v[:-2]) / 1000
    if v.endswith("m"):
        return float(v[:-1]) * 60
    return float(v.rstrip("s"))
need = secs(env.get("DRAIN_DELAY", "0")) + secs(env.get("GRACE", "5s"))
sys.exit(0 if c.get("StopGracePeriod", 0) / 1e9 > need else 1)
PY
}
check "stop_grace_period longer than DRAIN_DELAY + GRACE" grace_covers_drain
hosts=$(for ((i = 0; i < 30; i++)); do in_nginx curl -s -m 2 "http://127.0.0.1:$LB_PORT/"; echo; done |
  python3 -c 'import json,sys; print(len({json.loads(l)["hostname"] for l in sys.stdin if l.strip()}))' 2>/dev/null)
check "nginx spreads requests over the 3 replicas (30 GET / saw ${hosts:-0} hostnames)" [ "${hosts:-0}" = 3 ]

# ---- 2. forced rolling update under load --------------------------------------------------
note "rolling update of all replicas under load ($CONNS connections, at most $RATE req/s)"
BEFORE=$(running_tasks | cut -d' ' -f1 | sort)
start_load update 300
sleep 3
t0=$(now)
timeout 60 "$DOCKER" service update --force --detach --no-resolve-image "$SERVICE" >/dev/null ||
  fail "docker service update --force"
watch_update completed paused rollback_started rollback_completed
t_update=$(secs "$t0" "$(now)")
sleep 3
stop_load update || fail "the load wrote no summary"
check "update completed (state: $STATE)" [ "$STATE" = completed ]
check "all 3 replicas replaced (in ${T_REPLACED:-never}s)" [ -n "$T_REPLACED" ]
# An old task that exited 0 drained within stop_grace_period; SIGKILL would give 137.
codes=$(for t in $BEFORE; do "$DOCKER" inspect -f '{{.Status.ContainerStatus.ExitCode}}' "$t"; done | sort | uniq -c | awk '{print $1 "x" $2}' | xargs)
check "the replaced tasks exited 0 after their drain (exit codes: $codes)" [ "$codes" = 3x0 ]
figure "rolling update: 3 replicas replaced in ${T_REPLACED:-?}s, state 'completed' after ${t_update}s (incl. the ${MONITOR:-?} monitor window)"
BEFORE=''
nginx_retries
sleep 1   # access records reach the files within 200 ms
verify "$WORK/load-update.json" "$LOGS" update "$CLIENT" "rolling update"

# ---- 3. an image whose health check fails: automatic rollback ------------------------------
# The same image with a HEALTHCHECK that probes port 1, where nothing listens: the new task
# starts but never turns healthy, so it never joins DNS and the update fails.
note "rollout of an image whose health check fails"
BAD=$STACK:unhealthy
images+=("$BAD")
printf 'FROM %s\nHEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 CMD ["/api", "--healthcheck", "--port", "1"]\n' "$GOOD" |
  DOCKER_BUILDKIT=0 timeout 300 "$DOCKER" build -q -t "$BAD" - >"$WORK/bad.log" 2>&1 ||
  { cat "$WORK/bad.log"; die "build the unhealthy image"; }
BAD_ID=$("$DOCKER" image inspect -f '{{.Id}}' "$BAD")
start_load rollback 300
sleep 3
t0=$(now)
timeout 60 "$DOCKER" service update --detach --no-resolve-image --image "$BAD_ID" "$SERVICE" >/dev/null ||
  fail "docker service update --image (unhealthy)"
watch_update rollback_completed rollback_paused completed paused
t_started=${SEEN[rollback_started]:-never}
t_rolled=$(secs "$t0" "$(now)")
sleep 3
stop_load rollback || fail "the load wrote no summary"
check "Swarm rolled back by itself (state: $STATE; $(svc '{{.UpdateStatus.Message}}'))" [ "$STATE" = rollback_completed ]
check "the service's image is the previous one again" [ "$(svc '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" = "$GOOD" ]
check "3 replicas running the previous image" \
  [ "$(running_tasks | cut -d' ' -f2 | sort | uniq -c | awk '{print $1, $2}')" = "3 $GOOD" ]
figure "unhealthy image: rollback started after ${t_started}s, completed after ${t_rolled}s (incl. the ${ROLLBACK_MONITOR:-?} rollback monitor window)"
nginx_retries
sleep 1
verify "$WORK/load-rollback.json" "$LOGS" rollback "$CLIENT" "during the rollback"
