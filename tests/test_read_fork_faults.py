"""Reads and forks under fault: the fork barrier and fork() inside code the
store runs (docs/processes.md "fork()"), Ctrl-C through the store
(docs/usage.md "Errors", its last paragraphs), lent buffers that outlive their
read (docs/semantics.md "Zero-copy reads"), and reads while the buffer cannot be
committed (docs/semantics.md "Reads while the buffer cannot be committed").

Anything that forks or could crash runs in a child interpreter
(``helpers.run_python``, with a timeout), so a deadlock or a signal fails the
test instead of taking pytest down.
"""

from __future__ import annotations

import codecs
import logging

import pytest

from helpers import KiB, MiB, package_records, run_python, soak_rounds
from lmdb_object_store import LmdbObjectStore, MapFullError, UnpickleError

# --------------------------------------------------------------------------
# 1. Writes acknowledged before fork() are in the child
# --------------------------------------------------------------------------

# A writer thread puts keys 0, 1, 2, ... and records the last one whose put
# returned. The child reads that record as it was at the instant of fork() and
# checks every key up to it, before the parent can commit anything more (with
# a huge batch_size the parent commits only at a fork).
_ACKED_WRITES = """
import os, sys, threading, time
from lmdb_object_store import LmdbObjectStore

store = LmdbObjectStore(sys.argv[1], batch_size=int(sys.argv[2]), map_size=1 << 28)
acked = [-1]
stop = threading.Event()

def writer():
    i = 0
    while not stop.is_set():
        store.put(b"k%09d" % i, i)
        acked[0] = i
        i += 1

thread = threading.Thread(target=writer, daemon=True)
thread.start()
while acked[0] < 1000:
    time.sleep(0.001)
failures = 0
for n in range(24):
    pid = os.fork()
    if pid == 0:
        last = acked[0]
        # One writer, keys in order, commits in order: the database holds a
        # prefix of the keys. Check its recent end and its length.
        window = [b"k%09d" % i for i in range(max(0, last - 20000), last + 1)]
        found, missing = store.get_many(window)
        ok = not missing and len(store) >= last + 1
        ok = ok and all(found[k] == int(k[1:]) for k in window)
        if not ok:
            os.write(2, b"child: %d acknowledged keys missing\\n" % len(missing))
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "child hung"
        time.sleep(0.005)
    failures += os.waitstatus_to_exitcode(status) != 0
    time.sleep(0.01)
stop.set()
thread.join(30)
assert not thread.is_alive(), "the writer is stuck"
assert failures == 0, f"{failures} of 24 children missed acknowledged writes"
store.close(strict=True)
print("ok")
"""


@pytest.mark.parametrize(
    "batch_size",
    [10**9, 1000],
    ids=["commits-only-at-fork", "background-commits"],
)
def test_a_child_has_every_write_acknowledged_before_the_fork(db_path, rearm_watchdog, batch_size):
    for round_ in range(soak_rounds(1)):
        rearm_watchdog()
        out = run_python(_ACKED_WRITES, f"{db_path}-{round_}", str(batch_size), timeout=50)
        assert out.endswith("ok\n"), out


def test_a_flush_that_fails_before_the_fork_stays_the_parents(db_path):
    out = run_python(
        """
        import os, sys, threading, time
        from lmdb_object_store import LmdbObjectStore
        store = LmdbObjectStore(
            sys.argv[1], batch_size=10**6, map_size=1 << 20, max_map_size=1 << 20
        )
        store.put(b"small", 1)
        store.flush()
        store.put(b"huge", b"h" * (2 << 20))  # cannot be committed at the cap
        written = []

        def writer():  # waits at the fork barrier, then goes on
            for i in range(2000):
                store.put(b"w%05d" % i, i)
                written.append(i)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        pid = os.fork()  # the commit before it fails: printed, fork goes on
        if pid == 0:
            ok = (
                store.get(b"huge") is None  # never replayed here
                and store.get(b"small") == 1
            )
            store.put(b"from child", 2)
            store.delete(b"huge")
            store.close(strict=True)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        thread.join(30)
        assert not thread.is_alive() and len(written) == 2000
        # The parent keeps its write, and sees the child's.
        assert store.get(b"huge") == b"h" * (2 << 20)
        assert store.get(b"from child") == 2
        store.delete(b"huge")
        store.close(strict=True)
        print("ok")
        """,
        db_path,
        timeout=50,
    )
    assert out.endswith("ok\n"), out


