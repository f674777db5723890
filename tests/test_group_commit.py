"""Automatic commits run in the background.

When a write fills the buffer, its batch is committed on a thread of its own
(the fsync overlaps the caller's next writes). These tests hold LMDB's writer
lock from another process, so that such a commit cannot finish until the test
lets it, and check what the spec promises meanwhile: the write that filled
the buffer returns, every thread still reads the batch in flight, the full
batches after it queue behind it (up to a bound) and land with its next
transaction, and flush(), pending, fork and close wait for it. A commit that
fails keeps its batches and is reported by the next write.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

import pytest

from helpers import MiB, join_or_fail, start_thread
from lmdb_object_store import Error, LmdbObjectStore, MapFullError
from proc_workers import fork_child, wait_child

# A process that opens the environment with py-lmdb, begins a write
# transaction (taking LMDB's writer lock), says so, and aborts it when told.
_HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_readers=1024)
txn = env.begin(write=True)
print("locked", flush=True)
sys.stdin.readline()
txn.abort()
env.close()
"""


class WriterLock:
    """LMDB's writer lock of ``path``, held by another process until released."""

    def __init__(self, path: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        line: list[str] = []

        def read():
            line.append(self.proc.stdout.readline())
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20) or line[0].strip() != "locked":
            self.proc.kill()
            raise AssertionError(f"the lock holder did not start: {line!r}")

    def release(self):
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
        try:
            assert self.proc.wait(timeout=20) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@contextlib.contextmanager
def writer_lock(path: str):
    holder = WriterLock(path)
    try:
        yield holder
    finally:
        holder.release()


# Automatic commits go to the background for batches of at least this many
# entries on a store that syncs (smaller ones commit inside the write).
BATCH = 256


def _put_range(store, prefix: bytes, n: int):
    for i in range(n):
        store.put(prefix + b"%03d" % i, i)


def test_the_write_that_fills_the_buffer_does_not_wait_for_the_commit(make_store, db_path):
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    store.put(b"seed", "committed")
    store.flush()
    with writer_lock(db_path):
        # The tenth put starts a commit that cannot finish while the lock is
        # held elsewhere; the puts return all the same.
        t, out = start_thread(lambda: _put_range(store, b"k", BATCH))
        join_or_fail(t, 15)
        assert "error" not in out, out
        # The batch in flight is readable, from this thread and another.
        assert store.get(b"k003") == 3
        assert b"k255" in store
        t, out = start_thread(lambda: store.get_many([b"k000", b"k005", b"nope"]))
        join_or_fail(t, 15)
        assert out["result"] == ({b"k000": 0, b"k005": 5}, [b"nope"])
        # Reading the database does not wait for the commit either.
        assert store.get(b"seed") == "committed"
        # The next full batch queues behind the one in flight instead of
        # waiting for it, and is readable there.
        t2, out2 = start_thread(lambda: _put_range(store, b"m", BATCH))
        join_or_fail(t2, 15)
        assert "error" not in out2, out2
        assert store.get(b"m000") == 0
    store.flush()
    assert store.pending == 0
    store.close()
    again = make_store()
    assert {k: again[k] for k in again} == {
        b"seed": "committed",
        **{b"k%03d" % i: i for i in range(BATCH)},
        **{b"m%03d" % i: i for i in range(BATCH)},
    }


@pytest.mark.parametrize("waiter", ["flush", "pending", "close", "iterate"])
def test_calls_that_need_the_commit_wait_for_it(make_store, db_path, waiter):
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    with writer_lock(db_path) as lock:
        _put_range(store, b"k", BATCH)  # in flight, blocked
        calls = {
            "flush": store.flush,
            "pending": lambda: store.pending,
            "close": store.close,
            "iterate": lambda: list(store.keys()),
        }
        t, out = start_thread(calls[waiter])
        t.join(0.5)
        assert t.is_alive(), f"{waiter} returned before the commit in flight ended"
        lock.release()
        join_or_fail(t, 15)
    assert "error" not in out, out
    if waiter == "pending":
        assert out["result"] == 0
    if waiter == "iterate":
        assert out["result"] == [b"k%03d" % i for i in range(BATCH)]
    store.close()
    assert dict(make_store().items()) == {b"k%03d" % i: i for i in range(BATCH)}


