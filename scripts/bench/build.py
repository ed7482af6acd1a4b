"""Building the binaries to measure, and describing the machine and tools for
the report's header."""

import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

from procs import popen

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MUSL_TARGET = "x86_64-unknown-linux-musl"

def sh(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def build(args):
    """cargo build --release (glibc) and, if wanted, the musl build.

    With --rev, the named commit is exported with `git archive` into
    TARGET_DIR/bench/src and built there, so that a committed state is
    measured whatever is uncommitted in the work tree."""
    env = dict(os.environ, CARGO_TARGET_DIR=args.target_dir)
    src = REPO
    if args.rev:
        src = os.path.join(args.target_dir, "bench", "src")
        shutil.rmtree(src, ignore_errors=True)
        os.makedirs(src)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.rev],
                                 capture_output=True, check=True).stdout
        # -m: the files dated now, not at the commit. Cargo decides by dates whether a
        # file changed since the last build in this target directory, and a commit older
        # than the build before would look unchanged: the other commit's binary measured.
        subprocess.run(["tar", "-x", "-m", "-C", src], input=archive, check=True)
    cmds = [["cargo", "build", "--release", "--locked"]]
    if args.musl:
        cmds.append(cmds[0] + ["--target", MUSL_TARGET])
    if args.build_bare:
        bare = ["--manifest-path", os.path.join("scripts", "bench", "bare",
                                                "Cargo.toml")]
        bare += release_profile(os.path.join(src, "Cargo.toml"))
        cmds += [cmd + bare for cmd in cmds]
    for cmd in cmds:
        print(f"+ (cd {src} && {shlex.join(cmd)})", flush=True)
        p = popen(cmd, cwd=src, env=env)
        if p.wait() != 0:
            raise SystemExit(f"build failed: {shlex.join(cmd)}")


def release_profile(manifest):
    """The api's [profile.release] (with its per-package settings) as cargo
    --config arguments, so the bare server is built the same way.  A setting
    also given as a CARGO_PROFILE_RELEASE_* variable is left to the variable,
    which then applies to both builds."""
    with open(manifest, "rb") as f:
        profile = tomllib.load(f).get("profile", {}).get("release", {})

    def flat(table, prefix):
        for key, value in table.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
                key = json.dumps(key)  # package."*"
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}.{key}")
            else:
                yield f"{prefix}.{key}", value

    out = []
    for key, value in flat(profile, "profile.release"):
        var = "CARGO_" + key.upper().replace(".", "_").replace("-", "_")
        if "." not in key[len("profile.release."):] and var in os.environ:
            continue
        out += ["--config", f"{key}={json.dumps(value)}"]
    return out


def describe(args, variants, load0):
    """What the report's header says about the run, the machine and the tools."""
    return {
        "command": args.command or " ".join(map(shlex.quote, sys.argv)),
        "started": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "commit": (sh(["git", "-C", REPO, "rev-parse", "--short", args.rev])
                   if args.rev and not args.no_build else
                   sh(["git", "-C", REPO, "describe", "--always", "--dirty"])
                   + ("" if not args.no_build else " (prebuilt binaries)")),
        "cpu": cpu_model(),
        "ncpu": os.cpu_count(),
        "kernel": platform.release(),
        "load_start": " ".join(f"{x:.2f}" for x in load0),
        "rustc": sh(["rustc", "-V"]),
        "nginx": (sh([args.nginx, "-v"]) or subprocess.run(
            [args.nginx, "-v"], capture_output=True, text=True).stderr.strip()),
        "wrk": sh(["wrk", "-v"]).splitlines()[0] if sh(["wrk", "-v"]) else
        "wrk",
        "variants": [v["name"] for v in variants],
        "binaries": ", ".join(sorted({
            f"{v['binary']} ({os.path.getsize(v['binary']) / 1e6:.1f} MB)"
            for v in variants if v["kind"] in ("api", "bare")})) or "–",
    }
