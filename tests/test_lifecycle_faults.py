"""Lifecycle under faults: logging from the fork hook. The risky parts run
in child interpreters with timeouts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb_object_store
from helpers import MiB, package_records, run_python
from lmdb_object_store import LmdbObjectStore

PKG_PARENT = str(Path(lmdb_object_store.__file__).resolve().parent.parent)


def run_child(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that imports this same package, with no
    logging configured; return the finished process (whatever its status)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PKG_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# --------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------


def test_growth_logged_from_the_before_fork_hook_prints_no_lock_error(tmp_path):
    proc = run_child(
        """
        import os, sys
        from lmdb_object_store import LmdbObjectStore
        store = LmdbObjectStore(sys.argv[1], batch_size=1000, map_size=1 << 20)
        store[b"big"] = b"x" * (2 << 20)  # its commit before the fork grows the map
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert store.pending == 0
        store.close()
        """,
        str(tmp_path / "db"),
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == "", describe(proc)


def test_growth_is_logged_at_info_and_unconfigured_logging_prints_nothing(tmp_path, package_logs):
    proc = run_child(
        """
        import sys
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore(sys.argv[1], map_size=1 << 20) as store:
            store.put_many({b"big": b"x" * (2 << 20)})
            assert store.info()["map_size"] > 1 << 20
        """,
        str(tmp_path / "child-db"),
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == "", describe(proc)

    handlers = logging.getLogger("lmdb_object_store").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    with LmdbObjectStore(tmp_path / "db", map_size=1 * MiB) as store:
        store.put_many({b"big": b"x" * (2 * MiB)})
    grew = [r for r in package_records(package_logs) if "growing" in r.getMessage()]
    assert grew and all(r.levelno == logging.INFO for r in grew)


def test_package_import_brings_logging_in(tmp_path):
    out = run_python(
        """
        import sys
        assert "logging" not in sys.modules
        import lmdb_object_store
        print("logging" in sys.modules)
        """
    )
    assert out == "True\n"
