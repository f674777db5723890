"""One environment per file per process, growth seen across processes,
picklable stores, spawn/forkserver workers, reader slots and processes killed
while reading or writing (docs/processes.md "One environment per file per
process", "Several processes", "Pickling a store, spawn and forkserver",
"Reader slots"; docs/semantics.md "Durability").

The ``fork()``-specific behaviour lives in ``test_fork.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest

import proc_workers
from helpers import KiB, MiB, fd_count, join_or_fail, soak_rounds, start_thread
from lmdb_object_store import ClosedError, Error, LmdbObjectStore, ReadonlyError
from proc_workers import fork_child, kill_and_reap, wait_child, wait_readable

# A value that must never show up in the pickle of a store.
SECRET = b"\x00distinctive-stored-value-6f1c2a9e\x00"
SECRET_BUFFERED = b"\x00distinctive-buffered-value-b37d40c1\x00"

# Also run with a named table of the file (conftest.py, `table`).
TABLES = pytest.mark.parametrize("table", [None, "t"])


def _spellings(path) -> set[str]:
    path = os.fspath(path)
    return {path, os.path.realpath(path), os.path.abspath(path)}


def _names(message: str, path, *, besides=()) -> bool:
    """True if ``message`` names ``path`` (as given or resolved).

    Occurrences inside any of the ``besides`` paths do not count (a directory's
    path is a prefix of the path of the data file inside it).
    """
    for other in besides:
        for spelling in sorted(_spellings(other), key=len, reverse=True):
            message = message.replace(spelling, "")
    return any(spelling in message for spelling in _spellings(path))


# --------------------------------------------------------------------------
# Two objects on one path: one shared, reference-counted environment
# --------------------------------------------------------------------------


@TABLES
def test_two_stores_on_one_path_see_each_others_flushed_writes(make_store):
    a = make_store()
    b = make_store()
    a.put(b"from-a", {"n": 1})
    a.flush()
    b.put(b"from-b", {"n": 2})
    b.flush()
    assert b.get(b"from-a") == {"n": 1}
    assert a.get(b"from-b") == {"n": 2}
    b.put_many({b"many%02d" % i: i for i in range(20)})
    found, not_found = a.get_many([b"many%02d" % i for i in range(20)])
    assert not_found == []
    assert found == {b"many%02d" % i: i for i in range(20)}
    a.delete(b"from-b")
    a.flush()
    assert b.get(b"from-b") is None
    # Both report the one environment.
    info_a, info_b = a.info(), b.info()
    assert info_a["map_size"] == info_b["map_size"]
    assert info_a["last_txnid"] == info_b["last_txnid"]
    assert isinstance(info_a["num_readers"], int)
    assert isinstance(info_b["num_readers"], int)
    assert a.stat()["entries"] == b.stat()["entries"] == 21


@pytest.mark.parametrize("first", ["older", "newer"])
def test_two_stores_on_one_path_close_in_either_order(make_store, db_path, read_raw, first):
    baseline = fd_count()
    older = make_store()
    one_open = fd_count()
    assert one_open > baseline
    newer = make_store()
    assert fd_count() == one_open, "the second object must share the open environment"
    older.put(b"older", 1)
    newer.put(b"newer", 2)
    older.flush()
    newer.flush()

    closing, staying = (older, newer) if first == "older" else (newer, older)
    closing.put(b"flushed-by-close", 3)  # still buffered: close flushes it
    closing.close()
    assert closing.closed
    with pytest.raises(ClosedError):
        closing.get(b"older")
    with pytest.raises(ClosedError):
        closing.put(b"x", 0)

    assert not staying.closed
    assert fd_count() == one_open, "the environment must stay open for the other object"
    assert staying.get(b"flushed-by-close") == 3
    assert staying.get(b"older") == 1
    assert staying.get(b"newer") == 2
    staying.put(b"after", 4)
    staying.flush()
    assert staying.get(b"after") == 4
    assert isinstance(staying.info()["num_readers"], int)
    assert staying.stat()["entries"] == 4

    staying.put(b"flushed-by-last-close", 5)
    staying.close()
    assert staying.closed
    assert fd_count() == baseline, "the last close must close the environment"
    raw = read_raw(db_path)
    keys = (b"older", b"newer", b"flushed-by-close", b"after", b"flushed-by-last-close")
    assert {pickle.loads(raw[k]) for k in keys} == {1, 2, 3, 4, 5}


@TABLES
def test_closing_one_store_twice_does_not_close_the_other(make_store):
    a = make_store()
    b = make_store()
    a.put(b"k", 1)
    a.close()
    a.close()  # idempotent: must not drop a second reference
    assert b.get(b"k") == 1
    b.put(b"k2", 2)
    b.flush()
    assert b.get(b"k2") == 2
    c = make_store()  # a third object joins the environment b keeps open
    assert c.get(b"k2") == 2
    b.close()
    c.put(b"k3", 3)
    c.flush()
    assert c.get(b"k3") == 3


@TABLES
def test_two_objects_on_one_path_share_the_environment(make_store, db_path):
    a = make_store(db_path, map_size=1 * MiB)
    b = make_store(Path(db_path), map_size=1 * MiB)
    a.put(b"from-a", 1)
    a.flush()
    assert b.get(b"from-a") == 1
    b.put_many({b"from-b": 2})
    assert a.get(b"from-b") == 2
    # Growth through one object is the growth of the shared environment.
    a.put_many({b"big": b"x" * (3 * MiB)})
    assert a.info()["map_size"] > 1 * MiB
    assert b.info()["map_size"] == a.info()["map_size"]
    assert b.get(b"big") == b"x" * (3 * MiB)


def test_many_open_close_cycles_of_shared_objects(make_store, db_path):
    keep = make_store()
    for i in range(20):
        with LmdbObjectStore(db_path) as other:
            other.put(b"i", i)
        assert keep.get(b"i") == i


def test_different_spellings_of_one_path_share_the_environment(make_store, db_path, tmp_path):
    a = make_store(db_path)
    a.put(b"k", "v")
    a.flush()
    one_open = fd_count()
    link = tmp_path / "link-to-db"
    os.symlink(db_path, link)
    others = [
        make_store(str(link)),
        make_store(Path(db_path)),
        make_store(db_path + os.sep),
        make_store(os.path.relpath(db_path)),
    ]
    assert fd_count() == one_open, "every spelling of the path must share the environment"
    for i, other in enumerate(others):
        assert other.get(b"k") == "v"
        other.put(b"other%d" % i, i)
        other.flush()
    assert a.get_many([b"other%d" % i for i in range(4)])[1] == []
    a.close()
    for other in others[:-1]:
        other.close()
    assert others[-1].get(b"other0") == 0


@TABLES
def test_growth_by_one_store_waits_for_reads_of_the_other(make_store, hooked):
    """The two objects share one growth gate: growth waits for the other's read."""
    a = make_store(map_size=1 * MiB)
    b = make_store(map_size=1 * MiB)
    a.put(b"held", hooked("held"))
    a.flush()
    entered, release = threading.Event(), threading.Event()

    def hook(_obj):
        entered.set()
        release.wait(30)

    hooked.hook = hook
    big = {b"big%02d" % i: bytes([i]) * (64 * KiB) for i in range(48)}  # 3 MiB
    reader, read_out = start_thread(lambda: a.get(b"held"))
    writer = write_out = None
    try:
        assert entered.wait(10), "the read did not start"
        hooked.hook = None
        writer, write_out = start_thread(lambda: b.put_many(big))
        writer.join(0.5)
        assert writer.is_alive(), "the map grew while the other object's read was open"
    finally:
        release.set()
    join_or_fail(reader)
    assert "error" not in read_out, read_out.get("error")
    assert read_out["result"] == hooked("held")
    assert writer is not None
    join_or_fail(writer)
    assert "error" not in write_out, write_out.get("error")
    assert a.info()["map_size"] == b.info()["map_size"] > 3 * MiB
    found, not_found = a.get_many(list(big))
    assert not_found == []
    assert found == big


