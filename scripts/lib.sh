# Shell helpers shared by the scripts in this directory; source it, do not run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets no shell options: each script keeps its own (`set -euo pipefail` or `set -uo
# pipefail` for the check scripts, which must go on after a failed check).
# shellcheck shell=bash

# ---- reporting checks ----------------------------------------------------------------------
# One line per check, "PASS ...", "FAIL ..." or "SKIP ...", counted for the summary.
passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
# A check that could not run: under CI=true that is a failure, since CI must run them all.
skip() {
  if [ "${CI:-}" = true ]; then fail "$* (skipped, and CI=true)"; else skipped=$((skipped + 1)); echo "SKIP $*"; fi
}
# check WHAT CMD...: PASS if CMD succeeds, FAIL otherwise.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# A failed check the rest depends on: count it and stop (the EXIT trap cleans up).
die() { fail "$*"; exit 1; }
# The script cannot run at all (wrong user, a missing tool): exit 2 with the reason.
cannot_run() { echo "$(basename "$0" .sh): $*" >&2; exit 2; }

# figure TEXT: a measured figure, printed now and again by report_checks.
figures=()
figure() { echo "FIGURE $*"; figures+=("$*"); }

# The figures collected so far, then the closing count line.
report_checks() {
  local f
  for f in "${figures[@]}"; do echo "  $f"; done
  echo "$passed passed, $failed failed, $skipped skipped"
}

# verdicts [PREFIX]: counts the "PASS ...", "FAIL ..." and "FIGURE ..." lines on stdin (a
# verifier's output) as this script's checks and figures, each named with PREFIX in front,
# and echoes the other lines as they are. Feed it with `verdicts < <(CMD)`: after a pipe it
# would count in a subshell.
# shellcheck disable=SC2120  # PREFIX is optional
verdicts() {
  local line prefix=${1:-}
  while IFS= read -r line; do
    case $line in
      "PASS "*) pass "$prefix${line#PASS }" ;;
      "FAIL "*) fail "$prefix${line#FAIL }" ;;
      "FIGURE "*) figure "$prefix${line#FIGURE }" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
}

# exit_with_report RC: a blank line and the closing report, then exit: 1 if a check failed,
# RC otherwise. The last step of a clean-up that on_exit runs.
exit_with_report() {
  echo
  report_checks
  [ "$failed" -gt 0 ] && exit 1
  exit "$1"
}

# now: a timestamp; secs START END: the seconds between two of them.
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

note() { echo "---- $*"; }                # a group of checks
step() { printf '\n==> %s\n' "$*"; }      # a stage of a longer command

# ---- files and ports -----------------------------------------------------------------------
# copy_tree SRC DEST: the tracked and untracked, not ignored, files of the working tree at SRC
# into DEST (created): what a commit would hold, without build output or logs.
copy_tree() {
  mkdir -p "$2" &&
    (cd "$1" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
    tar -C "$2" -xf -
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# free_port: a port on 127.0.0.1 that was free a moment ago (the kernel's choice).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- clean-up ------------------------------------------------------------------------------
# on_exit FUNC: run FUNC when the script exits, however it exits; a signal exits with 130,
# which runs FUNC through the EXIT trap. FUNC should start with `trap - EXIT INT TERM HUP`.
on_exit() {
  # shellcheck disable=SC2064  # expand $1 now
  trap "$1" EXIT
  trap 'exit 130' INT TERM HUP
}

# ---- containers ----------------------------------------------------------------------------
# compose ARGS...: the compose command (the COMPOSE array) for project $PROJECT, run in $DIR
# with the image variables compose.yaml reads; callers put their own variables in front.
compose() {
  (cd "$DIR" && BUILDER_IMAGE=$BUILDER_IMAGE API_IMAGE=$IMAGE \
    timeout 1800 "${COMPOSE[@]}" -p "$PROJECT" "$@")
}

# health_of CONTAINER: its health status, or nothing if it has no healthcheck (or is gone).
health_of() { "${DOCKER:-docker}" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null; }

# wait_health CONTAINER WANT SECS: polls every 0.5 s, at most SECS*2 times and for at most
# SECS; on failure says what it saw, with the last probes, on stderr.
wait_health() {
  local i end=$((SECONDS + $3))
  for ((i = 0; i < $3 * 2 && SECONDS <= end; i++)); do
    [ "$(health_of "$1")" = "$2" ] && return 0
    sleep 0.5
  done
  echo "  health of ${1:0:12} is '$(health_of "$1")', wanted '$2' within $3s" >&2
  "${DOCKER:-docker}" inspect -f '{{range .State.Health.Log}}  probe: {{.ExitCode}} {{.Output}}{{end}}' "$1" >&2
  return 1
}

# free_net24 A.B FIRST: the first A.B.i, i from FIRST to 249, whose A.B.i.0/24 overlaps no
# IPv4 network of the engine; nothing if each one does.
free_net24() {
  local n
  for n in $("${DOCKER:-docker}" network ls -q); do
    "${DOCKER:-docker}" network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$n"
  done | python3 -c '
import ipaddress, sys
base, first = sys.argv[1], int(sys.argv[2])
used = [ipaddress.ip_network(s) for s in sys.stdin.read().split() if ":" not in s]
for i in range(first, 250):
    if not any(ipaddress.ip_network(f"{base}.{i}.0/24").overlaps(u) for u in used):
        print(f"{base}.{i}"); break' "$1" "$2"
}

# ---- benchmarks ----------------------------------------------------------------------------
# raise_nofile: the soft open-file limit up to the hard one, at most 65,536: the connection
# floods hold thousands of sockets in the client and in the server.
raise_nofile() {
  local hard
  hard="$(ulimit -Hn)"
  if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
  ulimit -n "$hard"
}

# run_group CMD...: runs CMD in a session (and process group) of its own and returns its exit
# status. Everything CMD starts stays in that group, so the group is stopped as a whole when
# the script exits, however it exits, even if CMD itself was killed before its own clean-up
# ran. Sets the script's EXIT trap (see on_exit).
group_leader=""
# shellcheck disable=SC2317,SC2329  # called from the EXIT trap
stop_group() {
  trap - EXIT INT TERM HUP
  if [ -n "$group_leader" ] && kill -0 -- "-$group_leader" 2>/dev/null; then
    kill -TERM -- "-$group_leader" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
      kill -0 -- "-$group_leader" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$group_leader" 2>/dev/null || true
  fi
}
run_group() {
  on_exit stop_group
  setsid "$@" &
  group_leader=$! # setsid made CMD the leader of a new process group
  local rc=0
  wait "$group_leader" || rc=$?
  return "$rc"
}
