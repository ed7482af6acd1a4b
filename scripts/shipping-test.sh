#!/usr/bin/env bash
# End-to-end test of the shipping recipe in deploy/shipping/: the real service under POST
# load, rotating its log every 256 KiB, and rsyslog (rsyslog.conf, started by shipper.sh as
# the image starts it) shipping the event records into a real PostgreSQL (schema.sql).
#
#   1. At least once, across crashes and outages. During the load rsyslog is killed with
#      SIGKILL and restarted several times (once while PostgreSQL is down), PostgreSQL is
#      stopped for a few seconds and started again, and then refuses writes for a few
#      seconds. Afterwards: every acknowledged event is in the table (missing = 0), each
#      stored record is its log line byte for byte, the table holds nothing else and no
#      line was rejected, and a repeat exists only as a counted redelivery.
#   2. Retention meets shipping. LOG_KEEP x LOG_MAX_BYTES too small for a shipper outage:
#      rsyslog is down while the service rotates and deletes files. The events lost are
#      exactly the outage's events in the deleted files, every event in a file left is
#      shipped, and rsyslog's state at the outage shows it had read its file to the end.
#   3. The image (when a Docker engine answers): deploy/shipping/Dockerfile built and run as
#      compose.shipping.yaml runs it, killed with SIGKILL and started again under load; then
#      the checks of part 1.
#
# Prints PASS/FAIL per check, the figures (events, rotations, crashes, redeliveries, lag at
# the end of the load, drain rate, what the test costs), then "N passed, N failed"; exits 1
# if a check failed, 2 if it cannot run (without CI=true a missing tool is a SKIP, exit 0).
# Stops everything it started, by PID, and removes its files however it exits.
#
# Usage: scripts/shipping-test.sh
# Needs: rsyslog and rsyslog-pgsql (ompgsql), PostgreSQL's server and psql (Debian:
# postgresql), python3, cargo. PostgreSQL runs as SHIP_PG_USER when started as root.
# Environment (defaults in brackets):
#   SHIP_PG_BIN   [newest /usr/lib/postgresql/*/bin]  initdb, postgres, pg_isready
#   SHIP_PG_USER  [postgres, else nobody]  the user PostgreSQL runs as when this runs as root
#   SHIP_RATE [300], SHIP_SECONDS [24]     the load of part 1: events per second, duration
#   SHIP_MODE [inotify]                    imfile's mode (polling: as on network file systems)
#   SHIP_CONF, SHIP_SCHEMA [deploy/shipping/rsyslog.conf, schema.sql]  variants to try
#   SHIP_DEBIAN_IMAGE [BUILDER_IMAGE, else debian:bookworm-slim]  the image's base
#   CARGO_TARGET_DIR                       where cargo builds the service
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO=$(cd "$(dirname "$0")/.." && pwd)
SHIPPING=$REPO/deploy/shipping
RATE=${SHIP_RATE:-300}
DURATION=${SHIP_SECONDS:-24}
MODE=${SHIP_MODE:-inotify}
CONF=${SHIP_CONF:-$SHIPPING/rsyslog.conf}
SCHEMA=${SHIP_SCHEMA:-$SHIPPING/schema.sql}
DOCKER=${DOCKER:-docker}
# Any Debian bookworm image will do as the shipper's base; the Rust builder is one.
DEBIAN_IMAGE=${SHIP_DEBIAN_IMAGE:-${BUILDER_IMAGE:-debian:bookworm-slim}}
started=$SECONDS

# ---- what it needs --------------------------------------------------------------------------
need_missing=()
PG_BIN=${SHIP_PG_BIN:-$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)}
[ -x "${PG_BIN:-/nonexistent}/initdb" ] && [ -x "$PG_BIN/postgres" ] || need_missing+=("PostgreSQL server (initdb, postgres)")
command -v psql >/dev/null || need_missing+=(psql)
command -v rsyslogd >/dev/null || need_missing+=(rsyslogd)
command -v rsyslogd >/dev/null &&
  ! find /usr/lib -path '*/rsyslog/ompgsql.so' 2>/dev/null | grep -q . && need_missing+=("rsyslog's ompgsql (rsyslog-pgsql)")
