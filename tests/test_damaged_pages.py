"""A data file whose pages were damaged after LMDB wrote them (a bad disk, a bad
copy, another program writing into the file): every call works or raises an
`Error` naming the path; none ends the process with a signal
(docs/reliability.md, "Damaged pages"; docs/semantics.md, "Damaged, truncated
and empty files").

The pages are found by walking the file's B-tree the way LMDB lays it out
(meta pages, branch, leaf and overflow pages), so each case damages a page the
store really uses. Every case runs in a child interpreter, which reports how
each call ended as JSON; a signal fails the test through the exit status.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct

import pytest

from helpers import run_python
from lmdb_object_store import LmdbObjectStore

PAGE = 4096
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA = 0x01
COUNT = 6000


def build(path: str, writemap: bool = False, table: str | None = None) -> None:
    """A store of COUNT keys (every 7th deleted), values of a few dozen bytes
    and every 50th of 6,000 bytes (in overflow pages)."""
    with LmdbObjectStore(path, writemap=writemap, table=table) as store:
        for i in range(COUNT):
            big = b"b" * 6000 if i % 50 == 0 else b""
            store[b"key%06d" % i] = {"i": i, "s": "x" * (i % 40), "big": big}
        for i in range(0, COUNT, 7):
            del store[b"key%06d" % i]


def main_root(data: bytes) -> int:
    """The main tree's root, in the newest meta page (64-bit LMDB 0.9 layout:
    a 16-byte page header, then the node offsets; a node is 8 bytes of
    header, the key, then the data)."""
    metas = [(struct.unpack_from("<Q", data, at + 144)[0], at) for at in (0, PAGE)]
    return struct.unpack_from("<Q", data, max(metas)[1] + 128)[0]


def nodes(data: bytes, pgno: int) -> list[tuple[bytes, int, bytes]]:
    """The nodes of branch or leaf page `pgno`: key, flags, and the data (a
    branch node's child page number as 8 bytes)."""
    at = pgno * PAGE
    flags, lower = struct.unpack_from("<HH", data, at + 10)
    out = []
    for i in range((lower - 16) // 2):
        node = at + struct.unpack_from("<H", data, at + 16 + 2 * i)[0]
        lo, hi, nflags, ksize = struct.unpack_from("<HHHH", data, node)
        key = bytes(data[node + 8 : node + 8 + ksize])
        if flags & P_BRANCH:
            value = struct.pack("<Q", lo | hi << 16 | nflags << 32)
        else:
            value = bytes(data[node + 8 + ksize : node + 8 + ksize + (lo | hi << 16)])
        out.append((key, nflags, value))
    return out


def table_root(data: bytes, name: bytes) -> int:
    """The root of named table `name`, from its record in the main tree."""
    pgno = main_root(data)
    while True:
        found = nodes(data, pgno)
        if not struct.unpack_from("<H", data, pgno * PAGE + 10)[0] & P_BRANCH:
            record = next(v for k, _, v in found if k == name)
            return struct.unpack_from("<Q", record, 40)[0]
        child = [v for k, _, v in found[1:] if k <= name]
        pgno = struct.unpack_from("<Q", (child or [found[0][2]])[-1])[0]


def live_pages(data: bytes, root: int | None = None) -> dict[int, list[int]]:
    """The pages of the tree at `root` (default: the main tree), by kind."""
    if root is None:
        root = main_root(data)
    found: dict[int, list[int]] = {P_BRANCH: [], P_LEAF: [], P_OVERFLOW: []}
    todo = [root]
    while todo:
        pgno = todo.pop()
        at = pgno * PAGE
        flags, lower = struct.unpack_from("<HH", data, at + 10)
        kind = P_BRANCH if flags & P_BRANCH else P_LEAF
        found[kind].append(pgno)
        for i in range((lower - 16) // 2):
            node = at + struct.unpack_from("<H", data, at + 16 + 2 * i)[0]
            lo, hi, nflags, ksize = struct.unpack_from("<HHHH", data, node)
            if kind == P_BRANCH:
                todo.append(lo | hi << 16 | nflags << 32)
            elif nflags & F_BIGDATA:
                found[P_OVERFLOW].append(struct.unpack_from("<Q", data, node + 8 + ksize)[0])
    return found


def damage(page: bytearray, how: str, rng: random.Random) -> None:
    """Damage one page in place."""
    first_node = struct.unpack_from("<H", page, 16)[0]
    if how == "garbage":
        page[:] = rng.randbytes(PAGE)
    elif how == "zeroed":
        page[:] = bytes(PAGE)
    elif how == "header":
        # The free-space bounds: LMDB copies a page by them when it writes.
        struct.pack_into("<HH", page, 12, 0xFFF0, 0x0010)
    elif how == "offsets":
        page[16:80] = b"\xff" * 64
    elif how == "key_size":
        struct.pack_into("<H", page, first_node + 6, 0xFFFF)
    elif how == "data_size":
        struct.pack_into("<HH", page, first_node, 0xFFFF, 0x7FFF)
    elif how == "child":
        struct.pack_into("<HHH", page, first_node, 0xFFFF, 0xFFFF, 0x00FF)
    elif how == "flags":
        # Every kind of page at once, and a lower bound inside the header:
        # LMDB's search counts 2^31 nodes and its binary search over them
        # never ends (no signal either).
        struct.pack_into("<HHH", page, 10, 0x7776, 0x0008, 0x0FF0)
    else:
        raise AssertionError(how)


def damaged_copy(src: str, dst: str, kind: int, how: str, seed: int) -> int:
    """Copy the store at `src` to `dst` with one live page of `kind` damaged;
    returns its page number."""
    with open(os.path.join(src, "data.mdb"), "rb") as f:
        data = bytearray(f.read())
    rng = random.Random(seed)
    pgno = rng.choice(live_pages(bytes(data))[kind])
    page = data[pgno * PAGE : (pgno + 1) * PAGE]
    damage(page, how, rng)
    data[pgno * PAGE : (pgno + 1) * PAGE] = page
    os.makedirs(dst)
    with open(os.path.join(dst, "data.mdb"), "wb") as f:
        f.write(data)
    return pgno


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    base = tmp_path_factory.mktemp("sound")
    paths = {}
    for writemap in (False, True):
        path = str(base / ("wm" if writemap else "plain"))
        build(path, writemap)
        paths[writemap] = path
    return paths


# Each call of the child runs through `outcome`; the report lists how each
# ended: None, or the exception's type, whether it is an `Error`, and its
# message.
OUTCOME = """
import json, os, sys
from lmdb_object_store import Error, LmdbObjectStore, tables

report = []

def outcome(name, call):
    try:
        call()
    except Exception as exc:
        report.append([name, type(exc).__name__, isinstance(exc, Error), str(exc)])
    else:
        report.append([name, None, None, ""])
"""

CHILD = (
    OUTCOME
    + """
path, writemap, plan = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
keys = [b"key%06d" % i for i in range(6000)]

def reads(store):
    outcome("len", lambda: len(store))
    outcome("items", lambda: [1 for _ in store.items()])
    outcome("reversed", lambda: [1 for _ in reversed(store)])
    outcome("get", lambda: [store.get(k) for k in keys])
    outcome("get_many", lambda: store.get_many(keys))
    outcome("in", lambda: [k in store for k in keys])
    def snap():
        with store.snapshot() as s:
            [s.get(k) for k in keys[::3]]
    outcome("snapshot", snap)

def writes(store):
    outcome("update", lambda: (store.update({k: 1 for k in keys[::2]}), store.flush()))
    outcome("delete", lambda: (store.delete(keys[1]), store.delete(keys[2999]), store.flush()))
    def txn():
        with store.transaction() as t:
            for k in keys[::97]:
                t.get(k)
                t[k] = 2
    outcome("transaction", txn)
    outcome("copy", lambda: store.copy(path + "-copy-" + plan, compact=True))
    outcome("clear", lambda: store.clear())

try:
    store = LmdbObjectStore(path, writemap=writemap)
except Exception as exc:
    report.append(["open", type(exc).__name__, isinstance(exc, Error), str(exc)])
else:
    if plan == "read-then-write":
        reads(store)
        writes(store)
    else:
        writes(store)
        reads(store)
    outcome("close", store.close)
print(json.dumps(report))
"""
)


def run(path: str, writemap: bool, plan: str) -> list:
    out = run_python(CHILD, path, "1" if writemap else "0", plan, timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def check(report: list, path: str) -> list:
    """Every call worked or raised an `Error`; those that met the damage say
    so, with the path. Returns the failed calls."""
    failed = [r for r in report if r[1] is not None]
    for name, kind, is_error, message in failed:
        assert is_error, (name, kind, message)
        assert path in message or kind == "UnpickleError", (name, message)
    return failed


CASES = [
    (P_LEAF, "garbage"),
    (P_LEAF, "zeroed"),
    (P_LEAF, "header"),
    (P_LEAF, "offsets"),
    (P_LEAF, "key_size"),
    (P_LEAF, "data_size"),
    (P_BRANCH, "garbage"),
    (P_BRANCH, "header"),
    (P_BRANCH, "child"),
    (P_LEAF, "flags"),
    (P_BRANCH, "flags"),
    (P_OVERFLOW, "garbage"),
]
KIND = {P_LEAF: "leaf", P_BRANCH: "branch", P_OVERFLOW: "overflow"}


@pytest.mark.parametrize("writemap", [False, True], ids=["plain", "writemap"])
@pytest.mark.parametrize("kind,how", CASES, ids=[f"{KIND[k]}-{h}" for k, h in CASES])
def test_reads_report_the_damage_and_writes_are_refused_after(sound, tmp_path, kind, how, writemap):
    path = str(tmp_path / "db")
    damaged_copy(sound[writemap], path, kind, how, seed=1)
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        before = f.read()
    failed = check(run(path, writemap, "read-then-write"), path)
    names = [r[0] for r in failed]
    if names == ["open"]:
        # The open reads the first page of the tree: it met the damage.
        assert "damaged" in failed[0][3], failed
        return
    if kind == P_OVERFLOW:
        # The values stored there fail to read (their page's header says it
        # is not theirs); the file's other pages read on.
        assert "get" in names and "len" not in names, failed
    else:
        # A full scan reaches every page of the tree: it meets the damage.
        assert any("damaged" in r[3] for r in failed if r[0] == "items"), failed
    # ... and every write after it is refused, so the file is as it was.
    for name in ("update", "delete", "transaction", "clear"):
        assert name in names, (name, failed)
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("writemap", [False, True], ids=["plain", "writemap"])
@pytest.mark.parametrize("kind,how", CASES, ids=[f"{KIND[k]}-{h}" for k, h in CASES])
def test_writes_that_meet_the_damage_first_end_in_an_error(sound, tmp_path, kind, how, writemap):
    path = str(tmp_path / "db")
    damaged_copy(sound[writemap], path, kind, how, seed=2)
    check(run(path, writemap, "write-then-read"), path)
    # Whatever the writes did, the file opens and reads without a signal in
    # a new process.
    check(run(path, writemap, "read-then-write"), path)


@pytest.mark.parametrize("seed", range(16))
def test_random_damage_to_any_live_page(sound, tmp_path, seed):
    rng = random.Random(seed)
    writemap = bool(seed % 2)
    kind = rng.choice([P_LEAF, P_LEAF, P_BRANCH, P_OVERFLOW])
    how = rng.choice(["garbage", "zeroed", "header", "offsets", "key_size", "data_size"])
    path = str(tmp_path / "db")
    damaged_copy(sound[writemap], path, kind, how, seed)
    check(run(path, writemap, rng.choice(["read-then-write", "write-then-read"])), path)


def test_a_sound_file_reads_and_writes_as_before(sound, tmp_path):
    # The guard changes nothing for a sound file (the control of the cases
    # above): every call works.
    path = str(tmp_path / "db")
    shutil.copytree(sound[False], path)
    report = run(path, False, "read-then-write")
    assert [r for r in report if r[1] is not None] == []


SOUND_WORKLOAD = """
import random, sys
from lmdb_object_store import LmdbObjectStore

path, seed, writemap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rng = random.Random(seed)

def key():
    return bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 8, 12, 40, 200])))

def value():
    return rng.randbytes(rng.choice([0, 0, 1, 30, 500, 3000, 20000]))

def exercise(store, model, rounds):
    # Many small commits: a free-page tree of many records, pages split,
    # merged and reused, values in overflow pages.
    for _ in range(rounds):
        for _ in range(rng.randrange(1, 60)):
            if model and rng.random() < 0.3:
                k = rng.choice(sorted(model))
                del store[k]
                del model[k]
            else:
                k, v = key(), value()
                store[k] = v
                model[k] = v
        store.flush()
    with store.transaction() as t:
        for k in sorted(model)[::17]:
            assert t[k] == model[k]
            t[k] = model[k] = value()
        # A walk over pages this transaction changed and pages it did not.
        assert dict(t.items()) == model
        assert t.keys(reverse=True) == sorted(model, reverse=True)
    assert dict(store.items()) == model
    assert list(reversed(store)) == sorted(model, reverse=True)
    found, missing = store.get_many(list(model) + [b"\\xff" * 300])
    assert found == model and missing == [b"\\xff" * 300]
    assert all(store[k] == v for k, v in model.items())
    assert len(store) == len(model)

main, tables = {}, {"t1": {}, "t2": {}}
with LmdbObjectStore(path, serializer="raw", writemap=writemap, batch_size=7) as store:
    exercise(store, main, 120)
with LmdbObjectStore(path + "-tables", table="t1", serializer="raw", writemap=writemap,
                     batch_size=5) as t1, \\
        LmdbObjectStore(path + "-tables", table="t2", serializer="raw", writemap=writemap,
                        batch_size=5) as t2:
    for _ in range(3):
        exercise(t1, tables["t1"], 30)
        exercise(t2, tables["t2"], 30)
    # Emptying reads every branch page, and the leaves (values in overflow
    # pages).
    t1.clear()
    assert len(t1) == 0 and dict(t2.items()) == tables["t2"]
# Read again by new stores: every page is checked afresh.
with LmdbObjectStore(path, serializer="raw", writemap=writemap) as store:
    exercise(store, main, 10)
    store.copy(path + "-compact", compact=True)
with LmdbObjectStore(path + "-compact", serializer="raw") as copy:
    assert dict(copy.items()) == main
    copy.clear()
    assert len(copy) == 0
print("ok")
"""


@pytest.mark.parametrize("seed", range(4))
def test_sound_stores_of_every_shape_are_never_taken_for_damaged(tmp_path, seed):
    # The checks must not refuse a sound file: keys of 1 to 200 bytes, empty
    # values and values in overflow pages, many commits (a free-page tree of
    # many records), deletions that merge pages, tables, transactions,
    # writemap, a compacted copy.
    out = run_python(
        SOUND_WORKLOAD, str(tmp_path / "db"), str(seed), "1" if seed % 2 else "0", timeout=300
    )
    assert out.strip().splitlines()[-1] == "ok"


TABLES_CHILD = (
    OUTCOME
    + """
path, names = sys.argv[1], json.loads(sys.argv[2])

outcome("tables", lambda: tables(path))
for name in names:
    def use(name=name):
        with LmdbObjectStore(path, table=name) as t:
            dict(t.items())
            t[b"new"] = 1
    outcome(name, use)
print(json.dumps(report))
"""
)


@pytest.mark.parametrize("how", ["garbage", "header", "offsets", "key_size"])
def test_opening_tables_through_a_damaged_main_tree(tmp_path, how):
    # Table records live in the main tree: LMDB looks one up to open the
    # table, through pages the store checks first.
    src = str(tmp_path / "src")
    names = [f"t{i:02d}-" + "x" * 400 for i in range(40)]
    for name in names:
        with LmdbObjectStore(src, table=name) as t:
            t.update({b"k%d" % i: i for i in range(20)})
    path = str(tmp_path / "db")
    damaged_copy(src, path, P_LEAF, how, seed=3)
    out = run_python(TABLES_CHILD, path, json.dumps(names), timeout=120)
    report = json.loads(out.strip().splitlines()[-1])
    failed = check(report, path)
    assert failed, report


SEARCH_CHILD = (
    OUTCOME
    + """
path, table, op, key = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4].encode()
outcome("open", lambda: globals().update(store=LmdbObjectStore(path, table=table)))

def snapshot():
    with store.snapshot() as s:
        s.get(key)

def transaction(call):
    def run():
        with store.transaction() as t:
            call(t)
    return run

calls = {
    "get": lambda: store.get(key),
    "in": lambda: key in store,
    "getitem": lambda: store[key],
    "get_many": lambda: store.get_many([b"key000001", key, b"key039999"]),
    "keys_from": lambda: next(iter(store.keys(start=key)), None),
    "keys_before": lambda: next(iter(store.keys(stop=key, reverse=True)), None),
    "snapshot": snapshot,
    "transaction_get": transaction(lambda t: t.get(key)),
    "transaction_keys": transaction(lambda t: t.keys(start=key)),
    "transaction_walk": transaction(lambda t: t.keys()),
}
outcome(op, calls[op])
print(json.dumps(report))
"""
)


def three_levels(src: str, table: str | None) -> tuple[bytearray, int]:
    """A store at `src` of 40,000 keys in `table` (three levels: branch pages
    below the root): its data file, and the table's root."""
    with LmdbObjectStore(src, table=table) as store:
        store.update({b"key%06d" % i: i for i in range(40_000)})
    with open(os.path.join(src, "data.mdb"), "rb") as f:
        data = bytearray(f.read())
    return data, main_root(data) if table is None else table_root(data, table.encode())


@pytest.mark.parametrize("table", [None, "t"], ids=["main", "table"])
@pytest.mark.parametrize("kind", [P_LEAF, P_BRANCH], ids=["leaf", "branch"])
def test_every_read_through_a_damaged_page_ends_in_an_error(tmp_path, kind, table):
    # LMDB searches a page by the count of nodes its header gives; a damaged
    # count can make that search go round forever, with no signal to end
    # it, and a walk step through 2^31 empty keys. So every search for a
    # key, through any call and as the first read of a process, checks the
    # pages on its way before LMDB's search reads them, and a walk checks
    # each page it steps into (a transaction's too).
    data, root = three_levels(str(tmp_path / "src"), table)
    pages = live_pages(bytes(data), root)
    # A page below the root, and a key below it.
    pgno = next(p for p in pages[kind][len(pages[kind]) // 2 :] if p != root)
    below = pgno
    while struct.unpack_from("<H", data, below * PAGE + 10)[0] & P_BRANCH:
        children = nodes(bytes(data), below)
        below = struct.unpack_from("<Q", children[len(children) // 2][2])[0]
    leaf = nodes(bytes(data), below)
    key = leaf[len(leaf) // 2][0]
    page = data[pgno * PAGE : (pgno + 1) * PAGE]
    damage(page, "flags", random.Random(0))
    data[pgno * PAGE : (pgno + 1) * PAGE] = page
    for op in [
        "get",
        "in",
        "getitem",
        "get_many",
        "keys_from",
        "keys_before",
        "snapshot",
        "transaction_get",
        "transaction_keys",
        "transaction_walk",
    ]:
        path = str(tmp_path / op)
        os.makedirs(path)
        with open(os.path.join(path, "data.mdb"), "wb") as f:
            f.write(data)
        out = run_python(SEARCH_CHILD, path, table or "", op, key.decode(), timeout=20)
        report = json.loads(out.strip().splitlines()[-1])
        # The open reads no page below the root.
        [(_, opened, _, _), (name, _, is_error, message)] = report
        assert opened is None and name == op, report
        assert is_error and "damaged" in message and path in message, report


DROP_CHILD = (
    OUTCOME
    + """
import resource
# Without the check, LMDB lists 2^31 pages to free: let that fail early.
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
path, table, op = sys.argv[1], sys.argv[2] or None, sys.argv[3]
store = LmdbObjectStore(path, table=table)
calls = {"clear": store.clear, "drop_table": store.drop_table}
outcome(op, calls[op])
print(json.dumps(report))
"""
)


@pytest.mark.parametrize(
    "table,op", [(None, "clear"), ("t", "clear"), ("t", "drop_table")], ids=str
)
def test_emptying_a_table_through_a_damaged_branch_page_ends_in_an_error(tmp_path, table, op):
    # LMDB empties a table by listing every child of its branch pages as
    # free: a branch page whose count of nodes is damaged would list 2^31
    # pages, until memory runs out. The pages it reads are checked first,
    # and the file stays as it was.
    data, root = three_levels(str(tmp_path / "src"), table)
    pgno = next(p for p in live_pages(bytes(data), root)[P_BRANCH] if p != root)
    # A branch page's flags, and a lower bound inside the header.
    struct.pack_into("<HH", data, pgno * PAGE + 10, P_BRANCH, 0x0008)
    path = str(tmp_path / "db")
    os.makedirs(path)
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(data)
    out = run_python(DROP_CHILD, path, table or "", op, timeout=30)
    [(name, _, is_error, message)] = json.loads(out.strip().splitlines()[-1])
    assert is_error and "damaged" in message and path in message, message
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        assert f.read() == bytes(data)


COPY_CHILD = (
    OUTCOME
    + """
path = sys.argv[1]
store = LmdbObjectStore(path)
outcome("copy", lambda: store.copy(path + "-copy", compact=True))
print(json.dumps(report))
"""
)


@pytest.mark.parametrize("how", ["flags", "header", "offsets", "garbage"])
def test_a_compacting_copy_checks_the_free_page_tree(tmp_path, how):
    # LMDB's compacting copy counts the free pages by reading the tree of
    # free pages; a damaged page there sent it outside the map (SIGSEGV).
    src = str(tmp_path / "src")
    with LmdbObjectStore(src) as store:
        # Many commits: a tree of free pages with records in it.
        for r in range(30):
            store.update({b"key%06d" % i: r for i in range(r, 20_000, 7)})
            store.flush()
    with open(os.path.join(src, "data.mdb"), "rb") as f:
        data = bytearray(f.read())
    metas = [(struct.unpack_from("<Q", data, at + 144)[0], at) for at in (0, PAGE)]
    pgno = struct.unpack_from("<Q", data, max(metas)[1] + 80)[0]
    page = data[pgno * PAGE : (pgno + 1) * PAGE]
    damage(page, how, random.Random(0))
    data[pgno * PAGE : (pgno + 1) * PAGE] = page
    path = str(tmp_path / "db")
    os.makedirs(path)
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(data)
    out = run_python(COPY_CHILD, path, timeout=30)
    [(_, _, is_error, message)] = json.loads(out.strip().splitlines()[-1])
    assert is_error and "damaged" in message and path in message, message