def test_a_write_from_inside_a_read_does_not_deadlock_the_fork(db_path):
    """The fork's commit must grow the map, which waits for a read in another
    thread; that read's unpickling code writes, and must not wait for the
    fork (which waits for it): it gets Error, and the fork goes on."""
    out = run_python(
        """
        import os, sys, threading
        from lmdb_object_store import Error, LmdbObjectStore, UnpickleError
        # No autoflush: the read must not commit the big value itself.
        store = LmdbObjectStore(sys.argv[1], map_size=1 << 20, autoflush_on_read=False)
        entered, forking = threading.Event(), threading.Event()

        class WritesWhenForking:
            def __init__(self):
                self.x = 1
            def __setstate__(self, state):
                self.__dict__.update(state)
                if os.getpid() == top:
                    entered.set()
                    if forking.wait(30):
                        store.put(b"nested", 1)

        top = os.getpid()
        store.put(b"v", WritesWhenForking())
        store.flush()
        store.put(b"big", b"b" * (3 << 20))  # its commit grows the map
        outcome = {}

        def reader():
            try:
                outcome["value"] = store.get(b"v")
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        assert entered.wait(30)
        # The reader runs again only once the fork's commit lets go of the
        # GIL, by which time writes are held at the fork barrier.
        sys.setswitchinterval(1000)
        # Runs just before the store's own hook (hooks run last registered first).
        os.register_at_fork(before=forking.set)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if store.get(b"big") == b"b" * (3 << 20) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        thread.join(30)
        assert not thread.is_alive()
        error = outcome.get("error")
        assert isinstance(error, UnpickleError), outcome
        assert isinstance(error.__cause__, Error)
        assert "while the process forks" in str(error.__cause__)
        assert store.pending == 0
        store.close(strict=True)
        print("ok")
        """,
        db_path,
        timeout=50,
    )
    assert out.endswith("ok\n"), out


# --------------------------------------------------------------------------
# 2. fork() inside code the store runs
# --------------------------------------------------------------------------

_FORK_IN_CODE = """
import os, sys
from lmdb_object_store import LmdbObjectStore

top = os.getpid()

def wait(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

class ForksInSetstate:
    '''Forks while being unpickled; the parent waits for the child, which
    finishes the read, rewrites the store so that freed pages get reused,
    and exits.'''
    def __init__(self):
        self.x = 1
    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() == top and not os.environ.get("NO_FORK"):
            os.environ["NO_FORK"] = "1"  # only the first one forks
            pid = os.fork()
            if pid:
                assert wait(pid) == 0, "the child failed"
            else:
                os.environ["IN_CHILD"] = "1"

def churn(store, big):
    for i in range(12):
        store.put(b"victim", [None, bytes([i]) * len(big)])
        store.put(b"filler%d" % i, bytes([i]) * (100 * 1024))
        store.flush()

def make(who):
    return who

class ForksInReduce:
    def __reduce__(self):
        if os.getpid() == top and not os.environ.get("NO_FORK"):
            os.environ["NO_FORK"] = "1"
            pid = os.fork()
            if pid:
                assert wait(pid) == 0, "the child failed"
            else:
                os.environ["IN_CHILD"] = "1"
        return (make, ("child" if os.environ.get("IN_CHILD") else "parent",))

store = LmdbObjectStore(sys.argv[1], batch_size=1000)
big = bytes(range(256)) * 1024  # 256 KiB: overflow pages
"""


def _leave(code: str) -> str:
    """The end of a scenario: the child closes its store and exits 0; the
    parent (which must not commit) prints ok."""
    return (
        code
        + """
if os.environ.get("IN_CHILD"):
    store.close(strict=True)
    os._exit(0)
print("ok")
sys.stdout.flush()
os._exit(0)
"""
    )


