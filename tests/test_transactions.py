"""Transactions: ``with store.transaction() as t:`` (docs/tables.md).

Everything that could deadlock (a second transaction, a flush or a full
buffer inside one, close) or crash (fork) runs in a child interpreter with a
timeout, so a hang or a crash fails the test instead of stopping pytest. Every
thread has a timeout too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import lmdb_object_store
from helpers import MiB, join_or_fail, run_python, start_thread
from lmdb_object_store import Error, LmdbObjectStore, TransactionConflictError


def test_a_transaction_reads_and_writes_like_a_mapping(make_store):
    store = make_store()
    store.put_many({b"a1": 1, b"a2": [2], b"b1": "three"})
    with store.transaction() as t:
        assert t[b"a2"] == [2]
        assert t.get(b"zz", "dflt") == "dflt"
        with pytest.raises(KeyError):
            t[b"zz"]
        assert b"a1" in t and b"zz" not in t
        t[b"c1"] = {"new": True}
        assert t[b"c1"] == {"new": True}, "reads its own writes"
        del t[b"b1"]
        with pytest.raises(KeyError):
            del t[b"b1"]
        assert t.pop(b"a1") == 1
        assert t.pop(b"a1", "gone") == "gone"
        with pytest.raises(KeyError):
            t.pop(b"a1")
        assert t.setdefault(b"a2", "x") == [2]
        assert t.setdefault(b"d", "x") == "x"
        t.update(
            {b"e1": 5},
        )
        t.update([(b"e2", 6)])
        assert len(t) == 5
        assert list(t) == [b"a2", b"c1", b"d", b"e1", b"e2"]
        assert t.keys(prefix=b"e") == [b"e1", b"e2"]
        assert t.values(start=b"d", stop=b"e2") == ["x", 5]
        assert t.items(prefix=b"e", reverse=True) == [(b"e2", 6), (b"e1", 5)]
        assert t.get_many([b"e1", b"zz"]) == ({b"e1": 5}, [b"zz"])
        # Not committed yet: the store (another reader) sees the old state.
        assert store.get(b"b1") == "three"
        assert not t.closed
    assert t.closed
    assert dict(store.items()) == {b"a2": [2], b"c1": {"new": True}, b"d": "x", b"e1": 5, b"e2": 6}


def test_str_keys_and_another_serializer(make_store):
    store = make_store(key_encoding="utf-8", serializer="json")
    with store.transaction() as t:
        t["k"] = {"a": [1, 2]}
        t.update(x=1)
        assert t["k"] == {"a": [1, 2]}
        assert t.keys() == ["k", "x"]
    assert store["k"] == {"a": [1, 2]} and store["x"] == 1


def test_the_block_raising_rolls_everything_back(make_store):
    store = make_store()
    store[b"keep"] = "old"
    store.flush()
    with pytest.raises(ZeroDivisionError):
        with store.transaction() as t:
            t[b"keep"] = "new"
            t[b"added"] = 1
            del t[b"keep"]
            raise ZeroDivisionError
    assert store[b"keep"] == "old"
    assert b"added" not in store
    # The writer is free again: another transaction and a flush work.
    with store.transaction() as t:
        t[b"after"] = 1
    store[b"x"] = 1
    store.flush()
    assert store[b"after"] == 1


def test_it_sees_this_threads_buffered_writes_and_they_never_land_after(make_store):
    store = make_store(batch_size=1000)
    store[b"n"] = 1
    store[b"gone"] = 1
    del store[b"gone"]
    assert store.pending > 0
    with store.transaction() as t:
        assert store.pending == 0, "the buffer is committed first"
        assert t[b"n"] == 1
        assert b"gone" not in t
        t[b"n"] = 2
    store.flush()
    assert store[b"n"] == 2, "no older buffered write lands after the transaction"


def test_a_used_transaction_raises(make_store):
    store = make_store()
    t = store.transaction()
    with pytest.raises(Error, match="not begun"):
        t[b"k"] = 1
    with t:
        t[b"k"] = 1
    for use in (lambda: t[b"k"], lambda: t.get(b"k"), lambda: t.update({b"x": 1}), lambda: len(t)):
        with pytest.raises(Error, match="has ended"):
            use()
    with pytest.raises(Error, match="only once"):
        with t:
            pass
    assert store[b"k"] == 1


def test_only_the_thread_that_began_it_uses_it(make_store):
    store = make_store()
    with store.transaction() as t:
        t[b"k"] = 1
        thread, out = start_thread(lambda: t.get(b"k"))
        join_or_fail(thread)
        assert isinstance(out.get("error"), Error), out
        assert "thread" in str(out["error"])
    assert store[b"k"] == 1


def test_bad_keys_and_values_leave_nothing(make_store):
    store = make_store()
    with store.transaction() as t:
        t[b"ok"] = 1
        with pytest.raises(TypeError):
            t[None] = 1
        with pytest.raises(ValueError):
            t[b"x" * 600] = 1
        with pytest.raises(Exception, match="key 'bad'"):
            t[b"bad"] = lambda: 0
        with pytest.raises(TypeError):
            t.update({b"u1": 1, None: 2})
        with pytest.raises(Exception, match="key 'u3'"):
            t.update([(b"u2", 1), (b"u3", lambda: 0)])
        with pytest.raises(TypeError):
            t.update([(b"u4", 1), (b"u5",)])
        for k in (b"bad", b"u1", b"u2", b"u3", b"u4"):
            assert k not in t, k
        assert t[b"ok"] == 1, "the transaction goes on"
    assert list(store.keys()) == [b"ok"]


def test_a_readonly_store_refuses_transactions(tmp_path):
    LmdbObjectStore(str(tmp_path / "db")).close()
    ro = LmdbObjectStore(str(tmp_path / "db"), readonly=True)
    try:
        with pytest.raises(Error):
            with ro.transaction():
                pass
    finally:
        ro.close()


def test_isolation_from_a_concurrent_writer_thread(make_store, db_path):
    """Another thread's write waits for the transaction (and holds no GIL
    meanwhile: this thread goes on running Python); reads keep working."""
    store = make_store(batch_size=1000)
    reading = make_store(db_path)
    store[b"n"] = 0
    store.flush()
    started = threading.Event()

    def writer():
        store[b"n"] = 100
        started.set()
        store.flush()
        return "flushed"

    with store.transaction() as t:
        thread, out = start_thread(writer)
        assert started.wait(20)
        reader, read = start_thread(lambda: reading.get(b"other", "r"))
        join_or_fail(reader)
        assert read.get("result") == "r", read
        for _ in range(200):
            assert t[b"n"] in (0, 1)
            t[b"n"] = 1
        assert thread.is_alive(), "the writer's commit waits for the transaction"
    join_or_fail(thread)
    assert out.get("result") == "flushed", out
    assert store[b"n"] == 100, "the writer committed after the transaction"


def test_growth_inside_a_transaction(make_store, caplog):
    store = make_store(map_size=1 * MiB)
    store[b"n"] = 0
    with store.transaction() as t:
        t[b"n"] = t[b"n"] + 1
        for i in range(40):
            t[b"big%03d" % i] = b"x" * (512 * 1024)
        assert t[b"big000"] == b"x" * (512 * 1024)
    assert store.info()["map_size"] > 20 * MiB
    assert store[b"n"] == 1
    assert len(store) == 41


COUNTER_CHILD = """
import sys, threading
from lmdb_object_store import LmdbObjectStore

path, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = LmdbObjectStore(path, sync=False)
def work():
    for _ in range(rounds):
        with s.transaction() as t:
            t[b"n"] = t.get(b"n", 0) + 1
ts = [threading.Thread(target=work) for _ in range(threads)]
for th in ts:
    th.start()
for th in ts:
    th.join(120)
    assert not th.is_alive(), "a thread hung"
s.close()
"""


def _children(code: str, args: list[list[str]], timeout: float = 180.0) -> list[str]:
    pkg_parent = str(Path(lmdb_object_store.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": pkg_parent, "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *a],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_a_counter_across_processes_and_threads_loses_nothing(tmp_path):
    path = str(tmp_path / "db")
    LmdbObjectStore(path, sync=False).close()
    _children(COUNTER_CHILD, [[path, "4", "500"]] * 4)
    with LmdbObjectStore(path) as s:
        assert s[b"n"] == 4 * 4 * 500


GROWING_CHILD = """
import sys
from lmdb_object_store import LmdbObjectStore, TransactionConflictError

path, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = LmdbObjectStore(path, sync=False)
done = conflicts = 0
for i in range(rounds):
    try:
        with s.transaction() as t:
            t[b"n"] = t[b"n"] + 1
            t[b"done-" + me.encode()] = done + 1
            # Enough to outgrow the map now and then, in every process.
            t[b"pad-%s-%d" % (me.encode(), i)] = b"p" * 300_000
        done += 1
    except TransactionConflictError:
        conflicts += 1
