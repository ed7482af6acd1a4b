#!/usr/bin/env bash
# The image for linux/amd64 and linux/arm64, both from the one Dockerfile, built on this machine
# with BuildKit's --platform (the build stage cross-compiles: no emulation), and checked:
#   - each image's config names its platform, and its /api is a static ELF binary for that
#     architecture carrying the dependency list cargo tree gives for its target
#     (cargo-auditable);
#   - the OCI labels: version from Cargo.toml, revision HEAD, created the commit's time,
#     licences Cargo.toml's;
#   - the layer holds /api (root, 0755), /app (root) and /app/logs (10001), each dated
#     SOURCE_DATE_EPOCH, and nothing else;
#   - reproducible: a second build of each platform, without the cache and from a copy in
#     another directory, gives the same layers (the config's `created` is the engine's);
#   - the arm64 image runs: the kernel cannot run aarch64 code without a binfmt handler, so
#     qemu-aarch64-static is mounted into the container as its entrypoint: --version,
#     GET /health, POST /events, --healthcheck, uid 10001, a clean `docker stop`.
# Prints PASS/FAIL per check and the figures; exits 1 if any check failed. Removes its
# images and container, even on failure.
#
# Usage: scripts/image-test.sh
# Needs a Docker engine and a CLI that builds with BuildKit (DOCKER_BUILDKIT=1: the 20.10 CLI,
# or one with the buildx plugin), qemu-aarch64-static (Debian: qemu-user-static), file(1),
# curl, git and python3.
# Environment (defaults in brackets):
#   BUILDER_IMAGE [rust:1.95-slim-bookworm]  Rust toolchain image passed to the build
#   DOCKER        [docker]                   docker CLI
#   IT_PORT       [18095]                    host port of the arm64 run, on 127.0.0.1 only
#   IT_MAX_IMAGE_BYTES [1572864]             the amd64 image's size budget
#   IMAGE_SOURCE_URL                         org.opencontainers.image.source [git remote origin]
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2

BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
DOCKER=${DOCKER:-docker}
PORT=${IT_PORT:-18095}
MAX_IMAGE_BYTES=${IT_MAX_IMAGE_BYTES:-1572864}
QEMU=qemu-aarch64-static
TAG=api-imgtest$$
RUN_NAME=$TAG-arm64
WORK=$(mktemp -d /tmp/api-imgtest.XXXXXX)
images=()

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  "$DOCKER" rm -f "$RUN_NAME" >/dev/null 2>&1
  # --no-prune keeps the untagged build layers, so the next run's build is cached.
  for i in "${images[@]}"; do "$DOCKER" rmi --no-prune "$i" >/dev/null 2>&1; done
  rm -rf "$WORK"
  exit_with_report "$rc"
}
on_exit cleanup

# ---- preflight -----------------------------------------------------------------------------
note "preflight"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers ($DOCKER info)"
cli_major=$("$DOCKER" version -f '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
"$DOCKER" buildx version >/dev/null 2>&1 || [ "${cli_major:-99}" -lt 23 ] ||
  die "$DOCKER cannot build with BuildKit (no buildx plugin; set DOCKER to a 20.10 CLI)"
for tool in "$QEMU" file curl git python3; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: qemu-user-static, file, curl)"
done
port_free "$PORT" || die "127.0.0.1:$PORT is in use (set IT_PORT)"

meta=$(cargo metadata --no-deps --format-version 1 --offline) || die "cargo metadata"
version=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["packages"][0]["version"])' "$meta")
license=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["packages"][0]["license"])' "$meta")
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
revision=$(git rev-parse HEAD)
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
# Credentials in a remote URL stay out of the label.
source_url=${IMAGE_SOURCE_URL:-$(git remote get-url origin 2>/dev/null | sed -E 's#://[^/@]*@#://#')}
check "the Dockerfile's default VERSION is Cargo.toml's ($version)" \
  grep -qx "ARG VERSION=$version" Dockerfile

