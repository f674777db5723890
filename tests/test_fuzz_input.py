"""Keys of every type and size, and stored values that are not pickles, fuzzed
(docs/usage.md "Keys", "Reads" and "Errors").

Keys: every method that takes a key is called with an arbitrary Python object,
against a store holding known data (some committed, some buffered), and checked
against a model: a key that normalises raises exactly the documented exception
or gives exactly the model's answer; a key that does not leaves the buffer and
the database as they were.

Values: arbitrary bytes written with py-lmdb behind the store's back either
unpickle cleanly or raise the package's unpickling error, and the store keeps
working. The bytes never hold an opcode that imports, calls or grows the memo
by a declared index, so unpickling them cannot run code or allocate much.

``LMDB_OBJECT_STORE_SOAK=<n>`` runs more examples.
"""

from __future__ import annotations

import array
import os
import pickle
import tempfile
from dataclasses import dataclass

import lmdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import SOAK
from lmdb_object_store import Error, LmdbObjectStore, UnpickleError

# Soak runs outlast the per-test watchdog: each example restarts it.
FUZZ = settings(
    max_examples=200 * max(1, 5 * SOAK),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

MAX_KEY = 511
MISSING = object()

# --------------------------------------------------------------------------
# Odd key objects
# --------------------------------------------------------------------------


class Boom(Exception):
    """Raised by the dunder methods of the odd keys: the store must not call them."""


class TouchyBytes(bytes):
    """Bytes whose Python-level methods all lie or raise; only its buffer is true."""

    def __str__(self):
        raise Boom("__str__")

    def __format__(self, spec):
        raise Boom("__format__")

    def __len__(self):
        return 7

    def __bytes__(self):
        return b"a lie"

    def __hash__(self):
        raise Boom("__hash__")

    def __eq__(self, other):
        raise Boom("__eq__")

    def __repr__(self):
        return f"TouchyBytes({bytes.__repr__(self)})"


class TouchyByteArray(bytearray):
    def __str__(self):
        raise Boom("__str__")

    def __len__(self):
        return 3

    def __bytes__(self):
        return b"a lie"

    def __repr__(self):
        return f"TouchyByteArray({bytearray(self)!r})"


class TouchyStr(str):
    def __str__(self):
        raise Boom("__str__")

    def encode(self, *args, **kwargs):
        raise Boom("encode")

    def __hash__(self):
        raise Boom("__hash__")

    def __eq__(self, other):
        raise Boom("__eq__")

    def __len__(self):
        return 1

    def __repr__(self):
        return f"TouchyStr({str.__repr__(self)})"


class Pretender:
    """Looks like a key to duck typing (str, bytes, len, index, path): it is not one."""

    def __str__(self):
        return "key"

    def __bytes__(self):
        return b"key"

    def __len__(self):
        return 3

    def __index__(self):
        return 3

    def __fspath__(self):
        return "key"

    def __repr__(self):
        return "Pretender()"


class Rude:
    """Every conversion raises."""

    def __str__(self):
        raise Boom("__str__")

    def __bytes__(self):
        raise Boom("__bytes__")

    def __len__(self):
        raise Boom("__len__")

    def __hash__(self):
        raise Boom("__hash__")

    def __eq__(self, other):
        raise Boom("__eq__")

    def __repr__(self):
        return "Rude()"


def released_view(data: bytes) -> memoryview:
    view = memoryview(data)
    view.release()
    return view


def two_d(data: bytes, rows: int, step: int) -> memoryview:
    """A 2-D byte view with ``rows`` rows, every ``step``-th row kept."""
    cols = max(1, len(data) // rows)
    flat = memoryview(data[: rows * cols].ljust(rows * cols, b"\0"))
    return flat.cast("B", shape=[rows, cols])[::step]


def words(data: bytes, reverse: bool) -> memoryview:
    """A view of 16-bit items (its raw bytes are the key), maybe reversed."""
    arr = array.array("H", data[: len(data) // 2 * 2])
    view = memoryview(arr)
    return view[::-1] if reverse else view


SIZES = st.one_of(
    st.binary(max_size=12),
    st.binary(min_size=505, max_size=518),
    st.sampled_from([0, 1, MAX_KEY, MAX_KEY + 1, 4096, 70_000]).map(lambda n: b"k" * n),
)
TEXT = st.one_of(
    st.text(max_size=24),
    st.tuples(st.text(max_size=8), st.sampled_from("\ud800\udbff\udc00\udfff")).map(
        lambda t: t[0] + t[1] + t[0]
    ),
    st.sampled_from(["", "\ud800", "a\udcff", "é" * 255 + "x", "é" * 256, "x" * 512]),
    st.integers(1, 40_000).map(lambda n: "ü" * n),
)
NESTED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=4) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=2)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=6,
)
ODD_OBJECTS = st.sampled_from(
    [
        None,
        True,
        0,
        10**5000,  # too long for int's own repr: the message must not repr it
        -(2**70_000),
        float("nan"),
        float("inf"),
        -0.0,
        1j,
        Ellipsis,
        object(),
        Pretender(),
        array.array("b", b"abc"),
        range(3),
        {b"k": 1},
        [b"k"],
        (b"k",),
        {b"k"},
        frozenset([b"k"]),
        type,
        len,
        os.fspath,
    ]
)

# The store is filled with these; disguised, they hit its data.
KNOWN = [b"c0", b"c1", b"shared", b"b0", b"gone", b"never", b"pm"]


DISGUISES = [
    bytes,
    bytearray,
    memoryview,
    lambda k: memoryview(b"<<" + k + b">>")[2:-2],
    lambda k: memoryview(bytes(b for c in k for b in (c, 0)))[::2],  # strided: refused
    TouchyBytes,
    TouchyByteArray,
    lambda k: two_d(k, 2, 1),
    bytes.decode,
    lambda k: TouchyStr(k.decode()),
]


def disguised(pair):
    """A known key in another dress (built here: some dresses refuse hashing)."""
    key, dress = pair
    return DISGUISES[dress](key)


KNOWN_DISGUISED = st.tuples(st.sampled_from(KNOWN), st.integers(0, len(DISGUISES) - 1)).map(
    disguised
)
ANY_KEY = st.one_of(
    SIZES,
    SIZES.map(bytearray),
    SIZES.map(memoryview),
    SIZES.map(lambda b: memoryview(b"<" + b + b">")[1:-1]),
    st.tuples(SIZES, st.integers(2, 3)).map(lambda t: memoryview(t[0])[:: t[1]]),
    st.tuples(SIZES, st.booleans()).map(lambda t: words(*t)),
    st.tuples(st.binary(max_size=40), st.integers(1, 5), st.integers(1, 3)).map(
        lambda t: two_d(*t)
    ),
    st.binary(max_size=8).map(released_view),
    SIZES.map(TouchyBytes),
    SIZES.map(TouchyByteArray),
    TEXT,
    TEXT.map(TouchyStr),
    st.integers(),
    st.floats(),
    NESTED,
    ODD_OBJECTS,
    st.builds(Rude),
)
# Two keys in three name the store's data, plain or in some dress, so that
# calls hit.
KEYS = st.one_of(st.sampled_from(KNOWN), KNOWN_DISGUISED, ANY_KEY)

# --------------------------------------------------------------------------
# The model of key normalisation (docs/usage.md "Keys")
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key_encoding: str | None
    key_errors: str
    autoflush: bool


CONFIGS = st.builds(
    Config,
    key_encoding=st.sampled_from([None, "utf-8", "latin-1"]),
    key_errors=st.sampled_from(["strict", "surrogatepass"]),
    autoflush=st.booleans(),
)


@dataclass(frozen=True)
class Refused:
    """The exception a key must raise, whatever the call."""

    exc: type
    words: tuple[str, ...] = ()


def normalise(key, cfg: Config):
    """The key's bytes as docs/usage.md "Keys" defines them, or the exception
    it must raise."""
    if isinstance(key, bytes | bytearray):
        return memoryview(key).tobytes()  # the buffer, not __bytes__ or __len__
    if isinstance(key, str):
        if cfg.key_encoding is None:
            return Refused(TypeError, ("str keys are not allowed",))
        try:
            return str.encode(key, cfg.key_encoding, cfg.key_errors)
        except UnicodeEncodeError:
            return Refused(UnicodeEncodeError)
    if key is None:
        return Refused(TypeError, ("Key cannot be None.",))
    if isinstance(key, memoryview):
        try:
            contiguous = key.c_contiguous
        except ValueError:
            # Python's own answer for any use of a released view.
            return Refused(ValueError, ("released",))
        if not contiguous:
            return Refused(TypeError, ("Key must be bytes-like", "contiguous"))
        return key.tobytes()
    return Refused(TypeError, ("Key must be bytes-like", type(key).__name__))


def size_ok(k: bytes) -> bool:
    return 1 <= len(k) <= MAX_KEY


# --------------------------------------------------------------------------
# Every key-taking call, with its expected outcome
# --------------------------------------------------------------------------


class Model:
    """What the store holds (``data``) and which keys are buffered (``buffered``)."""

    def __init__(self, autoflush: bool):
        self.autoflush = autoflush
        self.data = {b"c0": "c0", b"shared": "buffered", b"b0": "b0"}
        self.buffered = {b"b0", b"shared", b"c1", b"gone"}

    def fill(self, store):
        store.put_many({b"c0": "c0", b"c1": "c1", b"shared": "committed"})
        store.put(b"b0", "b0")
        store.put(b"shared", "buffered")
        store.delete(b"c1")
        store.delete(b"gone")
        assert store.pending == len(self.buffered)


OPS = [
    "put",
    "setitem",
    "get",
    "getitem",
    "contains",
    "exists",
    "exists_noflush",
    "delete",
    "delitem",
    "get_many",
    "get_many_decoded",
    "put_many",
    "pop",
    "pop_default",
    "setdefault",
]
WRITES = {"put", "setitem", "delete", "put_many", "setdefault"}
# Reads that commit the buffer first when autoflush_on_read is set and the key
# is not buffered (docs/usage.md "Reads"). ``in`` and ``del`` never commit.
FLUSHING_READS = {
    "get",
    "getitem",
    "exists",
    "get_many",
    "get_many_decoded",
    "pop",
    "pop_default",
    "setdefault",
}


def call(store, op, key, step):
    value = ("v", step)
    if op == "put":
        return store.put(key, value)
    if op == "setitem":
        store[key] = value
        return None
    if op == "get":
        return store.get(key, MISSING)
    if op == "getitem":
        return store[key]
    if op == "contains":
        return key in store
    if op == "exists":
        return store.exists(key)
    if op == "exists_noflush":
        return store.exists(key, flush=False)
    if op == "delete":
        return store.delete(key)
    if op == "delitem":
        del store[key]
        return None
    if op == "get_many":
        return store.get_many([b"c0", key])
    if op == "get_many_decoded":
        return store.get_many([b"c0", key], decode_keys=True)
    if op == "put_many":
        return store.put_many([(b"pm", ("pm", step)), (key, value)])
    if op == "pop":
        return store.pop(key)
    if op == "pop_default":
        return store.pop(key, MISSING)
    if op == "setdefault":
        return store.setdefault(key, value)
    raise AssertionError(op)


def expect(model: Model, cfg: Config, op: str, nk: bytes, key, step):
    """(expected result or exception type, keys this call buffers, data after)."""
    value = ("v", step)
    data = dict(model.data)
    present = size_ok(nk) and nk in data
    if op in WRITES and not size_ok(nk):
        return ValueError, set(), data
    if op in ("put", "setitem"):
        data[nk] = value
        return None, {nk}, data
    if op == "get":
        return (data[nk] if present else MISSING), set(), data
    if op == "getitem":
        return (data[nk] if present else KeyError), set(), data
    if op in ("contains", "exists", "exists_noflush"):
        return present, set(), data
    if op == "delete":
        data.pop(nk, None)
        return None, {nk}, data
    if op == "delitem":
        if not present:
            return KeyError, set(), data
        del data[nk]
        return None, {nk}, data
    if op == "get_many":
        given = [(b"c0", b"c0"), (key, nk)]
        found = {n: data[n] for _, n in given if size_ok(n) and n in data}
        not_found = [g for g, n in given if not (size_ok(n) and n in data)]
        return (found, not_found), set(), data
    if op == "get_many_decoded":
        # Found keys come back decoded, and so do the missing keys that are
        # not str; a key that does not decode is a UnicodeDecodeError.
        given = [(b"c0", b"c0"), (key, nk)]
        try:
            found = {
                n.decode(cfg.key_encoding, cfg.key_errors): data[n]
                for _, n in given
                if size_ok(n) and n in data
            }
            not_found = [
                g if isinstance(g, str) else n.decode(cfg.key_encoding, cfg.key_errors)
                for g, n in given
                if not (size_ok(n) and n in data)
            ]
        except UnicodeDecodeError:
            return UnicodeDecodeError, set(), data
        return (found, not_found), set(), data
    if op == "put_many":
        data[b"pm"] = ("pm", step)
        data[nk] = value
        return None, None, data  # None: the buffer is committed, then the items
    if op in ("pop", "pop_default"):
        if not present:
            return (KeyError if op == "pop" else MISSING), set(), data
        return data.pop(nk), {nk}, data
    if op == "setdefault":
        if present:
            return data[nk], set(), data
        data[nk] = value
        return value, {nk}, data
    raise AssertionError(op)


def check_result(op, got, want):
    if op in ("get_many", "get_many_decoded"):
        found, not_found = got
        want_found, want_not_found = want
        assert found == want_found
        key_type = bytes if op == "get_many" else str
        assert all(type(k) is key_type for k in found)
        # The caller's own objects, in order (compared by identity: some odd
        # keys refuse ==), or their decoded text.
        assert len(not_found) == len(want_not_found)
        for a, b in zip(not_found, want_not_found, strict=True):
            assert a is b or (type(a) is str and type(b) is str and str.__eq__(a, b))
    elif want is MISSING:
        assert got is MISSING
    elif isinstance(want, bool):
        assert got is want
    else:
        assert got == want


def check_state(store, model: Model, probe: bytes | None, values: bool = False):
    """``len`` and ``in`` (neither commits) agree with the model; with ``values``,
    so do the values of the known keys (a read that may commit the buffer)."""
    assert len(store) == len(model.data)
    for k in KNOWN + ([probe] if probe is not None and size_ok(probe) else []):
        assert (k in store) is (k in model.data), k
    if values:
        found, _ = store.get_many(KNOWN)
        assert found == {k: v for k, v in model.data.items() if k in KNOWN}
        if store.pending != len(model.buffered):
            assert model.autoflush and store.pending == 0
            model.buffered = set()


@FUZZ
@given(cfg=CONFIGS, steps=st.lists(st.tuples(st.sampled_from(OPS), KEYS), min_size=1, max_size=8))
# A str subclass's own encode() is never called: str.encode makes the key, as
# the UTF-8 fast path does (codecs other than strict UTF-8 once called it).
@example(
    cfg=Config("latin-1", "strict", autoflush=False),
    steps=[("put", TouchyStr("b0")), ("get", TouchyStr("c0")), ("delitem", TouchyStr("b0"))],
)
@example(
    cfg=Config("utf-8", "surrogatepass", autoflush=True),
    steps=[("setdefault", TouchyStr("\ud800")), ("get_many_decoded", TouchyStr("c0"))],
)
def test_every_key_call_with_arbitrary_keys(cfg, steps, rearm_watchdog):
    rearm_watchdog()
    with tempfile.TemporaryDirectory(prefix="los-fuzz-") as tmp:
        path = os.path.join(tmp, "db")
        store = LmdbObjectStore(
            path,
            key_encoding=cfg.key_encoding,
            key_errors=cfg.key_errors,
            autoflush_on_read=cfg.autoflush,
            sync=False,
        )
        try:
            model = Model(cfg.autoflush)
            model.fill(store)
            for step, (op, key) in enumerate(steps):
                run_step(store, model, cfg, op, key, step)
            # What remains is exactly the model, buffered or committed.
            found, not_found = store.get_many(list(model.data))
            assert found == model.data and not_found == []
            if cfg.key_encoding is None:  # else some stored keys may not decode
                assert dict(store.items()) == model.data
        finally:
            store.close()
        # And on disk, read without the package: exactly the model, as pickles.
        env = lmdb.open(path, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                raw = {bytes(k): pickle.loads(v) for k, v in txn.cursor()}
        finally:
            env.close()
        assert raw == model.data


def run_step(store, model: Model, cfg: Config, op: str, key, step: int):
    nk = normalise(key, cfg)
    pending = store.pending
    assert pending == len(model.buffered)

    if op == "get_many_decoded" and cfg.key_encoding is None:
        # Decoding without key_encoding is refused, before or after the key.
        refused = (ValueError, nk.exc) if isinstance(nk, Refused) else ValueError
        with pytest.raises(refused) as exc_info:
            call(store, op, key, step)
        if type(exc_info.value) is ValueError:
            assert str(exc_info.value) == "Decoding requested but key_encoding is not set."
        assert store.pending == pending
        check_state(store, model, None, values=True)
        return

    if isinstance(nk, Refused):
        with pytest.raises(nk.exc) as exc_info:
            call(store, op, key, step)
        message = str(exc_info.value)
        for word in nk.words:
            assert word in message, (message, word)
        if nk.exc is TypeError and nk.words[:1] == ("Key cannot be None.",):
            assert message == "Key cannot be None."
        # Refused before anything happened: no commit, nothing buffered.
        assert store.pending == pending
        check_state(store, model, None, values=True)
        return

    want, buffers, data_after = expect(model, cfg, op, nk, key, step)
    if isinstance(want, type) and issubclass(want, Exception):
        with pytest.raises(want) as exc_info:
            call(store, op, key, step)
        assert type(exc_info.value) is want  # not a subclass such as UnicodeError
        if want is KeyError:
            assert exc_info.value.args[0].startswith("Key not found: ")
        elif want is ValueError:
            assert "key" in str(exc_info.value).lower()
            assert store.pending == pending  # a refused write buffers nothing
    else:
        check_result(op, call(store, op, key, step), want)
    model.data = data_after

    # The buffer: exact, except that a read may commit it first (docs/usage.md
    # "Reads").
    if buffers is None:  # put_many committed everything
        assert store.pending == 0
        model.buffered = set()
    else:
        unflushed = len(model.buffered | buffers)
        read = [b"c0", nk] if op.startswith("get_many") else [nk]
        may_flush = (
            model.autoflush and op in FLUSHING_READS and any(k not in model.buffered for k in read)
        )
        if may_flush:
            assert store.pending in (unflushed, len(buffers))
            if store.pending != unflushed:
                model.buffered = set()
        else:
            assert store.pending == unflushed
        model.buffered |= buffers
    check_state(store, model, nk, values=isinstance(want, type))


# --------------------------------------------------------------------------
# Stored values that are not pickles (docs/migrating.md "The same files, both ways")
# --------------------------------------------------------------------------

# Opcodes that import (GLOBAL, STACK_GLOBAL, INST, the EXT* registry), call
# (REDUCE, OBJ, NEWOBJ, NEWOBJ_EX, BUILD) or size the memo by a declared index
# (PUT, LONG_BINPUT). Every byte with one of these values is dropped, so none
# can be read as an opcode.
UNSAFE = frozenset(b"c\x93io\x82\x83\x84R\x81\x92bpr")


def defang(data: bytes) -> bytes:
    return bytes(b for b in data if b not in UNSAFE)


PLAIN_DATA = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
        | st.sets(st.text(max_size=3), max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_pickles(draw):
    data = bytearray(pickle.dumps(draw(PLAIN_DATA), protocol=draw(st.integers(0, 5))))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


RAW_VALUES = st.one_of(
    # Intact pickles that hold no unsafe byte at all: they must load.
    st.builds(pickle.dumps, PLAIN_DATA, st.integers(0, 5)).filter(UNSAFE.isdisjoint),
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b"\x80\x05" + b),
    st.binary(max_size=32).map(lambda b: b"\x80\x04\x95" + b + b"."),
    mutated_pickles(),
).map(defang)


def reference_loads(data: bytes):
    """What plain ``pickle.loads`` makes of the bytes: ("ok", obj) or ("error", exc)."""
    try:
        return "ok", pickle.loads(data)
    except Exception as exc:  # any failure must come back wrapped
        return "error", exc


def same(a, b) -> bool:
    """Equal objects; by their pickles, so NaN and self-referencing lists compare."""
    if type(a) is not type(b):
        return False
    try:
        return pickle.dumps(a, protocol=5) == pickle.dumps(b, protocol=5)
    except Exception:
        return repr(a) == repr(b)


def assert_unpickle_error(exc: BaseException, key: bytes, reference: Exception):
    assert isinstance(exc, UnpickleError), repr(exc)
    assert isinstance(exc, Error) and isinstance(exc, RuntimeError)
    assert str(exc).startswith("Failed to unpickle DB key "), str(exc)
    if isinstance(reference, MemoryError):
        # A BINBYTES8 or memo index claiming more than the stream holds: CPython
        # allocates the claim and fails; the native decoder refuses it instead
        # (docs/codec.md "Malformed and hostile streams").
        assert type(exc.__cause__) in (MemoryError, pickle.UnpicklingError), (exc.__cause__, key)
        return
    assert type(exc.__cause__) is type(reference), (exc.__cause__, reference, key)


GOOD_VALUE = {"good": [1, 2.5, "three"]}
GOOD = b"z-good"  # sorts after the fuzzed keys


@FUZZ
@given(values=st.lists(RAW_VALUES, min_size=1, max_size=5))
# BINBYTES8 claiming 2**56 bytes: pickle.loads raises MemoryError, the store refuses it.
@example(values=[b"\x8e" + (2**56).to_bytes(8, "little")])
def test_stored_values_that_are_not_pickles(values, rearm_watchdog):
    rearm_watchdog()
    keys = [b"v%02d" % i for i in range(len(values))]
    expected = {k: reference_loads(v) for k, v in zip(keys, values, strict=True)}
    with tempfile.TemporaryDirectory(prefix="los-fuzz-") as tmp:
        path = os.path.join(tmp, "db")
        env = lmdb.open(path)
        try:
            with env.begin(write=True) as txn:
                txn.put(GOOD, pickle.dumps(GOOD_VALUE))
                for k, v in zip(keys, values, strict=True):
                    txn.put(k, v)
        finally:
            env.close()

        with LmdbObjectStore(path, sync=False) as store:
            check_reads(store, keys, expected)
            popped = check_removals(store, keys, expected)
            # The failed reads left the store working: reads and writes.
            assert store.get(GOOD) == GOOD_VALUE
            assert len(store) == len(keys) + 1 - popped
            store.put(b"after", ("written", 1))
            store.put_many({b"after-many": 2})
            store.flush()
            assert store.get(b"after") == ("written", 1)
            assert store[b"after-many"] == 2
            assert store.get(GOOD) == GOOD_VALUE


def check_reads(store, keys, expected):
    for k in keys:
        kind, ref = expected[k]
        assert k in store and store.exists(k)  # neither unpickles
        for read in (lambda k=k: store.get(k), lambda k=k: store[k]):
            if kind == "ok":
                assert same(read(), ref)
            else:
                with pytest.raises(Error) as exc_info:
                    read()
                assert_unpickle_error(exc_info.value, k, ref)

    bad = [k for k in keys if expected[k][0] == "error"]
    if bad:
        with pytest.raises(Error) as exc_info:
            store.get_many(keys)
        assert isinstance(exc_info.value, UnpickleError)
        assert str(exc_info.value).startswith("Failed to unpickle DB key ")
    else:
        found, not_found = store.get_many(keys)
        assert not_found == []
        assert all(same(found[k], expected[k][1]) for k in keys)

    # keys() does not unpickle; items() and values() yield every value before
    # the first bad one, then raise from next().
    ordered = sorted([GOOD, *keys])
    assert list(store.keys()) == ordered
    good_prefix = ordered[: ordered.index(min(bad))] if bad else ordered
    for with_keys in (True, False):
        got = []
        try:
            for item in store.items() if with_keys else store.values():
                got.append(item)
        except Error as exc:
            assert bad, repr(exc)
            assert_unpickle_error(exc, min(bad), expected[min(bad)][1])
        else:
            assert not bad
        assert len(got) == len(good_prefix)
        for k, item in zip(good_prefix, got, strict=True):
            if with_keys:
                assert item[0] == k
                item = item[1]
            want = GOOD_VALUE if k == GOOD else expected[k][1]
            assert same(item, want)


def check_removals(store, keys, expected) -> int:
    """pop, setdefault and popitem of a value that does not unpickle raise the
    unpickling error and remove nothing; of one that does, they work. Returns
    how many entries popitem removed."""
    for k in keys:
        kind, ref = expected[k]
        if kind == "ok":
            assert same(store.setdefault(k, "default"), ref)
            continue
        calls = (
            lambda k=k: store.setdefault(k, "default"),
            lambda k=k: store.pop(k),
            lambda k=k: store.pop(k, None),
        )
        for removal in calls:
            with pytest.raises(Error) as exc_info:
                removal()
            assert_unpickle_error(exc_info.value, k, ref)
        assert k in store and store.pending == 0
    # popitem takes the smallest key.
    first = min(keys)
    kind, ref = expected[first]
    size = len(store)
    if kind == "error":
        with pytest.raises(Error) as exc_info:
            store.popitem()
        assert_unpickle_error(exc_info.value, first, ref)
        assert len(store) == size and first in store
        return 0
    key, value = store.popitem()
    assert key == first and same(value, ref)
    assert len(store) == size - 1 and first not in store
    return 1
