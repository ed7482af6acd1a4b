#!/usr/bin/env bash
# What the service is made of, checked without a container engine:
#   - reproducible bytes: the static musl binary, built the way the image builds it
#     (`cargo auditable build --release --locked`), twice from clean copies of the working
#     tree in different directories with different CARGO_HOMEs, is byte-identical;
#   - the dependency list embedded in that binary names the crates `cargo tree` names for the
#     musl target, at the same versions;
#   - a CycloneDX SBOM for each image platform (cargo cyclonedx) names the same crates, each
#     with its purl, a licence and Cargo.lock's SHA-256;
#   - `cargo deny check`: advisories, licences, bans, sources (deny.toml), and a planted
#     advisory against a crate of the graph makes the advisories check fail.
# Prints PASS/FAIL per check and the figures; exits 1 if any check failed.
#
# Usage: scripts/supply-chain-test.sh
# Needs cargo-auditable, cargo-cyclonedx and cargo-deny (scripts/supply-tools.sh installs
# them), the x86_64-unknown-linux-musl target, git and python3; crates.io for the fresh
# CARGO_HOMEs. Without a tool the checks that need it are SKIPped, failures under CI=true.
# Environment:
#   ADVISORY_DB  a local copy of the RustSec advisory database (a git checkout), used offline;
#                unset: cargo-deny fetches the live one
#   SBOM_DIR     where the SBOMs are written [${CARGO_TARGET_DIR:-target}/sbom]
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2

TARGET=x86_64-unknown-linux-musl
PLATFORMS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)  # deny.toml's graph targets
# cargo-deny keeps the RustSec database in <db-path>/advisory-db-<hash of its URL>.
DENY_DB_DIR=advisory-db-3157b0e258782691
SBOM_DIR=${SBOM_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/sbom}
WORK=$(mktemp -d /tmp/api-supply.XXXXXX)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

have() { cargo "$1" --help >/dev/null 2>&1; }
version=$(cargo metadata --no-deps --format-version 1 --offline |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["packages"][0]["version"])')
# The commit's time: what the image build gets as SOURCE_DATE_EPOCH too.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH

# ---- reproducible bytes --------------------------------------------------------------------
# Each build gets its own copy of the working tree and its own CARGO_HOME, in differently
# named and nested directories, and maps both to the paths the image build uses (/src, the
# official image's registry), so no build-specific path reaches the binary. Both run the same
# toolchain and the same cargo-auditable: cargo hashes the path of the rustc wrapper into
# symbol names, which decide the code's layout.
note "reproducible build ($TARGET, cargo auditable build --release --locked)"
build_in() { # build_in SRC CARGO_HOME: fetch, then build; the binary is SRC/target/$TARGET/release/api
  local src=$1 home=$2 t0
  mkdir -p "$home"
  t0=$(now)
  (cd "$src" && CARGO_HOME=$home cargo fetch --locked --quiet) || return 1
  figure "cargo fetch into an empty CARGO_HOME: $(secs "$t0" "$(now)")s"
  t0=$(now)
  (cd "$src" && env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS CARGO_HOME="$home" \
    CARGO_TARGET_DIR="$src/target" CARGO_NET_OFFLINE=true \
    RUSTFLAGS="--remap-path-prefix=$src=/src --remap-path-prefix=$home/registry/src=/usr/local/cargo/registry/src" \
    cargo auditable build --quiet --release --locked --target "$TARGET") || return 1
  figure "clean release build in $src: $(secs "$t0" "$(now)")s"
}
bin1=$WORK/one/api/target/$TARGET/release/api
bin2=$WORK/two/nested/elsewhere/target/$TARGET/release/api
if ! have auditable; then
  skip "reproducible build: cargo-auditable not installed (scripts/supply-tools.sh)"
elif ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  skip "reproducible build: no $TARGET target (rustup target add $TARGET)"
else
  copy_tree "$REPO" "$WORK/one/api" && copy_tree "$REPO" "$WORK/two/nested/elsewhere"
  if build_in "$WORK/one/api" "$WORK/cargo-home" && build_in "$WORK/two/nested/elsewhere" "$WORK/two/home/.cargo"; then
    sha1=$(sha256sum "$bin1" | cut -d' ' -f1) sha2=$(sha256sum "$bin2" | cut -d' ' -f1)
    figure "binary: $(stat -c %s "$bin1") bytes, sha256 $sha1"
    check "two clean builds, different directories and CARGO_HOMEs, are byte-identical" \
      [ "$sha1" = "$sha2" ]
    [ "$sha1" = "$sha2" ] || echo "  second build: $(stat -c %s "$bin2") bytes, sha256 $sha2"
    leaked=$(grep -a -c -e "$WORK" "$bin1")
    check "no path of the build machine in the binary ($leaked lines name $WORK)" [ "$leaked" = 0 ]
    check "the remapped registry paths are there instead" grep -a -q /usr/local/cargo/registry/src/ "$bin1"
  else
    fail "the two clean builds"
  fi
fi

# ---- the dependency list: embedded, cargo tree, SBOM ---------------------------------------
tree_of() { # tree_of TARGET: the crates cargo builds for it, "name version" per line
  cargo tree --locked --offline --target "$1" -e normal,build --prefix none | scripts/deps.py tree
}
note "the dependency list embedded in the binary"
if [ -f "$bin1" ]; then
  tree_of "$TARGET" >"$WORK/tree-$TARGET" || fail "cargo tree --target $TARGET"
  if scripts/deps.py embedded "$bin1" >"$WORK/embedded"; then
    figure "embedded list: $(wc -l <"$WORK/embedded") crates, section .dep-v0"
    check "it names the crates and versions cargo tree names for $TARGET" \
      diff -u "$WORK/tree-$TARGET" "$WORK/embedded"
  else
    fail "read the embedded list of $bin1"
  fi
