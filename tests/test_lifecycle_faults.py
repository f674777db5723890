"""Lifecycle under faults: threads still using stores when the interpreter
exits, stores dropped inside a read of their own file, final commits that
fail, closes that race with opens from unpickling code, and logging from the
fork hook. The risky parts run in child interpreters with timeouts."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmdb_object_store
from helpers import Hooked, MiB, package_records, run_python, run_threads, soak_rounds
from lmdb_object_store import LmdbObjectStore, MapFullError

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
# Daemon threads inside store calls when the interpreter exits
# --------------------------------------------------------------------------

# Daemon threads iterate values whose unpickling runs Python code (a reducer),
# optionally calling the store again from inside it; the main thread returns
# after a short while, with the threads in the middle of their calls.
DAEMON_READERS = """
    import random, sys, threading, time
    from lmdb_object_store import LmdbObjectStore

    path, nested = sys.argv[1], sys.argv[2] == "nested"
    store = LmdbObjectStore(path)

    def make(i):
        if nested:
            store.get(b"k00000")
        return {"i": i, "pad": "x" * 50}

    class Value:
        def __init__(self, i):
            self.i = i

        def __reduce__(self):
            return (make, (self.i,))

    if len(store) == 0:
        store.put_many({b"k%05d" % i: Value(i) for i in range(2000)})

    def reader():
        while True:
            for value in store.values():
                pass

    for _ in range(4):
        threading.Thread(target=reader, daemon=True).start()
    time.sleep(0.05 + random.random() * 0.25)
    print("main returns")
"""


@pytest.mark.parametrize(("nested", "runs"), [("plain", 20), ("nested", 8)])
def test_daemon_threads_reading_at_interpreter_exit_never_crash_the_process(
    tmp_path, rearm_watchdog, nested, runs
):
    path = str(tmp_path / "db")
    for run in range(soak_rounds(runs)):
        rearm_watchdog()
        proc = run_child(DAEMON_READERS, path, nested, timeout=60)
        assert proc.returncode == 0, f"run {run}: {describe(proc)}"
        assert proc.stdout == "main returns\n", describe(proc)
        assert "FATAL" not in proc.stderr, describe(proc)


# Daemon threads write values whose pickling runs Python code; the buffers
# (batch_size 300: automatic commits run in the background) are committed at
# exit. An atexit callback registered before the package is imported runs
# after the package's own one, when no daemon thread can start another write,
# and prints how many writes each thread saw acknowledged.
DAEMON_WRITERS = """
    import atexit, json, sys, threading, time

    done = [0, 0, 0, 0]
    atexit.register(lambda: print(json.dumps(done), flush=True))

    from lmdb_object_store import LmdbObjectStore

    def make(t, i):
        return {"t": t, "i": i}

    class Value:
        def __init__(self, t, i):
            self.t, self.i = t, i

        def __reduce__(self):
            return (make, (self.t, self.i))

    store = LmdbObjectStore(sys.argv[1], batch_size=300, map_size=1 << 20)

    def writer(t):
        i = 0
        while True:
            store[b"t%d-%07d" % (t, i)] = Value(t, i)
            i += 1
            done[t] = i

    for t in range(4):
        threading.Thread(target=writer, args=(t,), daemon=True).start()
    time.sleep(float(sys.argv[2]))
