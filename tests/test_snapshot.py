"""Snapshots, their zero-copy views, and ``get_into`` (docs/usage.md "Snapshots",
docs/semantics.md "Snapshots").

The cases where memory could be touched after it is unmapped (views kept past
their block, past close, past growth in another thread or process, a snapshot
inherited by a fork child) run in a child interpreter, so a crash fails the test
instead of killing pytest. Every thread and child has a timeout.
"""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from helpers import MiB, join_or_fail, raw_items, run_python, run_threads, start_thread
from lmdb_object_store import ClosedError, Error, LmdbObjectStore


def test_a_snapshot_reads_like_a_mapping(make_store):
    store = make_store()
    store.put_many({b"a1": 1, b"a2": [2], b"b1": "three"})
    with store.snapshot() as snap:
        assert snap[b"a2"] == [2]
        assert snap.get(b"zz", "dflt") == "dflt"
        with pytest.raises(KeyError):
            snap[b"zz"]
        assert b"a1" in snap and b"zz" not in snap
        assert len(snap) == 3
        assert list(snap) == [b"a1", b"a2", b"b1"]
        assert snap.keys(prefix=b"a") == [b"a1", b"a2"]
        assert snap.values(start=b"a2") == [[2], "three"]
        assert snap.items(stop=b"b1", reverse=True) == [(b"a2", [2]), (b"a1", 1)]
        assert snap.get_many([b"a1", b"zz"]) == ({b"a1": 1}, [b"zz"])
        assert bytes(snap.view(b"a1")) == pickle.dumps(1, protocol=store.pickle_protocol)
        with pytest.raises(KeyError):
            snap.view(b"zz")
        with pytest.raises(TypeError):
            snap.view(b"a1")[0] = 0  # read-only
    assert snap.closed


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decode_keys": True},
        {"decode_not_found": True},
        {"decode_keys": True, "decode_not_found": False},
    ],
)
def test_get_many_answers_as_the_store_does(make_store, options):
    store = make_store(key_encoding="utf-8")
    store.update({"a": 1, "b": 2})
    store.flush()
    keys = ["a", b"b", "zz", b"yy", bytearray(b"a")]
    expected = store.get_many(keys, **options)
    with store.snapshot() as snap:
        got = snap.get_many(keys, **options)
    assert got == expected
    assert [type(k) for k in got[0]] == [type(k) for k in expected[0]]
    assert [type(k) for k in got[1]] == [type(k) for k in expected[1]]


def test_get_many_decoding_needs_a_key_encoding(make_store):
    store = make_store()
    store[b"a"] = 1
    with store.snapshot() as snap:
        with pytest.raises(ValueError) as caught:
            snap.get_many([b"a"], decode_keys=True)
    with pytest.raises(ValueError) as expected:
        store.get_many([b"a"], decode_keys=True)
    assert str(caught.value) == str(expected.value)


def test_it_sees_the_buffer_committed_first_and_nothing_written_after(make_store):
    store = make_store(batch_size=1000)
    store[b"k"] = "buffered"
    with store.snapshot() as snap:
        assert store.pending == 0, "snapshot() commits the buffer"
        store[b"k"] = "later"
        store[b"new"] = 1
        store.flush()
        assert snap[b"k"] == "buffered"
        assert b"new" not in snap and len(snap) == 1
    assert store[b"k"] == "later"


def test_one_state_against_writer_threads(make_store):
    store = make_store(batch_size=50)
    store.put_many({b"k%04d" % i: 0 for i in range(500)})
    stop = threading.Event()
    committed = threading.Event()

    def writer(n):
        def run():
            rounds = 0
            while not stop.is_set():
                rounds += 1
                store.put_many({b"k%04d" % i: rounds for i in range(n, 500, 4)})
                store.flush()
                committed.set()
            return rounds

        return run

    with store.snapshot() as snap:
        t, _ = start_thread(lambda: run_threads([writer(i) for i in range(3)], timeout=30))
        try:
            checks = 0
            # Keep reading until the writers have committed at least once while
            # the snapshot was open (a fast machine may finish 20 reads first).
            while checks < 20 or not committed.wait(0.01):
                checks += 1
                assert checks < 10_000, "the writers never committed"
                assert set(snap.values()) == {0}
                found, _ = snap.get_many([b"k%04d" % i for i in range(500)])
                assert set(found.values()) == {0}
        finally:
            stop.set()
            join_or_fail(t, 30)
    assert set(store.values()) != {0}


