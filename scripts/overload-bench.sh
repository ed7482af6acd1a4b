#!/usr/bin/env bash
# Overload benchmark: the latency of new clients' GET /health, and the RSS,
# while idle keep-alive and slowloris connections try to hold every slot
# (scripts/bench/overload.py says how).  Not a test: nothing asserts a timing.
#
#   scripts/overload-bench.sh                 the work tree's release build and nginx
#   scripts/overload-bench.sh --api before=/path/to/api --api after=target/release/api --nginx /usr/sbin/nginx
#
# Without arguments it builds the release binary (CARGO_TARGET_DIR is
# honoured) and compares it with Debian's nginx (installed if missing).
# The flood holds up to 10,000 sockets in the client: the open-file limit is
# raised for the run. Traffic goes to 127.0.0.1 only; every phase is bounded.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if (($# == 0)); then
  if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  fi
  cargo build --release --locked
  set -- --api "api=${CARGO_TARGET_DIR:-target}/release/api" --nginx "$(command -v nginx || echo /usr/sbin/nginx)"
fi

hard="$(ulimit -Hn)"
if [[ "$hard" != unlimited ]] && ((hard < 20000)); then
  echo "the open-file hard limit ($hard) is below the 10,000-connection flood; run as root or raise it" >&2
  exit 1
fi
raise_nofile

# The benchmark runs in a process group of its own, stopped as a whole on exit.
rc=0
run_group python3 "$repo/scripts/bench/overload.py" "$@" || rc=$?
exit "$rc"
