"""Checks the release artifacts in a directory: one wheel per given CPython
version with the package's files, a manylinux tag no newer than 2_28 that
auditwheel confirms, and an sdist with every file a build needs.

    python .ci/check_dist.py DIST 3.10 3.11 ...
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]

# The newest manylinux baseline a wheel may need: glibc 2.28 (2018; Debian 10,
# RHEL 8, Ubuntu 18.10). The build aims at 2_17; this is the hard limit.
NEWEST_GLIBC = (2, 28)

WHEEL_FILES = (
    "lmdb_object_store/__init__.py",
    "lmdb_object_store/_native.pyi",
    "lmdb_object_store/py.typed",
)

SDIST_FILES = (
    "Cargo.toml",
    "Cargo.lock",
    "pyproject.toml",
    ".cargo/config.toml",
    "src/lib.rs",
    "crates/engine/Cargo.toml",
    "crates/engine/src/lib.rs",
    "README.md",
    "LICENSE",
    *WHEEL_FILES,
)


def fail(message: str) -> NoReturn:
    print(f"check_dist: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def package_version() -> str:
    # The version lives in Cargo.toml only (pyproject.toml reads it from there).
    cargo = (REPO / "Cargo.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.MULTILINE)
    if not match:
        fail("no version in Cargo.toml")
    return match.group(1)


def manylinux_glibc(tag: str) -> tuple[int, int]:
    """(2, 17) for manylinux_2_17_x86_64 or its alias manylinux2014_x86_64."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    match = re.match(r"manylinux_(\d+)_(\d+)_", tag)
    if match:
        return int(match.group(1)), int(match.group(2))
    for name, glibc in legacy.items():
        if tag.startswith(name + "_"):
            return glibc
    fail(f"not a manylinux platform tag: {tag}")


def check_wheel(wheel: Path, cp: str) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in WHEEL_FILES:
        if name not in names:
            fail(f"{wheel.name} lacks {name}")
    # cp310 -> _native.cpython-310-<platform>.so
    soabi = "cpython-" + cp.removeprefix("cp")
    natives = [n for n in names if re.fullmatch(rf"lmdb_object_store/_native\.{soabi}-.*\.so", n)]
    if len(natives) != 1:
        fail(f"{wheel.name}: expected one compiled module for {cp}, found {natives}")
    platforms = wheel.name[: -len(".whl")].split("-")[-1].split(".")
    for platform in platforms:
        if manylinux_glibc(platform) > NEWEST_GLIBC:
            fail(f"{wheel.name}: tag {platform} needs a glibc newer than 2.28")
    if sys.platform.startswith("linux"):
        shown = subprocess.run(
            [sys.executable, "-m", "auditwheel", "show", str(wheel)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"consistent with the following platform tag:\s*\"([^\"]+)\"", shown)
        if not match:
            fail(f"auditwheel show {wheel.name}: no platform tag in its output:\n{shown}")
        audited = match.group(1)
        if manylinux_glibc(audited) > min(manylinux_glibc(p) for p in platforms):
            fail(f"{wheel.name}: auditwheel says it needs {audited}, newer than its tag")
        print(f"  {wheel.name}: auditwheel accepts {audited}")


def check_sdist(sdist: Path, version: str) -> None:
    prefix = f"lmdb_object_store-{version}/"
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(prefix) for n in tar.getnames()}
    for name in SDIST_FILES:
        if name not in names:
            fail(f"{sdist.name} lacks {name}")
    print(f"  {sdist.name}: has the sources, Cargo.lock and .cargo/config.toml")


def main() -> None:
    dist = Path(sys.argv[1])
    versions = sys.argv[2:]
    if not versions:
        fail("no Python versions given")
    version = package_version()
    artifacts = sorted(dist.glob("lmdb_object_store-*"))
    expected: set[Path] = set()
    for python in versions:
        cp = "cp" + python.replace(".", "")
        wheels = [
            w for w in artifacts if w.name.startswith(f"lmdb_object_store-{version}-{cp}-{cp}-")
        ]
        if len(wheels) != 1:
            fail(f"expected one {cp} wheel of version {version} in {dist}, found {wheels}")
        check_wheel(wheels[0], cp)
        expected.add(wheels[0])
    sdist = dist / f"lmdb_object_store-{version}.tar.gz"
    if not sdist.is_file():
        fail(f"no sdist {sdist.name} in {dist}")
    check_sdist(sdist, version)
    expected.add(sdist)
    extra = [a.name for a in artifacts if a not in expected]
    if extra:
        fail(f"unexpected artifacts in {dist}: {extra}")
    print(f"check_dist: {len(versions)} wheels and the sdist of {version} are fine")


if __name__ == "__main__":
    main()
