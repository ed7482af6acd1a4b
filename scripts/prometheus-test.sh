#!/usr/bin/env bash
# The metrics as Prometheus sees them, with a real Prometheus and promtool:
#   1. the alert rules: `promtool check rules`, then `promtool test rules` (input series ->
#      expected alerts, tests/prometheus/rules-test.yml); the Swarm scrape config checks;
#   2. the service (target/debug/api, built by cargo) with its metrics port: the raw
#      exposition passes `promtool check metrics` with no warning;
#   3. a Prometheus on 127.0.0.1 scraping it (and, where a Docker engine answers, the compose
#      stack with compose.metrics.yaml): `up` is 1 for every target, the rules load, and
#      `sum(http_requests_total)` rises by exactly the number of requests sent, as does
#      `api_events_accepted_total` by the events acknowledged.
# Prints PASS/FAIL per check and the figures, then "N passed, N failed"; exits 1 if a check
# failed, 2 if it cannot run. Stops what it started by PID, and removes its compose project
# and temp files, however it exits.
#
# Usage: scripts/prometheus-test.sh
# Needs: promtool and prometheus (Debian's package `prometheus`), curl, python3, cargo.
# Environment: BUILDER_IMAGE, DOCKER, COMPOSE as for scripts/container-test.sh (the compose
# part only); PT_REQUESTS [300] requests sent while Prometheus watches.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
DOCKER=${DOCKER:-docker}
read -ra COMPOSE <<<"${COMPOSE:-docker-compose}"
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
REQUESTS=${PT_REQUESTS:-300}
PROJECT=apiprom$$
IMAGE=api:prom$$
WORK=$(mktemp -d /tmp/api-prom.XXXXXX)
chmod 755 "$WORK"   # the containers' uid reaches the stack's ./logs inside
# The compose stack runs from a copy of the working tree, so its ./logs (handed to the
# service's uid by log-init) and the log in it stay out of the checkout.
DIR=$WORK/api
api_pid='' prom_pid='' compose_up=''

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  if [ -n "$compose_up" ]; then
    compose -f compose.yaml -f compose.metrics.yaml down -v --timeout 10 >/dev/null 2>&1
    "$DOCKER" image rm -f "$IMAGE" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

for tool in promtool prometheus curl python3 cargo; do
  command -v "$tool" >/dev/null || cannot_run "$tool not found (promtool and prometheus: apt-get install prometheus)"
done
cd "$REPO" || exit 2

# query EXPR: the value of an instant query's first sample, or nothing.
query() {
  curl -sf --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" |
    python3 -c '
import json, sys
text = sys.stdin.read()
r = json.loads(text)["data"]["result"] if text else []
print(r[0]["value"][1] if r else "")'
}
# wait_for EXPR WANT SECONDS: until the query gives WANT; prints the last value seen.
wait_for() {
  local got='' i
  for ((i = 0; i < $3 * 2; i++)); do
    got=$(query "$1")
    [ "$got" = "$2" ] && break
    sleep 0.5
  done
  echo "$got"
}
# rose_to WANT GOT: GOT is WANT, and WANT is a value: a counter Prometheus does not have gives
# no WANT, and an empty GOT must not then count as equal to it.
rose_to() { [ -n "$1" ] && [ "$2" = "$1" ]; }

# ---- 1. rules and configs ---------------------------------------------------------------
note "alert rules and scrape configs (promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}'))"
check "promtool check rules deploy/prometheus/rules.yml" promtool check rules deploy/prometheus/rules.yml
check "promtool test rules tests/prometheus/rules-test.yml" promtool test rules tests/prometheus/rules-test.yml
mkdir -p "$WORK/swarm"
cp deploy/prometheus/rules.yml "$WORK/swarm/rules.yml"
sed "s|/etc/prometheus/rules.yml|$WORK/swarm/rules.yml|" deploy/swarm/prometheus.yml >"$WORK/swarm/prometheus.yml"
check "promtool check config deploy/swarm/prometheus.yml" promtool check config "$WORK/swarm/prometheus.yml"

# ---- 2. the service's exposition --------------------------------------------------------
note "the service's exposition"
cargo build --locked --quiet || die "cargo build"
API_PORT=$(free_port) METRICS=$(free_port)
LOG_FILE=$WORK/logs/api.log HOST=127.0.0.1 PORT=$API_PORT METRICS_PORT=$METRICS \
  target/debug/api >"$WORK/api.out" 2>&1 &
api_pid=$!
for ((i = 0; i < 100; i++)); do
  curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$API_PORT/health" >/dev/null || die "the service answers /health"
