"""Errors (docs/usage.md "Errors"), unpickling errors included, and open errors
and unknown options (docs/usage.md "Opening a store"): the exception hierarchy,
messages naming the key/path/option, and no error leaving the buffer or the
database half-changed."""

from __future__ import annotations

import os
import pickle

import pytest

import lmdb_object_store
from helpers import MiB, fd_count, last_txnid
from lmdb_object_store import (
    ClosedError,
    Error,
    LmdbObjectStore,
    MapFullError,
    ReadonlyError,
    UnpickleError,
)

# --------------------------------------------------------------------------
# Hierarchy
# --------------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(Error, Exception)
    for cls in (MapFullError, ReadonlyError, ClosedError, UnpickleError):
        assert issubclass(cls, Error), cls
    assert issubclass(UnpickleError, RuntimeError)
    assert len({Error, MapFullError, ReadonlyError, ClosedError, UnpickleError}) == 5
    for cls in (MapFullError, ReadonlyError, ClosedError):
        assert not issubclass(cls, RuntimeError)
    assert not issubclass(Error, (KeyError, ValueError, TypeError, OSError))


def test_errors_are_exported():
    for name in ("Error", "MapFullError", "ReadonlyError", "ClosedError", "UnpickleError"):
        assert getattr(lmdb_object_store, name) is globals()[name]


def test_errors_can_be_raised_and_caught_from_python():
    with pytest.raises(Error):
        raise ClosedError("x")
    with pytest.raises(RuntimeError):
        raise UnpickleError("y")


# --------------------------------------------------------------------------
# Unpickling errors
# --------------------------------------------------------------------------


class Broken(Exception):
    pass


def _explode(message):
    raise Broken(message)


class ExplodesOnLoad:
    """Pickles fine; unpickling calls _explode, which raises Broken."""

    def __reduce__(self):
        return (_explode, ("kaboom-123",))


def _assert_unpickle_error(exc_info, where, key_display):
    exc = exc_info.value
    assert isinstance(exc, UnpickleError)
    assert isinstance(exc, Error)
    assert isinstance(exc, RuntimeError)
    msg = str(exc)
    assert msg.startswith(f"Failed to unpickle {where} key {key_display}: "), msg
    assert "kaboom-123" in msg
    assert isinstance(exc.__cause__, Broken)
    assert str(exc.__cause__) == "kaboom-123"


def test_unpickle_error_buffered_get(make_store):
    store = make_store(autoflush_on_read=False)
    store.put(b"bad", ExplodesOnLoad())
    with pytest.raises(UnpickleError) as exc_info:
        store.get(b"bad")
    _assert_unpickle_error(exc_info, "buffered", "'bad'")
    with pytest.raises(UnpickleError) as exc_info:
        store[b"bad"]
    _assert_unpickle_error(exc_info, "buffered", "'bad'")
    assert store.pending == 1


def test_unpickle_error_db_get(store):
    store.put(b"bad", ExplodesOnLoad())
    store.flush()
    with pytest.raises(UnpickleError) as exc_info:
        store.get(b"bad")
    _assert_unpickle_error(exc_info, "DB", "'bad'")
    with pytest.raises(UnpickleError) as exc_info:
        store[b"bad"]
    _assert_unpickle_error(exc_info, "DB", "'bad'")


def test_unpickle_error_binary_key_shown_as_hex(store):
    store.put(b"\x00\xfe", ExplodesOnLoad())
    store.flush()
    with pytest.raises(UnpickleError) as exc_info:
        store.get(b"\x00\xfe")
    _assert_unpickle_error(exc_info, "DB", "0x00fe")


def test_unpickle_error_in_get_many(make_store):
    store = make_store(autoflush_on_read=False)
    store.put(b"good", 1)
    store.put(b"bad-db", ExplodesOnLoad())
    store.flush()
    with pytest.raises(UnpickleError) as exc_info:
        store.get_many([b"good", b"bad-db"])
    _assert_unpickle_error(exc_info, "DB", "'bad-db'")
    store.put(b"bad-buf", ExplodesOnLoad())
    with pytest.raises(UnpickleError) as exc_info:
        store.get_many([b"bad-buf", b"good"])
    _assert_unpickle_error(exc_info, "buffered", "'bad-buf'")


def test_exists_and_contains_do_not_unpickle(store):
    store.put(b"bad", ExplodesOnLoad())
    assert b"bad" in store
    assert store.exists(b"bad")
    store.flush()
    assert b"bad" in store
    assert store.exists(b"bad")
    del store[b"bad"]
    assert b"bad" not in store


def test_garbage_bytes_written_by_py_lmdb(db_path, raw_env):
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        txn.put(b"junk", b"this is not a pickle")
        txn.put(b"truncated", pickle.dumps({"a": list(range(100))})[:-10])
        txn.put(b"ok", pickle.dumps("fine"))
    env.close()
    with LmdbObjectStore(db_path) as store:
        assert store.get(b"ok") == "fine"
        for key in (b"junk", b"truncated"):
            with pytest.raises(UnpickleError) as exc_info:
                store.get(key)
            msg = str(exc_info.value)
            assert msg.startswith(f"Failed to unpickle DB key '{key.decode()}': "), msg
            assert exc_info.value.__cause__ is not None
            assert not isinstance(exc_info.value.__cause__, UnpickleError)
        # The failed reads left the store working.
        assert store.get(b"ok") == "fine"
        store.put(b"after", 1)
        store.flush()
        assert store.get(b"after") == 1