def test_one_state_against_a_writer_process_that_grows_the_map(make_store, db_path):
    store = make_store(map_size=1 * MiB)
    store[b"k"] = "first"
    store.flush()
    before = store.info()["map_size"]
    with store.snapshot() as snap:
        view = snap.view(b"k")
        held = bytes(view)
        run_python(
            """
            import sys
            from lmdb_object_store import LmdbObjectStore
            with LmdbObjectStore(sys.argv[1]) as s:
                s[b"k"] = "second"
                s.put_many({b"big%d" % i: b"x" * 100_000 for i in range(100)})
            """,
            db_path,
        )
        assert snap[b"k"] == "first" and len(snap) == 1
        assert bytes(view) == held
    assert store[b"k"] == "second"
    assert store.info()["map_size"] > before


def test_growth_waits_for_a_snapshot_of_another_thread(make_store):
    store = make_store(map_size=1 * MiB, batch_size=10_000)
    store[b"k"] = "v"
    before = store.info()["map_size"]
    with store.snapshot() as snap:
        view = snap.view(b"k")

        def grow():
            store.put_many({b"big%d" % i: b"x" * 100_000 for i in range(30)})

        t, outcome = start_thread(grow)
        t.join(0.5)
        assert t.is_alive(), "the growth must wait for the open snapshot"
        # The holder's own reads go on meanwhile, through the store and the view.
        assert store[b"k"] == "v" and snap[b"k"] == "v"
        assert bytes(view) == pickle.dumps("v", protocol=store.pickle_protocol)
    join_or_fail(t)
    assert "error" not in outcome, outcome
    assert store.info()["map_size"] > before
    assert len(store) == 31


def test_growth_in_the_snapshots_own_thread_raises(make_store):
    store = make_store(map_size=1 * MiB, batch_size=10_000)
    store[b"k"] = "v"
    with store.snapshot() as snap:
        for i in range(30):
            store[b"big%d" % i] = b"x" * 100_000
        with pytest.raises(Error, match="same thread"):
            store.flush()
        assert snap[b"k"] == "v"
    store.flush()
    assert len(store) == 31


def test_close_in_the_snapshots_thread_raises_and_elsewhere_waits(make_store):
    store = make_store()
    store[b"k"] = 1
    with store.snapshot() as snap:
        with pytest.raises(Error, match="same thread"):
            store.close()
        assert snap[b"k"] == 1
    store.close()

    store = make_store()
    store[b"k"] = 1
    with store.snapshot() as snap:
        t, outcome = start_thread(store.close)
        t.join(0.5)
        assert t.is_alive(), "close() must wait for the open snapshot"
        assert snap[b"k"] == 1
    join_or_fail(t)
    assert "error" not in outcome, outcome
    assert store.closed
    with pytest.raises(ClosedError):
        store.snapshot()


def test_a_snapshot_after_its_block_or_in_another_thread_raises(make_store):
    store = make_store()
    store[b"k"] = 1
    with store.snapshot() as snap:
        results, errors = run_threads([lambda: snap[b"k"]])
        assert isinstance(errors[0], Error) and "thread" in str(errors[0])
    for use in (lambda: snap[b"k"], lambda: len(snap), lambda: snap.view(b"k"), snap.keys):
        with pytest.raises(Error, match="ended"):
            use()
    with pytest.raises(Error, match="ended"):
        with snap:
            pass
    snap.close()  # idempotent


def test_a_snapshot_released_by_another_thread_lets_growth_in(make_store):
    store = make_store(map_size=1 * MiB, batch_size=10_000)
    snap = store.snapshot()
    run_threads([snap.close])
    store.put_many({b"big%d" % i: b"x" * 100_000 for i in range(30)})
    assert len(store) == 30


def test_views_after_the_block_close_and_growth_are_refused_not_dangling(tmp_path):
    out = run_python(
        """
        import sys, threading
        from lmdb_object_store import LmdbObjectStore

        def refused(v):
            try:
                v.tobytes()
            except ValueError:
                return True
            return False

        s = LmdbObjectStore(sys.argv[1], map_size=1 << 20, batch_size=10_000)
        s[b"k"] = b"v" * 1000
        s.flush()
        with s.snapshot() as snap:
            v = snap.view(b"k")
            kept = v[-12:-2]          # a slice keeps the transaction open
            assert v.readonly
        assert refused(v)
        assert kept.tobytes().count(b"v") == 10   # the slice still reads valid memory
        del kept                                 # ... until it goes

        # growth by another thread, then another process, after the block
        big = {b"big%d" % i: b"x" * 100_000 for i in range(30)}
        t = threading.Thread(target=lambda: s.put_many(big))
        t.start(); t.join(30); assert not t.is_alive()
        assert refused(v)
        import subprocess
        subprocess.run([sys.executable, "-c",
            "import sys; from lmdb_object_store import LmdbObjectStore as S;"
            "s = S(sys.argv[1]);"
            "s.put_many({b'p%d' % i: b'y' * 200_000 for i in range(60)}); s.close()",
            sys.argv[1]], check=True, timeout=60)
        assert len(s) == 91
        s.close()
        assert refused(v)
        print("ok")
        """,
        str(tmp_path / "db"),
    )
    assert out.strip() == "ok"


