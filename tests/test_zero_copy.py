"""Zero-copy reads (docs/semantics.md "Zero-copy reads"): values come back
exactly, large ones included; objects built by pickle.loads never depend on
LMDB memory; failed unpickling leaves no transaction behind."""

from __future__ import annotations

import array
import collections
import datetime
import decimal
import fractions
import os
import pickle
import tempfile
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import MiB, join_or_fail, run_python, run_threads, start_thread
from lmdb_object_store import LmdbObjectStore, UnpickleError

SAMPLES = [
    b"",
    b"\x00" * 10,
    bytes(range(256)),
    bytearray(b"mutable"),
    "",
    "unicode ✓ 日本",
    0,
    -1,
    2**100,
    3.141592653589793,
    float("inf"),
    complex(1, -2),
    True,
    None,
    [],
    [1, [2, [3]]],
    (),
    (1, "a", None),
    {},
    {"nested": {"dict": [1, 2, {"x": b"y"}]}},
    {1, 2, 3},
    frozenset({b"a", b"b"}),
    collections.OrderedDict([("b", 1), ("a", 2)]),
    collections.Counter("hello"),
    decimal.Decimal("3.14159"),
    fractions.Fraction(22, 7),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    array.array("d", [1.5, 2.5]),
    range(3, 10, 2),
    slice(1, 2, 3),
]


def _check_same(got, expected):
    assert type(got) is type(expected), (type(got), type(expected))
    assert got == expected


@pytest.mark.parametrize("where", ["buffer", "db", "reopened"])
def test_values_round_trip_exactly(db_path, where):
    store = LmdbObjectStore(db_path, autoflush_on_read=False)
    keys = [b"s%03d" % i for i in range(len(SAMPLES))]
    for k, v in zip(keys, SAMPLES, strict=True):
        store.put(k, v)
    if where != "buffer":
        store.flush()
    if where == "reopened":
        store.close()
        store = LmdbObjectStore(db_path)
    try:
        for k, v in zip(keys, SAMPLES, strict=True):
            _check_same(store.get(k), v)
            _check_same(store[k], v)
        found, not_found = store.get_many(keys)
        assert not_found == []
        for k, v in zip(keys, SAMPLES, strict=True):
            _check_same(found[k], v)
    finally:
        store.close()


def test_shared_and_recursive_references_survive(store):
    shared = {"x": 1}
    recursive: list = []
    recursive.append(recursive)
    store.put(b"shared", [shared, shared])
    store.put(b"recursive", recursive)
    for _ in range(2):
        got = store.get(b"shared")
        assert got == [{"x": 1}, {"x": 1}]
        assert got[0] is got[1]
        rec = store.get(b"recursive")
        assert rec[0] is rec
        store.flush()


def test_pickle_buffer_values(make_store):
    store = make_store(pickle_protocol=5)
    store.put(b"ba", pickle.PickleBuffer(bytearray(b"abc")))
    store.put(b"by", pickle.PickleBuffer(b"xyz"))
    store.flush()
    got = store.get(b"ba")
    assert type(got) is bytearray and got == b"abc"
    got = store.get(b"by")
    assert type(got) is bytes and got == b"xyz"


@pytest.mark.parametrize("where", ["buffer", "db", "reopened", "put_many"])
def test_large_8_mib_values_round_trip(db_path, where):
    big = os.urandom(8 * MiB)
    store = LmdbObjectStore(db_path, autoflush_on_read=False)
    try:
        if where == "put_many":
            store.put_many({b"big": big, b"small": 1})
        else:
            store.put(b"big", big)
            store.put(b"small", 1)
        if where in ("db", "reopened"):
            store.flush()
        if where == "reopened":
            store.close()
            store = LmdbObjectStore(db_path)
        got = store.get(b"big")
        assert type(got) is bytes
        assert len(got) == 8 * MiB
        assert got == big
        assert store.get_many([b"big"])[0][b"big"] == big
    finally:
        store.close()


def test_two_large_values_beyond_the_default_map(store):
    a, b = b"a" * (8 * MiB), b"b" * (8 * MiB)
    store.put(b"a", a)
    store.put(b"b", b)
    store.flush()  # 16 MiB: more than the default 10 MiB map, which grows
    assert store.get(b"a") == a
    assert store.get(b"b") == b