else
  skip "embedded list: no binary was built"
fi

note "CycloneDX SBOM (cargo cyclonedx), per image platform"
if ! have cyclonedx; then
  skip "SBOM: cargo-cyclonedx not installed (scripts/supply-tools.sh)"
else
  mkdir -p "$SBOM_DIR"
  # cargo cyclonedx writes next to Cargo.toml: run it in a copy of the tree.
  [ -d "$WORK/one/api" ] || copy_tree "$REPO" "$WORK/one/api"
  for platform in "${PLATFORMS[@]}"; do
    bom=$SBOM_DIR/api-$platform.cdx.json
    if (cd "$WORK/one/api" && CARGO_NET_OFFLINE=true cargo cyclonedx --quiet --target "$platform" \
      --describe binaries --spec-version 1.5 --format json) &&
      mv "$WORK/one/api/api_bin.cdx.json" "$bom"; then
      tree_of "$platform" >"$WORK/tree-$platform" || fail "cargo tree --target $platform"
      if scripts/deps.py sbom "$bom" Cargo.lock >"$WORK/sbom-$platform"; then
        pass "$platform: every component has its purl, a licence and Cargo.lock's SHA-256"
      else
        fail "$platform: SBOM components complete"
      fi
      check "$platform: the SBOM names the crates and versions cargo tree names" \
        diff -u "$WORK/tree-$platform" "$WORK/sbom-$platform"
      check "$platform: the SBOM describes api $version for $platform" python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))
c, props = b["metadata"]["component"], b["metadata"].get("properties", [])
sys.exit(not (c["name"] == "api" and c["version"] == sys.argv[2]
              and {"name": "cdx:rustc:sbom:target:triple", "value": sys.argv[3]} in props))' \
        "$bom" "$version" "$platform"
      figure "SBOM $bom: $(wc -l <"$WORK/sbom-$platform") components"
    else
      fail "$platform: cargo cyclonedx"
    fi
  done
fi

# ---- cargo deny ----------------------------------------------------------------------------
note "cargo deny (deny.toml)"
if ! have deny; then
  skip "cargo deny: cargo-deny not installed (scripts/supply-tools.sh)"
else
  check "licences, bans, sources" cargo deny --offline --locked check licenses bans sources
  # deny_with_db DBROOT ARGS...: cargo deny offline against the database in DBROOT/$DENY_DB_DIR.
  # Its age is printed, not judged (maximum-db-staleness): a pinned snapshot is as old as it
  # is, and an advisory published since cannot be in it.
  deny_with_db() {
    local root=$1; shift
    sed "/^\[advisories\]/a db-path = \"$root\"\nmaximum-db-staleness = \"P36500D\"" deny.toml >"$WORK/deny.toml"
    cargo deny --offline --locked --config "$WORK/deny.toml" "$@"
  }
  db=''
  if [ -n "${ADVISORY_DB:-}" ]; then
    if git -C "$ADVISORY_DB" rev-parse -q --verify HEAD >/dev/null 2>&1; then
      mkdir -p "$WORK/dbs" && ln -s "$(cd "$ADVISORY_DB" && pwd)" "$WORK/dbs/$DENY_DB_DIR"
      db=$WORK/dbs/$DENY_DB_DIR
      check "advisories (local database $ADVISORY_DB)" deny_with_db "$WORK/dbs" check advisories
    else
      fail "ADVISORY_DB=$ADVISORY_DB is not a git checkout of the advisory database"
    fi
  elif cargo deny --locked fetch db; then
    check "advisories (live database, just fetched)" cargo deny --offline --locked check advisories
    db=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/$DENY_DB_DIR
  else
    skip "advisories: the live database could not be fetched and ADVISORY_DB is not set"
  fi
  if [ -n "$db" ]; then
    when=$(git -C "$db" log -1 --format=%cI)
    age=$(( ($(date +%s) - $(git -C "$db" log -1 --format=%ct)) / 86400 ))
    figure "advisory database: $(find -H "$db" -path "$db/.git" -prune -o -name 'RUSTSEC-*.md' -print | wc -l) advisories, last commit $when ($age days old)"
    # The check can fail: the same database plus one advisory against a crate the binary
    # contains (log, every version affected) must fail it, naming that advisory.
    mkdir -p "$WORK/planted"
    cp -a "$db/." "$WORK/planted/$DENY_DB_DIR"
    mkdir -p "$WORK/planted/$DENY_DB_DIR/crates/log"
    cat >"$WORK/planted/$DENY_DB_DIR/crates/log/RUSTSEC-0000-0001.md" <<'EOF'
```toml
[advisory]
id = "RUSTSEC-0000-0001"
package = "log"
date = "2000-01-01"

[versions]
patched = []
```

# Planted by scripts/supply-chain-test.sh

Proves that the advisories check reads this database.
EOF
    git -C "$WORK/planted/$DENY_DB_DIR" add -A &&
      git -C "$WORK/planted/$DENY_DB_DIR" -c user.name=test -c user.email=test@localhost commit -q -m planted
    out=$(deny_with_db "$WORK/planted" check advisories 2>&1); code=$?
    # shellcheck disable=SC2016  # expanded by the inner bash
    check "a planted advisory against log fails the check (exit $code) and is named" \
      bash -c '[ "$1" != 0 ] && grep -q RUSTSEC-0000-0001 <<<"$2"' _ "$code" "$out"
  fi
fi
