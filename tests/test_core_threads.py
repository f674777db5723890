"""Threads: read-your-writes, concurrent use, close under load, re-entrant
calls from unpickling code. Every wait is bounded so a deadlock fails."""

import threading

import pytest

from lmdb_object_store import ClosedError, Error, LmdbObjectStore

JOIN = 60


def run_threads(targets):
    errors = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - asserted by the caller
                errors.append(e)

        return inner

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN)
        assert not t.is_alive(), "a thread is stuck (deadlock?)"
    return errors


def test_a_put_is_seen_by_every_thread_at_once(tmp_path):
    store = LmdbObjectStore(tmp_path / "db", batch_size=50)
    done = threading.Event()
    written = []
    lock = threading.Lock()

    def writer():
        for i in range(3000):
            store[b"k%05d" % i] = i
            with lock:
                written.append(i)
        done.set()

    def reader():
        while not done.is_set():
            with lock:
                upto = written[-1] if written else None
            if upto is not None:
                # Acknowledged (put returned) before we looked: must be visible,
                # whether buffered, being committed, or committed.
                assert store.get(b"k%05d" % upto) == upto

    assert run_threads([writer, reader, reader, reader]) == []
    store.close()


def test_concurrent_puts_gets_flushes_lose_nothing(tmp_path):
    store = LmdbObjectStore(tmp_path / "db", batch_size=64, map_size=1 << 20)

    def writer(n):
        def run():
            for i in range(1500):
                store[b"w%d-%05d" % (n, i)] = (n, i, b"x" * 200)
                if i % 300 == 0:
                    store.flush()

        return run

    def scanner():
        for _ in range(20):
            store.get_many([b"w0-00001", b"w1-00002"])
            len(store)

    assert run_threads([writer(0), writer(1), writer(2), scanner]) == []
    store.close()
    with LmdbObjectStore(tmp_path / "db") as again:
        assert len(again) == 4500
        assert again[b"w2-01499"] == (2, 1499, b"x" * 200)


def test_close_while_readers_run(tmp_path):
    store = LmdbObjectStore(tmp_path / "db")
    store.put_many((b"k%04d" % i, {"i": i}) for i in range(500))
    started = threading.Barrier(5)
    results = []

    def reader():
        started.wait(timeout=10)
        try:
            while True:
                for i in range(500):
                    assert store[b"k%04d" % i] == {"i": i}
        except ClosedError:
            results.append("closed")

    def closer():
        started.wait(timeout=10)
        store.close()

    assert run_threads([reader, reader, reader, reader, closer]) == []
    assert results == ["closed"] * 4


class ReadsTheStore:
    """Unpickling this reads another key of the store it lives in."""

    store = None

    def __init__(self, ref):
        self.ref = ref

    def __getstate__(self):
        return self.ref

    def __setstate__(self, ref):
        self.ref = ref
        self.seen = ReadsTheStore.store[ref]


class WritesTheStore:
    store = None

    def __getstate__(self):
        return 1

    def __setstate__(self, _):
        WritesTheStore.store[b"written-from-setstate"] = "yes"


class ClosesTheStore:
    store = None
    error = None

    def __getstate__(self):
        return 1

    def __setstate__(self, _):
        try:
            ClosesTheStore.store.close()
        except Error as e:
            ClosesTheStore.error = e


def test_unpickling_code_may_read_and_write_the_store(tmp_path):
    store = LmdbObjectStore(tmp_path / "db")
    ReadsTheStore.store = WritesTheStore.store = store
    store[b"target"] = "hello"
    store[b"reads"] = ReadsTheStore(b"target")
    store[b"writes"] = WritesTheStore()
    store.flush()
    assert store[b"reads"].seen == "hello"
    store[b"writes"]
    assert store[b"written-from-setstate"] == "yes"
    store.close()


def test_close_from_unpickling_code_is_an_error_not_a_deadlock(tmp_path):
    store = LmdbObjectStore(tmp_path / "db")
    ClosesTheStore.store = store
    store[b"closer"] = ClosesTheStore()
    store.flush()

    def read():
        store[b"closer"]

    assert run_threads([read]) == []
    assert isinstance(ClosesTheStore.error, Error)
    assert "this same thread" in str(ClosesTheStore.error)
    assert not store.closed
    store.close()
    assert store.closed


def test_growth_waits_for_a_read_in_another_thread(tmp_path):
    """A read in progress (inside unpickling) holds the map; a writer that
    must grow the map waits for it instead of unmapping under it."""
    store = LmdbObjectStore(tmp_path / "db", map_size=1 << 20)
    inside = threading.Event()
    release = threading.Event()

    class Slow:
        def __getstate__(self):
            return 1

        def __setstate__(self, _):
            inside.set()
            assert release.wait(timeout=JOIN)

    Slow.__qualname__ = "Slow"
    globals()["Slow"] = Slow
    store[b"slow"] = Slow()
    store.flush()
    grown = threading.Event()

    def reader():
        store[b"slow"]

    def writer():
        assert inside.wait(timeout=JOIN)
        store.put_many((b"big%d" % i, b"x" * 100_000) for i in range(40))
        grown.set()

    def releaser():
        assert inside.wait(timeout=JOIN)
        # The writer cannot finish while the read holds the map.
        assert not grown.wait(timeout=0.5)
        release.set()

    assert run_threads([reader, writer, releaser]) == []
    assert grown.is_set()
    assert store.info()["map_size"] > 1 << 20
    store.close()


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_many_threads_hammering_one_store(tmp_path, batch_size):
    store = LmdbObjectStore(tmp_path / "db", batch_size=batch_size, map_size=1 << 20)

    def worker(n):
        def run():
            for i in range(400):
                key = b"t%d-%d" % (n, i % 50)
                store[key] = i
                assert store[key] == i
                if i % 17 == 0:
                    store.delete(key)
                    assert store.get(key) is None

        return run

    assert run_threads([worker(n) for n in range(6)]) == []
    store.close()
