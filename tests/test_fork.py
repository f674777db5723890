"""Stores across ``os.fork()`` (docs/processes.md "fork()").

Before a fork the parent flushes every open store; in the child the first use of
a store opens a fresh environment, and the child never closes or aborts what it
inherited. Children run through ``proc_workers.fork_child`` (exit code 0 on
success, 1 with a traceback on failure) and are reaped with a timeout, so a hung
child fails the test instead of hanging it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

import proc_workers
from helpers import KiB, MiB, join_or_fail, last_txnid, start_thread
from lmdb_object_store import ClosedError, LmdbObjectStore, ReadonlyError
from proc_workers import fork_child, wait_child, wait_readable

# Also run with a named table of the file (conftest.py, `table`).
TABLES = pytest.mark.parametrize("table", [None, "t"])


def _fill(store, flushed: int, buffered: int) -> dict:
    """Write ``flushed`` committed and ``buffered`` pending samples; return them all."""
    committed = {proc_workers.sample_key(i): proc_workers.sample_value(i) for i in range(flushed)}
    store.put_many(committed)
    pending = {
        proc_workers.sample_key(i): proc_workers.sample_value(i)
        for i in range(flushed, flushed + buffered)
    }
    for key, value in pending.items():
        store.put(key, value)
    assert store.pending == buffered
    return {**committed, **pending}


# --------------------------------------------------------------------------
# The DataLoader pattern: open, write, fork workers that read
# --------------------------------------------------------------------------


@TABLES
def test_forked_workers_read_everything_including_buffered_writes(make_store):
    store = make_store(batch_size=100_000)
    expected = _fill(store, flushed=300, buffered=100)
    gone = proc_workers.sample_key(0)
    store.delete(gone)  # a buffered tombstone as well
    del expected[gone]
    keys = sorted(expected)
    workers = 4

    def read_share(worker):
        assert store.pending == 0  # nothing of the parent's buffer is replayed here
        share = keys[worker::workers]
        for key in share:
            assert store[key] == expected[key], key
        assert store.get(gone) is None
        assert gone not in store
        found, not_found = store.get_many(keys + [gone])
        assert not_found == [gone]
        assert found == expected

    pids = []
    for w in range(workers):
        pids.append(fork_child(lambda w=w: read_share(w)))
        assert store.pending == 0, "the fork must flush the parent's buffer"
    txnid = last_txnid(store)
    codes = [wait_child(pid) for pid in pids]
    assert codes == [0] * workers
    # Reading children commit nothing: no buffered write was replayed.
    assert last_txnid(store) == txnid
    assert store.stat()["entries"] == len(expected)
    found, not_found = store.get_many(keys)
    assert not_found == []
    assert found == expected
    store.close(strict=True)


def test_multiprocessing_fork_workers_read_a_dataset(make_store):
    store = make_store(batch_size=100_000)
    expected = _fill(store, flushed=200, buffered=100)
    dataset = proc_workers.StoreDataset(store, sorted(expected))
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=proc_workers.dataset_worker, args=(dataset, w, 2)) for w in range(2)
    ]
    assert proc_workers.run_processes(procs) == [0, 0]
    assert store.pending == 0
    assert store.get_many(sorted(expected))[0] == expected


def test_fork_flushes_every_open_store(make_store, tmp_path):
    first = make_store(str(tmp_path / "one"), batch_size=1000)
    second = make_store(str(tmp_path / "two"), batch_size=1000)
    same_as_first = make_store(str(tmp_path / "one"), batch_size=1000)
    reader = make_store(str(tmp_path / "one"), readonly=True)
    first.put(b"a", 1)
    second.put(b"b", 2)
    same_as_first.put(b"c", 3)
    assert (first.pending, second.pending, same_as_first.pending) == (1, 1, 1)

    def child():
        assert first[b"a"] == 1
        assert first[b"c"] == 3
        assert second[b"b"] == 2
        assert same_as_first[b"a"] == 1
        assert reader[b"a"] == 1
        assert reader[b"c"] == 3
        try:
            reader.put(b"x", 0)
        except ReadonlyError:
            pass
        else:
            raise AssertionError("read-only store became writable in the child")

    pid = fork_child(child)
    assert (first.pending, second.pending, same_as_first.pending) == (0, 0, 0)
    assert wait_child(pid) == 0
    assert reader.get(b"c") == 3
    assert second.get(b"b") == 2


# --------------------------------------------------------------------------
# Writes made by a child
# --------------------------------------------------------------------------


@TABLES
@pytest.mark.parametrize("publish", ["flush", "close", "with", "batch"])
def test_a_child_writes_and_the_parent_sees_it(make_store, publish):
    store = make_store(batch_size=10)
    store.put(b"parent", "before")
    store.flush()
    assert store.get(b"parent") == "before"  # the parent has used a read

    def child():
        values = {b"child%02d" % i: {"i": i} for i in range(10)}
        if publish == "with":
            with store:
                for k, v in values.items():
                    store.put(k, v)
        else:
            for k, v in list(values.items())[:9]:
                store.put(k, v)
            assert store.pending == 9
            store.put(b"child09", {"i": 9})  # the 10th reaches batch_size
            if publish == "flush":
                store.flush()
            elif publish == "close":
                store.close()
            else:
                assert store.pending == 0  # flushed by itself at batch_size
        assert store.closed == (publish in ("close", "with"))

    assert wait_child(fork_child(child)) == 0
    assert not store.closed  # closing in the child does not close the parent's store
    found, not_found = store.get_many([b"child%02d" % i for i in range(10)])
    assert not_found == []
    assert found == {b"child%02d" % i: {"i": i} for i in range(10)}
    # The parent goes on reading and writing normally.
    store.put(b"parent", "after")
    store.flush()
    assert store.get(b"parent") == "after"
    assert store.stat()["entries"] == 11


@TABLES
def test_the_child_never_replays_the_parents_buffer(make_store):
    store = make_store(batch_size=1000)
    store.put(b"k", "buffered before fork")
    go_read, go_write = os.pipe()
    try:

        def child():
            assert store.pending == 0
            assert wait_readable(go_read, 1) == b"g", "parent never signalled"
            store.put(b"child", 1)
            store.flush()
            store.close()

        pid = fork_child(child)
        assert store.pending == 0
        store.put(b"k", "written by the parent after the fork")
        store.flush()
        os.write(go_write, b"g")
        assert wait_child(pid) == 0
    finally:
        os.close(go_read)
        os.close(go_write)
    assert store.get(b"child") == 1
    assert store.get(b"k") == "written by the parent after the fork"


def test_a_store_that_is_used_only_in_the_child(make_store, db_path):
    """A store opened in the child (not inherited) works and is independent."""
    parent = make_store()
    parent.put(b"p", 1)
    parent.flush()

    def child():
        with LmdbObjectStore(db_path) as own:
            assert own[b"p"] == 1
            own.put(b"own", 2)
        assert parent.get(b"own") == 2  # the inherited object sees it too
        parent.put(b"inherited", 3)
        parent.flush()

    assert wait_child(fork_child(child)) == 0
    assert parent.get(b"own") == 2
    assert parent.get(b"inherited") == 3


def test_nested_fork(make_store):
    store = make_store(batch_size=1000)
    store.put(b"from-parent", 1)  # buffered: flushed by the first fork

    def grandchild():
        assert store[b"from-parent"] == 1
        assert store[b"from-child"] == 2  # buffered in the child, flushed by its fork
        store.put(b"from-grandchild", 3)
        store.flush()

    def child():
        assert store[b"from-parent"] == 1
        store.put(b"from-child", 2)
        pid = fork_child(grandchild)
        assert store.pending == 0
        assert wait_child(pid) == 0
        assert store[b"from-grandchild"] == 3

    assert wait_child(fork_child(child)) == 0
    found, not_found = store.get_many([b"from-parent", b"from-child", b"from-grandchild"])
    assert not_found == []
    assert found == {b"from-parent": 1, b"from-child": 2, b"from-grandchild": 3}


def test_a_closed_store_stays_closed_in_the_child(make_store):
    store = make_store()
    store.put(b"k", 1)
    store.close()

    def child():
        try:
            store.get(b"k")
        except ClosedError:
            return 0
        return 3

    assert wait_child(fork_child(child)) == 0


# --------------------------------------------------------------------------
# Forking while another thread is inside a read
# --------------------------------------------------------------------------


@TABLES
def test_fork_while_another_thread_holds_a_read(make_store, hooked):
    """Locks and reads inherited in a held state do not block the child."""
    store = make_store(map_size=1 * MiB, batch_size=1000)
    store.put(b"held", hooked("held"))
    store.put(b"plain", "plain")
    store.flush()
    entered, release = threading.Event(), threading.Event()

    def hook(_obj):
        entered.set()
        release.wait(30)

    hooked.hook = hook
    reader, out = start_thread(lambda: store.get(b"held"))
    big = {b"big%02d" % i: bytes([i]) * (64 * KiB) for i in range(48)}  # 3 MiB: growth
    try:
        assert entered.wait(10), "the read did not start"
        hooked.hook = None
        store.put(b"buffered", "at fork")

        def child():
            assert store.get(b"plain") == "plain"
            assert store.get(b"buffered") == "at fork"
            store.put(b"child", 1)
            store.flush()
            # Growth waits for in-flight reads; the parent's thread is not ours.
            store.put_many(big)
            assert store.info()["map_size"] > 3 * MiB
            store.close()  # waits for in-flight reads too

        pid = fork_child(child)
        assert store.pending == 0
        code = wait_child(pid, timeout=20)
    finally:
        release.set()
    join_or_fail(reader)
    assert code == 0
    assert "error" not in out, out.get("error")
    assert out["result"] == hooked("held")
    assert store.get(b"child") == 1
    found, not_found = store.get_many(list(big))
    assert not_found == []
    assert found == big


def test_the_child_leaves_the_parents_reader_slots_alone(make_store, hooked):
    """The child neither aborts the parent's in-flight read nor frees its slot.

    The parent's read stays inside ``pickle.loads`` (zero copy, over LMDB's
    pages) while the child rewrites the same value many times. If the child
    released the parent's reader slot, LMDB would reuse those pages and the
    parent would unpickle something else.
    """
    store = make_store(batch_size=1000)
    big = bytes(range(256)) * 1024  # 256 KiB: overflow pages
    store.put(b"victim", [hooked("victim"), big])
    store.flush()
    entered, release = threading.Event(), threading.Event()

    def hook(_obj):
        entered.set()
        release.wait(30)

    hooked.hook = hook
    reader, out = start_thread(lambda: store.get(b"victim"))
    try:
        assert entered.wait(10), "the read did not start"
        hooked.hook = None

        def child():
            for i in range(10):
                store.put(b"victim", [None, bytes([i]) * len(big)])
                store.put(b"filler%d" % i, bytes([i]) * (100 * KiB))
                store.flush()
            store.close()

        code = wait_child(fork_child(child), timeout=20)
    finally:
        release.set()
    join_or_fail(reader)
    assert code == 0
    assert "error" not in out, out.get("error")
    assert out["result"] == [hooked("victim"), big]
    assert store.get(b"victim") == [None, bytes([9]) * len(big)]