command -v python3 >/dev/null || need_missing+=(python3)
command -v cargo >/dev/null || need_missing+=(cargo)
if [ "${#need_missing[@]}" -gt 0 ]; then
  skip "log shipping test: missing ${need_missing[*]} (apt-get install rsyslog rsyslog-pgsql postgresql)"
  report_checks
  [ "$failed" -eq 0 ] && exit 0
  exit 2
fi
PG_USER=""
if [ "$(id -u)" -eq 0 ]; then
  PG_USER=${SHIP_PG_USER:-$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)}
fi

WORK=$(mktemp -d /tmp/api-shipping.XXXXXX)
chmod 755 "$WORK"   # PostgreSQL's user must reach its data directory inside
api_pid='' rsyslog_pid='' pg_pid='' load_pid='' container='' image_built=''

# stop_pid PID SIGNAL: sends it, waits up to 15 s, then SIGKILL.
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill "-$2" "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# shellcheck disable=SC2317,SC2329  # called from the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  stop_pid "$load_pid" TERM
  stop_pid "$rsyslog_pid" TERM
  stop_pid "$api_pid" TERM
  stop_pid "$pg_pid" INT     # fast shutdown
  if [ -n "$container" ]; then "$DOCKER" rm -f "$container" >/dev/null 2>&1; fi
  if [ -n "$image_built" ]; then "$DOCKER" rmi "$IMAGE" >/dev/null 2>&1; fi
  if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    for f in "$WORK"/rsyslog.out "$WORK"/pg/server.log; do
      [ -s "$f" ] && { echo "---- last lines of ${f#"$WORK"/}"; tail -n 15 "$f"; }
    done
  fi
  [ -n "${SHIP_KEEP:-}" ] || rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

not() { ! "$@"; }

# ---- PostgreSQL: a private cluster on 127.0.0.1 ---------------------------------------------
PG_PORT=$(free_port)
PG_SUPER=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
SHIPPER_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
as_pg() { if [ -n "$PG_USER" ]; then setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --init-groups "$@"; else "$@"; fi; }
as_pg_exec() { if [ -n "$PG_USER" ]; then exec setpriv --reuid="$PG_USER" --regid="$(id -g "$PG_USER")" --init-groups "$@"; else exec "$@"; fi; }
# sql [psql args...]: as the superuser, on the test's database.
sql() { PGPASSWORD=$PG_SUPER psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d events -At "$@"; }
pg_start() {
  # The background subshell execs postgres: $! is the server's own PID.
  as_pg_exec "$PG_BIN/postgres" -D "$WORK/pg/data" -c listen_addresses=127.0.0.1 -p "$PG_PORT" \
    -c unix_socket_directories="$WORK/pg" >>"$WORK/pg/server.log" 2>&1 &
  pg_pid=$!
  local i
  for ((i = 0; i < 100; i++)); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && return 0
    sleep 0.1
  done
  return 1
}
pg_stop() { stop_pid "$pg_pid" INT; pg_pid=''; }

note "setup"
mkdir -p "$WORK/pg"
printf '%s\n' "$PG_SUPER" >"$WORK/pg/pw"
[ -n "$PG_USER" ] && chown -R "$PG_USER:" "$WORK/pg"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres -A scram-sha-256 --pwfile="$WORK/pg/pw" \
  -E UTF8 --locale=C.UTF-8 --no-sync >"$WORK/pg/initdb.log" 2>&1 || die "initdb (see $WORK/pg/initdb.log)"
pg_start || die "PostgreSQL did not start on 127.0.0.1:$PG_PORT"
PGPASSWORD=$PG_SUPER psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'CREATE DATABASE events' ||
  die "create the database"
