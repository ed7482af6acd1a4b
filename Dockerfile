# Two stages: a Debian Rust toolchain builds one static musl binary; the runtime image is
# `scratch` holding that binary and an empty, non-root-owned /app/logs. Nothing else: no shell,
# no libc, no package manager. Builds with BuildKit, the legacy builder (docker-compose v1)
# and offline: no `# syntax=` line, no `RUN --mount`.

# Pinned toolchain; CI passes a local stand-in of the same image (see docs/testing.md).
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm

# ---- build: static binary ------------------------------------------------------------------
# Never run as a container, so no HEALTHCHECK (DL3057 is enabled for the runtime stage).
# hadolint ignore=DL3057
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
# The musl target of the building machine's architecture (x86_64 here; aarch64 on arm64
# hosts), so the image runs where it is built. musl links fully statically.
RUN rustup target add "$(uname -m)-unknown-linux-musl"

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit. A stub main.rs stands in for src/ while they compile;
# `cargo clean -p api` then drops the stub's artifacts so the real build cannot mistake
# them for up to date (COPY keeps the context's older mtimes).
COPY Cargo.toml Cargo.lock ./
RUN target="$(uname -m)-unknown-linux-musl" \
 && mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && cargo build --release --locked --target "$target" \
 && cargo clean --release --target "$target" -p api \
 && rm -rf src

COPY src ./src
RUN target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" \
 && cp "target/$target/release/api" /api \
 && mkdir -p /empty/logs

# ---- runtime: scratch ----------------------------------------------------------------------
FROM scratch

LABEL org.opencontainers.image.title="api" \
      org.opencontainers.image.description="Minimal HTTP microservice: GET /, GET /health, POST /events; JSON logs in /app/logs/api.log" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="scratch"

# /app is created root-owned first, so that only logs/ below it belongs to the runtime user
# (BuildKit would otherwise create the missing parent with the --chown owner too).
WORKDIR /app
# The binary stays root-owned (the service cannot replace it); /app/logs is the one place the
# service writes, owned by the runtime user so it works even without a volume.
COPY --from=build /api /api
COPY --from=build --chown=10001:10001 /empty/logs /app/logs

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
