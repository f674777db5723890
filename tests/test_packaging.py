"""Packaging (docs/releasing.md "What is built", "What CI checks on the
wheels") and the module-level API: lmdb_version, __version__, exports, typing
files, the bundled LMDB, the repository layout, and what the installed
distribution holds."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sysconfig
import urllib.parse
from pathlib import Path

import lmdb_object_store
from helpers import run_python
from lmdb_object_store import LmdbObjectStore, lmdb_version

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(lmdb_object_store.__file__).resolve().parent


def test_lmdb_version_is_the_bundled_0_9_24():
    version = lmdb_version()
    assert isinstance(version, tuple)
    assert len(version) == 3
    assert all(type(part) is int for part in version)
    assert version == (0, 9, 24)


def test_version_string():
    assert isinstance(lmdb_object_store.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", lmdb_object_store.__version__)


def test_version_matches_cargo_toml():
    cargo = (REPO / "Cargo.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.MULTILINE)
    assert match
    assert lmdb_object_store.__version__ == match.group(1)


def test_public_names():
    expected = {
        "LmdbObjectStore",
        "Error",
        "MapFullError",
        "ReadonlyError",
        "ClosedError",
        "UnpickleError",
        "lmdb_version",
        "__version__",
    }
    for name in expected:
        assert hasattr(lmdb_object_store, name), name
    assert expected <= set(lmdb_object_store.__all__)
    assert LmdbObjectStore.__name__ == "LmdbObjectStore"


def test_typing_files_ship_with_the_package():
    assert (PACKAGE_DIR / "py.typed").is_file()
    stubs = list(PACKAGE_DIR.glob("*.pyi"))
    assert stubs, "type stubs (.pyi) must ship with the package"
    text = "\n".join(p.read_text() for p in stubs)
    for name in ("LmdbObjectStore", "get_many", "put_many", "UnpickleError", "lmdb_version"):
        assert name in text, name


def test_extension_does_not_link_a_system_liblmdb():
    natives = [
        p
        for p in PACKAGE_DIR.iterdir()
        if p.name.startswith("_native") and p.suffix in (".so", ".pyd")
    ]
    assert natives, "compiled extension not found next to the package"
    for native in natives:
        # A dynamically linked liblmdb would appear as a DT_NEEDED string.
        assert b"liblmdb.so" not in native.read_bytes()


def test_sdist_carries_the_build_setting():
    # lmdb-rkv-sys bundles LMDB 0.9.24; LIBLMDB_NO_PKG_CONFIG keeps a build from
    # the sdist from linking a system liblmdb instead.
    cargo_config = (REPO / ".cargo" / "config.toml").read_text()
    assert 'LIBLMDB_NO_PKG_CONFIG = "1"' in cargo_config
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '{ path = ".cargo/config.toml", format = "sdist" }' in pyproject


def test_repository_layout():
    for rel in (
        "Cargo.toml",
        "pyproject.toml",
        "src",
        "lmdb_object_store/__init__.py",
        "lmdb_object_store/py.typed",
        "tests",
        "docs",
        "benchmarks",
        "examples",
        ".ci/run",
        "README.md",
        "CHANGELOG.md",
    ):
        assert (REPO / rel).exists(), rel
    assert list((REPO / "src").glob("*.rs")), "Rust sources in src/"
    assert list((REPO / "lmdb_object_store").glob("*.pyi")), "type stubs in the package"


def test_pyproject_uses_maturin_and_declares_test_deps():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'build-backend\s*=\s*"maturin"', text)
    assert re.search(r'requires-python\s*=\s*">=\s*3\.10"', text)
    test_deps = re.search(r"^test\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL)
    assert test_deps, "an optional 'test' dependency group"
    for dep in ("pytest", "hypothesis", "lmdb"):
        assert re.search(rf'"{dep}\b', test_deps.group(1)), dep


def test_cargo_dependencies():
    """The crates the project is built on, wherever in the workspace they are
    used: PyO3 in the binding only, LMDB in the engine only."""

    def dependencies(manifest: Path) -> str:
        deps = re.search(r"^\[dependencies\](.*?)(^\[|\Z)", manifest.read_text(), re.M | re.S)
        assert deps, manifest
        return deps.group(1)

    def names(text: str) -> set[str]:
        return set(re.findall(r"^([\w-]+)\s*=", text, re.M))

    binding = names(dependencies(REPO / "Cargo.toml"))
    engine = names(dependencies(REPO / "crates" / "engine" / "Cargo.toml"))
    assert {"pyo3", "parking_lot", "unicode-normalization"} <= binding
    assert {"lmdb-rkv", "lmdb-rkv-sys", "parking_lot"} <= engine
    assert "pyo3" not in engine
    assert not {"lmdb-rkv", "lmdb-rkv-sys"} & binding


def _installed_distribution():
    """The installed ``lmdb-object-store`` distribution and whether it is an
    editable install (``pip install -e`` or ``maturin develop``)."""
    dist = importlib.metadata.distribution("lmdb-object-store")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = bool(direct_url.get("dir_info", {}).get("editable", False))
    return dist, editable, direct_url


def test_the_package_under_test_is_the_installed_distribution():
    """What the suite imports is what pip installed: the editable checkout, or
    every file from the wheel's RECORD in site-packages. CI's wheel tests set
    LMDB_OBJECT_STORE_EXPECT_INSTALLED=1 so that a run against the source tree,
    or a wheel that lacks a file, fails here."""
    dist, editable, direct_url = _installed_distribution()
    if os.environ.get("LMDB_OBJECT_STORE_EXPECT_INSTALLED") == "1":
        assert not editable, f"an editable install ({direct_url}) where a wheel was expected"
    if editable:
        checkout = Path(urllib.parse.unquote(urllib.parse.urlparse(direct_url["url"]).path))
        assert PACKAGE_DIR.is_relative_to(checkout.resolve()), (PACKAGE_DIR, checkout)
        return
    site_dirs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    assert PACKAGE_DIR.parent in site_dirs, f"{PACKAGE_DIR} is not in site-packages"
    recorded = {Path(dist.locate_file(f)).resolve() for f in dist.files or ()}
    for name in ("__init__.py", "_native.pyi", "py.typed"):
        assert PACKAGE_DIR / name in recorded, f"{name} is not in the wheel"
    natives = [p for p in recorded if p.parent == PACKAGE_DIR and p.name.startswith("_native.")]
    assert [p.suffix for p in natives if p.suffix != ".pyi"] == [".so"], natives
    for path in recorded:
        assert path.exists(), f"{path} is in the wheel's RECORD but not installed"


def test_supported_pythons_agree():
    """The versions CI builds wheels for (.ci/pythons), the classifiers users
    see on the package index, and the release workflow's list are one list."""
    ci = subprocess.run(
        ["bash", str(REPO / ".ci" / "pythons"), "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert ci, "no supported versions in .ci/pythons"
    pyproject = (REPO / "pyproject.toml").read_text()
    classifiers = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert classifiers == ci
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text()
    lists = re.findall(r"--interpreter((?: python3\.\d+)+)", workflow)
    assert lists, "no --interpreter list in the workflow"
    for listed in lists:
        assert listed.split() == [f"python{v}" for v in ci], listed
    # It would also build interpreters the package does not support (3.13t).
    assert not re.search(r"args:.*--find-interpreter", workflow)
    minimum = re.search(r'requires-python\s*=\s*">=\s*(3\.\d+)"', pyproject)
    assert minimum and minimum.group(1) == ci[0]


def test_typing_example_runs(tmp_path):
    """The example CI type-checks is also a working program."""
    example = REPO / "examples" / "typing_example.py"
    out = run_python(
        f"""
        import runpy, tempfile
        tempfile.tempdir = {str(tmp_path)!r}
        runpy.run_path({str(example)!r}, run_name="__main__")
        """
    )
    assert "a closed store refuses reads" in out


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    command = "python -m pip install -e '.[test]' && python -m pytest"
    assert command in readme.splitlines()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