def test_iteration_yields_good_items_before_an_unpicklable_one(db_path, raw_env):
    with LmdbObjectStore(db_path) as store:
        store.put_many({b"a": 1, b"b": 2})
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        txn.put(b"c", b"not a pickle")
    env.close()
    with LmdbObjectStore(db_path) as store:
        it = iter(store.items())
        assert next(it) == (b"a", 1)
        assert next(it) == (b"b", 2)
        with pytest.raises(UnpickleError, match="DB key 'c'"):
            next(it)


def test_unpickle_error_of_missing_module(db_path, raw_env):
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"cno_such_module_xyz\nCls\n.")  # protocol-0 GLOBAL
    env.close()
    with LmdbObjectStore(db_path) as store:
        with pytest.raises(UnpickleError) as exc_info:
            store.get(b"k")
        assert isinstance(exc_info.value.__cause__, ImportError)
        assert "no_such_module_xyz" in str(exc_info.value)


# --------------------------------------------------------------------------
# Constructor errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bogus_option", "max_dbs", "map_sise"])
def test_unknown_option_is_type_error_naming_it(tmp_path, name):
    path = tmp_path / "db"
    with pytest.raises(TypeError) as exc_info:
        LmdbObjectStore(str(path), **{name: 1})
    assert name in str(exc_info.value)
    assert not path.exists(), "nothing may be created for a rejected call"


def test_keyword_only_options_are_keyword_only(db_path):
    with pytest.raises(TypeError):
        LmdbObjectStore(db_path, 10, False)


def test_open_under_a_regular_file_names_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    path = str(afile / "db")
    with pytest.raises((Error, OSError)) as exc_info:
        LmdbObjectStore(path)
    assert path in str(exc_info.value)


def test_open_directory_as_single_file_names_the_path(tmp_path):
    path = str(tmp_path / "adir")
    os.mkdir(path)
    with pytest.raises((Error, OSError)) as exc_info:
        LmdbObjectStore(path, subdir=False)
    assert path in str(exc_info.value)


def test_create_false_on_missing_path_names_the_path(tmp_path):
    path = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as exc_info:
        LmdbObjectStore(path, create=False)
    assert path in str(exc_info.value)
    assert not os.path.exists(path)


def test_garbage_data_file_is_an_error_naming_the_path(tmp_path):
    path = tmp_path / "garbage"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\xde\xad\xbe\xef" * 4096)
    with pytest.raises((Error, OSError)) as exc_info:
        LmdbObjectStore(str(path))
    assert str(path) in str(exc_info.value)


def test_failed_opens_leave_nothing_half_open(tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(b"\xde\xad\xbe\xef" * 4096)
    missing = tmp_path / "missing"

    def failing_opens():
        for kwargs in (
            {"db_path": str(afile / "db")},
            {"db_path": str(garbage)},
            {"db_path": str(missing), "create": False},
            {"db_path": str(missing), "readonly": True},
        ):
            with pytest.raises((Error, OSError)):
                LmdbObjectStore(**kwargs)

    failing_opens()  # warm up anything allocated once per process
    before = fd_count()
    for _ in range(5):
        failing_opens()
    assert fd_count() == before, "failed opens leaked file descriptors"
    # The failed paths can be opened once fixed.
    with LmdbObjectStore(str(missing)) as store:
        store.put(b"a", 1)
    (garbage / "data.mdb").unlink()
    with LmdbObjectStore(str(garbage)) as store:
        store.put(b"a", 1)
        assert store.get(b"a") == 1


def test_invalid_db_path_type(tmp_path):
    with pytest.raises(TypeError):
        LmdbObjectStore(12345)
    with pytest.raises(TypeError):
        LmdbObjectStore(None)


# --------------------------------------------------------------------------
# Nothing half-changed
# --------------------------------------------------------------------------


def test_failed_calls_leave_buffer_and_db_as_they_were(make_store):
    store = make_store(map_size=1 * MiB, max_map_size=1 * MiB, autoflush_on_read=False)
    store.put_many({b"c1": 1, b"c2": 2})
    store.put(b"b1", "buffered")
    store.delete(b"c2")
    txnid = last_txnid(store)

    def snapshot():
        return (
            store.pending,
            last_txnid(store),
            store.get_many([b"c1", b"c2", b"b1", b"n"]),
        )

    before = snapshot()
    failing = [
        (TypeError, lambda: store.put(None, 1)),
        (TypeError, lambda: store.put(1, 1)),
        (ValueError, lambda: store.put(b"", 1)),
        (ValueError, lambda: store.put(b"n" * 512, 1)),
        (Exception, lambda: store.put(b"n", lambda: 1)),
        (TypeError, lambda: store.put_many([(b"n", 1), (None, 2)])),
        (ValueError, lambda: store.put_many([(b"n", 1), (b"", 2)])),
        (Exception, lambda: store.put_many([(b"n", 1), (b"m", lambda: 2)])),
        (KeyError, lambda: store.__delitem__(b"n")),
        (KeyError, lambda: store.__delitem__(b"c2")),
        (TypeError, lambda: store.get(None)),
        (ValueError, lambda: store.get_many([b"c1"], decode_keys=True)),
    ]
    for exc_type, call in failing:
        with pytest.raises(exc_type):
            call()
        assert snapshot() == before, call
    assert last_txnid(store) == txnid


def test_value_error_for_key_size_names_the_problem(store):
    for bad in (b"", b"k" * 512):
        with pytest.raises(ValueError) as exc_info:
            store.put(bad, 1)
        assert "key" in str(exc_info.value).lower()


def test_decode_without_key_encoding_message(store):
    with pytest.raises(ValueError) as exc_info:
        store.get_many([b"a"], decode_keys=True)
    assert "key_encoding" in str(exc_info.value)