sql -f "$SCHEMA" 2>"$WORK/schema.err" || { cat "$WORK/schema.err"; die "$SCHEMA"; }
sql -c "ALTER ROLE shipper PASSWORD '$SHIPPER_PW'" || die "the shipper's password"
pass "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT, ${SCHEMA#"$REPO"/} applied"

# ---- the service ----------------------------------------------------------------------------
note "build"
(cd "$REPO" && cargo build --locked --quiet) || die "cargo build"
API=${CARGO_TARGET_DIR:-$REPO/target}/debug/api
[ -x "$API" ] || die "no binary at $API"

# api_start LOG_DIR MAX_BYTES KEEP: the service on a free port, its stderr in LOG_DIR.err.
api_start() {
  mkdir -p "$1"
  HOST=127.0.0.1 PORT=0 LOG_FILE="$1/api-{hostname}.log" LOG_MAX_BYTES=$2 LOG_KEEP=$3 \
    "$API" >"$1.err" 2>&1 &
  api_pid=$!
  local i
  API_URL=''
  for ((i = 0; i < 100; i++)); do
    API_URL=$(sed -n 's/.*"msg":"listening".*"addr":"\([0-9.:]*\)".*/http:\/\/\1/p' "$1.err")
    [ -n "$API_URL" ] && return 0
    sleep 0.1
  done
  return 1
}

# ---- the shipper: rsyslog as shipper.sh starts it in the image -------------------------------
# shipper_start LOG_DIR STATE_DIR
shipper_start() {
  mkdir -p "$2"
  SHIPPER_LOG_GLOB="$1/api*.log" SHIPPER_STATE_DIR=$2 SHIPPER_MODE=$MODE \
    SHIPPER_CONF=$CONF PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=shipper \
    PGDATABASE=events PGPASSWORD=$SHIPPER_PW "$SHIPPING/shipper.sh" >>"$WORK/rsyslog.out" 2>&1 &
  rsyslog_pid=$!
}
crashes=0
# crash: SIGKILL to rsyslog, counted only if it was running.
crash() {
  if kill -KILL "$rsyslog_pid" 2>/dev/null; then crashes=$((crashes + 1)); fi
  wait "$rsyslog_pid" 2>/dev/null
  rsyslog_pid=''
}
shipped() { sql -c 'SELECT count(*) FROM events'; }
# dump_table FILE: id, deliveries, record as hex; then the rejected lines' count.
dump_table() {
  sql -c "COPY (SELECT id, deliveries, encode(convert_to(record, 'UTF8'), 'hex') FROM events) TO STDOUT" >"$1" &&
    echo "#rejected $(sql -c 'SELECT count(*) FROM rejected_lines')" >>"$1"
}
# drain WANT SECS: waits until the table holds WANT rows, polling every 0.2 s, at most SECS
# (so at most 5 x SECS polls), and gives up after 15 s without a new row; prints the seconds
# it took.
drain() {
  local t0 i n last=-1 since=$SECONDS end=$((SECONDS + $2))
  t0=$(now)
  for ((i = 0; i < $2 * 5 && SECONDS <= end; i++)); do
    n=$(shipped)
    [ "$n" -ge "$1" ] && break
    if [ "$n" != "$last" ]; then last=$n since=$SECONDS; fi
    [ $((SECONDS - since)) -ge 15 ] && break
    sleep 0.2
  done
  secs "$t0" "$(now)"
}
accepted() { python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1] + "/"))["events_accepted"])' "$API_URL"; }
acked_count() { python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["acked"]))' "$1"; }
# judge PREFIX VERIFY_ARGS...: runs scripts/shipping/verify.py and counts its PASS and FAIL
# lines as checks of this script; a verifier that exits non-zero without a FAIL is one too.
# (It exits 1 after a FAIL of its own, so `|| echo FAIL` would count that failure twice.)
judge() {
  local prefix=$1 rc=0 failed_before=$failed
  shift
  python3 "$REPO/scripts/shipping/verify.py" "$@" >"$WORK/verify.out" 2>&1 || rc=$?
  verdicts "$prefix" <"$WORK/verify.out"
  if [ "$rc" -ne 0 ] && [ "$failed" -eq "$failed_before" ]; then fail "${prefix}verify.py $1 exited $rc"; fi
}

