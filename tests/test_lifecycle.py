"""The lifecycle: context manager, close, use after close, sync/info/stat,
properties, subclassing (docs/usage.md "Maintenance: close, sync, info, stat",
"Properties"; docs/semantics.md "close()", "Leaving a with block")."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from helpers import MiB, package_records, run_threads
from lmdb_object_store import ClosedError, Error, LmdbObjectStore, MapFullError

# --------------------------------------------------------------------------
# Context manager
# --------------------------------------------------------------------------

# Also run with a named table of the file (conftest.py, `table`).
TABLES = pytest.mark.parametrize("table", [None, "t"])


def test_context_manager_returns_the_store_and_closes_it(db_path):
    store = LmdbObjectStore(db_path)
    with store as entered:
        assert entered is store
        assert store.closed is False
        store.put(b"a", 1)
    assert store.closed is True
    with LmdbObjectStore(db_path) as again:
        assert again[b"a"] == 1


def test_context_manager_flushes_after_an_exception(db_path):
    class Oops(Exception):
        pass

    with pytest.raises(Oops):
        with LmdbObjectStore(db_path, autoflush_on_read=False) as store:
            store.put(b"a", "written before the error")
            store.delete(b"never")
            assert store.pending == 2
            raise Oops
    assert store.closed is True
    with LmdbObjectStore(db_path) as again:
        assert again[b"a"] == "written before the error"


def test_exit_does_not_swallow_exceptions(db_path):
    store = LmdbObjectStore(db_path)
    assert not store.__exit__(ValueError, ValueError("x"), None)
    assert store.closed


def test_enter_on_closed_store_is_closed_error(db_path):
    store = LmdbObjectStore(db_path)
    store.close()
    with pytest.raises(ClosedError):
        with store:
            pass


# --------------------------------------------------------------------------
# close
# --------------------------------------------------------------------------


def test_close_flushes_the_buffer(db_path):
    store = LmdbObjectStore(db_path, autoflush_on_read=False)
    store.put(b"a", {"x": 1})
    store.put(b"b", 2)
    store.flush()
    store.delete(b"b")
    store.close()
    with LmdbObjectStore(db_path) as again:
        assert again.get_many([b"a", b"b"]) == ({b"a": {"x": 1}}, [b"b"])


def test_close_is_idempotent(db_path):
    store = LmdbObjectStore(db_path)
    store.put(b"a", 1)
    assert store.close() is None
    assert store.close() is None
    store.close(strict=True)
    assert store.closed is True


def test_close_from_many_threads_at_once(db_path):
    store = LmdbObjectStore(db_path, autoflush_on_read=False)
    for i in range(100):
        store.put(b"k%03d" % i, i)
    barrier = threading.Barrier(8)

    def closer():
        barrier.wait(10)
        store.close()
        return store.closed

    results, errors = run_threads([closer] * 8)
    assert errors == [None] * 8
    # Whoever returns from close() sees the store closed.
    assert results == [True] * 8
    with LmdbObjectStore(db_path) as again:
        found, not_found = again.get_many([b"k%03d" % i for i in range(100)])
        assert not_found == []
        assert found == {b"k%03d" % i: i for i in range(100)}


def _every_call(store):
    return {
        "put": lambda: store.put(b"a", 1),
        "setitem": lambda: store.__setitem__(b"a", 1),
        "get": lambda: store.get(b"a"),
        "get-default": lambda: store.get(b"a", 5),
        "getitem": lambda: store[b"a"],
        "delete": lambda: store.delete(b"a"),
        "delitem": lambda: store.__delitem__(b"a"),
        "exists": lambda: store.exists(b"a"),
        "exists-noflush": lambda: store.exists(b"a", flush=False),
        "contains": lambda: b"a" in store,
        "get_many": lambda: store.get_many([b"a"]),
        "put_many": lambda: store.put_many({b"a": 1}),
        "put_many-empty": lambda: store.put_many({}),
        "flush": lambda: store.flush(),
        "sync": lambda: store.sync(),
        "info": lambda: store.info(),
        "stat": lambda: store.stat(),
        "enter": lambda: store.__enter__(),
        "len": lambda: len(store),
        "iter": lambda: list(store),
    }


CALL_NAMES = list(_every_call(None))


@pytest.mark.parametrize("call", CALL_NAMES)
def test_every_call_after_close_is_closed_error(db_path, call):
    store = LmdbObjectStore(db_path)
    store.put(b"a", 1)
    store.close()
    with pytest.raises(ClosedError, match="closed") as exc_info:
        _every_call(store)[call]()
    assert isinstance(exc_info.value, Error)


@pytest.mark.parametrize("call", ["put", "get", "contains", "flush", "info"])
def test_calls_after_close_with_bad_keys_still_fail(db_path, call):
    """After close, a call fails; it never touches the (closed) environment."""
    store = LmdbObjectStore(db_path)
    store.close()
    with pytest.raises((ClosedError, TypeError, ValueError)):
        {
            "put": lambda: store.put(b"", 1),
            "get": lambda: store.get(b"x" * 600),
            "contains": lambda: b"" in store,
            "flush": lambda: store.flush(),
            "info": lambda: store.info(),
        }[call]()


def test_closed_property(db_path):
    store = LmdbObjectStore(db_path)
    assert store.closed is False
    store.close()
    assert store.closed is True


@TABLES
def test_closed_is_read_only(store):
    with pytest.raises(AttributeError):
        store.closed = True
    assert store.closed is False


def _final_flush_errors(package_logs):
    return [
        r
        for r in package_records(package_logs, logging.ERROR)
        if "final flush failed" in r.getMessage()
    ]


def test_close_strict_raises_runtime_error_from_the_flush_failure(db_path, package_logs):
    store = LmdbObjectStore(db_path, map_size=1 * MiB, max_map_size=1 * MiB)
    store.put(b"kept", "committed")
    store.flush()
    store.put(b"big", b"x" * (3 * MiB))
    package_logs.clear()
    with pytest.raises(RuntimeError) as exc_info:
        store.close(strict=True)
    assert isinstance(exc_info.value.__cause__, MapFullError)
    # Raised, and logged as well.
    assert _final_flush_errors(package_logs), "the failed final flush must be logged"
    # Raised after cleanup: the store is closed.
    assert store.closed is True
    with pytest.raises(ClosedError):
        store.get(b"kept")
    store.close(strict=True)  # idempotent, does not raise again
    with LmdbObjectStore(db_path) as again:
        assert again[b"kept"] == "committed"
        assert b"big" not in again


def test_close_non_strict_logs_the_flush_failure(db_path, package_logs):
    store = LmdbObjectStore(db_path, map_size=1 * MiB, max_map_size=1 * MiB)
    store.put(b"kept", "committed")
    store.flush()
    store.put(b"big", b"x" * (3 * MiB))
    package_logs.clear()
    assert store.close() is None
    assert store.closed is True
    assert _final_flush_errors(package_logs), "the lost flush must be logged"
    with LmdbObjectStore(db_path) as again:
        assert again[b"kept"] == "committed"


def test_close_strict_without_failure_is_quiet(db_path):
    store = LmdbObjectStore(db_path)
    store.put(b"a", 1)
    store.close(strict=True)
    with LmdbObjectStore(db_path) as again:
        assert again[b"a"] == 1


def test_close_strict_is_keyword_only(db_path):
    store = LmdbObjectStore(db_path)
    with pytest.raises(TypeError):
        store.close(True)
    store.close()


def test_reopen_after_close(db_path):
    for i in range(5):
        with LmdbObjectStore(db_path) as store:
            store.put(b"n", i)
            if i:
                assert store.get(b"n") == i
    with LmdbObjectStore(db_path) as store:
        assert store[b"n"] == 4


# --------------------------------------------------------------------------
# sync, info, stat, properties
# --------------------------------------------------------------------------


@TABLES
def test_sync(store):
    store.put(b"a", 1)
    store.flush()
    store.sync()
    store.sync(True)
    store.sync(False)
    store.sync(force=True)
    assert store.get(b"a") == 1


INFO_KEYS = {"map_size", "last_pgno", "last_txnid", "max_readers", "num_readers"}
STAT_KEYS = {"psize", "depth", "branch_pages", "leaf_pages", "overflow_pages", "entries"}


@TABLES
def test_info_has_py_lmdb_keys(make_store):
    store = make_store(map_size=4 * MiB)
    info = store.info()
    assert isinstance(info, dict)
    assert INFO_KEYS <= set(info)
    assert all(isinstance(info[k], int) for k in INFO_KEYS)
    assert info["map_size"] == 4 * MiB
    assert info["max_readers"] == 1024
    assert info["num_readers"] >= 0
    before = info["last_txnid"]
    pgno = info["last_pgno"]
    store.put_many({b"k%d" % i: b"v" * 1000 for i in range(50)})
    after = store.info()
    assert after["last_txnid"] == before + 1
    assert after["last_pgno"] > pgno


@TABLES
def test_stat_has_py_lmdb_keys(store):
    stat = store.stat()
    assert isinstance(stat, dict)
    assert set(stat) >= STAT_KEYS
    assert all(isinstance(stat[k], int) for k in STAT_KEYS)
    assert stat["entries"] == 0
    assert stat["psize"] >= 512 and stat["psize"] & (stat["psize"] - 1) == 0
    store.put_many({b"k%04d" % i: i for i in range(500)})
    store.put_many({b"big": b"x" * 100_000})
    stat = store.stat()
    assert stat["entries"] == 501
    assert stat["depth"] >= 2
    assert stat["leaf_pages"] >= 2
    assert stat["branch_pages"] >= 1
    assert stat["overflow_pages"] >= 100_000 // stat["psize"]


@TABLES
def test_properties(make_store, db_path):
    store = make_store(db_path, 7, autoflush_on_read=False, max_map_size=50 * MiB)
    assert os.fspath(store.path) == db_path
    assert store.readonly is False
    assert store.closed is False
    assert store.batch_size == 7
    assert store.autoflush_on_read is False
    assert store.max_map_size == 50 * MiB
    assert store.pending == 0


def test_default_properties(store, db_path):
    assert os.fspath(store.path) == db_path
    assert store.batch_size == 1000
    assert store.autoflush_on_read is True
    assert store.max_map_size is None
    assert store.readonly is False


def test_path_accepts_pathlike(tmp_path):
    path = tmp_path / "p"
    with LmdbObjectStore(path) as store:
        assert os.fspath(store.path) == str(path)
        store.put(b"a", 1)
    assert (path / "data.mdb").exists()


# --------------------------------------------------------------------------
# Subclassing from Python
# --------------------------------------------------------------------------


class CountingStore(LmdbObjectStore):
    def get_or(self, key, default):
        return self.get(key, default)

    def put(self, key, obj):
        self.puts = getattr(self, "puts", 0) + 1
        return super().put(key, obj)


def test_subclass_adds_and_overrides_methods(db_path):
    with CountingStore(db_path, 10, autoflush_on_read=False) as store:
        assert isinstance(store, LmdbObjectStore)
        assert store.batch_size == 10
        store.put(b"a", 1)
        store.put(b"b", 2)
        assert store.puts == 2
        assert store.get_or(b"a", None) == 1
        assert store.get_or(b"zz", "d") == "d"
    assert store.closed
    with LmdbObjectStore(db_path) as again:
        assert again[b"b"] == 2


class InitStore(LmdbObjectStore):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label = "custom"


def test_subclass_with_init_calling_super(db_path):
    with InitStore(db_path, batch_size=3, key_encoding="utf-8") as store:
        assert store.label == "custom"
        store["x"] = 1
        assert store["x"] == 1
        assert store.batch_size == 3
    with InitStore(db_path) as store:
        assert store[b"x"] == 1


class TaggedStore(LmdbObjectStore):
    """A constructor whose arguments are not the base class's."""

    def __init__(self, path, tag):
        super().__init__(path, key_encoding="utf-8")
        self.tag = tag

    def get_tagged(self, key):
        return (self.tag, self[key])


def test_subclass_with_its_own_constructor_arguments(db_path):
    with TaggedStore(db_path, "t") as store:
        assert isinstance(store, LmdbObjectStore)
        assert store.key_encoding == "utf-8"
        assert store.batch_size == 1000  # "t" did not reach batch_size
        store["a"] = 1
        assert store.get_tagged("a") == ("t", 1)
