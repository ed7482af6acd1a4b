#!/usr/bin/env bash
# Docker Swarm test on three machines: three Docker engines in containers (docker-in-docker)
# on a bridge network of the test's own form a three-node swarm; deploy/swarm/stack.yaml is
# deployed unchanged (3 api replicas on an overlay network that spans the nodes over VXLAN,
# one nginx per node), and under keep-alive GET and POST load sent to one node's nginx:
#   1. a forced rolling update: 0 failed requests;
#   2. a node drained (`docker node update --availability drain`): 0 failed requests;
#   3. the node holding 2 of the 3 replicas lost as if its power failed (its network link
#      down at once, then its container SIGKILLed), then started again: failures only among
#      the requests in flight at the kill and never more than those, the swarm back to 3
#      healthy replicas, the node rejoining.
# In every phase every acknowledged event (201) is in exactly one node's log files, once, no
# request is written twice, and the access records name the client nginx saw. Prints, per
# phase, requests, failures by kind, acknowledged events per node, Swarm's timings and what
# nginx logged; then "N passed, N failed". Exits 1 if a check failed, 2 if it cannot run.
# Removes its nodes, their volumes, its network, image and temp files however it exits, and
# touches nothing else on the engine (the host's own swarm state included).
#
# Usage: scripts/multinode-test.sh
# Needs: root (the nodes' log files are read from their volumes on the host; nsenter), a
# Docker engine that can run a Docker engine in a container (see DIND_FLAGS), python3, curl,
# nsenter (util-linux) and ip (iproute2).
#
# Three managers, not one manager and two workers: with one manager, losing that machine
# leaves the swarm unable to reschedule anything, so a three-machine swarm should make all
# three managers (Raft keeps working with 2 of 3). The test then proves more: a manager dies
# and the other two still notice, reschedule its tasks and take it back when it returns. It
# never kills the Raft leader, which would add an election to the recovery being measured.
#
# Which node is drained and which is killed is chosen from where the tasks run, so that the
# kill takes 2 of the 3 replicas (the worst single-node loss: one replica left until Swarm
# replaces the others): phase 2 drains a node whose tasks can only land on the node phase 3
# then kills, pausing (`--availability pause`) a third node during the drain if that is what
# makes the outcome certain. See plan_drain; phase 3's figures say how many the node held.
#
# Traffic goes only to the nodes' addresses on the test's own bridge network: the nodes
# publish nginx's port in their own network namespaces, not on the host.
# Environment (defaults in brackets):
#   DIND_IMAGE    [docker:dind]              image of an engine node
#   BUILDER_IMAGE [rust:1.95-slim-bookworm]  Rust toolchain image for building the api image
#   MN_IMAGE      [built from the Dockerfile] api image to deploy instead of building one
#   NGINX_IMAGE   [nginxinc/nginx-unprivileged:1.28-alpine]  the balancer's image
#   DOCKER        [docker]                   docker CLI
#   MN_RATE [1500], MN_CONNS [16]            load: requests per second in all, connections
#   MN_KEEP       []                         a directory to keep the load summaries and the
#                                            nginx logs of each phase in
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lb/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lb/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/scripts/multinode
DIND_IMAGE=${DIND_IMAGE:-docker:dind}
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
NGINX_IMAGE=${NGINX_IMAGE:-nginxinc/nginx-unprivileged:1.28-alpine}
DOCKER=${DOCKER:-docker}
RATE=${MN_RATE:-1500}
CONNS=${MN_CONNS:-16}
P=apimn$$                     # prefix of the nodes, their volumes and the network
NET=$P-net
STACK=api                     # inside the nodes' own swarm nothing else exists
SERVICE=${STACK}_api
LB_PORT=8000                  # stack.yaml's default published port, on each node
NODES=(node1 node2 node3)
# What an engine node needs, narrower than --privileged (which these machines cannot run:
# their root lacks CAP_SYS_RESOURCE): every capability but that one, no seccomp filter,
# writable /proc and /sys paths, all devices, and a cgroup namespace of its own.
DIND_FLAGS=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
  --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' --cgroupns private)