@pytest.mark.parametrize(
    "read", ["get", "getitem", "get_many", "get_many_reversed", "items", "values"]
)
def test_fork_inside_unpickling_leaves_the_parents_read_intact(db_path, read):
    """The child finishes the read on the parent's pages, then writes; it must
    not free the parent's reader slot, or those writes reuse the pages the
    parent is still unpickling from."""
    code = (
        _FORK_IN_CODE
        + f"""
before = {{b"a%02d" % i: bytes([i]) * 3000 for i in range(40)}}
after = {{b"z%02d" % i: bytes([i]) * 3000 for i in range(40)}}
store.put_many({{**before, **after, b"victim": [ForksInSetstate(), big]}})
expected = {{**before, **after, b"victim": [ForksInSetstate(), big]}}
read = {read!r}
if read == "get":
    got = {{b"victim": store.get(b"victim")}}
elif read == "getitem":
    got = {{b"victim": store[b"victim"]}}
elif read == "get_many":
    got, missing = store.get_many(sorted(expected))
    assert missing == []
elif read == "get_many_reversed":
    # The keys after the victim in the caller's order come first in the
    # store's: the child reads them again after the fork.
    got, missing = store.get_many(sorted(expected, reverse=True))
    assert missing == []
elif read == "items":
    got = dict(store.items())
else:
    got = dict(zip(sorted(expected), store.values()))
assert got[b"victim"][1] == big, "the read saw other bytes"
for key, value in got.items():
    if key != b"victim":
        assert value == expected[key], key
if os.environ.get("IN_CHILD"):
    churn(store, big)
"""
    )
    out = run_python(_leave(code), db_path, timeout=50)
    assert out.endswith("ok\n"), out
    with LmdbObjectStore(db_path) as store:
        assert store[b"victim"] == [None, bytes([11]) * (256 * KiB)]


@pytest.mark.parametrize("write", ["put", "setitem", "update", "setdefault", "put_many"])
def test_fork_inside_pickling_writes_into_the_childs_own_store(db_path, write):
    """The child's write must land in its own buffer and be committed by it,
    not in the parent's inherited buffer, which nobody commits there."""
    code = (
        _FORK_IN_CODE
        + f"""
write = {write!r}
if write == "put":
    store.put(b"k", ForksInReduce())
elif write == "setitem":
    store[b"k"] = ForksInReduce()
elif write == "update":
    store.update({{b"k": ForksInReduce()}})
elif write == "setdefault":
    store.setdefault(b"k", ForksInReduce())
else:
    store.put_many({{b"k": ForksInReduce()}})
if not os.environ.get("IN_CHILD") and write != "put_many":
    assert store.pending == 1  # the parent's own value, not committed
"""
    )
    out = run_python(_leave(code), db_path, timeout=50)
    assert out.endswith("ok\n"), out
    # Only put_many commits in the parent; everywhere else the database holds
    # what the child wrote and committed.
    expected = "parent" if write == "put_many" else "child"
    code = """
        import sys
        from lmdb_object_store import LmdbObjectStore
        def make(who):  # what the values were pickled with, in __main__
            return who
        print(LmdbObjectStore(sys.argv[1]).get(b"k"))
        """
    assert run_python(code, db_path).strip() == expected


def test_fork_inside_unpickling_a_popped_value_deletes_in_the_child(db_path):
    code = (
        _FORK_IN_CODE
        + """
store.put(b"p", [ForksInSetstate(), b"payload"])
store.put(b"q", "kept")
store.flush()
value = store.pop(b"p")
assert value[1] == b"payload"
assert store.get(b"p") is None
if os.environ.get("IN_CHILD"):
    store.put(b"child saw", True)
"""
    )
    out = run_python(_leave(code), db_path, timeout=50)
    assert out.endswith("ok\n"), out
    with LmdbObjectStore(db_path) as store:
        # The parent never committed its deletion; the child did.
        assert store.get(b"child saw") is True
        assert b"p" not in store
        assert store[b"q"] == "kept"


# --------------------------------------------------------------------------
# 3. KeyboardInterrupt and friends pass through
# --------------------------------------------------------------------------