curl -sf -o /dev/null -X POST "http://127.0.0.1:$API_PORT/events" -H 'Content-Type: application/json' -d '{"type":"warm"}'
curl -sf "http://127.0.0.1:$METRICS/metrics" >"$WORK/metrics.txt" || die "GET /metrics answers"
lint=$(promtool check metrics <"$WORK/metrics.txt" 2>&1)
check "promtool check metrics: no problem, no warning ($(grep -c '^# TYPE' "$WORK/metrics.txt") families)" [ -z "$lint" ]
[ -z "$lint" ] || printf '%s\n' "$lint"
check "the API's own port has no /metrics" \
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_PORT/metrics")" = 404 ]

# ---- 3. a real Prometheus ---------------------------------------------------------------
targets="'127.0.0.1:$METRICS'"
if "$DOCKER" info >/dev/null 2>&1; then
  note "the compose stack with compose.metrics.yaml"
  CPORT=$(free_port) CMETRICS=$(free_port)
  copy_tree "$REPO" "$DIR" || die "copy the working tree"
  rm -rf "$DIR/logs"
  compose_up=1
  compose_env() { API_PUBLISH=127.0.0.1:$CPORT METRICS_PUBLISH=127.0.0.1:$CMETRICS "$@"; }
  if compose_env compose -f compose.yaml -f compose.metrics.yaml up -d --build >"$WORK/compose.out" 2>&1; then
    pass "compose up with compose.metrics.yaml"
    for ((i = 0; i < 120; i++)); do
      curl -sf "http://127.0.0.1:$CMETRICS/metrics" >/dev/null && break
      sleep 0.5
    done
    check "the compose stack's metrics answer on 127.0.0.1:$CMETRICS" \
      curl -sf -o /dev/null "http://127.0.0.1:$CMETRICS/metrics"
    targets="$targets, '127.0.0.1:$CMETRICS'"
  else
    tail -n 20 "$WORK/compose.out"
    fail "compose up with compose.metrics.yaml"
  fi
elif [ "${CI:-}" = true ]; then
  fail "no Docker engine answers: the compose stack's scrape is required in CI"
else
  skip "the compose stack's scrape: no Docker engine answers"
fi

note "Prometheus $(prometheus --version 2>&1 | awk 'NR==1 {print $3}') on 127.0.0.1"
PROM_PORT=$(free_port)
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ['$REPO/deploy/prometheus/rules.yml']
scrape_configs:
  - job_name: api
    static_configs:
      - targets: [$targets]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.out" 2>&1 &
prom_pid=$!
ntargets=$(($(grep -o "127.0.0.1:" <<<"$targets" | wc -l)))
up=$(wait_for 'sum(up{job="api"})' "$ntargets" 60)
check "up is 1 for all $ntargets target(s) (sum(up) = ${up:-none})" [ "$up" = "$ntargets" ]
rules=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
print(sum(r["health"] == "ok" for r in rules), len(rules))')
# all_healthy HEALTHY TOTAL: some rules, every one healthy (nothing read is not a pass).
all_healthy() { [ -n "$2" ] && [ "$1" = "$2" ] && [ "$2" -gt 0 ]; }
check "the alert rules load and evaluate (healthy of all: ${rules:-none})" all_healthy "${rules% *}" "${rules#* }"

# The counters as Prometheus has them now, after a scrape that follows the warm-up.
inst="instance='127.0.0.1:$METRICS'"
sleep 2
before=$(query "sum(http_requests_total{$inst})")
events_before=$(query "api_events_accepted_total{$inst}")
acked=0
for ((i = 0; i < REQUESTS; i++)); do
  if ((i % 3 == 0)); then
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$API_PORT/events" \
      -H 'Content-Type: application/json' -d "{\"type\":\"prom\",\"data\":$i}")
    [ "$code" = 201 ] && acked=$((acked + 1))
  else
    curl -s -o /dev/null "http://127.0.0.1:$API_PORT/health"
  fi
done
want=$(python3 -c "print(int(float('$before')) + $REQUESTS)")
after=$(wait_for "sum(http_requests_total{$inst})" "$want" 30)
check "sum(http_requests_total) rose by exactly $REQUESTS (${before:-none} -> ${after:-none})" rose_to "$want" "$after"
want_events=$(python3 -c "print(int(float('$events_before')) + $acked)")
events_after=$(wait_for "api_events_accepted_total{$inst}" "$want_events" 30)
check "api_events_accepted_total rose by exactly the $acked acknowledged events (${events_before:-none} -> ${events_after:-none})" \
  rose_to "$want_events" "$events_after"
health=$(query "sum(http_requests_total{$inst,route='/health',code='200'})")
figure "requests sent $REQUESTS (events acknowledged $acked); Prometheus: http_requests_total $before -> $after, /health 200s $health"