WORK=$(mktemp -d /tmp/api-multinode.XXXXXX)
images=() load_pid='' made_net=''
T_ALL=$(now)
T_MARK=$T_ALL
costs=()
# cost WHAT: the seconds since the last call (or the start), kept for the summary.
cost() { local t; t=$(now); costs+=("$1 $(secs "$T_MARK" "$t")s"); T_MARK=$t; }

cleanup() {
  local rc=$? n
  set +e
  trap - EXIT INT TERM HUP
  note "cleanup"
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  for n in "${NODES[@]}"; do
    "$DOCKER" rm -f -v "$P-$n" >/dev/null 2>&1
    "$DOCKER" volume rm "$P-$n" >/dev/null 2>&1
  done
  [ -n "$made_net" ] && "$DOCKER" network rm "$NET" >/dev/null 2>&1
  [ -n "${MN_KEEP:-}" ] && mkdir -p "$MN_KEEP" && cp "$WORK"/load-*.json "$WORK"/nginx-*.log "$MN_KEEP"/ 2>/dev/null
  for i in "${images[@]}"; do "$DOCKER" rmi --no-prune "$i" >/dev/null 2>&1; done
  rm -rf "$WORK"
  echo "multinode test: $(secs "$T_ALL" "$(now)")s in all (${costs[*]/%/,} cleanup $(secs "$T_MARK" "$(now)")s)"
  exit_with_report "$rc"
}
on_exit cleanup

# ---- helpers -------------------------------------------------------------------------------
# on NODE CMD...: the docker CLI of NODE's own engine.
on() { local n=$1; shift; "$DOCKER" exec "$P-$n" docker "$@"; }
# ctl CMD...: the swarm's control plane, through the node $CTL (a live manager).
ctl() { on "$CTL" "$@"; }
ip_of() { echo "$SUBNET_PREFIX.$((10 + ${1#node}))"; }
# phase_time: seconds since $t0, the start of the current phase's action.
phase_time() { secs "$t0" "$(now)"; }