def _interrupt():
    raise KeyboardInterrupt("from a reconstructor")


def _exit():
    raise SystemExit(3)


class _Interrupts:
    """Unpickling it raises KeyboardInterrupt (or SystemExit)."""

    def __init__(self, how=_interrupt):
        self.how = how

    def __reduce__(self):
        return (self.how, ())


class _InterruptsPickling:
    def __reduce__(self):
        raise KeyboardInterrupt("while pickling")


@pytest.mark.parametrize("how", [_interrupt, _exit], ids=["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("where", ["buffer", "db"])
def test_interrupts_while_unpickling_are_not_wrapped(make_store, how, where):
    store = make_store(batch_size=1000)
    store.put(b"a", "fine")
    store.put(b"b", _Interrupts(how))
    store.put(b"c", "also fine")
    if where == "db":
        store.flush()
    raised = KeyboardInterrupt if how is _interrupt else SystemExit
    reads = {
        "get": lambda: store.get(b"b"),
        "getitem": lambda: store[b"b"],
        "get_many": lambda: store.get_many([b"a", b"b", b"c"]),
        "values": lambda: list(store.values()),
        "items": lambda: list(store.items()),
        "scan": lambda: list(store.scan(start=b"a")),
        "eq": lambda: store == {b"a": "fine", b"b": None, b"c": "also fine"},
    }
    if where == "db":
        reads["popitem"] = lambda: (store.popitem(), store.popitem())
    for name, read in reads.items():
        with pytest.raises(raised) as info:
            read()
        assert type(info.value) is raised, name
        assert not isinstance(info.value, UnpickleError), name
    # The store is consistent and usable afterwards.
    if where == "db":
        assert b"a" not in store  # popitem deleted it before reaching b
        store.put(b"a", "fine")
    assert store.get(b"a") == "fine"
    assert store.get(b"c") == "also fine"
    store.put(b"b", "replaced")
    assert dict(store.items()) == {b"a": "fine", b"b": "replaced", b"c": "also fine"}
    store.close(strict=True)


def test_interrupts_from_other_user_code_are_not_wrapped(make_store, tmp_path):
    store = make_store(batch_size=1000)
    store.put(b"kept", 1)

    class BadPair:
        def __iter__(self):
            raise KeyboardInterrupt("iterating an item")

    class BadIndex:
        def __index__(self):
            raise KeyboardInterrupt("reading an option")

    class BadPath:
        def __fspath__(self):
            raise KeyboardInterrupt("reading a path")

    with pytest.raises(KeyboardInterrupt):
        store.update([BadPair()])
    with pytest.raises(KeyboardInterrupt):
        store.put_many([(b"x", 1), BadPair()])
    with pytest.raises(KeyboardInterrupt):
        store.put(b"y", _InterruptsPickling())
    with pytest.raises(KeyboardInterrupt):
        store.update({b"z": _InterruptsPickling()})
    with pytest.raises(KeyboardInterrupt):
        LmdbObjectStore(str(tmp_path / "other"), map_size=BadIndex())
    with pytest.raises(KeyboardInterrupt):
        LmdbObjectStore(BadPath())
    # Nothing was taken, nothing lost.
    assert store.pending == 1
    assert dict(store.items()) == {b"kept": 1}


def _interrupting_codec(name):
    if name != "interrupting_codec":
        return None

    def encode(text, errors="strict"):
        raise KeyboardInterrupt("encoding a key")

    def decode(data, errors="strict"):
        return str(data, "ascii"), len(data)

    return codecs.CodecInfo(encode, decode, name="interrupting_codec")


def test_interrupts_from_a_key_codec_are_not_wrapped(make_store):
    codecs.register(_interrupting_codec)
    try:
        store = make_store(key_encoding="interrupting_codec")
        store.put(b"k", 1)
        with pytest.raises(KeyboardInterrupt):
            "k" in store.keys()  # noqa: B015 (a bad key is "not in"; Ctrl-C is not)
        with pytest.raises(KeyboardInterrupt):
            store.get("k")
        with pytest.raises(KeyboardInterrupt):
            list(store.keys(prefix="k"))
        assert store[b"k"] == 1
    finally:
        codecs.unregister(_interrupting_codec)


# --------------------------------------------------------------------------
# 4. A lent buffer can never outlive what it points into
# --------------------------------------------------------------------------

_LENT = """
import gc, io, os, pickle, sys
import lmdb
from lmdb_object_store import Error, LmdbObjectStore

kept = {"views": [], "unpicklers": []}
grabbing = {"views", "unpicklers"}

def grab():
    '''Run by pickle.loads: reach whatever points at the lent bytes.'''
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name == "_LentBuffer" and "views" in grabbing:
            try:
                kept["views"].append(memoryview(obj))
            except ValueError:
                pass  # lends nothing now
        elif name == "Unpickler" and "unpicklers" in grabbing:
            kept["unpicklers"].append(obj)
    return "grabbed"

class Grabs:
    def __reduce__(self):
        return (grab, ())

def tail(unpickler):
    '''Make a kept Unpickler read on from where loads stopped: the bytes after
    the value's STOP opcode, in the memory that was lent.'''
    unpickler.__init__(io.BytesIO(b""))
    return unpickler.load()

def churn(store, rounds=12):
    '''Rewrite the store so that LMDB reuses every page it can.'''
    for i in range(rounds):
        store.put(b"victim", bytes([i]) * 300_000)
        store.put(b"filler%d" % i, bytes([i]) * 100_000)
        store.flush()
        store.delete(b"victim")
        store.flush()

path = sys.argv[1]
value = [Grabs(), bytes(range(256)) * 400]
first = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
tails = [pickle.dumps(bytes([65 + i]) * 100_000) for i in range(4)]
"""


def test_a_view_taken_by_unpickling_code_stays_valid(db_path):
    """A memoryview of the lent buffer, made by code that pickle runs, reads
    the value's bytes forever: after the read, later writes, growth, close."""
    out = run_python(
        _LENT
        + """
grabbing = {"views"}
store = LmdbObjectStore(path, map_size=1 << 20)
store.put(b"buffered", value)  # read from the write buffer
got = store.get(b"buffered")
assert got[0] == "grabbed"
store.flush()
got = store.get(b"buffered")  # and from LMDB's pages
assert got[0] == "grabbed"
views = kept["views"]
assert len(views) == 2, len(views)
for check in range(4):
    for view in views:
        assert view.tobytes() == first, f"the view changed (check {check})"
    if check == 0:
        churn(store)
    elif check == 1:
        store.put_many({b"grow%d" % i: bytes(1000) * 100 for i in range(40)})
        assert store.info()["map_size"] > 1 << 20
    elif check == 2:
        store.close(strict=True)
print("ok")
""",
        db_path,
    )
    assert out.endswith("ok\n"), out


def test_a_kept_unpickler_pins_the_read(db_path):
    """pickle's own buffer outlives loads when its Unpickler is kept: the read
    stays pinned (pages never reused, map never unmapped) until it goes."""
    out = run_python(
        _LENT
        + """
env = lmdb.open(path, map_size=16 << 20)
with env.begin(write=True) as txn:
    txn.put(b"k", first + b"".join(tails))
env.close()
store = LmdbObjectStore(path, map_size=16 << 20)
got = store.get(b"k")
grabbing.clear()
assert got[0] == "grabbed" and got[1] == value[1]
kept["views"].clear()
(unpickler,) = kept["unpicklers"]
kept["unpicklers"].clear()
assert tail(unpickler) == bytes([65]) * 100_000
churn(store)
assert tail(unpickler) == bytes([66]) * 100_000
# Growth would unmap the pinned pages: refused, with a reason.
big = {b"grow%d" % i: bytes(1000) * 500 for i in range(40)}
try:
    store.put_many(big)
except Error as exc:
    assert "growing the map is refused" in str(exc), exc
    assert "another process" in str(exc)
else:
    raise AssertionError("the map grew under a pinned read")
assert tail(unpickler) == bytes([67]) * 100_000
# Close cannot unmap it either: it says so, and the store is closed.
try:
    store.close()
except Error as exc:
    assert "closing the store is refused" in str(exc), exc
else:
    raise AssertionError("close unmapped a pinned read")
assert store.closed
assert tail(unpickler) == bytes([68]) * 100_000
# The Unpickler may release its buffer and read on (it does when it is
# initialised again), so the pin outlives it: for the rest of this process.
del unpickler
gc.collect()
with LmdbObjectStore(path) as again:  # shares the pinned environment
    assert again[b"k"][1] == value[1]
    again.put(b"fits", 1)
    again.flush()
    try:
        again.put_many(big)
    except Error as exc:
        assert "growing the map is refused" in str(exc), exc
    else:
        raise AssertionError("the map grew under a pinned read")
print("ok")
""",
        db_path,
    )
    assert out.endswith("ok\n"), out
    # Another process is not bound by that pin.
    with LmdbObjectStore(db_path) as store:
        store.put_many({b"grow%d" % i: bytes(1000) * 500 for i in range(40)})
        assert store.info()["map_size"] > 16 * MiB
        assert store[b"fits"] == 1


def test_a_kept_export_of_a_buffered_value_keeps_its_bytes(db_path):
    """Pinned buffered bytes outlive their buffer entry."""
    out = run_python(
        _LENT
        + """
real_loads = pickle.loads
held = []
def keep_view(data):  # the first export, as pickle's would be
    held.append(memoryview(data))
    return real_loads(data)
pickle.loads = keep_view
class Big(bytes):  # not a plain value: read through pickle.loads, not natively
    pass
store = LmdbObjectStore(path)
store.put(b"b", [Big(b"x" * 100_000)])
expected = pickle.dumps([Big(b"x" * 100_000)], pickle.HIGHEST_PROTOCOL)
assert store.get(b"b") == [b"x" * 100_000]
pickle.loads = real_loads
for i in range(20):
    store.put(b"b", [bytes([i]) * 100_000])  # drops the buffer's reference
    store.put(b"other%d" % i, bytes(50_000))
store.flush()
assert held[0].tobytes() == expected
held.clear()
store.close(strict=True)
print("ok")
""",
        db_path,
    )
    assert out.endswith("ok\n"), out


# --------------------------------------------------------------------------
# 5. Reads answer while the buffer cannot be committed
# --------------------------------------------------------------------------


def _at_cap(make_store, **kwargs):
    """A store at its map cap whose buffer cannot be committed: committed
    keys, then buffered values (new and replacing), deletions (of stored and
    of unknown keys), and one value too big for the map. Returns the store
    and the mapping it should read as."""
    store = make_store(map_size=1 * MiB, max_map_size=1 * MiB, batch_size=10**6, **kwargs)
    committed = {b"k%03d" % i: i for i in range(0, 300, 2)}
    store.put_many(committed)
    model = dict(committed)
    for i in range(1, 300, 6):  # new keys between stored ones
        store.put(b"k%03d" % i, -i)
        model[b"k%03d" % i] = -i
    for i in range(0, 300, 8):  # replaced
        store.put(b"k%03d" % i, i * 10)
        model[b"k%03d" % i] = i * 10
    for i in range(4, 300, 10):  # deleted
        store.delete(b"k%03d" % i)
        model.pop(b"k%03d" % i, None)
    store.delete(b"k999")  # a deletion of a key never stored
    store.put(b"k500big", b"B" * (2 * MiB))
    model[b"k500big"] = b"B" * (2 * MiB)
    with pytest.raises(MapFullError):
        store.flush()
    return store, model


_RANGES = [
    {},
    {"prefix": b"k1"},
    {"start": b"k050", "stop": b"k251"},
    {"start": b"k100"},
    {"stop": b"k0"},
    {"prefix": b"k0", "start": b"k033", "stop": b"k077"},
    {"prefix": b"zz"},
]


def _in_range(model, prefix=None, start=None, stop=None):
    return {
        k: v
        for k, v in model.items()
        if (prefix is None or k.startswith(prefix))
        and (start is None or k >= start)
        and (stop is None or k < stop)
    }


def test_point_reads_answer_while_the_flush_fails(make_store):
    store, model = _at_cap(make_store)
    probe = [b"k%03d" % i for i in range(0, 310)] + [b"k999", b"k500big"]
    for key in probe:
        assert store.get(key) == model.get(key), key
        assert (key in store) == (key in model), key
        assert store.exists(key) == (key in model), key
        assert store.exists(key, flush=True) == (key in model), key
        if key in model:
            assert store[key] == model[key]
        else:
            with pytest.raises(KeyError):
                store[key]
    found, missing = store.get_many(probe)
    assert found == {k: model[k] for k in probe if k in model}
    assert missing == [k for k in probe if k not in model]
    assert len(store) == len(model)
    # The error still belongs to flush() and close().
    with pytest.raises(MapFullError):
        store.flush()
    with pytest.raises(RuntimeError) as info:
        store.close(strict=True)
    assert isinstance(info.value.__cause__, MapFullError)


def _range_id(bounds):
    return ",".join(f"{k}={v}" for k, v in bounds.items()) or "all"


@pytest.mark.parametrize("bounds", _RANGES, ids=_range_id)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_scans_merge_the_buffer_while_the_flush_fails(make_store, bounds, reverse):
    store, model = _at_cap(make_store)
    expected = sorted(_in_range(model, **bounds).items(), reverse=reverse)
    keys = list(store.keys(reverse=reverse, **bounds))
    assert keys == [k for k, _ in expected]  # in order, none twice
    assert list(store.values(reverse=reverse, **bounds)) == [v for _, v in expected]
    assert list(store.items(reverse=reverse, **bounds)) == expected
    assert list(store.scan(reverse=reverse, **bounds)) == expected
    assert len(store.keys(**bounds)) == len(expected)
    assert len(store.items(**bounds)) == len(expected)
    if not bounds and not reverse:
        assert list(store) == [k for k, _ in expected]
        assert store == model
        assert store != {**model, b"k000": "other"}
    assert store.pending > 0
    store.delete(b"k500big")


def test_a_failed_flush_is_logged_once_per_failure(make_store, caplog):
    caplog.set_level(logging.WARNING, logger="lmdb_object_store")
    store, model = _at_cap(make_store)

    def logged():
        return [r for r in package_records(caplog) if "before a read" in r.getMessage()]

    for _ in range(3):
        assert store.get(b"k002") == model[b"k002"]
        assert list(store.keys(prefix=b"k00")) == sorted(_in_range(model, prefix=b"k00"))
        assert store.get_many([b"k002"])[0] == {b"k002": model[b"k002"]}
        assert len(store.keys(prefix=b"k0"))
    records = logged()
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "MapFullError" in records[0].getMessage() or "does not fit" in records[0].getMessage()
    # A commit that succeeds ends that failure; the next one is logged again.
    store.delete(b"k500big")
    store.flush()
    store.put(b"k500big", b"B" * (2 * MiB))
    assert store.get(b"k002") == model[b"k002"]
    assert store.get(b"k002") == model[b"k002"]
    assert len(logged()) == 2
    store.delete(b"k500big")
    store.close(strict=True)


def test_reads_answer_while_a_background_commit_fails(make_store, caplog):
    """The failed batch is back in the buffer; reads see it and say nothing of
    the error, which the next write raises."""
    caplog.set_level(logging.WARNING, logger="lmdb_object_store")
    store = make_store(map_size=1 * MiB, max_map_size=1 * MiB, batch_size=300)
    big = {b"b%03d" % i: bytes([i % 256]) * (4 * KiB) for i in range(300)}
    for key, value in big.items():
        store.put(key, value)  # the 300th hands the batch to a commit thread
    found, missing = store.get_many(sorted(big))
    assert missing == [] and found == big
    assert dict(store.items()) == big
    with pytest.raises(MapFullError):
        store.put(b"next", 1)
    with pytest.raises(MapFullError):
        store.flush()
    store.clear()
    assert len(store) == 0


def test_reads_with_autoflush_off_never_commit(make_store):
    store, model = _at_cap(make_store, autoflush_on_read=False)
    assert store.get(b"k001") == model.get(b"k001")
    assert list(store.keys()) == sorted(model)
    store.delete(b"k500big")
