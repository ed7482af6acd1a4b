#!/bin/sh
# For the official postgres image: gives the role `shipper` (made by schema.sql) its password,
# read from the file SHIPPER_PASSWORD_FILE names (a compose or Swarm secret). Mounted into
# /docker-entrypoint-initdb.d after schema.sql, it runs once, when the data directory is
# first created. The image may run it or source it: hence no `set` and no `exit`; a failed
# psql fails the initialisation either way. The password goes through a psql variable,
# quoted by psql (:'pw'), never into the command text.
pw=$(cat "$SHIPPER_PASSWORD_FILE") &&
  echo "ALTER ROLE shipper PASSWORD :'pw';" |
  psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" \
    -d "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" -v pw="$pw"