def test_growth_inside_a_read_of_the_other_store_raises_instead_of_deadlocking(make_store, hooked):
    a = make_store(map_size=1 * MiB)
    b = make_store(map_size=1 * MiB)
    a.put(b"trigger", hooked("t"))
    a.flush()
    outcome: dict = {}

    def hook(_obj):
        hooked.hook = None
        try:
            b.put_many({b"big": b"x" * (3 * MiB)})  # needs growth: waits for our own read
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    hooked.hook = hook
    t, out = start_thread(lambda: a.get(b"trigger"))
    join_or_fail(t, 20)
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("t")
    assert isinstance(outcome.get("error"), Error), outcome
    assert b.get(b"big") is None  # all or nothing
    b.put_many({b"big": b"x" * (3 * MiB)})  # outside the read it grows and works
    assert a.get(b"big") == b"x" * (3 * MiB)


# --------------------------------------------------------------------------
# A second open that LMDB cannot honour on the shared environment
# --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["directory-first", "data-file-first"])
def test_conflicting_subdir_raises_error_naming_both(make_store, db_path, order):
    data_file = os.path.join(db_path, "data.mdb")
    if order == "directory-first":
        first = make_store(db_path)
        first_path, second_path, second_options = db_path, data_file, {"subdir": False}
    else:
        os.makedirs(db_path)
        first = make_store(data_file, subdir=False)
        first_path, second_path, second_options = data_file, db_path, {}
    first.put(b"k", 1)
    first.flush()
    before = fd_count()

    with pytest.raises(Error) as excinfo:
        LmdbObjectStore(second_path, **second_options)
    message = str(excinfo.value)
    assert "subdir" in message, message
    # Both opens are named: the data file and the directory that holds it.
    assert _names(message, data_file), message
    assert _names(message, db_path, besides=[data_file]), message
    assert fd_count() == before, "a refused open must leave nothing open"

    # The store already open is untouched.
    assert first.get(b"k") == 1
    first.put(b"k2", 2)
    first.flush()
    assert first.get(b"k2") == 2
    assert _spellings(first_path) & _spellings(first.path)


