# Two stages: a Debian Rust toolchain builds one static musl binary; the runtime image is
# `scratch` holding that binary and an empty, non-root-owned /app/logs. Nothing else: no shell,
# no libc, no package manager. Builds with BuildKit and with the legacy builder
# (docker-compose v1): no `# syntax=` line, no `RUN --mount`; offline when the builder image
# already has cargo-auditable (below).
#
# linux/amd64 and linux/arm64 from any host, without emulation: the build stage runs on the
# building machine and cross-compiles for the platform asked for (`--platform`). The bytes are
# reproducible: the same sources and builder image give the same binary, and with the same
# SOURCE_DATE_EPOCH the same image layer.

# Pinned toolchain; CI passes a local stand-in of the same image (see docs/testing.md).
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
# The time every file in the image carries, in seconds since the epoch: the commit's time for
# a release, the epoch itself by default. Nothing else in the layer depends on when it is built.
ARG SOURCE_DATE_EPOCH=0

# ---- build: static binary ------------------------------------------------------------------
# Never run as a container, so no HEALTHCHECK (DL3057 is enabled for the runtime stage).
# BUILDPLATFORM is BuildKit's; the legacy builder leaves it unset, and a bare "linux" means
# the machine's own architecture there.
# hadolint ignore=DL3057
FROM --platform=${BUILDPLATFORM:-linux} ${BUILDER_IMAGE} AS build
WORKDIR /src

# cargo-auditable embeds the dependency list (crate names and versions, from Cargo.lock) in
# the binary, so scanners can read it from the shipped image. Installed from crates.io unless
# the builder image already has it (CI's offline stand-in does).
ARG CARGO_AUDITABLE_VERSION=0.7.7
RUN command -v cargo-auditable >/dev/null \
 || cargo install --locked "cargo-auditable@${CARGO_AUDITABLE_VERSION}"

# The musl target of the platform asked for: BuildKit sets TARGETARCH (amd64, arm64); the
# legacy builder does not, and builds for the machine it runs on. musl links fully
# statically; .cargo/config.toml links aarch64 with rust-lld, which ships with the toolchain.
# `rustup target add` is a no-op, offline too, for a target the toolchain already has.
ARG TARGETARCH
RUN arch="${TARGETARCH:-$(uname -m)}" \
 && case "$arch" in \
      amd64 | x86_64) arch=x86_64 ;; \
      arm64 | aarch64) arch=aarch64 ;; \
      *) echo "unsupported architecture: $arch (amd64 and arm64 are)" >&2; exit 1 ;; \
    esac \
 && echo "$arch-unknown-linux-musl" > /triple \
 && rustup target add "$(cat /triple)"

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit. A stub main.rs stands in for src/ while they compile;
# `cargo clean -p api` then drops the stub's artifacts so the real build cannot mistake
# them for up to date (COPY keeps the context's older mtimes).
COPY Cargo.toml Cargo.lock ./
COPY .cargo/config.toml .cargo/
RUN target="$(cat /triple)" \
 && mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && cargo auditable build --release --locked --target "$target" \
 && cargo clean --release --target "$target" -p api \
 && rm -rf src

COPY src ./src
RUN target="$(cat /triple)" \
 && cargo auditable build --release --locked --target "$target" \
 && cp "target/$target/release/api" /api

# The runtime files laid out as they will be, with fixed owners and times, for one COPY: the
# layer then depends only on the binary and SOURCE_DATE_EPOCH, never on when it was built.
# /app is root-owned, so that only logs/ below it belongs to the runtime user; the binary
# stays root-owned too (the service cannot replace it). The time is also in the directory's
# name: BuildKit reuses a cached COPY whose files match in content and owner, whatever their
# times, so only another source path makes a build with another time copy its own.
ARG SOURCE_DATE_EPOCH
RUN root="/rootfs/${SOURCE_DATE_EPOCH}" \
 && mkdir -p "$root/app/logs" \
 && cp /api "$root/api" \
 && chown 10001:10001 "$root/app/logs" \
 && chmod 755 "$root/api" "$root/app" "$root/app/logs" \
 && touch -d "@${SOURCE_DATE_EPOCH}" "$root/api" "$root/app/logs" "$root/app"

# ---- runtime: scratch ----------------------------------------------------------------------
FROM scratch

# Build arguments for the labels that depend on the checkout; empty when not given (README,
# "The container" shows the build command that sets them). VERSION follows Cargo.toml.
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="api" \
      org.opencontainers.image.description="Minimal HTTP microservice: GET /, GET /health, POST /events; JSON logs in /app/logs/api.log" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="scratch"

# COPY from another stage keeps the owners set above (10001 for /app/logs only).
ARG SOURCE_DATE_EPOCH
COPY --from=build /rootfs/${SOURCE_DATE_EPOCH}/ /
WORKDIR /app

# Numeric uid:gid: no passwd file needed, and Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM

# The binary probes its own GET /health on 127.0.0.1:$PORT (no curl in scratch).
# interval 5s: cheap (one exec of a small static binary) and it is also how long Docker 20.10+
#   waits before the first probe, so it sets the time from start to `healthy`.
# timeout 2s: the probe is one loopback request; a server that cannot answer in 2s is sick.
# start-period 5s: failures while the process starts do not count (it binds in milliseconds;
#   this covers a slow, overloaded host).
# retries 3: one slow answer is not an outage; `unhealthy` after about 15s of real failure.
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
  CMD ["/api", "--healthcheck"]

ENTRYPOINT ["/api"]