# ---- builds --------------------------------------------------------------------------------
# Each build reads its own copy of the working tree (what a commit would hold).
copy_tree "$REPO" "$WORK/a/api" || die "copy the working tree"
copy_tree "$REPO" "$WORK/b/other/place" || die "copy the working tree"
# build PLATFORM TAG DIR [--no-cache]: BuildKit build for PLATFORM; prints the seconds. It runs
# in a command substitution: the caller adds TAG to `images`.
build() {
  local t0 log=$WORK/build-$2.log
  t0=$(now)
  if ! DOCKER_BUILDKIT=1 timeout 1800 "$DOCKER" build --platform "$1" "${@:4}" \
    --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$created" --build-arg "SOURCE_URL=$source_url" \
    -t "$2" "$3" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    return 1
  fi
  secs "$t0" "$(now)"
}
inspect() { "$DOCKER" image inspect -f "$2" "$1"; }

declare -A arch=([linux/amd64]=amd64 [linux/arm64]=arm64)
declare -A triple=([linux/amd64]=x86_64-unknown-linux-musl [linux/arm64]=aarch64-unknown-linux-musl)
declare -A elf=([linux/amd64]="x86-64" [linux/arm64]="ARM aarch64")

for platform in linux/amd64 linux/arm64; do
  a=${arch[$platform]} img=$TAG:${arch[$platform]}
  note "$platform"
  images+=("$img")
  took=$(build "$platform" "$img" "$WORK/a/api") || { fail "$platform: build"; continue; }
  pass "$platform: build (${took}s, with whatever this machine's build cache holds)"

  check "$platform: the config says $a/linux" [ "$(inspect "$img" '{{.Architecture}}/{{.Os}}')" = "$a/linux" ]
  size=$(inspect "$img" '{{.Size}}')
  figure "$platform image: $size bytes ($(python3 -c "print(round($size / 1048576, 3))") MiB)"
  [ "$a" = amd64 ] && check "$platform: image size $size <= $MAX_IMAGE_BYTES bytes" [ "$size" -le "$MAX_IMAGE_BYTES" ]

  label() { inspect "$img" "{{index .Config.Labels \"org.opencontainers.image.$1\"}}"; }
  check "$platform: labels version=$version revision=${revision:0:12} created=$created licenses=$license" \
    [ "$(label version) $(label revision) $(label created) $(label licenses)" = "$version $revision $created $license" ]
  check "$platform: label source is set as given ('$source_url')" [ "$(label source)" = "$source_url" ]

  # The layers as `docker save` writes them: every entry with its mode, owner and time.
  "$DOCKER" save "$img" >"$WORK/$a.tar" || fail "$platform: docker save"
  entries=$(python3 - "$WORK/$a.tar" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as image:
    manifest = json.load(image.extractfile("manifest.json"))
    for layer in manifest[0]["Layers"]:
        with tarfile.open(fileobj=image.extractfile(layer)) as t:
            for e in t.getmembers():
                print(f"{e.name} {e.mode & 0o7777:o} {e.uid}:{e.gid} {e.mtime}")
PY
  )
  want=$(printf '%s\n' "api 755 0:0 $SOURCE_DATE_EPOCH" "app 755 0:0 $SOURCE_DATE_EPOCH" \
    "app/logs 755 10001:10001 $SOURCE_DATE_EPOCH")
  check "$platform: the layers hold /api, /app and /app/logs only, owned and dated as built" \
    [ "$(sort <<<"$entries")" = "$want" ]
  [ "$(sort <<<"$entries")" = "$want" ] || printf '  %s\n' "$entries"

  cid=$("$DOCKER" create --platform "$platform" "$img") && "$DOCKER" cp "$cid:/api" "$WORK/api-$a" >/dev/null
  "$DOCKER" rm "$cid" >/dev/null 2>&1
  kind=$(file -b "$WORK/api-$a")
  figure "$platform binary: $(stat -c %s "$WORK/api-$a") bytes: $kind"
  # shellcheck disable=SC2016  # expanded by the inner bash
  check "$platform: /api is a static ${elf[$platform]} executable" \
    bash -c '[[ $1 == *"$2"* && $1 == *static* ]]' _ "$kind" "${elf[$platform]}"
  cargo tree --locked --offline --target "${triple[$platform]}" -e normal,build --prefix none |
    scripts/deps.py tree >"$WORK/tree-$a"
  # shellcheck disable=SC2016  # expanded by the inner bash
  check "$platform: /api carries the dependency list cargo tree gives for ${triple[$platform]}" \
    bash -c 'scripts/deps.py embedded "$1" | diff -u "$2" -' _ "$WORK/api-$a" "$WORK/tree-$a"

  # Reproducible: from nothing cached, in another directory, the same layers.
  again=$TAG:$a-again
  images+=("$again")
  took=$(build "$platform" "$again" "$WORK/b/other/place" --no-cache) || { fail "$platform: rebuild"; continue; }
  figure "$platform: rebuild without the cache: ${took}s"
  check "$platform: the rebuild has the same layers ($(inspect "$img" '{{json .RootFS.Layers}}'))" \
    [ "$(inspect "$img" '{{json .RootFS.Layers}}')" = "$(inspect "$again" '{{json .RootFS.Layers}}')" ]
  figure "$platform: config created $(inspect "$img" '{{.Created}}'), rebuild's $(inspect "$again" '{{.Created}}'); image IDs $(inspect "$img" '{{.Id}}' | cut -c8-19), $(inspect "$again" '{{.Id}}' | cut -c8-19)"