def test_the_other_spelling_stays_refused_once_the_environment_is_closed(make_store, db_path):
    first = make_store(db_path)
    first.put(b"k", 1)
    first.close()
    # Nothing in this process uses the file now, but another process could:
    # the other spelling would give the data file a second lock file.
    with pytest.raises(Error, match="lock.mdb"):
        LmdbObjectStore(os.path.join(db_path, "data.mdb"), subdir=False)
    again = make_store(db_path)
    assert again.get(b"k") == 1


# --------------------------------------------------------------------------
# read-only second open on a writable shared environment
# --------------------------------------------------------------------------


@pytest.mark.parametrize("close_first", ["writable", "readonly"])
def test_readonly_store_on_a_writable_shared_environment(make_store, close_first):
    rw = make_store()
    rw.put(b"a", 1)
    rw.flush()
    ro = make_store(readonly=True)
    assert ro.readonly is True
    assert rw.readonly is False
    assert ro.get(b"a") == 1
    assert ro[b"a"] == 1

    writes = {
        "put": lambda: ro.put(b"b", 2),
        "setitem": lambda: ro.__setitem__(b"b", 2),
        "delete": lambda: ro.delete(b"a"),
        "put_many": lambda: ro.put_many({b"c": 3}),
        "flush": ro.flush,
    }
    for name, write in writes.items():
        with pytest.raises(ReadonlyError):
            write()
        assert ro.pending == 0, name
    assert ro.get(b"b") is None
    assert ro.get(b"a") == 1

    # The writable object still writes, and the read-only one sees it.
    rw.put(b"b", 2)
    rw.flush()
    assert ro.get(b"b") == 2

    if close_first == "writable":
        rw.close()
        assert ro.get(b"b") == 2
        with pytest.raises(ReadonlyError):
            ro.put(b"z", 0)  # still read-only though the environment is writable
        assert ro.readonly is True
    else:
        ro.close()
        rw.put(b"c", 3)
        rw.flush()
        assert rw.get(b"c") == 3


