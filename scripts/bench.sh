#!/usr/bin/env bash
# Performance benchmark of the api: CPU per request, latency, memory,
# start-up and shutdown times, against the same binary with logging off and
# against Debian's nginx.  Not a test: nothing here asserts a timing.
#
#   scripts/bench.sh              full run (~10 min), report in target/bench/
#   scripts/bench.sh --quick      short rounds, for development
#   scripts/bench.sh --profile    also perf profiles of the api (where CPU goes)
#   scripts/bench.sh --instructions   also instructions/request (callgrind),
#                                 which stay the same on a busy machine
#   scripts/bench.sh --sync       also POST /events with EVENT_SYNC=none and data
#                                 at 1, 16 and 64 connections, and fdatasync latency
#   scripts/bench.sh --rev HEAD   build and measure a commit, not the work tree
#   scripts/bench.sh --help       all options
#
# The measuring is done by scripts/bench/bench.py and its modules next to it
# (Python standard library);
# this wrapper installs what is missing (wrk, nginx, perf for --profile),
# raises the open-file limit for the idle-connection run, and makes sure that
# every process started on the way is gone when it exits, however it exits.
# Traffic goes to 127.0.0.1 only, and every load loop is bounded in time.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
for a in "$@"; do
  case "$a" in
    --profile|--profile-only) command -v perf >/dev/null || need+=(linux-perf) ;;
    --instructions|--instructions-only) command -v valgrind >/dev/null || need+=(valgrind) ;;
  esac
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# The idle-connection run holds thousands of sockets in the client and the server.
raise_nofile

cmdline="scripts/bench.sh"
[[ -n "${CARGO_TARGET_DIR:-}" ]] && cmdline="CARGO_TARGET_DIR=$CARGO_TARGET_DIR $cmdline"
for a in "$@"; do
  if [[ "$a" =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then cmdline+=" $a"; else cmdline+=" $(printf '%q' "$a")"; fi
done

# bench.py's own clean-up stops what it started; if it dies without (SIGKILL, a crash),
# whatever it left running in its process group is stopped on exit.
rc=0
run_group python3 "$repo/scripts/bench/bench.py" --command "$cmdline" "$@" || rc=$?
exit "$rc"
