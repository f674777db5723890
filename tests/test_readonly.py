"""A read-only store reads and refuses every write, flush and del with
ReadonlyError (docs/usage.md "Opening a store", the ``readonly`` option, and
"Errors")."""

from __future__ import annotations

import pytest

from lmdb_object_store import ClosedError, Error, LmdbObjectStore, ReadonlyError


@pytest.fixture
def ro_store(db_path):
    with LmdbObjectStore(db_path, key_encoding="utf-8") as writer:
        writer.put_many({b"a": 1, b"b": [2], "ü": "u"})
    store = LmdbObjectStore(db_path, readonly=True, key_encoding="utf-8")
    yield store
    store.close()


def test_readonly_store_reads(ro_store):
    assert ro_store.readonly is True
    assert ro_store.get(b"a") == 1
    assert ro_store[b"b"] == [2]
    assert ro_store["ü"] == "u"
    assert ro_store.get(b"zz", "d") == "d"
    assert b"a" in ro_store
    assert b"zz" not in ro_store
    assert ro_store.exists(b"a")
    assert ro_store.exists(b"a", flush=True)
    assert ro_store.exists(b"zz", flush=False) is False
    assert ro_store.get_many([b"a", b"zz"], decode_keys=True) == ({"a": 1}, ["zz"])
    with pytest.raises(KeyError):
        ro_store[b"zz"]
    assert ro_store.pending == 0
    assert ro_store.info()["map_size"] > 0
    assert ro_store.stat()["entries"] == 3


WRITES = {
    "put": lambda s: s.put(b"a", 5),
    "setitem": lambda s: s.__setitem__(b"a", 5),
    "put-new": lambda s: s.put(b"new", 5),
    "delete": lambda s: s.delete(b"a"),
    "delete-missing": lambda s: s.delete(b"missing"),
    "delitem": lambda s: s.__delitem__(b"a"),
    "put_many": lambda s: s.put_many({b"a": 5, b"new": 6}),
    "put_many-pairs": lambda s: s.put_many([(b"x", 1)]),
    "flush": lambda s: s.flush(),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_flush_and_del_raise_readonly_error(ro_store, db_path, write):
    with pytest.raises(ReadonlyError) as exc_info:
        WRITES[write](ro_store)
    assert isinstance(exc_info.value, Error)
    assert "read" in str(exc_info.value).lower()
    # Nothing buffered, nothing changed.
    assert ro_store.pending == 0
    assert ro_store.get(b"a") == 1
    assert ro_store.get(b"new") is None
    assert ro_store.stat()["entries"] == 3


def test_readonly_store_still_readable_after_refused_writes(ro_store):
    for write in WRITES.values():
        with pytest.raises(ReadonlyError):
            write(ro_store)
    assert ro_store.get_many([b"a", b"b"]) == ({b"a": 1, b"b": [2]}, [])


def test_readonly_close_and_context_manager(db_path):
    LmdbObjectStore(db_path).close()
    with LmdbObjectStore(db_path, readonly=True) as ro:
        assert ro.readonly is True
        assert ro.get(b"a") is None
    assert ro.closed
    ro.close()  # idempotent
    ro.close(strict=True)


def test_readonly_close_strict_does_not_raise(db_path):
    LmdbObjectStore(db_path).close()
    ro = LmdbObjectStore(db_path, readonly=True)
    ro.close(strict=True)
    assert ro.closed


def test_readonly_autoflush_reads_do_not_fail(db_path):
    """autoflush_on_read has nothing to flush on a read-only store: reads
    never raise ReadonlyError."""
    LmdbObjectStore(db_path).close()
    with LmdbObjectStore(db_path, readonly=True, autoflush_on_read=True) as ro:
        assert ro.get(b"x") is None
        assert ro.exists(b"x", flush=True) is False
        assert ro.get_many([b"x"]) == ({}, [b"x"])


def test_readonly_on_missing_path_is_an_error_naming_it(tmp_path):
    path = str(tmp_path / "does-not-exist")
    with pytest.raises((Error, OSError)) as exc_info:
        LmdbObjectStore(path, readonly=True)
    assert path in str(exc_info.value)
    assert not (tmp_path / "does-not-exist").exists()


def test_readonly_does_not_modify_files(db_path, tmp_path):
    with LmdbObjectStore(db_path) as w:
        w.put(b"a", 1)
    data = tmp_path / "db" / "data.mdb"
    before = data.read_bytes()
    with LmdbObjectStore(db_path, readonly=True) as ro:
        for _ in range(10):
            assert ro.get(b"a") == 1
        with pytest.raises(ReadonlyError):
            ro.put(b"b", 2)
    assert data.read_bytes() == before


def test_readonly_error_is_not_closed_error(ro_store):
    with pytest.raises(ReadonlyError) as exc_info:
        ro_store.put(b"a", 1)
    assert not isinstance(exc_info.value, ClosedError)
    assert not ro_store.closed