# ---- 1. at least once -------------------------------------------------------------------------
note "1. at least once: SIGKILLs, a PostgreSQL outage, refused writes, under load"
LOGS=$WORK/logs
api_start "$LOGS" 256KiB 1000 || die "the service did not start (see $LOGS.err)"
shipper_start "$LOGS" "$WORK/state"
phase_start=$SECONDS
python3 "$REPO/scripts/shipping/load.py" --url "$API_URL" --out "$WORK/load.json" \
  --conns 4 --rate "$RATE" --duration "$DURATION" --big-every 250 &
load_pid=$!
load_t0=$(now)
# The faults, at fixed points of the load (sleeps only pace them; nothing is timed).
pace=$(python3 -c "print(round($DURATION / 12, 2))")
sleep "$pace"
# The lag while the shipper keeps up, before any fault (the table read first: an upper bound).
in_table=$(shipped)
steady_lag=$(($(accepted) - in_table))
crash; sleep 0.5; shipper_start "$LOGS" "$WORK/state"
sleep "$pace"; crash; shipper_start "$LOGS" "$WORK/state"
sleep "$pace"
pg_stop
pg_down=$(secs "$load_t0" "$(now)")
check "PostgreSQL is down" not "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
sleep 2; crash; shipper_start "$LOGS" "$WORK/state"        # a crash while PostgreSQL is down
sleep 2
pg_up=$(secs "$load_t0" "$(now)")
pg_start || die "PostgreSQL did not start again"
sleep "$pace"; crash; sleep 1; shipper_start "$LOGS" "$WORK/state"
sleep "$pace"
# Refused writes: every insert fails (a constraint no row meets) for a few seconds.
sql -c 'ALTER TABLE events ADD CONSTRAINT shipping_test_refuse CHECK (false) NOT VALID' || fail "refuse writes"
sleep 3
sql -c 'ALTER TABLE events DROP CONSTRAINT shipping_test_refuse' || fail "accept writes again"
# A last crash, and the shipper stays down until the load ends: a backlog to drain.
crash
down_t0=$(now)
wait "$load_pid"
load_pid=''
load_seconds=$((SECONDS - phase_start))
acked=$(acked_count "$WORK/load.json")
lag=$((acked - $(shipped)))
down_s=$(secs "$down_t0" "$(now)")
shipper_start "$LOGS" "$WORK/state"
drain_s=$(drain "$acked" 120)
check "the shipper caught up: $(shipped) of $acked events in the table after ${drain_s}s" \
  [ "$(shipped)" -ge "$acked" ]
# The shipper's own account (`api-shipper status`): once idle, nothing behind in any file.
status() {
  SHIPPER_LOG_GLOB="$LOGS/api*.log" SHIPPER_STATE_DIR=$WORK/state "$SHIPPING/shipper.sh" status
}
# nothing_behind FILE: some files listed, none with bytes behind.
nothing_behind() { awk -F'\t' 'NR > 1 && $4 != 0 { behind = 1 } END { exit behind || NR < 2 }' "$1"; }
for ((i = 0; i < 50; i++)); do
  status >"$WORK/status.tsv"
  nothing_behind "$WORK/status.tsv" && break
  sleep 0.1
done
check "api-shipper status: all $(($(wc -l <"$WORK/status.tsv") - 1)) files shipped to their end" \
  nothing_behind "$WORK/status.tsv"