# Running api tasks as "task-id node", one per line.
running_tasks() {
  ctl service ps -q --filter desired-state=running "$SERVICE" 2>/dev/null |
    xargs -r "$DOCKER" exec "$P-$CTL" docker inspect \
      -f '{{if eq .Status.State "running"}}{{.ID}} {{.NodeID}}{{end}}' 2>/dev/null |
    sed '/^$/d' | while read -r id nid; do echo "$id ${NODE_OF[$nid]:-?}"; done
}
# counts: "node1=N node2=N node3=N", the running api tasks per node.
counts() {
  local tasks n out=''
  tasks=$(running_tasks)
  for n in "${NODES[@]}"; do out+="$n=$(grep -c " $n\$" <<<"$tasks") "; done
  echo "${out% }"
}
leader() { ctl node ls -f role=manager --format '{{.Hostname}} {{.ManagerStatus}}' | awk '$2 == "Leader" {print $1}'; }
node_field() { ctl node inspect -f "$2" "$1" 2>/dev/null; }
# nginx_up NODE: the nginx task on NODE answers /health.
nginx_up() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$(ip_of "$1"):$LB_PORT/health")" = 200 ]; }
# nginx_container NODE: the running nginx container on NODE.
nginx_container() { on "$1" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_nginx" --filter status=running | head -n 1; }
# time_wait NODE: sockets in TIME_WAIT (state 06) in the network namespace of NODE's nginx,
# read from its /proc in the node (no tool needed there beyond cat).
time_wait() {
  local c pid
  c=$(nginx_container "$1")
  pid=$([ -n "$c" ] && on "$1" inspect -f '{{.State.Pid}}' "$c")
  [ -n "$pid" ] || { echo "?"; return; }
  "$DOCKER" exec "$P-$1" cat "/proc/$pid/net/tcp" "/proc/$pid/net/tcp6" 2>/dev/null | awk '$4 == "06"' | wc -l
}
# wait_for SECS WHAT CMD...: polls CMD every half second for at most SECS; on success
# prints "  <time since t0>s: WHAT" and returns 0.
wait_for() {
  local limit=$1 what=$2 end
  shift 2
  end=$((SECONDS + limit))
  while [ "$SECONDS" -le "$end" ]; do
    if "$@"; then echo "  $(phase_time)s: $what"; return 0; fi
    sleep 0.5
  done
  echo "  not within ${limit}s: $what"
  return 1
}
# three_running_without NODE...: 3 api tasks running, none on the NODEs given.
three_running_without() {
  local tasks n
  tasks=$(running_tasks)
  [ "$(wc -l <<<"$tasks")" = 3 ] || return 1
  for n in "$@"; do grep -q " $n\$" <<<"$tasks" && return 1; done
  return 0
}
# no_api_on NODE: NODE's engine runs no api container (its tasks have stopped).
no_api_on() { [ -z "$(on "$1" ps -q --filter "label=com.docker.swarm.service.name=$SERVICE")" ]; }
# exit_codes TASK...: how the tasks' containers ended, as "3x0" (count x exit code).
exit_codes() {
  local t
  for t in "$@"; do ctl inspect -f '{{.Status.ContainerStatus.ExitCode}}' "$t"; done |
    sort | uniq -c | awk '{print $1 "x" $2}' | xargs
}

# start_load TAG NODE: load.py in the background against NODE's nginx, until $WORK/stop-TAG.
start_load() {
  rm -f "$WORK/stop-$1"
  python3 "$HERE/load.py" --target "$(ip_of "$2"):$LB_PORT" --tag "$1" --out "$WORK/load-$1.json" \
    --stop-file "$WORK/stop-$1" --duration 240 --rate "$RATE" --conns "$CONNS" &
  load_pid=$!
  LOAD_NODE=$2
  nginx_log_from=$(date -u +%Y-%m-%dT%H:%M:%SZ)
}
stop_load() {
  touch "$WORK/stop-$1"; wait "$load_pid"; load_pid=''
  [ -f "$WORK/load-$1.json" ] || die "$1: the load wrote no summary"
}
# nginx_figures LABEL TAG: what the nginx that took the load logged since the load started.
nginx_figures() {
  local c
  c=$(nginx_container "$LOAD_NODE")
  on "$LOAD_NODE" logs --since "$nginx_log_from" "$c" >"$WORK/nginx-$2.log" 2>&1
  figure "$1: nginx on $LOAD_NODE gave up on attempts (then tried another replica or answered 502/504): $(retries <"$WORK/nginx-$2.log")"
  figure "$1: nginx could not get a local port (connect() failed (99)): $(grep -c '(99: ' "$WORK/nginx-$2.log")"
}
# judge TAG LABEL [verify.py options]: scripts/multinode/verify.py's checks over every node's
# log files, its lines counted as ours. (scripts/lb/lib.sh's verify is lb/verify.py's, for one
# log directory.)
judge() {
  local tag=$1 label=$2 n args=()
  shift 2
  for n in "${NODES[@]}"; do args+=(--node "$n=${LOGDIR[$n]}"); done
  verdicts < <(python3 "$HERE/verify.py" "$WORK/load-$tag.json" --tag "$tag" --label "$label" \
    --client "$CLIENT" "${args[@]}" "$@" 2>&1 || echo "FAIL $label: verify.py failed")
}

# plan_drain: chooses the node phase 2 drains (DRAIN), the node paused meanwhile (PAUSE, maybe
# none) and the node phase 3 will kill (VICTIM): a drained node's tasks go to the node with
# the fewest tasks of the service, or to the one node left when the third is paused; the plan
# is one whose outcome is certain and leaves a node other than the leader holding exactly 2 of
# the 3 replicas. Empty VICTIM if the layout allows none (then phase 3 kills the non-leader
# holding the most).
plan_drain() {
  local plan
  plan=$(python3 - "$(counts)" "$LEADER" <<'PY'
import itertools, sys
counts = dict(kv.split("=") for kv in sys.argv[1].split())
counts = {n: int(c) for n, c in counts.items()}
leader = sys.argv[2]
nodes = sorted(counts)
def outcome(drain, pause):
    """The layout after draining `drain` with `pause` paused, or None if a tie decides it."""
    after = dict(counts, **{drain: 0})
    targets = [n for n in nodes if n not in (drain, pause)]
    for _ in range(counts[drain]):
        low = min(after[n] for n in targets)
        best = [n for n in targets if after[n] == low]
        if len(best) > 1:
            return None
        after[best[0]] += 1
    return after
for pause, drain in itertools.chain(((None, d) for d in nodes), itertools.permutations(nodes, 2)):
    if counts[drain] == 0:
        continue
    after = outcome(drain, pause)
    victims = [n for n in nodes if after and n != leader and n != drain and after[n] == 2]
    if victims:
        print(drain, pause or "-", victims[0])
        break
else:
    print(max(nodes, key=lambda n: (counts[n], n != leader)), "-", "")
PY
)
  read -r DRAIN PAUSE VICTIM <<<"$plan"
  [ "$PAUSE" = - ] && PAUSE=''
}

# ---- 0. preflight --------------------------------------------------------------------------
note "preflight"
[ "$(id -u)" = 0 ] || cannot_run "run as root (the nodes' log files are read from their volumes on the host)"
for tool in curl python3 nsenter ip; do command -v "$tool" >/dev/null || cannot_run "needs $tool"; done
"$DOCKER" info >/dev/null 2>&1 || cannot_run "no Docker engine answers ($DOCKER info)"
for img in "$DIND_IMAGE" "$NGINX_IMAGE"; do
  "$DOCKER" image inspect "$img" >/dev/null 2>&1 || timeout 300 "$DOCKER" pull -q "$img" >/dev/null ||
    cannot_run "no image $img (set DIND_IMAGE / NGINX_IMAGE)"
done
figure "engine $("$DOCKER" version -f '{{.Server.Version}}'), nodes from $DIND_IMAGE"

t0=$(now)
if [ -n "${MN_IMAGE:-}" ]; then
  IMAGE=$MN_IMAGE
else
  IMAGE=$P:test
  images+=("$IMAGE")
  DOCKER_BUILDKIT=1 timeout 1800 "$DOCKER" build -q --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" -t "$IMAGE" "$REPO" \
    >"$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log"; die "docker build"; }
  pass "api image built ($(secs "$t0" "$(now)")s)"
fi
cost "preflight and image:"
API_ID=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE") || die "no image $IMAGE"
NGINX_ID=$("$DOCKER" image inspect -f '{{.Id}}' "$NGINX_IMAGE")

# A /24 for the nodes' bridge that no network of this engine overlaps.
SUBNET_PREFIX=$(free_net24 10.214 10)
[ -n "$SUBNET_PREFIX" ] || cannot_run "no free /24 in 10.214.0.0/16 for the nodes' network"

# ---- 1. three engines, one swarm, the stack ------------------------------------------------
note "three engine nodes on $NET ($SUBNET_PREFIX.0/24), a swarm of three managers, the stack"
t0=$(now)
"$DOCKER" network create --subnet "$SUBNET_PREFIX.0/24" "$NET" >/dev/null || die "docker network create $NET"
made_net=1
for n in "${NODES[@]}"; do
  # /var/lib/docker on a volume of its own: overlay2 cannot stack on the container's root, and
  # the volume outlives the node's death, as a machine's disk does.
  "$DOCKER" run -d --name "$P-$n" --hostname "$n" "${DIND_FLAGS[@]}" --network "$NET" --ip "$(ip_of "$n")" \
    -v "$P-$n:/var/lib/docker" "$DIND_IMAGE" >/dev/null || die "start $n"
done
engine_up() { on "$1" info >/dev/null 2>&1; }
for n in "${NODES[@]}"; do
  wait_for 90 "$n's engine answers" engine_up "$n" >/dev/null || die "$n's engine within 90s"
done
t_engines=$(phase_time)
on node1 swarm init --advertise-addr "$(ip_of node1)" >/dev/null || die "swarm init on node1"
token=$(on node1 swarm join-token -q manager)
for n in node2 node3; do
  on "$n" swarm join --token "$token" "$(ip_of node1):2377" >/dev/null || die "$n joins the swarm"
done
CTL=node1
declare -A NODE_OF LOGDIR
for n in "${NODES[@]}"; do
  NODE_OF[$(node_field "$n" '{{.ID}}')]=$n
  LOGDIR[$n]=$("$DOCKER" volume inspect -f '{{.Mountpoint}}' "$P-$n")/volumes/${STACK}_logs/_data
done
all_ready() { [ "$(ctl node ls --format '{{.Status}} {{.ManagerStatus}}' | grep -cE '^Ready (Leader|Reachable)$')" = 3 ]; }
wait_for 60 "3 managers ready" all_ready >/dev/null || die "3 nodes ready and reachable"
LEADER=$(leader)
for n in "${NODES[@]}"; do
  "$DOCKER" save "$IMAGE" "$NGINX_IMAGE" | "$DOCKER" exec -i "$P-$n" docker load -q >/dev/null ||
    die "load the images into $n"
done
t_swarm=$(phase_time)
tar -C "$REPO/deploy" -cf - nginx.conf swarm |
  "$DOCKER" exec -i "$P-node1" sh -c 'mkdir -p /stack && tar -C /stack -xf -' || die "copy deploy/ to node1"
# deploy/swarm/stack.yaml as users deploy it, by image ID since there is no registry.
"$DOCKER" exec -e "API_IMAGE=$API_ID" -e "NGINX_IMAGE=$NGINX_ID" "$P-node1" \
  docker stack deploy --resolve-image never -c /stack/swarm/stack.yaml "$STACK" >"$WORK/deploy.log" 2>&1 ||
  { cat "$WORK/deploy.log"; die "docker stack deploy"; }
all_nginx_up() { local n; for n in "${NODES[@]}"; do nginx_up "$n" || return 1; done; }
if ! wait_for 120 "3 api replicas running" three_running_without >/dev/null ||
  ! wait_for 60 "nginx answers on every node" all_nginx_up >/dev/null; then
  ctl service ps --no-trunc "$SERVICE" | head
  die "3 healthy replicas, nginx on each node"
fi
pass "3 engines up (${t_engines}s), swarm of 3 managers with the images (${t_swarm}s), stack healthy ($(phase_time)s in all)"
hosts=$(for ((i = 0; i < 30; i++)); do curl -s -m 2 "http://$(ip_of node1):$LB_PORT/"; echo; done |
  python3 -c 'import json,sys; print(len({json.loads(l)["hostname"] for l in sys.stdin if l.strip()}))' 2>/dev/null)
check "nginx on node1 spreads requests over the 3 replicas on 3 nodes (30 GET / saw ${hosts:-0} hostnames; tasks: $(counts))" \
  [ "${hosts:-0}" = 3 ]
# The load's connections reach nginx from the bridge's gateway: the host.
CLIENT=$("$DOCKER" network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$NET")
[ -n "$CLIENT" ] || CLIENT=$SUBNET_PREFIX.1
cost "nodes, swarm and stack:"

# ---- 2. forced rolling update --------------------------------------------------------------
note "phase 1: forced rolling update under load ($CONNS connections, at most $RATE req/s, to node1's nginx)"
BEFORE=$(running_tasks | cut -d' ' -f1)
start_load update node1
sleep 3
t0=$(now)
ctl service update --force --detach --no-resolve-image "$SERVICE" >/dev/null || fail "docker service update --force"
replaced() {
  local tasks
  tasks=$(running_tasks | cut -d' ' -f1)
  [ "$(wc -l <<<"$tasks")" = 3 ] && [ -z "$(comm -12 <(sort <<<"$BEFORE") <(sort <<<"$tasks"))" ]
}
update_state() { [ "$(ctl service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$SERVICE")" = "$1" ]; }
if wait_for 180 "3 new tasks running" replaced; then
  t_replaced=$(phase_time)
else
  fail "3 tasks replaced within 180s"
fi
if wait_for 120 "update completed (after its monitor window)" update_state completed; then
  t_update=$(phase_time)
else
  fail "update completed (state: $(ctl service inspect -f '{{.UpdateStatus.State}}' "$SERVICE"))"
fi
sleep 2
stop_load update
# shellcheck disable=SC2086
codes=$(exit_codes $BEFORE)
check "the replaced tasks exited 0 after draining ($codes)" [ "$codes" = 3x0 ]
figure "phase 1: 3 replicas replaced in ${t_replaced:-?}s, update completed in ${t_update:-?}s; tasks now: $(counts)"
nginx_figures "phase 1" update
judge update "phase 1 (rolling update)"
cost "phase 1:"

# ---- 3. a node drained ---------------------------------------------------------------------
plan_drain
LOAD_TO=node1
[ "$DRAIN" = node1 ] && LOAD_TO=$( [ "$VICTIM" = node2 ] && echo node3 || echo node2)
note "phase 2: drain $DRAIN (tasks: $(counts))${PAUSE:+, $PAUSE paused meanwhile}, under load to $LOAD_TO's nginx"
drained_tasks=$(running_tasks | awk -v n="$DRAIN" '$2 == n {print $1}')
start_load drain "$LOAD_TO"
sleep 3
[ -n "$PAUSE" ] && { ctl node update --availability pause "$PAUSE" >/dev/null || fail "pause $PAUSE"; }
t0=$(now)
ctl node update --availability drain "$DRAIN" >/dev/null || fail "drain $DRAIN"
if wait_for 120 "3 tasks running elsewhere" three_running_without "$DRAIN"; then
  t_moved=$(phase_time)
else
  fail "3 tasks running off $DRAIN within 120s"
fi
if wait_for 60 "the drained tasks stopped" no_api_on "$DRAIN"; then
  t_stopped=$(phase_time)
else
  fail "no api task left on $DRAIN within 60s"
fi
sleep 2
stop_load drain
# shellcheck disable=SC2086
codes=$(exit_codes $drained_tasks)
check "the drained node's $(wc -w <<<"$drained_tasks") task(s) exited 0 after draining ($codes)" \
  [ "$codes" = "$(wc -w <<<"$drained_tasks")x0" ]
figure "phase 2: drain of $DRAIN ($(wc -w <<<"$drained_tasks") tasks): tasks elsewhere after ${t_moved:-?}s, its tasks stopped after ${t_stopped:-?}s; tasks now: $(counts)"
nginx_figures "phase 2" drain
judge drain "phase 2 (drain)"
for n in "$DRAIN" $PAUSE; do ctl node update --availability active "$n" >/dev/null || fail "$n active again"; done
cost "phase 2:"

# ---- 4. a node killed ----------------------------------------------------------------------
if [ -z "$VICTIM" ]; then
  VICTIM=$(counts | tr ' ' '\n' | grep -v "^$LEADER=" | sort -t= -k2 -rn | head -n 1 | cut -d= -f1)
fi
LOAD_TO=$LEADER
held=$(running_tasks | awk -v n="$VICTIM" '$2 == n' | wc -l)
wait_for 60 "nginx answers on $LOAD_TO" nginx_up "$LOAD_TO" >/dev/null || die "nginx on $LOAD_TO answers"
note "phase 3: kill $VICTIM (tasks: $(counts)), start it again, under load to $LOAD_TO's nginx"
start_load kill "$LOAD_TO"
sleep 5
# As a machine that loses its power: its network link goes down at once (one syscall in its
# network namespace, so the requests in flight at that instant are known within
# milliseconds), so that no answer, reset or FIN from its dying processes reaches anyone;
# then its container is killed, every process in it with SIGKILL.
victim_pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$P-$VICTIM")
t_k0=$(now)
nsenter -t "$victim_pid" -n ip link set eth0 down || die "take $VICTIM's link down"
t_k1=$(now)
"$DOCKER" kill "$P-$VICTIM" >/dev/null || die "docker kill $VICTIM"
t0=$t_k0
echo "  0s: $VICTIM's link down (within $(secs "$t_k0" "$t_k1")s), then killed after $(phase_time)s"
node_down() { [ "$(node_field "$VICTIM" '{{.Status.State}}')" = down ]; }
if wait_for 120 "$VICTIM is down for the swarm" node_down; then
  t_down=$(phase_time)
else
  fail "$VICTIM down within 120s"
fi
# With one replica left until Swarm replaces the others: how many local ports nginx holds.
tw=$(time_wait "$LOAD_TO")
if wait_for 120 "3 healthy replicas again, none on $VICTIM" three_running_without "$VICTIM"; then
  t_back=$(phase_time)
else
  fail "3 replicas running again within 120s"
fi
sleep 2
t_start=$(now)
# A container's network namespace is made anew when it starts: the link is up again.
"$DOCKER" start "$P-$VICTIM" >/dev/null || fail "docker start $VICTIM"
echo "  $(phase_time)s: $VICTIM started again"
node_ready() {
  [ "$(node_field "$VICTIM" '{{.Status.State}} {{.ManagerStatus.Reachability}}')" = "ready reachable" ]
}
if wait_for 120 "$VICTIM ready and a reachable manager again" node_ready; then
  t_rejoin=$(secs "$t_start" "$(now)")
else
  fail "$VICTIM rejoins within 120s"
fi
wait_for 60 "$VICTIM's old tasks stopped" no_api_on "$VICTIM" || fail "$VICTIM's old tasks stopped"
wait_for 60 "nginx answers on $VICTIM again" nginx_up "$VICTIM" || fail "nginx on $VICTIM again"
sleep 3
stop_load kill
check "3 healthy replicas after the node rejoined (tasks: $(counts))" three_running_without
check "3 managers ready and reachable" all_ready
figure "phase 3: $VICTIM killed holding $held replicas: down for the swarm after ${t_down:-?}s, replaced after ${t_back:-?}s; started again, rejoined in ${t_rejoin:-?}s; nginx's sockets in TIME_WAIT with one replica left: $tw"
nginx_figures "phase 3" kill
judge kill "phase 3 (node killed)" --killed "$VICTIM" --kill "$t_k0" "$t_k1"
# Every phase's acknowledged events that only the killed node's disk holds.
only=$(python3 - "${LOGDIR[$VICTIM]}" "$WORK"/load-*.json <<'PY'
import glob, json, sys
ids = set()
for path in glob.glob(sys.argv[1] + "/*.log"):
    for line in open(path, "rb"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "event":
            ids.add(rec.get("id"))
acked = set()
for s in sys.argv[2:]:
    acked.update(json.load(open(s))["acked"].values())
print(f"{len(acked & ids)} of {len(acked)}")
PY
)
figure "acknowledged events of all phases that live only on $VICTIM's disk: $only"
cost "phase 3:"
