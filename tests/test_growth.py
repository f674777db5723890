"""Automatic map growth, the cap, and growth logging (docs/semantics.md "Map
growth")."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from helpers import (
    KiB,
    MiB,
    assert_ok_or_error,
    grow,
    growth_sizes,
    join_or_fail,
    last_txnid,
    package_records,
    run_python,
    start_thread,
)
from lmdb_object_store import Error, LmdbObjectStore, MapFullError

# Also run with a named table of the file (conftest.py, `table`).
TABLES = pytest.mark.parametrize("table", [None, "t"])


@TABLES
def test_flush_grows_a_full_map(make_store, package_logs):
    store = make_store(map_size=1 * MiB, batch_size=1_000_000)
    assert store.info()["map_size"] == 1 * MiB
    values = {b"k%04d" % i: bytes([i % 256]) * (16 * KiB) for i in range(200)}  # ~3.2 MiB
    for k, v in values.items():
        store.put(k, v)
    txnid = last_txnid(store)
    store.flush()
    assert store.pending == 0
    assert last_txnid(store) == txnid + 1  # still one committed transaction
    assert store.info()["map_size"] in growth_sizes(1 * MiB)
    found, not_found = store.get_many(list(values))
    assert not_found == []
    assert found == values
    assert package_records(package_logs), "growth must be logged on 'lmdb_object_store'"


def test_growth_follows_the_formula_for_small_flushes(make_store):
    """Many small flushes: the map grows by max(2x, +64 MiB) when it fills."""
    store = make_store(map_size=1 * MiB, batch_size=4)
    value = b"v" * (64 * KiB)
    for i in range(48):  # 3 MiB in flushes of 256 KiB
        store.put(b"k%03d" % i, value)
    assert store.pending == 0
    assert store.info()["map_size"] == grow(1 * MiB) == 65 * MiB
    assert store.stat()["entries"] == 48


@TABLES
def test_growth_is_capped_by_max_map_size(make_store):
    store = make_store(map_size=1 * MiB, max_map_size=3 * MiB, batch_size=4)
    value = b"v" * (64 * KiB)
    for i in range(24):  # 1.5 MiB
        store.put(b"k%03d" % i, value)
    assert store.pending == 0
    assert store.info()["map_size"] == 3 * MiB
    assert store.get(b"k023") == value


def test_put_many_grows(make_store, package_logs):
    store = make_store(map_size=1 * MiB)
    items = {b"p%03d" % i: os.urandom(64 * KiB) for i in range(48)}  # 3 MiB
    txnid = last_txnid(store)
    store.put_many(items)
    assert last_txnid(store) == txnid + 1
    assert store.info()["map_size"] > 3 * MiB
    found, not_found = store.get_many(list(items))
    assert found == items
    assert not_found == []
    assert package_records(package_logs)


def test_growth_retries_as_many_times_as_needed(make_store):
    store = make_store(map_size=1 * MiB, sync=False)
    big = b"\x01" * (70 * MiB)  # needs 1 -> 65 -> 130 MiB
    store.put_many({b"big": big})
    size = store.info()["map_size"]
    assert size >= 70 * MiB
    assert size in growth_sizes(1 * MiB)
    assert store.get(b"big") == big


def test_single_huge_value_via_flush(make_store):
    store = make_store(map_size=1 * MiB, sync=False)
    big = os.urandom(5 * MiB)
    store.put(b"big", big)
    store.flush()
    assert store.get(b"big") == big
    assert store.info()["map_size"] > 5 * MiB


def test_data_survives_growth_and_reopen_with_smaller_map_size(db_path):
    with LmdbObjectStore(db_path, map_size=1 * MiB) as store:
        store.put_many({b"a%02d" % i: b"x" * (100 * KiB) for i in range(30)})
    with LmdbObjectStore(db_path, map_size=1 * MiB) as store:
        assert store.info()["map_size"] >= 3 * MiB
        assert store.get(b"a29") == b"x" * (100 * KiB)
        store.put(b"more", b"y" * (2 * MiB))
        store.flush()
        assert store.get(b"more") == b"y" * (2 * MiB)


# --------------------------------------------------------------------------
# At the cap
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1 * MiB, 2 * MiB])
def test_flush_at_cap_raises_map_full_and_keeps_everything(make_store, cap):
    store = make_store(map_size=1 * MiB, max_map_size=cap, autoflush_on_read=False)
    store.put(b"old", "old")
    store.flush()
    txnid = last_txnid(store)
    big = b"b" * (3 * MiB)
    store.put(b"new", "new")
    store.put(b"big", big)
    with pytest.raises(MapFullError) as exc_info:
        store.flush()
    assert isinstance(exc_info.value, Error)
    assert store.info()["map_size"] == cap
    # Buffer as before the call.
    assert store.pending == 2
    assert store.get(b"new") == "new"
    assert store.get(b"big") == big
    # Database as before the call.
    assert last_txnid(store) == txnid
    assert store.get(b"old") == "old"
    # Still usable: drop the big entry and the rest commits.
    store.delete(b"big")
    store.flush()
    assert store.get(b"new") == "new"
    assert store.get(b"big") is None


@TABLES
@pytest.mark.parametrize("cap", [1 * MiB, 2 * MiB])
def test_put_many_at_cap_is_all_or_nothing(make_store, cap):
    store = make_store(map_size=1 * MiB, max_map_size=cap)
    store.put(b"old", "old")
    store.flush()
    txnid = last_txnid(store)
    entries = store.stat()["entries"]
    with pytest.raises(MapFullError):
        store.put_many({b"n1": "small", b"n2": b"b" * (3 * MiB), b"old": "overwritten"})
    assert last_txnid(store) == txnid
    assert store.stat()["entries"] == entries
    assert store.pending == 0
    assert store.get(b"n1") is None
    assert store.get(b"n2") is None
    assert store.get(b"old") == "old"
    # The store still works after the failure.
    store.put_many({b"n1": "small"})
    assert store.get(b"n1") == "small"


def test_map_full_at_cap_without_cap_growth_room(make_store):
    """A cap equal to the initial map: no growth at all, MapFullError at once."""
    store = make_store(map_size=1 * MiB, max_map_size=1 * MiB)
    with pytest.raises(MapFullError):
        store.put_many({b"x": b"x" * (2 * MiB)})
    assert store.info()["map_size"] == 1 * MiB


def test_max_map_size_property(make_store):
    assert make_store(map_size=1 * MiB, max_map_size=5 * MiB).max_map_size == 5 * MiB


def test_max_map_size_default_is_none(store):
    assert store.max_map_size is None


# --------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------


def test_growth_log_names_nothing_but_the_package_logger(make_store, package_logs):
    store = make_store(map_size=1 * MiB)
    store.put_many({b"g": b"g" * (2 * MiB)})
    assert store.info()["map_size"] > 1 * MiB
    assert package_records(package_logs)


def test_growth_is_logged_even_when_the_write_then_fails_at_the_cap(make_store, package_logs):
    store = make_store(map_size=1 * MiB, max_map_size=3 * MiB)
    with pytest.raises(MapFullError):
        store.put_many((b"k%d" % i, b"x" * 200_000) for i in range(40))
    grew = [
        r
        for r in package_logs.records
        if r.name == "lmdb_object_store" and r.levelno >= logging.INFO and "growing" in r.message
    ]
    assert grew, "the growth that happened before MapFullError must be logged"
    assert store.info()["map_size"] == 3 * MiB


def test_log_handler_calling_the_store_during_growth(make_store):
    """Python code (a log handler) run because of a growth may call the store:
    it works or raises Error, but never deadlocks."""
    store = make_store(map_size=1 * MiB)
    store.put(b"seed", 5)
    store.flush()
    outcomes = []

    class Handler(logging.Handler):
        def emit(self, record):
            try:
                outcomes.append(store.get(b"seed"))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)

    handler = Handler(level=logging.DEBUG)
    logger = logging.getLogger("lmdb_object_store")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        t, outcome = start_thread(lambda: store.put_many({b"g": b"g" * (2 * MiB)}))
        join_or_fail(t)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert_ok_or_error(outcome.get("error"))
    assert outcomes, "growth was not logged"
    for item in outcomes:
        assert item == 5 or isinstance(item, Error), repr(item)
    if "error" not in outcome:
        assert store.get(b"g") == b"g" * (2 * MiB)


# --------------------------------------------------------------------------
# Growth with readers
# --------------------------------------------------------------------------


@TABLES
def test_growth_while_other_threads_read(make_store):
    store = make_store(map_size=1 * MiB, batch_size=8)
    store.put_many({b"r%02d" % i: i for i in range(20)})
    stop = threading.Event()

    def reader():
        rounds = 0
        while not stop.is_set() and rounds < 500:
            for i in range(20):
                assert store.get(b"r%02d" % i) == i
            rounds += 1
        return rounds

    threads = [start_thread(reader) for _ in range(3)]
    try:
        for i in range(60):  # 60 x 64 KiB ~ 3.75 MiB: grows at least once
            store.put(b"w%02d" % i, b"w" * (64 * KiB))
        store.flush()
    finally:
        stop.set()
    for t, outcome in threads:
        join_or_fail(t)
        assert "error" not in outcome, outcome.get("error")
    assert store.info()["map_size"] > 1 * MiB
    assert store.get(b"w59") == b"w" * (64 * KiB)


@TABLES
def test_growth_waits_for_a_reader_in_progress(make_store, hooked):
    store = make_store(map_size=1 * MiB)
    store.put(b"slow", hooked("x"))
    store.flush()
    entered = threading.Event()
    release = threading.Event()

    def block(obj):
        if not entered.is_set():
            entered.set()
            assert release.wait(20)

    hooked.hook = block
    try:
        reader, r_out = start_thread(lambda: store.get(b"slow"))
        assert entered.wait(20)
        writer, w_out = start_thread(lambda: store.put_many({b"big": b"z" * (3 * MiB)}))
        # The writer cannot finish while the read holds the map.
        writer.join(0.5)
        assert writer.is_alive(), "growth did not wait for the read in progress"
        release.set()
        join_or_fail(reader)
        join_or_fail(writer)
    finally:
        release.set()
    assert "error" not in r_out, r_out.get("error")
    assert r_out["result"] == hooked("x")
    assert "error" not in w_out, w_out.get("error")
    assert store.info()["map_size"] > 1 * MiB
    assert store.get(b"big") == b"z" * (3 * MiB)


def test_nested_read_while_another_thread_waits_to_grow(make_store, hooked):
    """Thread A is inside pickle.loads (its read open) when thread B starts a
    growth; A then reads again. That nested read must not deadlock with B
    (which waits for A's read to end): it works or raises Error."""
    store = make_store(map_size=1 * MiB)
    store.put(b"other", "other value")
    store.put(b"nested", hooked("n"))
    store.flush()
    entered = threading.Event()
    go = threading.Event()
    nested = {}

    def hook(obj):
        if obj.tag == "n" and not entered.is_set():
            entered.set()
            go.wait(20)
            try:
                nested["value"] = store.get(b"other")
            except Exception as exc:  # noqa: BLE001
                nested["error"] = exc

    hooked.hook = hook
    try:
        reader, r_out = start_thread(lambda: store.get(b"nested"))
        assert entered.wait(20)
        writer, w_out = start_thread(lambda: store.put_many({b"big": b"z" * (3 * MiB)}))
        writer.join(0.3)  # let the writer reach the growth wait (not asserted)
        go.set()
        join_or_fail(reader)
        join_or_fail(writer)
    finally:
        go.set()
    assert "value" in nested or "error" in nested
    assert_ok_or_error(nested.get("error"))
    if "error" not in nested:
        assert nested["value"] == "other value"
    assert_ok_or_error(r_out.get("error"))
    assert_ok_or_error(w_out.get("error"))
    if "error" not in w_out:
        assert store.get(b"big") == b"z" * (3 * MiB)


def test_growth_from_inside_unpickling_raises_error_or_works(make_store, hooked):
    """A __setstate__ that needs the map to grow while its own read is open:
    waiting would deadlock, so it must raise Error (or succeed)."""
    store = make_store(map_size=1 * MiB)
    store.put(b"grower", hooked("g"))
    store.flush()
    outcome = {}

    def hook(obj):
        if "armed" in outcome:
            del outcome["armed"]
            try:
                store.put_many({b"grown": b"g" * (3 * MiB)})
                outcome["ok"] = True
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

    hooked.hook = hook
    outcome["armed"] = True
    t, out = start_thread(lambda: store.get(b"grower"))
    join_or_fail(t)
    hooked.hook = None
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("g")
    assert "ok" in outcome or "error" in outcome
    assert_ok_or_error(outcome.get("error"))
    if "error" in outcome:
        assert store.get(b"grown") is None  # all or nothing
    # Outside of any read, the same write grows the map and succeeds.
    store.put_many({b"grown": b"g" * (3 * MiB)})
    assert store.get(b"grown") == b"g" * (3 * MiB)


# --------------------------------------------------------------------------
# Growth by another process (MDB_MAP_RESIZED)
# --------------------------------------------------------------------------


def _run_child(code: str) -> None:
    run_python(code, timeout=45)


@TABLES
def test_adopts_growth_by_another_process(make_store, db_path, table):
    store = make_store(map_size=1 * MiB)
    store.put(b"mine", 1)
    store.flush()
    assert store.get(b"mine") == 1  # a read transaction has been used before
    _run_child(
        f"""
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore({db_path!r}, map_size=1024 * 1024, table={table!r}) as s:
            s.put_many({{b"child%02d" % i: bytes([i]) * 65536 for i in range(48)}})
            assert s.info()["map_size"] > 3 * 1024 * 1024
        """
    )
    # Reads see the other process's data (MDB_MAP_RESIZED adopted)...
    assert store.get(b"child47") == bytes([47]) * 65536
    found, not_found = store.get_many([b"child%02d" % i for i in range(48)])
    assert not_found == []
    assert store.info()["map_size"] > 3 * MiB
    # ...and so do writes.
    store.put(b"after", b"a" * (512 * KiB))
    store.flush()
    assert store.get(b"after") == b"a" * (512 * KiB)
    assert store.get(b"mine") == 1


def test_adopts_growth_by_another_process_on_write(make_store, db_path):
    store = make_store(map_size=1 * MiB, autoflush_on_read=False)
    store.put(b"mine", 1)
    store.flush()
    _run_child(
        f"""
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore({db_path!r}, map_size=1024 * 1024) as s:
            s.put_many({{b"child%02d" % i: bytes([i]) * 65536 for i in range(48)}})
        """
    )
    store.put(b"first-after", 2)
    store.flush()  # first thing after the child: a write
    assert store.get(b"first-after") == 2
    assert store.get(b"child00") == bytes([0]) * 65536
