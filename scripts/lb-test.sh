#!/usr/bin/env bash
# Compose test of compose.nginx.yaml: `up --scale api=3` behind nginx, under its own project
# name and a 127.0.0.1 port, load through nginx, and a rolling restart of the replicas one by
# one (`docker restart`, then wait for `healthy`). Checks: 0 failed requests (no refused,
# reset or timed-out connection, no 5xx), every 201 event in ./logs exactly once, no request
# written twice, 0 torn lines, and the access records naming the client as nginx saw it (the
# bridge's gateway: the host), not nginx's address and not the X-Forwarded-For the client
# forged.
# Prints PASS/FAIL per check and the figures, then "N passed, N failed"; exits 1 if a check
# failed, 2 if it cannot run. Removes its containers, network, image and temp files however
# it exits.
#
# Usage: scripts/lb-test.sh
# Needs: a Docker engine, docker-compose 1.29 or `docker compose` (COMPOSE="docker compose"),
# curl and python3.
# Environment (defaults in brackets):
#   BUILDER_IMAGE [rust:1.95-slim-bookworm]  Rust toolchain image for building the api image
#   NGINX_IMAGE   [nginxinc/nginx-unprivileged:1.28-alpine]  the balancer's image
#   COMPOSE       [docker-compose]           compose command
#   DOCKER        [docker]                   docker CLI
#   LT_PORT       [18091]                    nginx's port, published on 127.0.0.1 only
#   LT_RATE [800], LT_CONNS [8]              load: requests per second in all, connections
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lb/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lb/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
NGINX_IMAGE=${NGINX_IMAGE:-nginxinc/nginx-unprivileged:1.28-alpine}
read -ra COMPOSE <<<"${COMPOSE:-docker-compose}"
DOCKER=${DOCKER:-docker}
PORT=${LT_PORT:-18091}
RATE=${LT_RATE:-800}
CONNS=${LT_CONNS:-8}
PROJECT=apilb$$               # compose project: containers, network and labels are ours alone
IMAGE=$PROJECT:test
WORK=$(mktemp -d /tmp/api-lb.XXXXXX)
chmod 755 "$WORK"
DIR=$WORK/api                 # the stack runs from a copy of the working tree
load_pid='' built=''

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  note "cleanup"
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  [ -d "$DIR" ] && dc down --timeout 15 >/dev/null 2>&1
  for c in $("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
    "$DOCKER" rm -f "$c" >/dev/null
  done
  for n in $("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT"); do
    "$DOCKER" network rm "$n" >/dev/null
  done
  [ -n "$built" ] && "$DOCKER" rmi --no-prune "$IMAGE" >/dev/null 2>&1
  rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

# compose with both files and the environment they read; replicas get free 127.0.0.1 ports
dc() {
  API_PUBLISH=127.0.0.1: LB_PUBLISH=127.0.0.1:$PORT LB_NET=$LB_NET NGINX_IMAGE=$NGINX_IMAGE \
    compose -f compose.yaml -f compose.nginx.yaml "$@"
}
replicas() {
  "$DOCKER" ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=api"
}

# ---- 0. preflight --------------------------------------------------------------------------
note "preflight"
"$DOCKER" info >/dev/null 2>&1 || cannot_run "no Docker engine answers ($DOCKER info)"
"${COMPOSE[@]}" version >/dev/null 2>&1 || cannot_run "${COMPOSE[*]} not found"
for tool in curl python3; do command -v "$tool" >/dev/null || cannot_run "needs $tool"; done
port_free "$PORT" || cannot_run "127.0.0.1:$PORT is in use (set LT_PORT)"
"$DOCKER" image inspect "$NGINX_IMAGE" >/dev/null 2>&1 || timeout 300 "$DOCKER" pull -q "$NGINX_IMAGE" >/dev/null ||
  cannot_run "no nginx image $NGINX_IMAGE (set NGINX_IMAGE)"
# A /24 for the bridge that no network of this engine overlaps (compose.nginx.yaml's LB_NET).
LB_NET=$(free_net24 172.29 90)
[ -n "$LB_NET" ] || cannot_run "no free /24 in 172.29.0.0/16 for the bridge"

copy_tree "$REPO" "$DIR" || die "copy the working tree"
rm -rf "$DIR/logs"

# ---- 1. up --scale api=3 -------------------------------------------------------------------
note "up --scale api=3 behind nginx (project $PROJECT, 127.0.0.1:$PORT, bridge $LB_NET.0/24)"
built=1
t0=$(now)
dc up -d --build --scale api=3 >"$WORK/up.log" 2>&1 || { tail -n 30 "$WORK/up.log"; die "compose up --scale api=3"; }
[ "$(replicas | wc -l)" = 3 ] || die "3 api containers"
for c in $(replicas); do wait_health "$c" healthy 90 || die "replica ${c:0:12} healthy"; done
ok=''
for ((i = 0; i < 30; i++)); do
  [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && ok=1 && break
  sleep 1
done
[ -n "$ok" ] || { dc logs --no-color nginx | tail -n 20; die "nginx answers on 127.0.0.1:$PORT"; }
pass "3 replicas healthy and answering through nginx ($(secs "$t0" "$(now)")s incl. build)"
hosts=$(for ((i = 0; i < 30; i++)); do curl -s -m 2 "http://127.0.0.1:$PORT/"; echo; done |
  python3 -c 'import json,sys; print(len({json.loads(l)["hostname"] for l in sys.stdin if l.strip()}))' 2>/dev/null)
check "nginx spreads requests over the 3 replicas (30 GET / saw ${hosts:-0} hostnames)" [ "${hosts:-0}" = 3 ]
# The host's requests reach nginx from the bridge's gateway (Docker's port proxy).
CLIENT=$("$DOCKER" inspect -f '{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}' "$(replicas | head -n 1)")
[ -n "$CLIENT" ] || die "no gateway address on ${PROJECT}_backend"

# ---- 2. rolling restart under load ---------------------------------------------------------
note "rolling restart of the replicas under load ($CONNS connections, at most $RATE req/s)"
python3 "$REPO/scripts/lb/load.py" --url "http://127.0.0.1:$PORT" --tag restart \
  --out "$WORK/load-restart.json" --stop-file "$WORK/stop" --duration 300 \
  --rate "$RATE" --conns "$CONNS" &
load_pid=$!
sleep 3
t0=$(now)
n=0
for c in $(replicas); do
  n=$((n + 1))
  t1=$(now)
  timeout 60 "$DOCKER" restart "$c" >/dev/null || fail "docker restart of replica $n"
  t2=$(now)
  wait_health "$c" healthy 60 || fail "replica $n healthy again"
  echo "  replica $n (${c:0:12}): restarted in $(secs "$t1" "$t2")s, healthy after $(secs "$t1" "$(now)")s"
  sleep 1
done
t_all=$(secs "$t0" "$(now)")
sleep 3
touch "$WORK/stop"
wait "$load_pid"
load_pid=''
figure "rolling restart of 3 replicas: ${t_all}s"
# Each attempt nginx gave up on (then tried on another replica) is an [error] line.
dc logs --no-color nginx >"$WORK/nginx.log" 2>&1
figure "nginx sent requests on to another replica after failed attempts: $(retries <"$WORK/nginx.log")"
check "each restarted replica drained before it stopped (3 \"drained\" records)" \
  [ "$(grep -c '"msg":"drained' "$DIR/logs/api.log")" = 3 ]
sleep 1   # access records reach the file within 200 ms
verify "$WORK/load-restart.json" "$DIR/logs" restart "$CLIENT" "rolling restart"
