"""Named tables of one file (docs/tables.md "Tables"): isolation, the shared
environment (growth, fork, other processes), the file-wide options, names,
``tables()``, ``drop_table()`` and the rule that keeps a main store's entries
and table records apart."""

from __future__ import annotations

import os
import pickle
import threading

import pytest

from helpers import KiB, MiB, join_or_fail, run_python, start_thread
from lmdb_object_store import ClosedError, Error, LmdbObjectStore, tables
from proc_workers import fork_child, wait_child

# --------------------------------------------------------------------------
# Isolation
# --------------------------------------------------------------------------


def test_two_tables_hold_the_same_key_apart(make_store, db_path):
    users = make_store(table="users")
    orders = make_store(table="orders", serializer="json")
    users[b"k"] = {"name": "ada"}
    orders[b"k"] = [1, 2, 3]
    users.put_many({b"only-users": 1})
    users.flush()
    orders.flush()
    assert users[b"k"] == {"name": "ada"}
    assert orders[b"k"] == [1, 2, 3]
    assert sorted(users) == [b"k", b"only-users"]
    assert list(orders) == [b"k"]
    assert b"only-users" not in orders
    assert (len(users), len(orders)) == (2, 1)
    assert (users.stat()["entries"], orders.stat()["entries"]) == (2, 1)
    assert users.table == "users" and orders.table == "orders"
    # Each table keeps its own serializer: the json table's bytes are JSON.
    assert orders.get_many([b"k"]) == ({b"k": [1, 2, 3]}, [])
    orders.clear()
    assert len(orders) == 0
    assert users[b"k"] == {"name": "ada"}
    users.close()
    orders.close()
    with LmdbObjectStore(db_path, table="users") as again:
        assert dict(again.items()) == {b"k": {"name": "ada"}, b"only-users": 1}


def test_each_table_has_its_own_buffer_and_batch_size(make_store):
    a = make_store(table="a", batch_size=2)
    b = make_store(table="b", batch_size=1000)
    b[b"x"] = 1
    a[b"x"] = 1
    a[b"y"] = 2  # batch_size reached: a commits, b's write stays buffered
    assert a.pending == 0
    assert b.pending == 1
    b.flush()
    assert b.pending == 0


def test_a_snapshot_of_a_table_sees_only_that_table(make_store):
    a = make_store(table="a")
    b = make_store(table="b")
    a.put_many({b"in-a": 1})
    b.put_many({b"in-b": 2})
    with a.snapshot() as snap:
        b.put_many({b"later": 3})
        assert list(snap.keys()) == [b"in-a"]
        assert snap.get(b"in-b") is None


def test_main_store_bytes_are_unchanged(make_store, db_path, read_raw):
    """table=None is the store it always was: only its entries in the file."""
    store = make_store()
    store[b"k"] = "v"
    store.close()
    assert read_raw(db_path) == {b"k": pickle.dumps("v", protocol=pickle.HIGHEST_PROTOCOL)}
    assert tables(db_path) == []


def test_a_table_store_pickles_with_its_table(make_store):
    store = make_store(table="users")
    store.put_many({b"k": 1})
    again = pickle.loads(pickle.dumps(store))
    try:
        assert again.table == "users"
        assert again[b"k"] == 1
    finally:
        again.close()


# --------------------------------------------------------------------------
# The shared environment: growth, processes, fork
# --------------------------------------------------------------------------


def test_growth_through_one_table_while_another_reads(make_store):
    writer = make_store(table="big", map_size=1 * MiB, batch_size=4)
    reader = make_store(table="small")
    reader.put_many({b"r%02d" % i: i for i in range(20)})
    stop = threading.Event()
    seen = []

    def read():
        while not stop.is_set():
            found, missing = reader.get_many([b"r%02d" % i for i in range(20)])
            assert missing == [] and found[b"r07"] == 7
            seen.append(1)

    thread, out = start_thread(read)
    try:
        for i in range(64):
            writer[b"w%02d" % i] = bytes([i]) * (64 * KiB)
        writer.flush()
    finally:
        stop.set()
        join_or_fail(thread)
    assert "error" not in out, out.get("error")
    assert seen
    assert writer.info()["map_size"] > 4 * MiB
    assert reader.info()["map_size"] == writer.info()["map_size"]
    assert writer[b"w63"] == bytes([63]) * (64 * KiB)
    assert len(reader) == 20


