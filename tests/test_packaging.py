"""SPEC 10 (packaging) and the module-level API: lmdb_version, __version__,
exports, typing files, the bundled LMDB, and the repository layout."""

from __future__ import annotations

import re
from pathlib import Path

import lmdb_object_store
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
    text = (REPO / "Cargo.toml").read_text()
    deps = re.search(r"^\[dependencies\](.*?)(^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert deps
    for crate in ("pyo3", "lmdb-rkv", "parking_lot", "unicode-normalization"):
        assert re.search(rf"^{re.escape(crate)}\s*=", deps.group(1), re.MULTILINE), crate
