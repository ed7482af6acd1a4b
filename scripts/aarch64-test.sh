#!/usr/bin/env bash
# The whole Rust test suite, unit and integration, on the aarch64 build, under qemu-user:
# cargo runs the test binaries through qemu-aarch64-static (its target runner) and the tests
# start the `api` binary through it too (API_RUNNER). No binfmt handler is registered: that
# would change how the kernel runs foreign binaries for the whole machine.
# Prints PASS/FAIL per check and what each part cost; exits 1 if any check failed.
#
# Usage: scripts/aarch64-test.sh [TEST FILTER...]     (arguments go to the test binaries)
# Needs the aarch64-unknown-linux-musl target (rustup target add), qemu-aarch64-static
# (Debian: qemu-user-static) and file(1). Without them it SKIPs, a failure under CI=true.
# Environment:
#   API_TIME_FACTOR [10]  how much longer the tests give the emulated binary where they give
#                         it a span of time to work in (tests/it/support.rs, time_factor):
#                         emulation's slowdown with some margin (docs/testing.md has the
#                         measured slowdown)
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.." || exit 2

TARGET=aarch64-unknown-linux-musl
QEMU=qemu-aarch64-static
summary() { local rc=$?; trap - EXIT INT TERM HUP; exit_with_report "$rc"; }
on_exit summary

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  skip "aarch64 suite: no $TARGET target (rustup target add $TARGET)"; exit 0
fi
for tool in "$QEMU" file; do
  command -v "$tool" >/dev/null || { skip "aarch64 suite: $tool not installed (Debian: qemu-user-static, file)"; exit 0; }
done
figure "$("$QEMU" --version | head -n 1)"

# The linker for the target comes from .cargo/config.toml (rust-lld).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=$QEMU API_RUNNER=$QEMU
export API_TIME_FACTOR=${API_TIME_FACTOR:-10}

t0=$(now)
cargo test --locked --target "$TARGET" --no-run || die "build the tests for $TARGET"
figure "build the test binaries for $TARGET: $(secs "$t0" "$(now)")s"

# What runs is the aarch64 build, and only through the emulator.
bin=${CARGO_TARGET_DIR:-target}/$TARGET/debug/api
kind=$(file -b "$bin")
# shellcheck disable=SC2016  # expanded by the inner bash
check "the api binary under test is a static aarch64 ELF ($kind)" \
  bash -c '[[ $1 == *"ARM aarch64"* && $1 == *static* ]]' _ "$kind"
out=$("$bin" --version 2>&1); code=$?
check "this machine cannot run it directly (exit $code: ${out##*: })" [ "$code" != 0 ]
check "it runs under $QEMU: $("$QEMU" "$bin" --version 2>&1)" "$QEMU" "$bin" --version

t0=$(now)
check "cargo test --target $TARGET under $QEMU (API_TIME_FACTOR=$API_TIME_FACTOR)" \
  cargo test --locked --target "$TARGET" -- "$@"
figure "the suite under emulation: $(secs "$t0" "$(now)")s"
