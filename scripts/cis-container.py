#!/usr/bin/env python3
"""The container-level checks of the CIS Docker Benchmark as docker-bench-security runs
them (its sections 4, container images, and 5, container runtime), against one running
container, from `docker inspect`: the same conditions, so that a container that passes here
shows no warning there. docker-bench-security itself is a shell script fetched from GitHub,
which CI here cannot reach; docs/deploy.md has its own run and what it reported.

Left out, as they judge the host or the daemon rather than the container (4.5 content
trust, 5.1 swarm mode, 5.2 AppArmor), need a shell in the container (5.7 sshd; the image
has none), or are manual (4.2-4.4, 4.7-4.11, 5.9's list of ports, 5.19, 5.23, 5.24, 5.28).

Usage: scripts/cis-container.py CONTAINER   (DOCKER names the docker CLI, default docker)
Prints one line per check, "PASS<TAB>what" or "FAIL<TAB>what: why"; exits 1 if any failed.
"""

import json
import os
import subprocess
import sys

SENSITIVE = ["/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr"]


def inspect(*args):
    out = subprocess.run([os.environ.get("DOCKER", "docker"), *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)[0]


def checks(c, image, networks):
    hc = c["HostConfig"]
    cfg = c["Config"]
    sec = hc.get("SecurityOpt") or []
    ports = [(b.get("HostIp", ""), b.get("HostPort", ""))
             for bindings in (c["NetworkSettings"].get("Ports") or {}).values()
             for b in (bindings or [])]
    mounts = c.get("Mounts") or []
    user = cfg.get("User") or ""
    yield ("4.1 the container runs as a non-root user",
           user not in ("", "root", "0") and not user.startswith(("root:", "0:")),
           f"User={user!r}")
    yield ("4.6 the image has a HEALTHCHECK",
           bool((image.get("Config") or {}).get("Healthcheck")), "none")
    yield ("5.3 security options are set", bool(sec), "SecurityOpt is empty")
    yield ("5.4 no capabilities added", not hc.get("CapAdd"),
           f"CapAdd={hc.get('CapAdd')}")
    yield ("5.5 not privileged", not hc.get("Privileged"), "Privileged")
    rw_sensitive = [m["Destination"] for m in mounts
                    if m.get("Source") in SENSITIVE and m.get("RW")]
    yield ("5.6 no sensitive host directory mounted writable", not rw_sensitive,
           f"{rw_sensitive}")
    low = [p for _, p in ports if p and int(p) < 1025]
    yield ("5.8 no privileged host port", not low, f"{low}")
    yield ("5.10 the host's network namespace is not shared",
           hc.get("NetworkMode") != "host", "NetworkMode=host")
    yield ("5.11 memory is limited", hc.get("Memory", 0) > 0, "Memory=0")
    yield ("5.12 CPU is limited",
           hc.get("CpuShares", 0) > 0 or hc.get("NanoCpus", 0) > 0,
           "CpuShares=0 and NanoCpus=0")
    yield ("5.13 the root filesystem is read-only", bool(hc.get("ReadonlyRootfs")),
           "ReadonlyRootfs=false")
    anywhere = [f"{ip or '*'}:{p}" for ip, p in ports if ip in ("", "0.0.0.0", "::")]
    yield ("5.14 every published port is bound to a host interface", not anywhere,
           f"published on every interface: {anywhere}")
    retries = (hc.get("RestartPolicy") or {}).get("MaximumRetryCount", 0)
    yield ("5.15 restart retries are 5 at most", retries <= 5,
           f"MaximumRetryCount={retries}")
    yield ("5.16 the host's PID namespace is not shared", hc.get("PidMode") != "host",
           "PidMode=host")
    yield ("5.17 the host's IPC namespace is not shared", hc.get("IpcMode") != "host",
           "IpcMode=host")
    yield ("5.18 no host device exposed", not hc.get("Devices"),
           f"Devices={hc.get('Devices')}")
    shared = [m["Destination"] for m in mounts if "shared" in (m.get("Propagation") or "")]
    yield ("5.20 no mount propagation set to shared", not shared, f"{shared}")
    yield ("5.21 the host's UTS namespace is not shared", hc.get("UTSMode") != "host",
           "UTSMode=host")
    yield ("5.22 seccomp is not unconfined",
           not any(o.replace("=", ":") == "seccomp:unconfined" for o in sec),
           "seccomp:unconfined")
    yield ("5.25 the default cgroup is used", not hc.get("CgroupParent"),
           f"CgroupParent={hc.get('CgroupParent')}")
    yield ("5.26 no new privileges",
           any(o.startswith("no-new-privileges") and not o.endswith(("=false", ":false"))
               for o in sec), f"SecurityOpt={sec}")
    yield ("5.27 its health is checked", "Health" in (c.get("State") or {}),
           "no health status")
    pids = hc.get("PidsLimit")
    yield ("5.29 the PIDs cgroup limit is set", pids is not None and pids > 0,
           f"PidsLimit={pids}")
    docker0 = [n for n, opts in networks.items()
               if opts.get("com.docker.network.bridge.name") == "docker0"]
    yield ("5.30 not on the default bridge docker0", not docker0, f"{docker0}")
    yield ("5.31 the host's user namespace is not shared",
           "host" not in (hc.get("UsernsMode") or "").lower(), "UsernsMode=host")
    sock = [m["Source"] for m in mounts if "docker.sock" in (m.get("Source") or "")]
    yield ("5.32 the Docker socket is not mounted", not sock, f"{sock}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    c = inspect("inspect", sys.argv[1])
    image = inspect("image", "inspect", c["Image"])
    networks = {}
    for name in (c["NetworkSettings"].get("Networks") or {}):
        networks[name] = inspect("network", "inspect", name).get("Options") or {}
    failed = 0
    for what, ok, why in checks(c, image, networks):
        print(f"PASS\t{what}" if ok else f"FAIL\t{what}: {why}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