def test_two_tables_of_one_file_across_processes(make_store, db_path):
    mine = make_store(table="parent", map_size=1 * MiB)
    mine.put_many({b"p": 1})
    run_python(
        f"""
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore({db_path!r}, table="child", map_size=1024 * 1024) as s:
            s.put_many({{b"c%02d" % i: bytes([i]) * 65536 for i in range(48)}})
        with LmdbObjectStore({db_path!r}, table="parent") as s:
            assert s[b"p"] == 1
            s.put_many({{b"from-child": 2}})
        """,
        timeout=45,
    )
    # The other process's growth is adopted, and its table is there.
    child = make_store(table="child")
    assert child[b"c47"] == bytes([47]) * 65536
    assert mine[b"from-child"] == 2
    assert tables(db_path) == ["child", "parent"]
    mine.put_many({b"after": b"a" * (512 * KiB)})
    assert mine[b"after"] == b"a" * (512 * KiB)


def test_a_forked_child_writes_to_a_table(make_store):
    store = make_store(table="t", batch_size=1000)
    other = make_store(table="u")
    store.put(b"parent", 1)
    other.put(b"u", 1)

    def child():
        assert store[b"parent"] == 1
        store.put_many({b"child%d" % i: i for i in range(10)})
        other[b"from-child"] = 2
        other.close()

    assert wait_child(fork_child(child)) == 0
    assert store.get_many([b"child%d" % i for i in range(10)])[1] == []
    assert other[b"from-child"] == 2
    assert len(store) == 11


# --------------------------------------------------------------------------
# File-wide options
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "shown"),
    [
        ({"sync": True}, {"sync": False}, ("sync=False", "sync=True")),
        ({"metasync": False}, {}, ("metasync=True", "metasync=False")),
        ({"max_map_size": 64 * MiB}, {}, ("max_map_size=None", f"max_map_size={64 * MiB}")),
        ({"max_readers": 16}, {"max_readers": 32}, ("max_readers=32", "max_readers=16")),
        ({"writemap": True}, {}, ("writemap=False",)),
    ],
)
def test_file_wide_options_must_agree(make_store, db_path, first, second, shown):
    a = make_store(table="a", **first)
    with pytest.raises(Error) as e:
        LmdbObjectStore(db_path, table="b", **second)
    for text in shown:
        assert text in str(e.value)
    assert db_path in str(e.value)
    assert tables(db_path) == ["a"]
    a.put_many({b"still": 1})  # the first store is not disturbed


def test_store_options_may_differ_between_tables(make_store):
    a = make_store(table="a", batch_size=1, serializer="json", autoflush_on_read=False)
    b = make_store(table="b", batch_size=50, max_buffer_bytes=1024)
    a[b"k"] = [1]
    b[b"k"] = (1,)
    assert (a[b"k"], b[b"k"]) == ([1], (1,))


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "exc", "words"),
    [
        ("", ValueError, "is empty"),
        ("x" * 512, ValueError, "512 bytes"),
        ("é" * 256, ValueError, "512 bytes"),
        ("a\0b", ValueError, "NUL"),
        (b"users", TypeError, "bytes"),
        (7, TypeError, "int"),
    ],
)
def test_bad_table_names(db_path, name, exc, words):
    with pytest.raises(exc) as e:
        LmdbObjectStore(db_path, table=name)
    assert "table" in str(e.value)
    assert words in str(e.value)
    assert not os.path.exists(db_path), "a refused name creates nothing"


def test_the_longest_name_and_unicode_names(make_store, db_path):
    names = ["x" * 511, "é" * 255, "日本", "with space"]
    for name in names:
        make_store(table=name).put_many({b"k": name})
    assert tables(db_path) == sorted(names)
    assert make_store(table="日本")[b"k"] == "日本"