# --------------------------------------------------------------------------
# Pickling: path + options, never contents
# --------------------------------------------------------------------------


@pytest.fixture
def unpickled():
    """``unpickled(data)`` -> pickle.loads(data), closed at teardown."""
    stores = []

    def load(data):
        obj = pickle.loads(data)
        stores.append(obj)
        return obj

    yield load
    for obj in reversed(stores):
        try:
            obj.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_reopens_same_path_and_options_without_contents(make_store, unpickled, protocol):
    store = make_store(
        batch_size=7,
        autoflush_on_read=False,
        key_encoding="utf-8",
        max_map_size=256 * MiB,
        map_size=2 * MiB,
    )
    store.put("stored", SECRET)
    store.flush()
    store.put("buffered", SECRET_BUFFERED)
    assert store.pending == 1

    data = pickle.dumps(store, protocol=protocol)
    assert SECRET not in data
    assert SECRET_BUFFERED not in data
    assert b"distinctive" not in data

    clone = unpickled(data)
    assert isinstance(clone, LmdbObjectStore)
    assert clone is not store
    assert not clone.closed
    assert os.fspath(clone.path) == os.fspath(store.path)
    assert clone.batch_size == 7
    assert clone.autoflush_on_read is False
    assert clone.max_map_size == 256 * MiB
    assert clone.readonly is False
    assert clone.pending == 0  # the original's buffer is not carried over
    assert clone.get("stored") == SECRET  # str keys: key_encoding came along
    assert clone["stored"] == SECRET
    assert store.get("buffered") == SECRET_BUFFERED  # the original is unchanged


def test_pickle_keeps_key_options(make_store, unpickled):
    plain = make_store()
    clone = unpickled(pickle.dumps(plain))
    with pytest.raises(TypeError, match="str keys are not allowed"):
        clone.put("text", 1)
    nfc = make_store(key_encoding="utf-8", str_normalize="NFC")
    nfc.put("caf\u00e9", 1)
    nfc.flush()
    clone_nfc = unpickled(pickle.dumps(nfc))
    assert clone_nfc.get("cafe\u0301") == 1  # NFD spelling normalised like the original


def test_unpickled_store_shares_the_environment(make_store, unpickled):
    store = make_store()
    store.put(b"k", 1)
    store.flush()
    one_open = fd_count()
    clone = unpickled(pickle.dumps(store))
    assert fd_count() == one_open
    clone.put(b"from-clone", 2)
    clone.flush()
    assert store.get(b"from-clone") == 2
    clone.close()
    assert fd_count() == one_open
    assert store.get(b"k") == 1
    store.put(b"after", 3)
    store.flush()
    assert store.get(b"after") == 3


def test_a_closed_store_pickles_and_reopens_fresh(make_store, unpickled):
    store = make_store(batch_size=3)
    store.put(b"k", SECRET)
    store.close()
    data = pickle.dumps(store)
    assert SECRET not in data
    clone = unpickled(data)
    assert not clone.closed
    assert clone.batch_size == 3
    assert clone.get(b"k") == SECRET
    assert store.closed
    with pytest.raises(ClosedError):
        store.get(b"k")


def test_a_readonly_store_pickles_as_readonly(make_store, unpickled):
    rw = make_store()
    rw.put(b"k", 1)
    rw.flush()
    ro = make_store(readonly=True)
    clone = unpickled(pickle.dumps(ro))
    assert clone.readonly is True
    assert clone.get(b"k") == 1
    with pytest.raises(ReadonlyError):
        clone.put(b"k", 2)
    assert rw.get(b"k") == 1


def test_pickled_store_keeps_a_non_utf8_path(tmp_path, unpickled):
    path = os.path.join(os.fsencode(tmp_path), b"db-\xff")
    with LmdbObjectStore(path) as store:
        store[b"k"] = "v"
        store.flush()
        again = unpickled(pickle.dumps(store))
        assert again[b"k"] == "v"


