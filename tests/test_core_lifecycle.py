"""close(), the context manager, read-only stores and use after close."""

import logging
import threading

import pytest

from lmdb_object_store import (
    ClosedError,
    Error,
    LmdbObjectStore,
    MapFullError,
    ReadonlyError,
)


def test_context_manager_flushes_and_closes_even_after_an_exception(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(RuntimeError, match="boom"):
        with LmdbObjectStore(path, batch_size=100) as store:
            store[b"k"] = "v"
            assert store.pending == 1
            raise RuntimeError("boom")
    assert store.closed
    with LmdbObjectStore(path) as again:
        assert again[b"k"] == "v"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get(b"k"),
        lambda s: s[b"k"],
        lambda s: s.put(b"k", 1),
        lambda s: s.__setitem__(b"k", 1),
        lambda s: s.delete(b"k"),
        lambda s: s.exists(b"k"),
        lambda s: b"k" in s,
        lambda s: s.get_many([b"k"]),
        lambda s: s.put_many({b"k": 1}),
        lambda s: s.flush(),
        lambda s: s.sync(),
        lambda s: s.info(),
        lambda s: s.stat(),
        lambda s: len(s),
        lambda s: list(s),
    ],
)
def test_every_call_after_close_raises_closed_error(tmp_path, call):
    store = LmdbObjectStore(tmp_path / "db")
    store.close()
    with pytest.raises(ClosedError, match="closed"):
        call(store)
    assert issubclass(ClosedError, Error)


def test_close_is_idempotent_and_safe_from_many_threads(tmp_path):
    store = LmdbObjectStore(tmp_path / "db", batch_size=10_000)
    for i in range(2000):
        store[b"k%05d" % i] = i
    errors = []
    barrier = threading.Barrier(8)

    def closer():
        try:
            barrier.wait(timeout=10)
            store.close()
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            errors.append(e)

    threads = [threading.Thread(target=closer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "close() deadlocked"
    assert errors == []
    store.close()
    with LmdbObjectStore(tmp_path / "db") as again:
        assert len(again) == 2000


def test_close_strict_raises_runtime_error_from_the_flush_failure(tmp_path, caplog):
    store = LmdbObjectStore(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20)
    store[b"big"] = b"x" * (2 << 20)
    with caplog.at_level(logging.ERROR, logger="lmdb_object_store"):
        with pytest.raises(RuntimeError) as info:
            store.close(strict=True)
    assert isinstance(info.value.__cause__, MapFullError)
    assert store.closed
    assert any("final flush failed" in r.message for r in caplog.records)


def test_close_non_strict_logs_the_flush_failure(tmp_path, caplog):
    store = LmdbObjectStore(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20)
    store[b"big"] = b"x" * (2 << 20)
    with caplog.at_level(logging.ERROR, logger="lmdb_object_store"):
        store.close()
    assert store.closed
    assert any("final flush failed" in r.message for r in caplog.records)


def test_readonly_store_refuses_every_write(tmp_path):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as store:
        store[b"k"] = "v"
    with LmdbObjectStore(path, readonly=True) as ro:
        assert ro.readonly
        assert ro[b"k"] == "v"
        for call in (
            lambda: ro.put(b"k", 1),
            lambda: ro.__setitem__(b"k", 1),
            lambda: ro.delete(b"k"),
            lambda: ro.__delitem__(b"k"),
            lambda: ro.put_many({b"a": 1}),
            lambda: ro.flush(),
        ):
            with pytest.raises(ReadonlyError):
                call()
        assert ro.pending == 0
        assert ro[b"k"] == "v"


def test_open_errors_name_the_path(tmp_path):
    missing_parent = tmp_path / "no" / "such" / "db"
    with pytest.raises(OSError) as info:
        LmdbObjectStore(missing_parent)
    assert str(missing_parent) in str(info.value)
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(OSError) as info:
        LmdbObjectStore(a_file)
    assert str(a_file) in str(info.value)
    with pytest.raises(OSError) as info:
        LmdbObjectStore(tmp_path / "absent", create=False)
    assert "absent" in str(info.value)
    with pytest.raises(TypeError, match="bogus_option"):
        LmdbObjectStore(tmp_path / "db", bogus_option=1)


def test_subclass_from_python(tmp_path):
    class Tagged(LmdbObjectStore):
        def __init__(self, path, tag):
            super().__init__(path, key_encoding="utf-8")
            self.tag = tag

        def get_tagged(self, key):
            return (self.tag, self[key])

    with Tagged(tmp_path / "db", "t") as store:
        store["a"] = 1
        assert store.get_tagged("a") == ("t", 1)
        assert isinstance(store, LmdbObjectStore)