def test_a_buffer_full_by_bytes_commits_inside_the_write(make_store, db_path):
    # Past max_buffer_bytes the write that overflows commits before it
    # returns, so no second buffer's worth of big values piles up.
    store = make_store(batch_size=1000, max_buffer_bytes=64 * 1024)
    with writer_lock(db_path) as lock:
        store.put(b"a", b"x" * 40_000)
        t, out = start_thread(lambda: store.put(b"b", b"y" * 40_000))
        t.join(0.5)
        assert t.is_alive(), "the write past max_buffer_bytes returned before its commit"
        lock.release()
        join_or_fail(t, 15)
    assert "error" not in out, out
    assert store.pending == 0


def test_a_failed_commit_by_bytes_is_raised_by_the_write(make_store):
    store = make_store(
        batch_size=1000, max_buffer_bytes=1 * MiB, map_size=1 * MiB, max_map_size=1 * MiB
    )
    with pytest.raises(MapFullError):
        store.put(b"big", b"z" * (3 * MiB))
    # As a failed flush: the write is in the buffer, and the next flush retries.
    assert store.pending == 1
    assert store.get(b"big") == b"z" * (3 * MiB)
    store.delete(b"big")
    store.flush()
    assert store.pending == 0


def test_fork_waits_for_the_commit_in_flight(make_store, db_path):
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    with writer_lock(db_path) as lock:
        _put_range(store, b"k", BATCH)
        threading.Timer(0.3, lock.release).start()

        def child():
            # Nothing buffered came along, and everything is on disk.
            assert store.pending == 0
            assert {k: store[k] for k in store} == {b"k%03d" % i: i for i in range(BATCH)}

        pid = fork_child(child)
        assert store.pending == 0
        assert wait_child(pid) == 0


def _fill_with_a_big_last_value(store) -> dict:
    """Bring the buffer to BATCH entries, the last one too big for the map."""
    small = {b"s%03d" % i: i for i in range(BATCH - 1)}
    for k, v in small.items():
        store.put(k, v)
    store.put(b"big", b"\x07" * (3 * MiB))  # starts a commit that cannot fit
    return small


def test_a_failed_background_commit_is_reported_by_the_next_write(make_store):
    store = make_store(
        batch_size=BATCH, map_size=1 * MiB, max_map_size=1 * MiB, autoflush_on_read=False
    )
    small = _fill_with_a_big_last_value(store)
    # `pending` waits for that commit: it failed and its batch is back.
    assert store.pending == BATCH
    assert store.get(b"big") == b"\x07" * (3 * MiB)
    assert store.get(b"s007") == 7
    assert len(store) == BATCH
    # The next write raises the commit's error, before buffering anything.
    with pytest.raises(MapFullError) as exc_info:
        store.put(b"late", 3)
    assert isinstance(exc_info.value, Error)
    assert any("automatic commit" in n for n in getattr(exc_info.value, "__notes__", []))
    assert store.pending == BATCH
    assert store.get(b"late") is None
    # Reported once: the write after it is taken (and, the buffer being
    # full, starts another background commit, which fails the same way).
    store.put(b"late", 3)
    assert store.get(b"late") == 3
    # flush() retries the whole buffer and raises its own failure.
    with pytest.raises(MapFullError):
        store.flush()
    assert store.pending == BATCH + 1
    store.delete(b"big")
    store.flush()
    assert store.pending == 0
    store.close()
    assert dict(make_store().items()) == {**small, b"late": 3}


def test_a_failed_background_commit_is_retried_by_close(make_store, db_path):
    store = make_store(batch_size=BATCH, map_size=1 * MiB, max_map_size=1 * MiB)
    small = _fill_with_a_big_last_value(store)
    assert store.pending == BATCH  # the background commit failed
    with pytest.raises(MapFullError):
        store.delete(b"big")  # reports the failure...
    store.delete(b"big")  # ...and is taken the second time
    store.close()
    assert dict(LmdbObjectStore(db_path).items()) == small


@pytest.mark.parametrize(
    "options",
    [{"batch_size": 10}, {"batch_size": BATCH - 1}, {"batch_size": BATCH, "sync": False}],
    ids=["small-batch", "just-below", "no-sync"],
)
def test_small_batches_and_unsynced_stores_commit_inside_the_write(make_store, db_path, options):
    # There the commit is shorter than a hand-over to another thread.
    store = make_store(autoflush_on_read=False, **options)
    n = options["batch_size"]
    with writer_lock(db_path) as lock:
        t, out = start_thread(lambda: _put_range(store, b"k", n))
        t.join(0.5)
        assert t.is_alive(), "the write that filled the buffer returned before its commit"
        lock.release()
        join_or_fail(t, 15)
    assert "error" not in out, out
    assert store.pending == 0


# Batches in flight at most (one committing, the rest queued behind it) before
# a write that fills the buffer waits instead (src/core.rs, MAX_QUEUED).
MAX_QUEUED = 16