# --------------------------------------------------------------------------
# spawn / forkserver workers
# --------------------------------------------------------------------------


def test_pickled_store_in_a_spawn_pool(make_store, db_path):
    store = make_store(
        batch_size=5,
        key_encoding="utf-8",
        max_map_size=512 * MiB,
        autoflush_on_read=False,
        map_size=2 * MiB,
    )
    data = {f"key{i:03d}": {"i": i, "blob": bytes([i]) * 100} for i in range(40)}
    store.put_many(data)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2, initializer=proc_workers.init_worker_store, initargs=(store,)) as pool:
        read = pool.map_async(proc_workers.read_from_worker_store, list(data)).get(45)
        described = pool.apply_async(proc_workers.describe_worker_store).get(45)
        pids = pool.map_async(
            proc_workers.write_with_store, [(store, f"w{i}", i) for i in range(10)]
        ).get(45)
    assert dict(read) == data
    assert described["pid"] != os.getpid()
    assert os.path.realpath(described["path"]) == os.path.realpath(db_path)
    assert described["closed"] is False
    assert described["readonly"] is False
    assert described["batch_size"] == 5
    assert described["autoflush_on_read"] is False
    assert described["max_map_size"] == 512 * MiB
    assert described["map_size"] == 2 * MiB  # map_size came along (default is 10 MiB)
    assert os.getpid() not in pids
    for i in range(10):
        assert store.get(f"w{i}") == i
    assert store.pending == 0


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_store_as_a_dataset_attribute_in_workers(make_store, method):
    store = make_store(batch_size=10_000)
    keys = [proc_workers.sample_key(i) for i in range(300)]
    for i, key in enumerate(keys):
        store.put(key, proc_workers.sample_value(i))
    store.flush()
    dataset = proc_workers.StoreDataset(store, keys)
    ctx = multiprocessing.get_context(method)
    workers = [
        ctx.Process(target=proc_workers.dataset_worker, args=(dataset, w, 2)) for w in range(2)
    ]
    assert proc_workers.run_processes(workers) == [0, 0]
    # The parent's store is unaffected by the workers.
    assert not store.closed
    assert store[keys[-1]] == proc_workers.sample_value(299)


# --------------------------------------------------------------------------
# Growth by other processes (MDB_MAP_RESIZED)
# --------------------------------------------------------------------------


def test_spawn_writers_grow_one_store_from_1_mib_and_lose_nothing(make_store, db_path):
    writers, count, value_size = 4, 2000, 500
    parent = make_store(map_size=1 * MiB)
    parent.put(b"parent", "p")
    parent.flush()
    assert parent.get(b"parent") == "p"  # this process has used a read transaction
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers)
    procs = [
        ctx.Process(target=proc_workers.grow_writer, args=(db_path, w, count, value_size, barrier))
        for w in range(writers)
    ]
    assert proc_workers.run_processes(procs, timeout=50) == [0] * writers

    keys = [proc_workers.writer_key(w, i) for w in range(writers) for i in range(count)]
    found, not_found = parent.get_many(keys)
    assert not_found == []
    for w in range(writers):
        for i in range(count):
            key = proc_workers.writer_key(w, i)
            assert found[key] == proc_workers.writer_value(w, i, value_size), key
    assert parent.stat()["entries"] == writers * count + 1
    assert parent.info()["map_size"] > 4 * MiB  # the size grown elsewhere was adopted
    # The parent writes on the grown map too.
    parent.put_many({b"after%d" % i: b"a" * value_size for i in range(100)})
    assert parent.get(b"after99") == b"a" * value_size