dump_table "$WORK/table.tsv" || die "read the table"
judge "" all "$WORK/load.json" "$LOGS" "$WORK/table.tsv"
during=$(python3 -c 'import json,sys; print(sum(1 for _, t in json.load(open(sys.argv[1]))["acked"] if float(sys.argv[2]) <= t <= float(sys.argv[3])))' \
  "$WORK/load.json" "$pg_down" "$pg_up")
check "events were acknowledged while PostgreSQL was down ($during)" [ "$during" -gt 0 ]
retries=$(grep -c 'ship_event: .*retrying' "$WORK/pg/server.log")
check "the refused writes reached ship_event, which waited ($retries retries) instead of failing" [ "$retries" -gt 0 ]
rotations=$(find "$LOGS" -name 'api-*.*Z.log' | wc -l)
check "the service rotated its log ($rotations rotated files of 256 KiB)" [ "$rotations" -ge 3 ]
check "rsyslog was killed while running ($crashes times)" [ "$crashes" -ge 4 ]
figure "load: $acked events in ${load_seconds}s (4 connections, at most $RATE/s), $rotations rotations, $crashes SIGKILLs of rsyslog, PostgreSQL down $(python3 -c "print(round($pg_up - $pg_down, 1))")s, writes refused 3s"
figure "lag: at most $steady_lag events behind under load before the faults; at the end of the load, after the shipper's last ${down_s}s down, $lag, drained in ${drain_s}s$(
  [ "$lag" -gt 0 ] && python3 -c "print(f' ({$lag / max($drain_s, 0.01):.0f} events/s)')")"
stop_pid "$rsyslog_pid" TERM; rsyslog_pid=''
stop_pid "$api_pid" TERM; api_pid=''

# ---- 2. retention meets shipping -----------------------------------------------------------------
note "2. retention: LOG_KEEP=2 x 64 KiB, the shipper down meanwhile"
sql -c 'TRUNCATE events, rejected_lines' || die "empty the table"
LOGS2=$WORK/logs2
api_start "$LOGS2" 64KiB 2 || die "the service did not start (see $LOGS2.err)"
shipper_start "$LOGS2" "$WORK/state2"
python3 "$REPO/scripts/shipping/load.py" --url "$API_URL" --out "$WORK/before.json" \
  --conns 1 --rate 200 --max-events 40 || die "load before the outage"
before=$(acked_count "$WORK/before.json")
drain "$before" 60 >/dev/null
# Caught up means also: the state records the live file's end. Wait for it (bounded), then
# take the shipper down and keep what its state says.
for ((i = 0; i < 100; i++)); do
  python3 "$REPO/scripts/shipping/verify.py" state "$WORK/state2" "$LOGS2" >"$WORK/state2.tsv"
  awk -F'\t' 'NR == 1 && $2 == $3 { ok = 1 } END { exit !(ok && NR == 1) }' "$WORK/state2.tsv" && break
  sleep 0.1
done
crash
python3 "$REPO/scripts/shipping/load.py" --url "$API_URL" --out "$WORK/outage.json" \
  --conns 1 --rate 1000 --max-events 1200 || die "load during the outage"