def test_a_view_slice_kept_until_interpreter_exit(tmp_path):
    # The store is closed at exit while a buffer over the snapshot's memory
    # still keeps its transaction: the close runs when that buffer goes.
    out = run_python(
        """
        import sys
        from lmdb_object_store import LmdbObjectStore
        s = LmdbObjectStore(sys.argv[1])
        s[b"k"] = b"v" * 1000
        s.flush()
        with s.snapshot() as snap:
            kept = snap.view(b"k")[-12:-2]
        s[b"j"] = 1
        print(kept.tobytes().decode())
        """,
        str(tmp_path / "db"),
        timeout=30,
    )
    assert out.strip() == "v" * 10
    with LmdbObjectStore(str(tmp_path / "db")) as s:
        assert s[b"j"] == 1


def test_a_snapshot_inherited_by_a_fork_child_raises_there(tmp_path):
    out = run_python(
        """
        import os, sys
        from lmdb_object_store import Error, LmdbObjectStore
        s = LmdbObjectStore(sys.argv[1])
        s[b"k"] = 1
        with s.snapshot() as snap:
            view = snap.view(b"k")
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    snap[b"k"]
                except Error as e:
                    code = 0 if "fork" in str(e) else 2
                try:
                    s[b"k2"] = 2          # the store itself works in the child
                    s.flush()
                    assert s[b"k"] == 1
                except BaseException:
                    code = 3
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert snap[b"k"] == 1
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert s[b"k2"] == 2
        s.close()
        print("ok")
        """,
        str(tmp_path / "db"),
    )
    assert out.strip() == "ok"


def test_get_into_copies_the_stored_bytes(make_store, db_path):
    store = make_store()
    value = {"x": list(range(100))}
    store[b"k"] = value
    store.flush()
    buf = bytearray(10_000)
    n = store.get_into(b"k", buf)
    import lmdb

    env = lmdb.open(db_path, readonly=True, lock=False, subdir=True)
    try:
        assert bytes(buf[:n]) == raw_items(env)[b"k"]
    finally:
        env.close()
    assert pickle.loads(buf[:n]) == value
    big = os.urandom(4 * MiB)
    store[b"big"] = big
    store.flush()
    out = memoryview(bytearray(5 * MiB))
    n = store.get_into(b"big", out)
    assert pickle.loads(out[:n]) == big


def test_get_into_serves_buffered_values_from_the_buffer(make_store):
    store = make_store(batch_size=1000)
    store[b"k"] = "buffered"
    buf = bytearray(100)
    n = store.get_into(b"k", buf)
    assert store.pending == 1
    assert bytes(buf[:n]) == pickle.dumps("buffered", protocol=store.pickle_protocol)
    del store[b"k"]
    with pytest.raises(KeyError):
        store.get_into(b"k", buf)


@pytest.mark.parametrize("autoflush", [True, False])
def test_get_into_commits_the_buffer_first_as_get_does(make_store, autoflush):
    store = make_store(batch_size=1000, autoflush_on_read=autoflush)
    store[b"on-disk"] = 1
    store.flush()
    store[b"buffered"] = 2
    buf = bytearray(100)
    store.get_into(b"on-disk", buf)
    got_into = store.pending
    store[b"buffered"] = 3
    store.get(b"on-disk")
    assert got_into == store.pending == (0 if autoflush else 1)


def test_get_into_bad_input_writes_nothing(make_store):
    store = make_store()
    store[b"key1"] = b"v" * 100
    buf = bytearray(b"\x07" * 10)
    with pytest.raises(ValueError, match=r"key1.*\d+ bytes.*holds 10"):
        store.get_into(b"key1", buf)
    assert buf == bytearray(b"\x07" * 10)
    with pytest.raises(KeyError):
        store.get_into(b"missing", buf)
    with pytest.raises(TypeError, match="writable"):
        store.get_into(b"key1", b"\x00" * 1000)
    assert buf == bytearray(b"\x07" * 10)
    assert store[b"key1"] == b"v" * 100


def test_snapshot_and_get_into_on_a_closed_store(make_store):
    store = make_store()
    store.close()
    with pytest.raises(ClosedError):
        store.snapshot()
    with pytest.raises(ClosedError):
        store.get_into(b"k", bytearray(10))


def test_store_class_is_importable():
    assert hasattr(LmdbObjectStore, "snapshot") and hasattr(LmdbObjectStore, "get_into")