def test_reads_wait_for_in_flight_reads_before_adopting_growth(make_store, db_path, hooked):
    store = make_store(map_size=1 * MiB)
    store.put(b"held", hooked("held"))
    store.flush()
    entered, release = threading.Event(), threading.Event()

    def hook(_obj):
        entered.set()
        release.wait(30)

    hooked.hook = hook
    reader, read_out = start_thread(lambda: store.get(b"held"))
    later = later_out = None
    try:
        assert entered.wait(10)
        hooked.hook = None
        # Another process grows the map while this process holds a read.
        ctx = multiprocessing.get_context("spawn")
        grower = ctx.Process(target=proc_workers.grow_store, args=(db_path, 48, 64 * KiB))
        assert proc_workers.run_processes([grower]) == [0]
        later, later_out = start_thread(
            lambda: store.get_many([proc_workers.grown_key(i) for i in range(48)])
        )
    finally:
        release.set()
    join_or_fail(reader)
    assert "error" not in read_out, read_out.get("error")
    assert read_out["result"] == hooked("held")
    assert later is not None
    join_or_fail(later)
    assert "error" not in later_out, later_out.get("error")
    found, not_found = later_out["result"]
    assert not_found == []
    assert found == {proc_workers.grown_key(i): bytes([i]) * (64 * KiB) for i in range(48)}
    assert store.info()["map_size"] > 3 * MiB


# --------------------------------------------------------------------------
# Reader slots, and processes killed while reading or writing
# --------------------------------------------------------------------------


def _start_held_read(store, key, entered, timeout=10.0):
    """Start ``store.get(key)`` in a thread whose unpickling hook blocks.

    The hook must release the ``entered`` semaphore. Returns (thread, outcome,
    inside): ``inside`` is False if the read ended (an error) before the hook ran.
    """
    t, out = start_thread(lambda: store.get(key))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if entered.acquire(timeout=0.05):
            return t, out, True
        if not t.is_alive():
            return t, out, False
    return t, out, False


def _fork_readers_and_kill(store, hooked, n, read_fd, write_fd):
    """Fork ``n`` children that each sit inside a read of b"trap"; kill them all."""

    def in_read(_obj):
        os.write(write_fd, b"r")
        time.sleep(120)

    hooked.hook = in_read
    pids = []
    try:
        for _ in range(n):
            pids.append(fork_child(lambda: store.get(b"trap")))
        got = wait_readable(read_fd, n, timeout=20)
    finally:
        hooked.hook = None
        codes = [kill_and_reap(pid) for pid in pids]
    assert len(got) == n, f"only {len(got)} of {n} children got into a read; exit codes {codes}"
    assert codes == [-signal.SIGKILL] * n


def test_children_killed_while_reading_leave_the_store_usable(make_store, hooked, rearm_watchdog):
    store = make_store(max_readers=4)
    data = {b"k%03d" % i: {"i": i} for i in range(100)}
    store.put_many(data)
    store.put(b"trap", hooked("trap"))
    store.flush()
    assert store.info()["max_readers"] == 4
    read_fd, write_fd = os.pipe()
    try:
        # 20 children killed inside a read, 2 at a time: without clearing the
        # stale slots of the dead, 4 slots run out after the first rounds.
        for _ in range(soak_rounds(10)):
            rearm_watchdog()
            _fork_readers_and_kill(store, hooked, 2, read_fd, write_fd)

        # The parent reads and writes normally.
        found, not_found = store.get_many(list(data))
        assert not_found == []
        assert found == data
        store.put(b"after", "kills")
        store.flush()
        assert store.get(b"after") == "kills"

        # Several reads at once in the parent: slots of the last dead readers
        # must be reclaimed rather than reported as full.
        entered = threading.Semaphore(0)
        release = threading.Event()

        def hold(_obj):
            entered.release()
            release.wait(30)

        hooked.hook = hold
        threads = []
        try:
            for _ in range(3):
                t, out, inside = _start_held_read(store, b"trap", entered)
                threads.append((t, out))
                assert inside, f"a concurrent read did not start: {out.get('error')!r}"
        finally:
            hooked.hook = None
            release.set()
            for t, _ in threads:
                join_or_fail(t)
        for _, out in threads:
            assert "error" not in out, out.get("error")
            assert out["result"] == hooked("trap")

        # Another process reads and writes as well.
        def other_process():
            assert store.get_many(list(data))[1] == []
            store.put(b"from-child", 1)
            store.flush()

        assert wait_child(fork_child(other_process)) == 0
        assert store.get(b"from-child") == 1
        assert store.info()["num_readers"] <= 4
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_readers_full_error_says_how_many_slots_and_how_to_raise_them(make_store, db_path, hooked):
    slots = 3
    store = make_store(max_readers=slots)
    store.put(b"trap", hooked("trap"))
    store.flush()
    assert store.info()["max_readers"] == slots
    entered = threading.Semaphore(0)
    release = threading.Event()

    def hold(_obj):
        entered.release()
        release.wait(30)

    hooked.hook = hold
    threads = []
    error = None
    try:
        for _ in range(slots + 2):
            t, out, inside = _start_held_read(store, b"trap", entered)
            threads.append((t, out))
            if not inside:
                join_or_fail(t, 10)
                error = out.get("error")
                break
    finally:
        hooked.hook = None
        release.set()
        for t, _ in threads:
            join_or_fail(t)
    held = len(threads) - 1
    assert error is not None, f"{len(threads)} concurrent reads on {slots} slots, no error"
    assert held >= slots - 1, f"only {held} concurrent reads fitted in {slots} slots"
    assert isinstance(error, Error), repr(error)
    message = str(error)
    for spelling in _spellings(db_path):
        message = message.replace(spelling, "")
    assert re.search(rf"(?<!\d){slots}(?!\d)", message), message
    assert "max_readers" in message, message
    # Once the readers are gone, reads work again.
    for _t, out in threads[:-1]:
        assert out.get("result") == hooked("trap")
    assert store.get(b"trap") == hooked("trap")


