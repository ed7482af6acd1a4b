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

step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
step "cargo test"
cargo test --locked

# The two share nothing (each its own build directories), so the supply-chain checks run
# alongside the emulated suite; their output follows once both are done.
step "aarch64: the test suite on the arm64 build under qemu-user (supply-chain checks alongside)"
supply_log=$(mktemp)
t0=$(now)
scripts/supply-chain-test.sh >"$supply_log" 2>&1 &
supply_pid=$!
# (set -e applies in the trap too: a kill of the finished job must not fail the run)
trap 'kill "$supply_pid" 2>/dev/null || true; rm -f "$supply_log"' EXIT
aarch64_rc=0
scripts/aarch64-test.sh || aarch64_rc=$?
supply_rc=0
wait "$supply_pid" || supply_rc=$?
step "supply chain: reproducible binary, dependency lists, SBOM, cargo deny"
cat "$supply_log"
echo "(the emulated suite and these checks together: $(secs "$t0" "$(now)")s)"
if [ "$aarch64_rc" != 0 ] || [ "$supply_rc" != 0 ]; then exit 1; fi

step "Kubernetes manifests (kustomize render, schemas, restricted profile, checkov)"
scripts/lint-kubernetes.sh
step "Prometheus: alert rules (promtool), the exposition, a real Prometheus scraping it"
scripts/prometheus-test.sh
step "log shipping: rsyslog into PostgreSQL, at least once across crashes and outages"
scripts/shipping-test.sh

if "${DOCKER:-docker}" info >/dev/null 2>&1; then
  step "container lint (hadolint, compose schema)"
  scripts/lint-container.sh
  step "container tests"
  scripts/container-test.sh
  step "images for linux/amd64 and linux/arm64: contents, labels, reproducible layers, arm64 run"
  scripts/image-test.sh
  step "Swarm: rolling update and rollback under load"
  scripts/swarm-test.sh
  step "compose + nginx: rolling restart under load"
  scripts/lb-test.sh
  step "three-node Swarm: rolling update, drain and node loss under load"
  scripts/multinode-test.sh
elif [ "${CI:-}" = true ]; then
  echo "error: no Docker engine answers; the container tests are required in CI" >&2
  exit 1
else
  printf '\nNOTE: container tests NOT RUN: no Docker engine answers (start one, then re-run).\n' >&2
fi