done

# ---- the arm64 image runs (under qemu-user) ------------------------------------------------
note "the arm64 image, run under $QEMU (127.0.0.1:$PORT)"
img=$TAG:arm64
qemu_run=(--platform linux/arm64 -v "$(command -v "$QEMU"):/qemu:ro" --entrypoint /qemu)
if "$DOCKER" image inspect "$img" >/dev/null 2>&1; then
  out=$("$DOCKER" run --rm --network none "${qemu_run[@]}" "$img" /api --version 2>&1)
  check "--version says api $version ($out)" [ "$(tail -n 1 <<<"$out")" = "api $version" ]
  # Hardened as in the README, but with the image's own /app/logs (no volume, not read-only):
  # its owner is part of what is checked. No HEALTHCHECK: the image's probe execs /api directly.
  "$DOCKER" run -d --name "$RUN_NAME" --cap-drop ALL --security-opt no-new-privileges:true \
    --no-healthcheck -p "127.0.0.1:$PORT:8000" "${qemu_run[@]}" "$img" /api >/dev/null ||
    fail "docker run the arm64 image"
  code='' body=''
  for ((i = 0; i < 50; i++)); do
    body=$(curl -s -m 2 "http://127.0.0.1:$PORT/health") && break
    sleep 0.2
  done
  check "GET /health is 200 {\"status\":\"ok\"} (got $body)" [ "$body" = '{"status":"ok"}' ]
  code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data '{"type":"imgtest-arm64"}' "http://127.0.0.1:$PORT/events")
  check "POST /events is 201 (got $code)" [ "$code" = 201 ]
  check "--healthcheck inside the container exits 0" "$DOCKER" exec "$RUN_NAME" /qemu /api --healthcheck
  uids=$("$DOCKER" top "$RUN_NAME" -o pid,uid | awk 'NR > 1 {print $2}' | sort -u | paste -sd,)
  check "the process runs as uid 10001 (docker top: $uids)" [ "$uids" = 10001 ]
  "$DOCKER" stop "$RUN_NAME" >/dev/null
  check "docker stop: exit 0 after the drain" [ "$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$RUN_NAME")" = 0 ]
  log=$("$DOCKER" cp "$RUN_NAME:/app/logs/api.log" - 2>/dev/null | tar -xO 2>/dev/null)
  # shellcheck disable=SC2016  # expanded by the inner bash
  check "the event and the drain are in /app/logs/api.log" \
    bash -c 'grep -q imgtest-arm64 <<<"$1" && grep -q drained <<<"$1"' _ "$log"
  "$DOCKER" rm -f "$RUN_NAME" >/dev/null 2>&1
else
  fail "no arm64 image to run"
fi
