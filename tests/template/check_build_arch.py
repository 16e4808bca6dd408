"""Fail when a native extension in the `sam build` output does not match the Lambda architecture.

An arm64 function that ships an x86_64 pydantic-core (or a cpython-311 build under python3.13)
deploys fine and then dies at import time. `sam build` picks wheels by the layer's
Metadata.BuildArchitecture; this script proves what it picked, from the ELF headers themselves.

    python tests/template/check_build_arch.py arm64 [--build-dir .aws-sam/build] [--python 3.13]

Exit status: 0 when every shared object matches, 1 when one does not (or none were found and
--allow-none was not given), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# ELF e_machine values (System V ABI): the only two Lambda architectures.
ELF_MACHINES: dict[int, str] = {62: "x86_64", 183: "arm64"}
# The spelling of each architecture in CPython extension suffixes and wheel platform tags.
PLATFORM_TOKENS: dict[str, tuple[str, ...]] = {"x86_64": ("x86_64",), "arm64": ("aarch64", "arm64")}
CPYTHON_TAG = re.compile(r"\.cpython-(?P<version>\d+)(?:[a-z]*)-(?P<platform>[a-z0-9_]+)-linux-gnu\.so$")


@dataclass(frozen=True)
class Finding:
    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def shared_objects(build_dir: Path) -> Iterator[Path]:
    """Every *.so and versioned *.so.N file under build_dir (vendored libs in *.libs/ included)."""
    for path in sorted(build_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and (path.suffix == ".so" or ".so." in path.name):
            yield path


def elf_architecture(path: Path) -> str:
    """The architecture an ELF file was built for, or a description of why it is not a Linux ELF."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return "not an ELF file (built for another OS?)"
    if header[4] != 2:
        return "32-bit ELF"
    byte_order = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack(f"{byte_order}H", header[18:20])
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def check(build_dir: Path, arch: str, python_version: str) -> tuple[list[Path], list[Finding]]:
    """Return (shared objects checked, problems found)."""
    wanted_cpython = python_version.replace(".", "")
    checked: list[Path] = []
    findings: list[Finding] = []
    for path in shared_objects(build_dir):
        checked.append(path)
        actual = elf_architecture(path)
        if actual != arch:
            findings.append(Finding(path, f"built for {actual}, expected {arch}"))
        tag = CPYTHON_TAG.search(path.name)
        if tag:
            if tag["version"] != wanted_cpython:
                findings.append(
                    Finding(path, f"built for cpython-{tag['version']}, expected {wanted_cpython}")
                )
            if tag["platform"] not in PLATFORM_TOKENS[arch]:
                findings.append(Finding(path, f"platform tag {tag['platform']}, expected {arch}"))
    return checked, findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("arch", choices=sorted(ELF_MACHINES.values()), help="Lambda architecture")
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"))
    parser.add_argument("--python", default="3.13", help="runtime version the extensions must target")
    parser.add_argument(
        "--allow-none", action="store_true", help="pass when the build has no native extension at all"
    )
    args = parser.parse_args(argv)

    if not args.build_dir.is_dir():
        print(f"check_build_arch: {args.build_dir} does not exist; run `sam build` first", file=sys.stderr)
        return 1
    checked, findings = check(args.build_dir, args.arch, args.python)
    for finding in findings:
        print(f"check_build_arch: {finding}", file=sys.stderr)
    if findings:
        print(
            f"check_build_arch: {len(findings)} problem(s) in {len(checked)} shared object(s)",
            file=sys.stderr,
        )
        return 1
    if not checked and not args.allow_none:
        print(
            f"check_build_arch: no native extension under {args.build_dir}; the layer should contain "
            "pydantic-core (did the dependency install fail?)",
            file=sys.stderr,
        )
        return 1
    print(f"check_build_arch: {len(checked)} shared object(s) under {args.build_dir}, all {args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