def test_full_batches_queue_behind_a_blocked_commit_up_to_a_bound(make_store, db_path):
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    with writer_lock(db_path) as lock:
        # One batch committing (blocked), then MAX_QUEUED - 1 queued behind
        # it: no write waits. Key b"same" is written in every batch.
        def fill():
            for b in range(MAX_QUEUED):
                for i in range(BATCH - 1):
                    store.put(b"b%02d:%03d" % (b, i), (b, i))
                store.put(b"same", b)

        t, out = start_thread(fill)
        join_or_fail(t, 15)
        assert "error" not in out, out
        assert store.get(b"same") == MAX_QUEUED - 1
        assert store.get(b"b00:000") == (0, 0)
        # The next full batch finds the queue full: its last write waits.
        t2, out2 = start_thread(lambda: _put_range(store, b"z", BATCH))
        t2.join(0.5)
        assert t2.is_alive(), "a write queued a batch past the bound"
        assert store.get(b"z000") == 0
        lock.release()
        join_or_fail(t2, 15)
    assert "error" not in out2, out2
    assert store.pending == 0
    store.close()
    again = make_store()
    assert again[b"same"] == MAX_QUEUED - 1
    assert len(again) == MAX_QUEUED * (BATCH - 1) + 1 + BATCH


def test_every_full_batch_leaves_the_buffer_even_when_queued(make_store, db_path):
    # "The buffer flushes by itself when it holds batch_size entries": with
    # batches queued behind a blocked commit, what is left buffered after
    # the commits is still what came after the last full batch.
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    with writer_lock(db_path):
        t, out = start_thread(lambda: _put_range(store, b"k", 3 * BATCH + 5))
        join_or_fail(t, 15)
        assert "error" not in out, out
    assert store.pending == 5
    store.flush()
    assert store.pending == 0
    assert len(store) == 3 * BATCH + 5


def test_a_failed_commit_puts_the_queued_batches_back(make_store, db_path):
    store = make_store(
        batch_size=BATCH, map_size=1 * MiB, max_map_size=1 * MiB, autoflush_on_read=False
    )
    with writer_lock(db_path) as lock:
        small = _fill_with_a_big_last_value(store)  # in flight; cannot fit
        more = {b"q%03d" % i: i for i in range(2 * BATCH)}

        def queue_two():  # two batches queued behind it
            for k, v in more.items():
                store.put(k, v)

        t, out = start_thread(queue_two)
        join_or_fail(t, 15)
        assert "error" not in out, out
        lock.release()
    # `pending` waits for the commit: it failed, and every batch is back.
    assert store.pending == 3 * BATCH
    with pytest.raises(MapFullError):
        store.put(b"late", 1)
    assert store.get(b"q007") == 7
    store.delete(b"big")
    store.flush()
    store.close()
    assert dict(make_store().items()) == {**small, **more}


def test_a_flush_is_not_held_up_by_a_writer_that_keeps_queueing(make_store):
    # A writer that fills a batch faster than a commit ends would keep the
    # commit thread going; a flush() in another thread must still get its
    # turn instead of waiting for the writer to stop.
    store = make_store(batch_size=BATCH, autoflush_on_read=False)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 1_000_000:
            store.put(b"w%08d" % i, i)
            i += 1
        return i

    t, out = start_thread(writer)
    try:
        for _ in range(5):
            f, fout = start_thread(store.flush)
            f.join(20)
            assert not f.is_alive(), "flush() waited behind the writer's batches"
            assert "error" not in fout, fout
        assert not stop.is_set() and t.is_alive(), "the writer stopped on its own"
    finally:
        stop.set()
        join_or_fail(t, 60)
    assert "error" not in out, out
    store.flush()
    assert len(store) == out["result"]


def test_many_threads_read_their_writes_across_background_commits(make_store):
    store = make_store(batch_size=BATCH + 7, autoflush_on_read=False)

    def writer(tid):
        def run():
            for i in range(300):
                key = b"t%d:%03d" % (tid, i)
                store.put(key, (tid, i))
                got = store.get(key)
                assert got == (tid, i), (key, got)
                if i % 50 == 49:
                    earlier = b"t%d:%03d" % (tid, i - 40)
                    assert store[earlier] == (tid, i - 40)

        return run

    threads = [start_thread(writer(tid)) for tid in range(4)]
    for t, out in threads:
        join_or_fail(t, 30)
        assert "error" not in out, out["error"]
    store.flush()
    assert len(store) == 4 * 300
