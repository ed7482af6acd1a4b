#!/usr/bin/env bash
# The project's one test command: formatting, lints, the Rust test suite (unit and
# integration, over real sockets, files and processes), the same suite on the aarch64 build
# under qemu-user, the supply-chain checks (reproducible binary, dependency lists, SBOM,
# cargo deny), then the container checks and tests against a real Docker engine, the arm64
# image included. Without an engine the container part is reported as NOT RUN; under CI=true
# a missing engine is a failure.
#
# Usage: scripts/test.sh
# Environment: BUILDER_IMAGE, CURL_IMAGE and NGINX_IMAGE are passed on to the container,
# Swarm and load-balancer tests; ADVISORY_DB to the supply-chain checks; DIND_IMAGE (a
# Docker engine image, default docker:dind) to the three-node Swarm test.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

# part NAME: starts a part of the test command; each part's time is printed as the next
# begins, and all of them at the end.
times=() part_name='' part_t0=0
part() {
  part_end
  part_name=$1 part_t0=$SECONDS
  step "$1"
}
part_end() {
  if [ -n "$part_name" ]; then
    times+=("$(printf '%5d s  %s' $((SECONDS - part_t0)) "$part_name")")
    echo "($((SECONDS - part_t0)) s: $part_name)"
  fi
  part_name=''
}

part "cargo fmt --check"
cargo fmt --check
part "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
part "cargo test"
cargo test --locked

# The two share nothing (each its own build directories), so the supply-chain checks run
# alongside the emulated suite; their output follows once both are done. One part times the
# pair, up to the wait for both: the time of either alone is not what the run spends, so
# neither gets a row of its own.
part "aarch64 suite under qemu-user, with the supply-chain checks in parallel"
supply_log=$(mktemp)
scripts/supply-chain-test.sh >"$supply_log" 2>&1 &
supply_pid=$!
# (set -e applies in the trap too: a kill of the finished job must not fail the run)
trap 'kill "$supply_pid" 2>/dev/null || true; rm -f "$supply_log"' EXIT
aarch64_rc=0
scripts/aarch64-test.sh || aarch64_rc=$?
supply_rc=0
wait "$supply_pid" || supply_rc=$?
part_end
step "supply chain: reproducible binary, dependency lists, SBOM, cargo deny (ran in parallel)"
cat "$supply_log"
if [ "$aarch64_rc" != 0 ] || [ "$supply_rc" != 0 ]; then exit 1; fi

part "Kubernetes manifests (kustomize render, schemas, restricted profile, checkov)"
scripts/lint-kubernetes.sh
part "Prometheus: alert rules (promtool), the exposition, a real Prometheus scraping it"
scripts/prometheus-test.sh
part "log shipping: rsyslog into PostgreSQL, at least once across crashes and outages"
scripts/shipping-test.sh

if "${DOCKER:-docker}" info >/dev/null 2>&1; then
  part "container lint (hadolint, compose schema)"
  scripts/lint-container.sh
  part "container tests"
  scripts/container-test.sh
  part "images for linux/amd64 and linux/arm64: contents, labels, reproducible layers, arm64 run"
  scripts/image-test.sh
  part "Swarm: rolling update and rollback under load"
  scripts/swarm-test.sh
  part "compose + nginx: rolling restart under load"
  scripts/lb-test.sh
  part "three-node Swarm: rolling update, drain and node loss under load"
  scripts/multinode-test.sh
elif [ "${CI:-}" = true ]; then
  echo "error: no Docker engine answers; the container tests are required in CI" >&2
  exit 1
else
  printf '\nNOTE: container tests NOT RUN: no Docker engine answers (start one, then re-run).\n' >&2
fi

part_end
printf '\nTime per part:\n'
printf '  %s\n' "${times[@]}"
