"""Threads and re-entrant calls (docs/semantics.md "Threads and close", "The
map gate"): real threads with bounded joins, so a deadlock fails the test
instead of hanging it."""

from __future__ import annotations

import queue
import threading

import pytest

from helpers import (
    MiB,
    assert_ok_or_error,
    join_or_fail,
    run_threads,
    start_thread,
)
from lmdb_object_store import ClosedError, Error, LmdbObjectStore

# --------------------------------------------------------------------------
# Read-your-writes across threads
# --------------------------------------------------------------------------


@pytest.mark.parametrize("autoflush", [True, False])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_read_your_writes_across_threads(make_store, autoflush, batch_size):
    """Once put() returns, every thread's get sees that value (or a newer one):
    buffered, being flushed, or committed."""
    store = make_store(batch_size=batch_size, autoflush_on_read=autoflush)
    n_writers, n_keys, rounds = 2, 4, 150
    handoff: queue.Queue = queue.Queue()
    writers_done = threading.Event()

    def writer(w):
        def run():
            for version in range(rounds):
                key = b"w%d-k%d" % (w, version % n_keys)
                store.put(key, version)
                handoff.put((key, version))
                if version % 13 == 0:
                    store.delete(b"w%d-tomb" % w)
                    handoff.put((b"w%d-tomb" % w, None))
            return rounds

        return run

    def flusher():
        while not writers_done.is_set():
            store.flush()
        return True

    def reader():
        checked = 0
        while True:
            try:
                key, version = handoff.get(timeout=0.05)
            except queue.Empty:
                if writers_done.is_set():
                    return checked
                continue
            got = store.get(key, "MISSING")
            if version is None:
                assert got == "MISSING", (key, got)
            else:
                # Keys are reused every n_keys versions: a newer write may
                # already be visible, an older one never.
                assert got != "MISSING" and got >= version, (key, version, got)
            checked += 1

    threads = [start_thread(writer(w)) for w in range(n_writers)]
    readers = [start_thread(reader) for _ in range(2)]
    flush_thread = start_thread(flusher)
    for t, _ in threads:
        join_or_fail(t)
    writers_done.set()
    for t, _ in [*readers, flush_thread]:
        join_or_fail(t)
    for _, outcome in [*threads, *readers, flush_thread]:
        assert "error" not in outcome, outcome.get("error")
    assert sum(out["result"] for _, out in readers) == n_writers * (rounds + (rounds + 12) // 13)
    for w in range(n_writers):
        for k in range(n_keys):
            last = max(v for v in range(rounds) if v % n_keys == k)
            assert store.get(b"w%d-k%d" % (w, k)) == last


def test_put_then_get_from_another_thread_immediately(make_store):
    store = make_store(batch_size=5, autoflush_on_read=False)
    for i in range(200):
        store.put(b"k%03d" % i, i)
        t, out = start_thread(lambda i=i: store.get(b"k%03d" % i))
        join_or_fail(t)
        assert out.get("result") == i, out


def test_delete_visible_to_other_threads(make_store):
    store = make_store(batch_size=3)
    for i in range(60):
        store.put(b"k%02d" % i, i)
    for i in range(0, 60, 2):
        store.delete(b"k%02d" % i)
        t, out = start_thread(lambda i=i: store.get(b"k%02d" % i, "gone"))
        join_or_fail(t)
        assert out.get("result") == "gone"


# --------------------------------------------------------------------------
# Concurrent puts, gets, flushes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 50])
def test_concurrent_puts_gets_flushes_lose_nothing(db_path, batch_size):
    store = LmdbObjectStore(db_path, batch_size=batch_size)
    n_threads, per_thread = 4, 250

    def writer(t):
        def run():
            for i in range(per_thread):
                key = b"t%d-%04d" % (t, i)
                store.put(key, (t, i))
                if i % 10 == 0:
                    assert store.get(key) == (t, i)
                if i % 25 == 0:
                    store.flush()
                if i % 7 == 0:
                    store.put_many({b"t%d-many-%04d" % (t, i): i})
                    assert b"t%d-many-%04d" % (t, i) in store

        return run

    def reader():
        for _ in range(300):
            store.get(b"t0-0000")
            store.get_many([b"t1-0001", b"t2-0002", b"missing"])
            b"t3-0003" in store  # noqa: B015
            store.exists(b"t0-0100", flush=True)

    _, errors = run_threads([writer(t) for t in range(n_threads)] + [reader, reader])
    assert errors == [None] * (n_threads + 2)
    store.close()
    with LmdbObjectStore(db_path, readonly=True) as ro:
        keys = [b"t%d-%04d" % (t, i) for t in range(n_threads) for i in range(per_thread)]
        found, not_found = ro.get_many(keys)
        assert not_found == []
        assert found == {
            b"t%d-%04d" % (t, i): (t, i) for t in range(n_threads) for i in range(per_thread)
        }
        many = [
            b"t%d-many-%04d" % (t, i) for t in range(n_threads) for i in range(0, per_thread, 7)
        ]
        found, not_found = ro.get_many(many)
        assert not_found == []


def test_concurrent_writes_to_the_same_keys_end_consistent(db_path):
    store = LmdbObjectStore(db_path, batch_size=4)

    def writer(t):
        def run():
            for i in range(300):
                store.put(b"shared%d" % (i % 5), (t, i))
                if i % 50 == 0:
                    store.flush()

        return run

    _, errors = run_threads([writer(t) for t in range(4)])
    assert errors == [None] * 4
    final = {k: store.get(b"shared%d" % k) for k in range(5)}
    store.close()
    with LmdbObjectStore(db_path, readonly=True) as ro:
        for k in range(5):
            # What a thread saw last is what is on disk after close.
            assert ro.get(b"shared%d" % k) == final[k]
            t, i = final[k]
            assert i % 5 == k and 0 <= t < 4


def test_concurrent_writers_growing_a_small_map_lose_nothing(db_path):
    """Writers fill a 1 MiB map while another thread reads and counts: the map
    grows under them and nothing is lost."""
    store = LmdbObjectStore(db_path, batch_size=64, map_size=1 * MiB)

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

    _, errors = run_threads([writer(0), writer(1), writer(2), scanner])
    assert errors == [None] * 4
    assert store.info()["map_size"] > 1 * MiB
    store.close()
    with LmdbObjectStore(db_path) as again:
        assert len(again) == 4500
        assert again[b"w2-01499"] == (2, 1499, b"x" * 200)


# --------------------------------------------------------------------------
# close while other threads work
# --------------------------------------------------------------------------


def test_close_while_readers_run(db_path):
    store = LmdbObjectStore(db_path)
    store.put_many({b"k%02d" % i: i for i in range(20)})
    started = threading.Barrier(5)

    def reader():
        started.wait(10)
        reads = 0
        while True:
            try:
                for i in range(20):
                    assert store.get(b"k%02d" % i) == i
                    assert store[b"k%02d" % i] == i
                    assert store.get_many([b"k%02d" % i]) == ({b"k%02d" % i: i}, [])
                    reads += 1
            except ClosedError as exc:
                assert "closed" in str(exc)
                return reads

    readers = [start_thread(reader) for _ in range(4)]
    started.wait(10)
    store.close()
    assert store.closed
    for t, outcome in readers:
        join_or_fail(t)
        assert "error" not in outcome, outcome.get("error")
    with LmdbObjectStore(db_path) as again:
        assert again.get(b"k19") == 19


def test_close_while_writers_run_loses_no_acknowledged_write(db_path):
    """Every put that returned before close is on disk after close; the others
    raised ClosedError."""
    store = LmdbObjectStore(db_path, batch_size=16)
    started = threading.Barrier(5)

    def writer(t):
        def run():
            started.wait(10)
            acked = []
            for i in range(100_000):
                try:
                    store.put(b"t%d-%06d" % (t, i), i)
                except ClosedError:
                    return acked
                acked.append(i)
            return acked

        return run

    writers = [start_thread(writer(t)) for t in range(4)]
    started.wait(10)
    # Let some writes happen (the amount is irrelevant to the assertions).
    for _ in range(500):
        if store.pending >= 8:
            break
        threading.Event().wait(0.002)
    store.close()
    acked = {}
    for t, (thread, outcome) in enumerate(writers):
        join_or_fail(thread)
        assert "error" not in outcome, outcome.get("error")
        acked[t] = outcome["result"]
    with LmdbObjectStore(db_path, readonly=True) as ro:
        for t, values in acked.items():
            keys = [b"t%d-%06d" % (t, i) for i in values]
            found, not_found = ro.get_many(keys)
            assert not_found == [], f"{len(not_found)} acknowledged writes lost"


def test_close_waits_for_a_read_in_progress(db_path, hooked):
    store = LmdbObjectStore(db_path)
    store.put(b"slow", hooked("slow"))
    store.put(b"other", 1)
    store.flush()
    entered, release = threading.Event(), threading.Event()

    def block(obj):
        if obj.tag == "slow" and not entered.is_set():
            entered.set()
            assert release.wait(20)

    hooked.hook = block
    reader, r_out = start_thread(lambda: store.get(b"slow"))
    try:
        assert entered.wait(20)
        closer, c_out = start_thread(store.close)

        # New calls fail while close waits for the read in flight.
        def new_call_fails():
            for _ in range(2000):
                try:
                    store.get(b"other")
                except ClosedError:
                    return True
                threading.Event().wait(0.005)
            return False

        prober, p_out = start_thread(new_call_fails)
        join_or_fail(prober)
        assert p_out.get("result") is True, p_out
        # close() cannot have finished: a read transaction is still open.
        assert closer.is_alive()
        assert reader.is_alive()
    finally:
        release.set()
    join_or_fail(reader)
    join_or_fail(closer)
    assert "error" not in r_out, r_out.get("error")
    assert r_out["result"] == hooked("slow")
    assert "error" not in c_out, c_out.get("error")
    assert store.closed


# --------------------------------------------------------------------------
# Re-entrancy: code run by pickle.loads calls the store
# --------------------------------------------------------------------------


def test_setstate_reading_another_key(make_store, hooked):
    store = make_store(autoflush_on_read=True)
    store.put(b"other", "other value")
    store.put(b"obj", hooked("reader"))
    store.flush()
    seen = []

    def hook(obj):
        if obj.tag == "reader":
            try:
                seen.append(store.get(b"other"))
                seen.append(store[b"other"])
                seen.append(b"other" in store)
                seen.append(store.get_many([b"other"]))
            except Exception as exc:  # noqa: BLE001
                seen.append(exc)

    hooked.hook = hook
    t, out = start_thread(lambda: store.get(b"obj"))
    join_or_fail(t)
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("reader")
    # Reading from inside a read is plain reading: it must work.
    assert seen == ["other value", "other value", True, ({b"other": "other value"}, [])]


def test_setstate_reading_from_buffered_value(make_store, hooked):
    store = make_store(autoflush_on_read=False)
    store.put(b"other", "other value")
    store.put(b"obj", hooked("reader"))  # both buffered
    seen = []

    def hook(obj):
        if obj.tag == "reader":
            seen.append(store.get(b"other"))

    hooked.hook = hook
    t, out = start_thread(lambda: store.get(b"obj"))
    join_or_fail(t)
    assert "error" not in out, out.get("error")
    assert seen == ["other value"]


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_setstate_writing_to_the_store(make_store, hooked, batch_size):
    store = make_store(batch_size=batch_size)
    store.put(b"obj", hooked("writer"))
    store.flush()
    outcome = {}

    def hook(obj):
        if obj.tag == "writer" and "done" not in outcome:
            outcome["done"] = True
            try:
                store.put(b"written-in-setstate", 1)
                store.flush()
                store.put_many({b"many-in-setstate": 2})
                outcome["ok"] = True
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

    hooked.hook = hook
    t, out = start_thread(lambda: store.get(b"obj"))
    join_or_fail(t)
    hooked.hook = None
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("writer")
    assert_ok_or_error(outcome.get("error"))
    if "ok" in outcome:
        assert store.get(b"written-in-setstate") == 1
        assert store.get(b"many-in-setstate") == 2


def test_setstate_in_get_many_calling_the_store(make_store, hooked):
    store = make_store()
    store.put_many({b"a": hooked("a"), b"b": hooked("b"), b"plain": 3})
    seen = []

    def hook(obj):
        try:
            seen.append(store.get(b"plain"))
            store.put(b"from-" + obj.tag.encode(), 1)
        except Exception as exc:  # noqa: BLE001
            seen.append(exc)

    hooked.hook = hook
    t, out = start_thread(lambda: store.get_many([b"a", b"b", b"zz"]))
    join_or_fail(t)
    hooked.hook = None
    assert "error" not in out, out.get("error")
    assert out["result"] == ({b"a": hooked("a"), b"b": hooked("b")}, [b"zz"])
    for item in seen:
        assert item == 3 or isinstance(item, Error), repr(item)


def test_setstate_putting_into_the_buffer_works(make_store, hooked):
    store = make_store()
    store.put(b"obj", hooked("writer"))
    store.flush()
    outcome = {}

    def hook(obj):
        if obj.tag == "writer" and "done" not in outcome:
            outcome["done"] = True
            try:
                store[b"written-from-setstate"] = "yes"
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

    hooked.hook = hook
    t, out = start_thread(lambda: store[b"obj"])
    join_or_fail(t)
    hooked.hook = None
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("writer")
    # A write that only enters the buffer waits for nothing: it must work.
    assert "error" not in outcome, outcome.get("error")
    assert store[b"written-from-setstate"] == "yes"


def test_close_from_unpickling_code_is_an_error_not_a_deadlock(db_path, hooked):
    store = LmdbObjectStore(db_path)
    store.put(b"obj", hooked("closer"))
    store.flush()
    outcome = {}

    def hook(obj):
        if obj.tag == "closer" and "done" not in outcome:
            outcome["done"] = True
            try:
                store.close()
                outcome["ok"] = True
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

    hooked.hook = hook
    t, out = start_thread(lambda: store.get(b"obj"))
    join_or_fail(t)
    hooked.hook = None
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("closer")
    # Closing would wait for this thread's own read: it raises and does nothing.
    assert isinstance(outcome.get("error"), Error), outcome
    assert "this same thread" in str(outcome["error"])
    assert not store.closed
    # Afterwards the store closes normally.
    closer, c_out = start_thread(store.close)
    join_or_fail(closer)
    assert "error" not in c_out, c_out.get("error")
    assert store.closed
    with LmdbObjectStore(db_path) as again:
        assert again.get(b"obj") == hooked("closer")


def test_reducer_calling_the_store_from_several_threads(make_store):
    store = make_store(batch_size=5)
    store.put(b"seed", 1)
    store.flush()

    class CallsStoreWhenPickled:
        def __init__(self, n):
            self.n = n

        def __reduce__(self):
            store.get(b"seed")
            store.put(b"side-%d" % self.n, self.n)
            return (int, (self.n,))

    def worker(t):
        def run():
            for i in range(50):
                store.put(b"v-%d-%d" % (t, i), CallsStoreWhenPickled(i))
            return True

        return run

    _, errors = run_threads([worker(t) for t in range(3)])
    for err in errors:
        assert_ok_or_error(err)
    if errors == [None] * 3:
        for t in range(3):
            assert store.get(b"v-%d-49" % t) == 49
        assert store.get(b"side-49") == 49