def test_a_writer_killed_mid_write_leaves_the_store_usable(make_store):
    store = make_store(batch_size=1_000_000)
    store.put(b"base", 0)
    store.flush()
    read_fd, write_fd = os.pipe()
    per_batch, rng = 40, random.Random(1234)
    try:
        for child in range(3):

            def write_forever(child=child):
                for batch in range(1_000_000):
                    store.put_many(
                        {
                            b"c%d-b%06d-%02d" % (child, batch, j): bytes([j]) * 1000
                            for j in range(per_batch)
                        }
                    )
                    if batch == 2:
                        os.write(write_fd, b"w")

            pid = fork_child(write_forever)
            started = wait_readable(read_fd, 1, timeout=20)
            time.sleep(rng.uniform(0.0, 0.05))  # land somewhere inside a commit
            code = kill_and_reap(pid)
            assert started == b"w", f"writer never got going (exit code {code})"

        # The write lock of the dead writer is recovered: the parent writes.
        t, out = start_thread(lambda: (store.put(b"after", 1), store.flush()))
        join_or_fail(t, 20)
        assert "error" not in out, out.get("error")
        assert store.get(b"after") == 1
        assert store.get(b"base") == 0

        # Every batch is there whole or not at all, and batches of one writer
        # are committed in order: whole batches, then nothing.
        whole = 0
        for child in range(3):
            batch = 0
            while True:
                keys = [b"c%d-b%06d-%02d" % (child, batch, j) for j in range(per_batch)]
                found, _ = store.get_many(keys)
                if len(found) != per_batch:
                    assert found == {}, f"writer {child}: batch {batch} is partly there"
                    break
                assert all(found[k] == bytes([j]) * 1000 for j, k in enumerate(keys))
                batch += 1
            assert batch >= 3, f"writer {child} signalled after batch 2 but has {batch}"
            whole += batch
            later = [b"c%d-b%06d-%02d" % (child, batch + 1, j) for j in range(per_batch)]
            assert store.get_many(later)[0] == {}
        assert store.stat()["entries"] == 2 + whole * per_batch  # base, after, batches

        # Another process writes too.
        def other_process():
            store.put(b"other", 2)
            store.flush()

        assert wait_child(fork_child(other_process)) == 0
        assert store.get(b"other") == 2
    finally:
        os.close(read_fd)
        os.close(write_fd)