s.close()
print(done, conflicts)
"""


def test_growth_while_other_processes_commit_stays_serializable(tmp_path):
    """Transactions that outgrow the map are undone and redone while other
    processes commit: each either commits whole, having read a value still
    current, or raises TransactionConflictError with nothing written."""
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, map_size=1 * MiB) as s:
        s[b"n"] = 0
    outs = _children(GROWING_CHILD, [[path, str(i), "40"] for i in range(3)])
    done = [int(o.split()[0]) for o in outs]
    with LmdbObjectStore(path) as s:
        assert s[b"n"] == sum(done), (outs, s[b"n"])
        for i in range(3):
            assert s.get(b"done-%d" % i, 0) == done[i]
        pads = s.keys(prefix=b"pad-")
        assert len(pads) == sum(done), "a conflicted transaction wrote nothing"
    assert sum(done) > 0


def test_nested_transactions_flush_and_full_buffers_raise_instead_of_deadlocking(tmp_path):
    out = run_python(
        """
        import sys, threading
        from lmdb_object_store import LmdbObjectStore, Error
        s = LmdbObjectStore(sys.argv[1], batch_size=2)
        other = LmdbObjectStore(sys.argv[1] + "-other")
        def refused(f):
            try:
                f()
            except Error as e:
                assert "transaction open" in str(e), e
                return "Error"
            return "no error"
        with s.transaction() as t:
            t[b"t"] = 1
            with other.transaction() as o:  # another file: fine
                o[b"o"] = 1
            print(refused(lambda: s.transaction().__enter__()))
            s[b"a"] = 1
            print(refused(s.flush))
            print(refused(lambda: s.__setitem__(b"b", 2)))  # fills the buffer
            print(refused(s.clear))
            print(refused(lambda: s.put_many({b"c": 3})))
            print(refused(s.popitem))
        s.flush()
        assert s[b"t"] == 1 and s[b"a"] == 1 and s[b"b"] == 2, "buffered writes stay"
        assert other[b"o"] == 1
        s.close()
        other.close()
        """,
        str(tmp_path / "db"),
        timeout=60,
    )
    assert out.split() == ["Error"] * 6


def test_close_during_a_transaction(tmp_path):
    """In its own thread close() raises and the store stays open; another
    thread's close() waits (without the GIL) for the block to end."""
    out = run_python(
        """
        import sys, threading
        from lmdb_object_store import LmdbObjectStore, Error
        s = LmdbObjectStore(sys.argv[1])
        with s.transaction() as t:
            t[b"a"] = 1
            try:
                s.close()
                print("closed")
            except Error:
                print("refused")
            t[b"b"] = 2
        assert s[b"a"] == 1 and not s.closed
        closing = threading.Event()
        def close():
            closing.set()
            s.close()
        with s.transaction() as t:
            th = threading.Thread(target=close)
            th.start()
            assert closing.wait(20)
            t[b"c"] = 3
            for i in range(100):
                t[b"i%d" % i] = i
        th.join(20)
        assert not th.is_alive() and s.closed
        with LmdbObjectStore(sys.argv[1]) as again:
            assert again[b"c"] == 3 and again[b"b"] == 2
        print("ok")
        """,
        str(tmp_path / "db"),
        timeout=60,
    )
    assert out.split() == ["refused", "ok"]


def test_a_fork_child_cannot_use_the_parents_transaction(tmp_path):
    out = run_python(
        """
        import os, sys, threading
        from lmdb_object_store import LmdbObjectStore, Error
        s = LmdbObjectStore(sys.argv[1])
        s[b"k"] = 0
        s.flush()

        def child(t, committed):
            code = 0
            try:
                t[b"k"] = 99
                code = 3
            except Error as e:
                code = 0 if "fork" in str(e) else 2
            # The child's own store works (reads; a write would wait for
            # the parent's transaction, as any other process's would).
            if code == 0 and s[b"k"] != committed:
                code = 4
            os._exit(code)

        # Forked from the transaction's own thread, inside its block.
        with s.transaction() as t:
            t[b"k"] = 1
            pid = os.fork()
            if pid == 0:
                child(t, 0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        assert s[b"k"] == 1

        # Forked by another thread while the transaction is open.
        ready, forked = threading.Event(), threading.Event()
        box = {}
        def hold():
            with s.transaction() as t:
                box["t"] = t
                t[b"k"] = 2
                ready.set()
                forked.wait(20)
        th = threading.Thread(target=hold)
        th.start()
        assert ready.wait(20)
        pid = os.fork()
        if pid == 0:
            child(box["t"], 1)
        # The child runs while the transaction is still open.
        _, status = os.waitpid(pid, 0)
        forked.set()
        th.join(20)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert s[b"k"] == 2
        s.close()
        print("ok")
        """,
        str(tmp_path / "db"),
        timeout=60,
    )
    assert out.strip() == "ok"


def test_a_conflict_is_its_own_error_class():
    assert issubclass(TransactionConflictError, Error)


def test_interpreter_exit_waits_for_a_transaction_block_of_another_thread(tmp_path):
    """The exit hook commits buffers; a daemon thread inside a transaction
    block holds the writer, so the hook lets the block finish first."""
    path = str(tmp_path / "db")
    run_python(
        """
        import sys, threading, time
        from lmdb_object_store import LmdbObjectStore
        s = LmdbObjectStore(sys.argv[1])
        inside = threading.Event()
        def block():
            with s.transaction() as t:
                inside.set()
                time.sleep(0.3)
                t[b"from-block"] = 1
        threading.Thread(target=block, daemon=True).start()
        assert inside.wait(20)
        s[b"buffered"] = 2
        """,
        path,
        timeout=60,
    )
    with LmdbObjectStore(path) as s:
        assert s[b"from-block"] == 1
        assert s[b"buffered"] == 2