"""


def test_daemon_threads_writing_at_interpreter_exit_have_every_acknowledged_write_committed(
    tmp_path, rearm_watchdog
):
    import lmdb

    for run, sleep in enumerate(["0.05", "0.2", "0.4", "0.1", "0.3"] * soak_rounds(2)):
        rearm_watchdog()
        path = str(tmp_path / f"db{run}")
        proc = run_child(DAEMON_WRITERS, path, sleep, timeout=60)
        assert proc.returncode == 0, f"run {run}: {describe(proc)}"
        acknowledged = json.loads(proc.stdout)
        env = lmdb.open(path, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                keys = [bytes(k) for k in txn.cursor().iternext(values=False)]
        finally:
            env.close()
        for t in range(4):
            mine = [k for k in keys if k.startswith(b"t%d-" % t)]
            # Every acknowledged write is there, nothing after the last, no gap
            # (the write in flight when the hook began may be there too).
            assert mine == [b"t%d-%07d" % (t, i) for i in range(len(mine))], f"run {run}"
            assert acknowledged[t] <= len(mine) <= acknowledged[t] + 1, (
                f"run {run}, thread {t}: {acknowledged[t]} acknowledged, {len(mine)} stored"
            )


# --------------------------------------------------------------------------
# A store dropped (not closed) inside a read of the same file
# --------------------------------------------------------------------------


def test_store_opened_written_and_dropped_by_unpickling_code_commits_when_the_read_ends(
    tmp_path, hooked
):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as outer:
        outer[b"trigger"] = Hooked("t")
        outer.flush()

        def open_write_drop(_obj):
            inner = LmdbObjectStore(path, batch_size=1000)
            inner[b"from-setstate"] = "saved"
            assert inner.pending == 1
            del inner  # refcount drop: no close(), inside outer's read

        hooked.hook = open_write_drop
        assert outer[b"trigger"] == Hooked("t")
        hooked.hook = None
        # Committed by the time the outer call returned, not only buffered.
        assert outer.pending == 0
        assert outer.get(b"from-setstate") == "saved"
    with LmdbObjectStore(path) as again:
        assert again[b"from-setstate"] == "saved"


class CyclicStore(LmdbObjectStore):
    """A store subclass with a ``__dict__``, to build a reference cycle."""


def test_store_in_a_cycle_collected_during_a_read_of_its_file_commits_its_writes(tmp_path, hooked):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as outer:
        outer.put_many({b"a": Hooked("a"), b"b": Hooked("b")})
        cyclic = CyclicStore(path, batch_size=1000)
        cyclic.me = cyclic
        cyclic[b"from-cycle"] = "saved"
        del cyclic
        hooked.hook = lambda _obj: gc.collect()
        gc.disable()  # collect only where the hook says
        try:
            assert outer.get_many([b"a", b"b"])[0] == {b"a": Hooked("a"), b"b": Hooked("b")}
        finally:
            gc.enable()
            hooked.hook = None
        assert outer.get(b"from-cycle") == "saved"
    with LmdbObjectStore(path) as again:
        assert again[b"from-cycle"] == "saved"


# --------------------------------------------------------------------------
# A final commit that fails
# --------------------------------------------------------------------------


def full_store(path, writes=1):
    """A store at its map cap, with ``writes`` buffered writes that cannot fit."""
    store = LmdbObjectStore(path, batch_size=1000, map_size=1 * MiB, max_map_size=1 * MiB)
    store[b"kept"] = "committed"
    store.flush()
    for i in range(writes):
        store[b"big%d" % i] = b"x" * (3 * MiB)
    return store


def test_with_block_raises_the_failed_final_commit_with_what_was_lost(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(MapFullError) as info:
        with full_store(path, writes=2) as store:
            pass
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert str(path) in notes
    assert "2 buffered writes" in notes and "not saved" in notes
    assert store.closed
    assert store.pending == 2, "the buffer stays as it was, for inspection"
    with LmdbObjectStore(path) as again:
        assert again[b"kept"] == "committed"
        assert b"big0" not in again


def test_with_block_exception_wins_over_a_failed_final_commit_which_is_reported(
    tmp_path, package_logs, capsys
):
    path = tmp_path / "db"
    with pytest.raises(ValueError, match="the body failed"):
        with full_store(path) as store:
            raise ValueError("the body failed")
    assert store.closed
    err = capsys.readouterr().err
    assert str(path) in err and "1 buffered write" in err and "not saved" in err
    assert package_records(package_logs, logging.ERROR)


def test_a_failed_with_block_commit_ends_a_script_with_an_error(tmp_path):
    proc = run_child(
        """
        import sys
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore(sys.argv[1], map_size=1 << 20, max_map_size=1 << 20) as s:
            s[b"big"] = b"x" * (3 << 20)
        print("carried on")
        """,
        str(tmp_path / "db"),
    )
    assert proc.returncode == 1, describe(proc)
    assert "carried on" not in proc.stdout
    assert "MapFullError" in proc.stderr and "not saved" in proc.stderr


def test_a_failed_commit_at_interpreter_exit_is_printed_without_logging_configured(tmp_path):
    path = str(tmp_path / "db")
    proc = run_child(
        """
        import sys
        from lmdb_object_store import LmdbObjectStore
        store = LmdbObjectStore(sys.argv[1], batch_size=1000, map_size=1 << 20,
                                max_map_size=1 << 20)
        store[b"a"] = b"x" * (3 << 20)
        store[b"b"] = 1
        store[b"c"] = 2
        # never closed: the exit hook commits, and that fails
        """,
        path,
    )
    assert proc.returncode == 0, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if "not saved" in line]
    assert len(lines) == 1, describe(proc)
    assert path in lines[0] and "3 buffered writes" in lines[0], describe(proc)
    assert "MapFullError" in lines[0]


def test_a_dropped_store_whose_final_commit_fails_prints_what_was_lost(tmp_path, capsys):
    path = tmp_path / "db"
    store = full_store(path)
    del store
    gc.collect()
    err = capsys.readouterr().err
    assert str(path) in err and "1 buffered write" in err and "not saved" in err
    assert "garbage-collected" in err


def test_non_strict_close_whose_final_commit_fails_prints_what_was_lost(tmp_path, capsys):
    path = tmp_path / "db"
    store = full_store(path)
    assert store.close() is None
    err = capsys.readouterr().err
    assert str(path) in err and "1 buffered write" in err and "not saved" in err


def test_exit_and_close_racing_from_two_threads_close_once_and_save_everything(
    tmp_path, rearm_watchdog
):
    for round_ in range(soak_rounds(20)):
        rearm_watchdog()
        path = tmp_path / f"db{round_}"
        store = LmdbObjectStore(path, batch_size=10_000)
        assert store.__enter__() is store
        store.put_many({b"committed": 0})
        for i in range(200):
            store[b"k%03d" % i] = i
        results, errors = run_threads([store.__exit__, store.close])
        assert errors == [None, None]
        assert results == [False, None]
        assert store.closed and store.pending == 0
        with LmdbObjectStore(path) as again:
            assert len(again) == 201


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


def test_ctrl_c_inside_a_logging_handler_still_stops_the_program(tmp_path):
    """A handler interrupted while it logs the map's growth: the store's call
    has done its work (the commit stands), and the KeyboardInterrupt is not
    lost: the program stops at its next line."""
    proc = run_child(
        """
        import logging, sys
        from lmdb_object_store import LmdbObjectStore

        class Interrupted(logging.Handler):
            def emit(self, record):
                raise KeyboardInterrupt

        logger = logging.getLogger("lmdb_object_store")
        logger.addHandler(Interrupted())
        logger.setLevel(logging.INFO)
        store = LmdbObjectStore(sys.argv[1], map_size=1 << 20)
        try:
            store.put_many({b"big": b"x" * (2 << 20)})  # grows the map: logged
            for _ in range(1000):
                pass
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        print(len(store[b"big"]))
        store.close()
        """,
        str(tmp_path / "db"),
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.split() == ["interrupted", str(2 << 20)], describe(proc)


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