def test_values_stay_valid_after_the_pages_are_reused_and_the_store_closed(db_path):
    store = LmdbObjectStore(db_path, map_size=4 * MiB)
    original = bytes(range(256)) * 4096  # 1 MiB
    store.put(b"k", original)
    store.put(b"d", {"payload": original})
    store.flush()
    value = store.get(b"k")
    nested = store.get(b"d")
    found, _ = store.get_many([b"k"])
    # Overwrite and free the pages the value was read from, many times.
    for i in range(10):
        store.put(b"k", bytes([i]) * len(original))
        store.delete(b"d")
        store.flush()
    store.close()
    assert value == original
    assert nested == {"payload": original}
    assert found[b"k"] == original
    assert bytes(memoryview(value)[:256]) == bytes(range(256))


def test_setstate_keeping_its_state_does_not_hold_lmdb_memory(db_path, hooked):
    store = LmdbObjectStore(db_path)
    payload = b"p" * (256 * 1024)
    store.put(b"h", hooked(payload))
    store.flush()
    kept = []
    hooked.hook = kept.append
    obj = store.get(b"h")
    hooked.hook = None
    store.put(b"h", b"overwritten")
    store.flush()
    store.close()
    assert kept and kept[0] is obj
    assert obj.tag == payload
    assert type(obj.tag) is bytes


def test_reads_nested_inside_unpickling(store, hooked):
    """A value whose unpickling reads the store: every level gets its own bytes."""
    store.put_many({b"outer": hooked("outer"), b"inner": {"deep": [1, 2]}, b"x": "x" * 500})
    seen = []

    def read_more(obj):
        hooked.hook = None  # one level of nesting is enough
        seen.append(store.get(b"inner"))
        seen.append(store.get_many([b"x", b"inner"])[0])
        seen.append(dict(store.items()))
        hooked.hook = read_more

    hooked.hook = read_more
    assert store.get(b"outer") == hooked("outer")
    assert seen[0] == {"deep": [1, 2]}
    assert seen[1] == {b"x": "x" * 500, b"inner": {"deep": [1, 2]}}
    assert seen[2][b"x"] == "x" * 500
    found, _ = store.get_many([b"outer", b"x"])
    assert found == {b"outer": hooked("outer"), b"x": "x" * 500}


def test_threads_switching_inside_unpickling_read_their_own_values(store, hooked):
    """Reads whose unpickling sleeps (so other threads read meanwhile) each get
    their own value."""
    values = {b"k%d" % i: hooked(bytes([i]) * (1000 + i)) for i in range(8)}
    store.put_many(values)
    hooked.hook = lambda obj: time.sleep(0.001)
    errors = []

    def reader(offset):
        try:
            for n in range(40):
                key = b"k%d" % ((n + offset) % 8)
                assert store[key] == values[key]
                assert store.get_many([key])[0] == {key: values[key]}
        except Exception as exc:  # reported below
            errors.append(exc)

    run_threads([lambda i=i: reader(i) for i in range(4)], timeout=60)
    assert errors == []


# pickle.loads is looked up once per process, at the first read, so these
# run in a child that replaces it before reading anything. The values hold a
# str subclass: plain values are read by the native codec, not pickle.loads.
_CHILD = """
import pickle, sys
from lmdb_object_store import Error, LmdbObjectStore
class Bee(str):
    pass
real_loads = pickle.loads
store = LmdbObjectStore(sys.argv[1])
value = {"v": list(range(50)), "bee": Bee("bee")}
store.put_many({b"a": value, b"b": Bee("bee")})
"""


def _run_child(db_path, body):
    out = run_python(_CHILD + textwrap.dedent(body) + "\nprint('ok')\n", db_path)
    assert out.endswith("ok\n"), out


def test_loads_is_lent_the_stored_pickle_read_only(db_path):
    _run_child(
        db_path,
        """
        def check(data):
            view = memoryview(data)
            assert view.readonly and view.format == "B" and view.ndim == 1
            stored = (pickle.dumps(v, pickle.HIGHEST_PROTOCOL) for v in (value, Bee("bee")))
            assert view.tobytes() in stored
            try:
                view[0] = 0
            except TypeError:
                pass
            else:
                raise AssertionError("the lent memory is writable")
            view.release()
            return real_loads(data)
        pickle.loads = check
        for _ in range(3):
            assert store.get(b"a") == value
            assert store.get_many([b"a"])[0] == {b"a": value}
            assert dict(store.items())[b"a"] == value
        """,
    )


