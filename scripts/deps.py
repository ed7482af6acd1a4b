#!/usr/bin/env python3
"""What a build says it is made of, as sorted "name version" lines, for the supply-chain tests.

  deps.py embedded BINARY    the dependency list cargo-auditable embedded in an ELF binary (its
                             .dep-v0 section: zlib-compressed JSON), without the root package
  deps.py sbom BOM LOCKFILE  the components of a CycloneDX JSON SBOM; exits 1 if one lacks
                             its purl, a licence, or a SHA-256 equal to Cargo.lock's checksum
  deps.py tree               `cargo tree --prefix none` output on stdin, without the root
                             (the line that names a path) and the repeats

Standard library only: it reads binaries of any architecture, without binutils for them.
"""

import json
import re
import struct
import sys
import tomllib
import zlib


def elf_section(path, name):
    """The bytes of section `name` of a 64-bit little-endian ELF file, or None."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)

    names = header(shstrndx)[4]
    for i in range(shnum):
        sh_name, _, _, _, offset, size = header(i)
        end = data.index(b"\0", names + sh_name)
        if data[names + sh_name : end].decode() == name:
            return data[offset : offset + size]
    return None


def embedded(binary):
    raw = elf_section(binary, ".dep-v0")
    if raw is None:
        sys.exit(f"{binary}: no .dep-v0 section (not built with cargo auditable)")
    packages = json.loads(zlib.decompress(raw))["packages"]
    roots = [p for p in packages if p.get("root")]
    if len(roots) != 1:
        sys.exit(f"{binary}: {len(roots)} root packages in the embedded list, expected 1")
    return sorted({f"{p['name']} {p['version']}" for p in packages if not p.get("root")})


def sbom(bom_path, lock_path):
    with open(bom_path) as f:
        bom = json.load(f)
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    checksums = {
        (p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])
    }
    problems, lines = [], set()
    for c in bom.get("components", []):
        name, version = c["name"], c["version"]
        lines.add(f"{name} {version}")
        if c.get("purl") != f"pkg:cargo/{name}@{version}":
            problems.append(f"{name} {version}: purl {c.get('purl')!r}")
        sha = [h["content"] for h in c.get("hashes", []) if h.get("alg") == "SHA-256"]
        want = checksums.get((name, version))
        if want is None or sha != [want]:
            problems.append(f"{name} {version}: SHA-256 {sha} but Cargo.lock has {want!r}")
        if not c.get("licenses"):
            problems.append(f"{name} {version}: no licence")
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    if problems:
        sys.exit(f"{bom_path}: {len(problems)} incomplete components")
    return sorted(lines)


def tree(text):
    lines = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        # "name vX.Y.Z", then any of "(/path/of/the/root)", "(proc-macro)", "(*)" (a repeat)
        m = re.match(r"^(\S+) v(\S+)((?: \((?:/[^)]*|proc-macro|\*)\))*)$", line.strip())
        if not m:
            sys.exit(f"unexpected cargo tree line: {line!r}")
        name, version, notes = m.groups()
        if " (/" not in notes:
            lines.add(f"{name} {version}")
    return sorted(lines)


def main(argv):
    if len(argv) == 3 and argv[1] == "embedded":
        out = embedded(argv[2])
    elif len(argv) == 4 and argv[1] == "sbom":
        out = sbom(argv[2], argv[3])
    elif len(argv) == 2 and argv[1] == "tree":
        out = tree(sys.stdin.read())
    else:
        sys.exit(__doc__)
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv)
