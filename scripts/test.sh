#!/usr/bin/env bash
# The project's one test command: formatting, lints, the Rust test suite (unit and
# integration, over real sockets, files and processes), then the container checks and tests
# against a real Docker engine. Without an engine the container part is reported as NOT RUN;
# under CI=true a missing engine is a failure.
#
# Usage: scripts/test.sh
# Environment: BUILDER_IMAGE, CURL_IMAGE and NGINX_IMAGE are passed on to the container,
# Swarm and load-balancer tests.
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
  step "Swarm: rolling update and rollback under load"
  scripts/swarm-test.sh
  step "compose + nginx: rolling restart under load"
  scripts/lb-test.sh
elif [ "${CI:-}" = true ]; then
  echo "error: no Docker engine answers; the container tests are required in CI" >&2
  exit 1
else
  printf '\nNOTE: container tests NOT RUN: no Docker engine answers (start one, then re-run).\n' >&2
fi