def test_a_kept_reference_lends_nothing_after_the_read(db_path):
    _run_child(
        db_path,
        """
        kept = []
        def keep(data):
            kept.append(data)
            return real_loads(data)
        pickle.loads = keep
        assert store.get(b"a") == value
        assert store.get(b"b") == "bee"
        # The object loads kept is never lent again: the second read had another.
        assert kept[1] is not kept[0]
        for obj in kept:
            try:
                memoryview(obj)
            except ValueError as exc:
                assert "no longer lent" in str(exc)
            else:
                raise AssertionError("a kept object still lends the store's memory")
        """,
    )


def test_a_kept_buffer_export_pins_the_read(db_path):
    """A buffer that outlives pickle.loads keeps reading the stored bytes:
    the read is pinned (its pages never reused) instead of failing."""
    _run_child(
        db_path,
        """
        views = []
        def keep_view(data):
            if keep:
                views.append(memoryview(data))
            return real_loads(data)
        keep = True
        pickle.loads = keep_view
        assert store.get(b"a") == value
        assert store.get_many([b"a"]) == ({b"a": value}, [])
        keep = False
        stored = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        for i in range(20):
            store.put(b"a", [i] * 5000)
            store.flush()
        assert [v.tobytes() for v in views] == [stored, stored]
        views.clear()
        assert store.get(b"b") == "bee"
        """,
    )


class _FailsInSetstate:
    def __init__(self):
        self.x = 1

    def __setstate__(self, state):
        raise ValueError("setstate refused")


def test_unpickling_errors_wrap_and_release_the_transaction(make_store):
    store = make_store(map_size=1 * MiB)
    store.put(b"bad", _FailsInSetstate())
    store.put(b"good", b"g" * 1000)
    store.flush()
    for _ in range(50):
        with pytest.raises(UnpickleError) as exc_info:
            store.get(b"bad")
        assert str(exc_info.value).startswith("Failed to unpickle DB key 'bad': ")
        assert isinstance(exc_info.value.__cause__, ValueError)
        assert "setstate refused" in str(exc_info.value)
        with pytest.raises(UnpickleError):
            store.get_many([b"good", b"bad"])
    # No read transaction was left open: a growth (which waits for every
    # read in this process to end) completes.
    t, out = start_thread(lambda: store.put_many({b"big": b"x" * (3 * MiB)}))
    join_or_fail(t)
    assert "error" not in out, out.get("error")
    assert store.info()["map_size"] > 1 * MiB
    assert store.get(b"good") == b"g" * 1000


def test_many_reads_do_not_leak_reader_slots(make_store):
    store = make_store(max_readers=16)
    store.put_many({b"k%d" % i: i for i in range(10)})
    store.put_many({b"bad": _FailsInSetstate()})
    for i in range(300):
        assert store.get(b"k%d" % (i % 10)) == i % 10
        assert store.get_many([b"k1", b"nope"]) == ({b"k1": 1}, [b"nope"])
        assert b"k2" in store
        with pytest.raises(UnpickleError):
            store[b"bad"]
    info = store.info()
    assert info["max_readers"] == 16
    assert info["num_readers"] <= 16


class _Big:
    """Reduces to a large bytes payload; compares by payload."""

    def __init__(self, payload):
        self.payload = payload

    def __eq__(self, other):
        return isinstance(other, _Big) and other.payload == self.payload

    def __hash__(self):
        return hash(self.payload[:16])


def test_custom_objects_with_large_state(store):
    obj = _Big(os.urandom(2 * MiB))
    store.put(b"o", obj)
    assert store.get(b"o") == obj
    store.flush()
    got = store.get(b"o")
    assert got == obj
    assert got is not obj


# --------------------------------------------------------------------------
# Property-based round trip
# --------------------------------------------------------------------------

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.dictionaries(st.binary(min_size=1, max_size=511), json_like, max_size=12),
    batch_size=st.integers(1, 20),
)
def test_property_round_trip(items, batch_size):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "db")
        with LmdbObjectStore(path, batch_size) as store:
            for k, v in items.items():
                store.put(k, v)
            for k, v in items.items():
                assert store.get(k, "MISSING") == v
        with LmdbObjectStore(path, readonly=True) as store:
            found, not_found = store.get_many(list(items))
            assert not_found == []
            assert found == items