# --------------------------------------------------------------------------
# tables()
# --------------------------------------------------------------------------


def test_tables_lists_names_open_or_not(make_store, db_path, tmp_path):
    opened = [make_store(table=name) for name in ["b", "a", "c"]]
    for s in opened:
        s.put_many({b"k": s.table})
    assert tables(db_path) == ["a", "b", "c"]
    assert tables(tmp_path / "db") == ["a", "b", "c"]  # a PathLike
    for s in opened:
        s.close()
    assert tables(db_path) == ["a", "b", "c"]
    # Listing left nothing behind: the file is still a file of tables.
    with pytest.raises(Error, match="holds named tables"):
        LmdbObjectStore(db_path)


def test_tables_never_creates(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        tables(missing)
    assert not missing.exists()


def test_tables_of_a_single_file_store(tmp_path):
    path = str(tmp_path / "file.lmdb")
    with LmdbObjectStore(path, table="t", subdir=False) as s:
        s[b"k"] = 1
    assert tables(path, subdir=False) == ["t"]


def test_tables_of_a_new_and_of_a_main_store(make_store, db_path):
    store = make_store()
    assert tables(db_path) == []
    store.put_many({b"k": b"x" * 40})
    assert tables(db_path) == []


def test_readonly_and_create_false_do_not_create_a_table(make_store, db_path):
    make_store(table="there").put_many({b"k": 1})
    for options in ({"readonly": True}, {"create": False}):
        with pytest.raises(Error, match="has no table 'missing'"):
            LmdbObjectStore(db_path, table="missing", **options)
    assert tables(db_path) == ["there"]


def test_readonly_table_in_a_fresh_process(make_store, db_path):
    make_store(table="t").put_many({b"k": 1})
    run_python(
        f"""
        from lmdb_object_store import LmdbObjectStore, tables
        assert tables({db_path!r}) == ["t"]
        with LmdbObjectStore({db_path!r}, table="t", readonly=True) as s:
            assert s[b"k"] == 1
        """
    )


# --------------------------------------------------------------------------
# drop_table()
# --------------------------------------------------------------------------


def test_drop_table_removes_it_and_its_data(make_store, db_path):
    keep = make_store(table="keep")
    gone = make_store(table="gone", batch_size=1000)
    keep.put_many({b"k": 1})
    gone.put_many({b"k%d" % i: i for i in range(100)})
    gone[b"buffered"] = 1
    gone.drop_table()
    assert gone.closed
    with pytest.raises(ClosedError):
        gone.get(b"k1")
    assert tables(db_path) == ["keep"]
    assert keep[b"k"] == 1
    again = make_store(table="gone")
    assert len(again) == 0  # opened anew, empty


def test_other_handles_of_a_dropped_table_raise_error(make_store, db_path):
    dropper = make_store(table="t")
    other = make_store(table="t")
    dropper.put_many({b"k": 1})
    assert other[b"k"] == 1
    dropper.drop_table()
    for call in (
        lambda: other[b"k"],
        lambda: len(other),
        lambda: list(other),
        lambda: other.put_many({b"k": 2}),
        lambda: other.clear(),
        lambda: other.stat(),
    ):
        with pytest.raises(Error, match="was dropped") as e:
            call()
        assert "'t'" in str(e.value) and db_path in str(e.value)
    other.close()  # nothing buffered: a quiet close
    # A table opened after the drop may take the dropped one's LMDB slot; a
    # handle of the dropped table never reaches it.
    late = make_store(table="late")
    late.put_many({b"k": "late"})
    stale = make_store(table="s")
    stale2 = make_store(table="s")
    stale.drop_table()
    newer = make_store(table="newer")
    newer.put_many({b"k": "newer"})
    with pytest.raises(Error, match="was dropped"):
        stale2[b"k"]
    assert tables(db_path) == ["late", "newer"]


def test_drop_table_of_the_main_store_is_refused(make_store, db_path):
    store = make_store()
    store.put_many({b"k": 1})
    with pytest.raises(Error, match="without table="):
        store.drop_table()
    assert store[b"k"] == 1


def test_drop_table_on_a_readonly_store_is_refused(make_store, db_path):
    make_store(table="t").put_many({b"k": 1})
    reader = make_store(table="t", readonly=True)
    with pytest.raises(Error):
        reader.drop_table()
    assert tables(db_path) == ["t"]


# --------------------------------------------------------------------------
# The main table: entries or table records, never both
# --------------------------------------------------------------------------


def test_a_table_on_a_file_with_main_entries_is_refused(make_store, db_path, read_raw):
    main = make_store()
    main.put_many({b"k": 1})
    with pytest.raises(Error) as e:
        LmdbObjectStore(db_path, table="users")
    assert "'users'" in str(e.value) and "table=" in str(e.value)
    assert db_path in str(e.value)
    assert main[b"k"] == 1
    main.close()
    assert list(read_raw(db_path)) == [b"k"], "nothing was written"


def test_the_main_store_of_a_file_with_tables_is_refused(make_store, db_path):
    make_store(table="t").put_many({b"k": 1})
    with pytest.raises(Error, match="holds named tables") as e:
        LmdbObjectStore(db_path)
    assert db_path in str(e.value)


def test_a_main_store_open_when_a_table_is_made_never_shows_records(make_store, db_path):
    main = make_store()
    t = make_store(table="t")
    t.put_many({b"k": 1})
    for call in (
        lambda: len(main),
        lambda: list(main),
        lambda: main.get(b"t"),
        lambda: main.put_many({b"x": 1}),
        lambda: main.clear(),
        lambda: main.stat(),
    ):
        with pytest.raises(Error, match="holds named tables"):
            call()
    assert t[b"k"] == 1
    assert tables(db_path) == ["t"]
    # Once the last table is dropped, the main table is empty again.
    t.drop_table()
    assert len(main) == 0
    main.put_many({b"x": 1})
    assert main[b"x"] == 1


def test_a_main_store_of_another_process_cannot_overwrite_table_records(make_store, db_path):
    """A main store opened before the tables were made, in another process,
    cannot write over a table record, nor beside records, nor clear them."""
    main = make_store()
    run_python(
        f"""
        from lmdb_object_store import LmdbObjectStore
        with LmdbObjectStore({db_path!r}, table="t") as s:
            s.put_many({{b"k": 1}})
        """
    )
    for call in (
        lambda: main.put_many({b"t": 1}),
        lambda: main.put_many({b"other": 1}),
        lambda: main.clear(),
    ):
        with pytest.raises(Error, match="holds named tables"):
            call()
    assert tables(db_path) == ["t"]
    assert make_store(table="t")[b"k"] == 1


def test_a_table_dropped_by_another_process(make_store, db_path):
    """The store of this process is not told at once, but never crashes, never
    brings the table back, and its writes say that the table was dropped."""
    store = make_store(table="t")
    store.put_many({b"k": 1})
    run_python(
        f"""
        from lmdb_object_store import LmdbObjectStore
        LmdbObjectStore({db_path!r}, table="t").drop_table()
        """
    )
    assert store.get(b"k") is None
    with pytest.raises(Error, match="'t' .* was dropped"):
        store.put_many({b"x": 2})
    assert tables(db_path) == []


def test_a_table_opened_inside_a_snapshot_of_the_file(make_store, db_path):
    """Opening (and creating) a table while this thread holds a snapshot of the file
    works, and never waits for that snapshot."""
    a = make_store(table="a")
    a.put_many({b"k": 1})
    with a.snapshot() as snap:
        b = make_store(table="b")
        b.put_many({b"k": 2})
        assert tables(db_path) == ["a", "b"]
        assert snap[b"k"] == 1
    assert b[b"k"] == 2


def test_one_table_too_many(make_store, db_path):
    opened = [make_store(table=f"t{i:03d}", sync=False) for i in range(128)]
    with pytest.raises(Error, match="opened 128 tables"):
        LmdbObjectStore(db_path, table="one-more", sync=False)
    opened[0].put_many({b"k": 1})
    assert opened[0][b"k"] == 1
    assert len(tables(db_path)) == 128