deleted=$(grep -c '"msg":"log file deleted"' "$LOGS2.err")
check "retention deleted files while the shipper was down ($deleted)" [ "$deleted" -ge 1 ]
shipper_start "$LOGS2" "$WORK/state2"
# What is left to ship: the events from before the outage and those in the files left.
want=$(python3 -c 'import json,re,sys,glob
ids = {a[0] for a in json.load(open(sys.argv[1]))["acked"]}
for p in glob.glob(sys.argv[2] + "/*.log"):
    ids.update(m.decode() for m in re.findall(rb"\"msg\":\"event\",\"host\":\"[^\"]*\",\"id\":\"([0-9a-f]+)\"", open(p, "rb").read()))
print(len(ids))' "$WORK/before.json" "$LOGS2")
drain "$want" 60 >/dev/null
dump_table "$WORK/table2.tsv" || die "read the table"
judge "" retention --before "$WORK/before.json" --outage "$WORK/outage.json" \
  --state "$WORK/state2.tsv" "$LOGS2" "$WORK/table2.tsv"
figure "retention: $deleted files deleted by LOG_KEEP while the shipper was down"
stop_pid "$rsyslog_pid" TERM; rsyslog_pid=''
stop_pid "$api_pid" TERM; api_pid=''

# ---- 3. the image ---------------------------------------------------------------------------------
note "3. the image: deploy/shipping/Dockerfile, run as compose.shipping.yaml runs it"
if ! "$DOCKER" info >/dev/null 2>&1; then
  skip "the shipper image: no Docker engine answers"
else
  sql -c 'TRUNCATE events, rejected_lines' || die "empty the table"
  IMAGE=api-shipping-test:$$
  build_t0=$(now)
  if timeout 900 "$DOCKER" build -q --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -t "$IMAGE" "$SHIPPING" >"$WORK/build.out" 2>&1; then
    image_built=1
    pass "the image builds from $DEBIAN_IMAGE ($(secs "$build_t0" "$(now)")s)"
  else
    tail -n 20 "$WORK/build.out"
    die "docker build deploy/shipping"
  fi
  LOGS3=$WORK/logs3
  api_start "$LOGS3" 256KiB 1000 || die "the service did not start (see $LOGS3.err)"
  mkdir -p "$WORK/state3"
  chown 10002:10001 "$WORK/state3" 2>/dev/null || chmod 777 "$WORK/state3"
  printf '%s\n' "$SHIPPER_PW" >"$WORK/shipper-password"
  chmod 644 "$WORK/shipper-password"
  # As compose.shipping.yaml runs it (read-only, no capabilities, the logs read only, the
  # password as a file), on the host's network to reach the test's PostgreSQL on 127.0.0.1.
  container=api-shipping-test-$$
  run_shipper() {
    "$DOCKER" run -d --name "$container" --network host --read-only --cap-drop ALL \
      --security-opt no-new-privileges:true --memory 64m --pids-limit 32 \
      -v "$LOGS3:/logs:ro" -v "$WORK/state3:/var/lib/api-shipper" \
      -v "$WORK/shipper-password:/run/secrets/shipper-password:ro" \
      -e PGHOST=127.0.0.1 -e PGPORT="$PG_PORT" -e PGUSER=shipper -e PGDATABASE=events \
      -e PGPASSWORD_FILE=/run/secrets/shipper-password "$IMAGE" >/dev/null
  }
  run_shipper || die "docker run the shipper"
  python3 "$REPO/scripts/shipping/load.py" --url "$API_URL" --out "$WORK/load3.json" \
    --conns 2 --rate 200 --duration 4 --big-every 50 &
  load_pid=$!
  sleep 2
  kill_and_start() { "$DOCKER" kill "$container" >/dev/null && "$DOCKER" start "$container" >/dev/null; }
  check "the shipper's container killed (SIGKILL) and started again" kill_and_start
  wait "$load_pid"
  load_pid=''
  acked3=$(acked_count "$WORK/load3.json")
  drain "$acked3" 60 >/dev/null
  # The running process's own ids, seen from the host.
  ids=$(ps -o uid=,gid= -p "$("$DOCKER" inspect -f '{{.State.Pid}}' "$container")" | tr -s ' ' | sed 's/^ //')
  check "the shipper runs as uid gid $ids (10002 10001), not root" [ "$ids" = "10002 10001" ]
  mem=$("$DOCKER" stats --no-stream --format '{{.MemUsage}}' "$container")
  dump_table "$WORK/table3.tsv" || die "read the table"
  judge "image: " all "$WORK/load3.json" "$LOGS3" "$WORK/table3.tsv"
  added=$(($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") - $("$DOCKER" image inspect -f '{{.Size}}' "$DEBIAN_IMAGE")))
  figure "image: $((added / 1048576)) MiB on top of its Debian base; the shipper's memory after the run: $mem"
fi

figure "cost: $((SECONDS - started))s in all"
