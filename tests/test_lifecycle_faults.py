"""Lifecycle under faults: closes that race with opens from unpickling code,
and logging from the fork hook. The risky parts run in child interpreters
with timeouts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmdb_object_store
from helpers import MiB, package_records, run_python, run_threads
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
# close() against opens and closes from unpickling code (lock order)
# --------------------------------------------------------------------------

# A reader thread unpickles a value: first a hook that lets the main thread
# start close() of the store being read (the close then waits for that read),
# then a part whose unpickling opens or closes a store. Both threads must
# finish.
CLOSE_DURING_NESTED_OPEN = """
    import sys, threading, time
    from lmdb_object_store import LmdbObjectStore

    path, what = sys.argv[1], sys.argv[2]
    entered = threading.Event()

    class Pause:
        def __init__(self):
            self.state = 1

        def __setstate__(self, state):
            entered.set()
            time.sleep(0.3)  # the main thread's close() starts meanwhile

    class CloseOther:
        def __init__(self):
            self.state = 1

        def __setstate__(self, state):
            OTHER.close()

    OTHER = LmdbObjectStore(path + "-other")
    store = LmdbObjectStore(path)
    map_addr = store.info()["map_addr"]
    nested = {
        "open-other": OTHER,         # unpickles as a new store on another file
        "open-same": store,          # ... on the file whose close is under way
        "close-other": CloseOther(),
    }[what]
    store[b"v"] = (Pause(), nested)
    store.flush()

    outcome = {}

    def reader():
        try:
            value = store[b"v"]
            if what == "open-same":
                reopened = value[1]
                outcome["same-env"] = reopened.info()["map_addr"] == map_addr
                reopened[b"written-after"] = "yes"
                reopened.close()
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = repr(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert entered.wait(10)
    closer = threading.Thread(target=store.close, daemon=True)
    closer.start()
    t.join(20)
    closer.join(20)
    if t.is_alive() or closer.is_alive():
        print("DEADLOCK", flush=True)
        import os
        os._exit(3)
    print(outcome)
    assert outcome.get("ok"), outcome
    assert store.closed
    if what == "open-same":
        assert outcome["same-env"], "the closing environment was opened a second time"
        with LmdbObjectStore(path) as again:
            assert again[b"written-after"] == "yes"
    if what == "close-other":
        assert OTHER.closed
    OTHER.close()
"""


@pytest.mark.parametrize("what", ["open-other", "open-same", "close-other"])
def test_close_does_not_deadlock_with_a_store_opened_or_closed_by_unpickling_code(tmp_path, what):
    proc = run_child(CLOSE_DURING_NESTED_OPEN, str(tmp_path / "db"), what, timeout=60)
    assert "DEADLOCK" not in proc.stdout, describe(proc)
    assert proc.returncode == 0, describe(proc)


def test_closing_and_reopening_one_file_from_many_threads_keeps_one_environment(tmp_path):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as first:
        first[b"n"] = 0

    def churn(t):
        def run():
            for i in range(30):
                with LmdbObjectStore(path) as store:
                    store[b"t%d-%02d" % (t, i)] = i
                    assert store[b"t%d-%02d" % (t, i)] == i

        return run

    results, errors = run_threads([churn(t) for t in range(6)], timeout=60)
    assert errors == [None] * 6
    with LmdbObjectStore(path) as again:
        assert len(again) == 1 + 6 * 30


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