def test_interpreter_exit_with_a_stuck_transaction_block_does_not_hang(tmp_path):
    path = str(tmp_path / "db")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, threading
                from lmdb_object_store import LmdbObjectStore
                s = LmdbObjectStore(sys.argv[1])
                inside = threading.Event()
                def block():
                    with s.transaction() as t:
                        t[b"from-block"] = 1
                        inside.set()
                        threading.Event().wait()
                threading.Thread(target=block, daemon=True).start()
                assert inside.wait(20)
                s[b"buffered"] = 2
                """
            ),
            path,
        ],
        env={"PYTHONPATH": str(Path(lmdb_object_store.__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "transaction block" in proc.stderr
    with LmdbObjectStore(path) as s:
        assert b"from-block" not in s and b"buffered" not in s


# --------------------------------------------------------------------------
# Tables: a transaction of a table store, and t.table(name)
# --------------------------------------------------------------------------


def test_a_transaction_of_a_table_store_writes_that_table(tmp_path):
    path = str(tmp_path / "db")
    users = LmdbObjectStore(path, table="users")
    orders = LmdbObjectStore(path, table="orders")
    with users.transaction() as t:
        t[b"k"] = "user"
        assert t.get(b"k") == "user" and len(t) == 1
    assert users[b"k"] == "user"
    assert b"k" not in orders
    users.close()
    orders.close()
    assert lmdb_object_store.tables(path) == ["orders", "users"]


def test_t_table_commits_both_tables_together_or_neither(tmp_path):
    path = str(tmp_path / "db")
    users = LmdbObjectStore(path, table="users", key_encoding="utf-8")
    orders = LmdbObjectStore(path, table="orders", key_encoding="utf-8")
    orders["o1"] = {"user": "ada", "total": 0}
    users["ada"] = {"orders": 0}
    users.flush()
    orders.flush()

    with users.transaction() as t:
        o = t.table("orders")
        order = o["o1"]
        order["total"] += 10
        o["o1"] = order
        user = t["ada"]
        user["orders"] += 1
        t["ada"] = user
        assert list(o.keys()) == ["o1"] and "ada" not in o  # each table apart
    assert orders["o1"]["total"] == 10 and users["ada"]["orders"] == 1

    with pytest.raises(RuntimeError, match="payment failed"):
        with users.transaction() as t:
            t.table("orders")["o2"] = {"user": "ada", "total": 5}
            t["ada"] = {"orders": 2}
            raise RuntimeError("payment failed")
    assert "o2" not in orders and users["ada"]["orders"] == 1
    with pytest.raises(Error, match="ended"):
        t.table("orders")


def test_t_table_sees_writes_buffered_in_the_other_table_and_they_never_land_after(tmp_path):
    path = str(tmp_path / "db")
    users = LmdbObjectStore(path, table="users", batch_size=1000)
    orders = LmdbObjectStore(path, table="orders", batch_size=1000)
    orders[b"n"] = 1  # buffered in the other store
    assert orders.pending == 1
    with users.transaction() as t:
        o = t.table("orders")
        assert o[b"n"] == 1
        o[b"n"] = 2
    assert orders.pending == 0
    orders.flush()
    assert orders[b"n"] == 2
    orders.close()
    with LmdbObjectStore(path, table="orders") as again:
        assert again[b"n"] == 2


def test_t_table_of_a_table_not_open_before_the_block_is_refused(tmp_path):
    path = str(tmp_path / "db")
    users = LmdbObjectStore(path, table="users")
    # "later" exists in the file, made by another process: this process has
    # no handle of it yet.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from lmdb_object_store import LmdbObjectStore as S; "
            f"S({path!r}, table='later').close()",
        ],
        check=True,
        timeout=60,
    )
    with users.transaction() as t:
        t[b"k"] = 1
        with pytest.raises(Error, match="'missing'"):
            t.table("missing")
        # Opened by another thread while the transaction is open: too late
        # for this write transaction, so refused the same way.
        opened = []
        thread, _ = start_thread(lambda: opened.append(LmdbObjectStore(path, table="later")))
        join_or_fail(thread, 30)
        with pytest.raises(Error, match="'later'"):
            t.table("later")
        t[b"k2"] = 2  # the transaction goes on
    assert users[b"k"] == 1 and users[b"k2"] == 2
    assert "missing" not in lmdb_object_store.tables(path)
    opened[0].close()
