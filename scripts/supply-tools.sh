#!/usr/bin/env bash
# Installs the supply-chain tools of scripts/supply-chain-test.sh from crates.io, by name, at
# pinned versions (`cargo install --locked`: each with the lock file it was released with), so
# a new release cannot change what CI checks unannounced. A tool already installed at its
# version is left alone; prints what each install cost.
#
# Usage: scripts/supply-tools.sh
#   cargo-auditable   embeds the dependency list in the binary (the Dockerfile's version)
#   cargo-cyclonedx   writes the CycloneDX SBOM
#   cargo-deny        advisories, licences, bans and sources of the dependency graph
# cargo-audit is not needed: cargo-deny reads the same RustSec database, and the test reads the
# embedded list itself (scripts/deps.py).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

auditable=$(sed -n 's/^ARG CARGO_AUDITABLE_VERSION=//p' Dockerfile)
[ -n "$auditable" ] || cannot_run "no ARG CARGO_AUDITABLE_VERSION in the Dockerfile"
tools=("cargo-auditable@$auditable" cargo-cyclonedx@0.5.9 cargo-deny@0.20.2)

installed=$(cargo install --list)
for tool in "${tools[@]}"; do
  name=${tool%@*} version=${tool#*@}
  if grep -qx "$name v$version:" <<<"$installed"; then
    echo "$name $version: installed"
    continue
  fi
  t0=$(now)
  cargo install --quiet --locked "$tool"
  figure "$name $version: installed in $(secs "$t0" "$(now)")s"
done
