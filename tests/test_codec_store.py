"""The store with the native pickle codec: the file stays a plain pickle
store both ways (py-lmdb + pickle read what the store writes, and the store
reads what they write), values outside the codec go through CPython's pickle
as before, the collector running mid-read cannot break a read, and crafted
values that would crash or exhaust CPython's unpickler are refused."""

from __future__ import annotations

import math
import pickle

import pytest

from helpers import MiB, run_python
from lmdb_object_store import LmdbObjectStore, UnpickleError


def plain_values():
    """Values the native encoder writes (shared and recursive references,
    every batch and frame boundary, NaN, -0.0, surrogates, wide strings)."""
    shared = ["shared"]
    looped: list = [1]
    looped.append(looped)
    in_tuple = ([],)
    in_tuple[0].append(in_tuple)
    return {
        b"config": {f"option_{i}": [i, str(i), i * 0.5, None, i % 2 == 0] for i in range(50)},
        b"floats": [i / 7 for i in range(1000)],
        b"strings": [f"s{i}" for i in range(100)],
        b"bytes-1mib": b"\xab" * MiB,
        b"dict-1000": {i: -i for i in range(1000)},
        b"dict-2001": {str(i): i for i in range(2001)},
        b"set-1000": set(range(1000)),
        b"frozen": frozenset({1, 2.5, "x", (1, 2)}),
        b"list-1000": list(range(1000)),
        b"shared": [shared, shared, (shared, shared)],
        b"looped": looped,
        b"in-tuple": in_tuple,
        b"specials": [math.nan, -0.0, math.inf, "\ud800", "😀" * 3, 2**100, -(2**63)],
        b"bytearray": bytearray(b"\x00" * 70_000),
        b"frames": ["x" * 30_000, b"y" * 70_000, "z" * 40_000, list(range(30_000))],
        b"workload": {"id": 7, "name": "user7", "tags": ["a", "b"], "score": 3.5},
    }


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_store_writes_exactly_pickle_dumps(db_path, read_raw, protocol):
    values = plain_values()
    with LmdbObjectStore(db_path, pickle_protocol=protocol) as store:
        half = len(values) // 2
        for k, v in list(values.items())[:half]:
            store.put(k, v)
        store.put_many(dict(list(values.items())[half:]))
    raw = read_raw(db_path)
    for k, v in values.items():
        assert raw[k] == pickle.dumps(v, protocol), k


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_py_lmdb_values_read_back_through_the_store(db_path, raw_env, protocol):
    values = plain_values()
    env = raw_env(db_path, map_size=256 * MiB)
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k, pickle.dumps(v, protocol))
    env.close()
    with LmdbObjectStore(db_path) as store:
        singles = {k: store[k] for k in values}
        found, _ = store.get_many(list(values))
        scanned = dict(store.items())
    for got in (singles, found, scanned):
        for k, v in values.items():
            # Same value and the same sharing: pickled again, it is the
            # same stream CPython's own round trip gives.
            assert pickle.dumps(got[k], protocol) == pickle.dumps(
                pickle.loads(pickle.dumps(v, protocol)), protocol
            ), k


class Tagged(list):
    """A list subclass: not the codec's, so CPython pickles the whole value."""


def test_values_beyond_the_codec_are_pickled_and_read_by_cpython(db_path, read_raw):
    import datetime
    import decimal

    values = {
        b"subclass": Tagged([1, 2]),
        b"nested-subclass": {"a": [1, Tagged([3])]},
        b"decimal": decimal.Decimal("1.25"),
        b"date": [datetime.date(2024, 2, 29), "plain"],
        b"complex": 1 + 2j,
    }
    with LmdbObjectStore(db_path) as store:
        store.put_many(values)
        for k, v in values.items():
            got = store[k]
            assert got == v and type(got) is type(v)
        assert type(store[b"nested-subclass"]["a"][1]) is Tagged
    raw = read_raw(db_path)
    for k, v in values.items():
        assert raw[k] == pickle.dumps(v, pickle.HIGHEST_PROTOCOL)


COLLECTOR_REENTRY = r"""
import gc, pickle, sys
from lmdb_object_store import LmdbObjectStore, _native

store = LmdbObjectStore(sys.argv[1])
value = {f"k{i}": [i, (i, str(i)), {"n": [i] * 3}, {i}, frozenset({i})] for i in range(100)}
small = {"s": [1, (2, "3")], "t": {4}}
store.put_many({b"a": value, b"b": [value, value], b"small": small})
store.flush()
nested = pickle.dumps([{"x": (1, [2])}] * 5, 5)
calls = {"get": 0, "codec": 0, "budget": 3000}


class Reenter:
    # Collected in the middle of a read: reads again, from the store and
    # from the codec, and leaves more such garbage (up to a budget).
    def __init__(self):
        self.me = self

    def __del__(self):
        calls["get"] += store.get(b"small") == small
        calls["codec"] += _native._codec_loads(nested)[0]
        if calls["budget"] > 0:
            calls["budget"] -= 1
            Reenter()


# Collect the youngest generation at every allocation (older ones never:
# scanning the whole heap that often would take minutes).
gc.set_threshold(1, 10**9, 10**9)
Reenter()
for _ in range(3):
    assert store.get(b"a") == value
    found, _ = store.get_many([b"a", b"b"])
    assert found[b"a"] == value and found[b"b"] == [value, value]
    assert dict(store.items()) == {b"a": value, b"b": [value, value], b"small": small}
    assert _native._codec_loads(pickle.dumps(value, 5)) == (True, value)
gc.set_threshold(700, 10, 10)
assert calls["get"] > 1000 and calls["codec"] == calls["get"], calls
store.close()
print("ok")
"""


def test_collector_running_mid_read_reenters_safely(tmp_path):
    """Making lists, dicts and tuples can run the collector, and so any
    ``__del__``; one that reads again (the store, the codec) must find no
    borrowed state of the read it interrupted."""
    out = run_python(COLLECTOR_REENTRY, str(tmp_path / "db"), timeout=120)
    assert out.strip() == "ok"


NO_COLLECTION_WHILE_WRITING = r"""
import gc, pickle
from lmdb_object_store import _native

ran = []


class Witness:
    def __init__(self):
        self.me = self

    def __del__(self):
        ran.append(1)


value = {
    f"k{i}": [i, "é" * i, "\ud800" * i, "😀", b"b" * i, (i, -i), {i: [i]}, {i}, 2**80 + i]
    for i in range(500)
}
value["self"] = value
gc.set_threshold(1, 10**9, 10**9)
for _ in range(100):
    Witness()
    before = len(ran)
    out = _native._codec_dumps(value, 5)
    # Not one collection (so not one __del__) ran while the graph was walked.
    assert len(ran) == before
gc.set_threshold(700, 10, 10)
assert out == pickle.dumps(value, 5)
# The witnesses were collected, each at the first allocation after the call.
assert len(ran) >= 90, len(ran)
print("ok")
"""


def test_encoder_makes_no_collectable_object_while_it_walks():
    """The encoder walks the graph through borrowed references: it relies on
    no Python code (no ``__del__``) running meanwhile, so it must allocate
    nothing the collector tracks."""
    assert run_python(NO_COLLECTION_WHILE_WRITING, timeout=120).strip() == "ok"


CRAFTED_IN_STORE = r"""
import pickle, resource, sys
import lmdb
from lmdb_object_store import LmdbObjectStore, UnpickleError

path = sys.argv[1]
env = lmdb.open(path, map_size=64 << 20)
with env.begin(write=True) as txn:
    # A tuple nested 200,000 deep as a dict key: pickle.loads crashes on it.
    txn.put(b"deep-key", b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"Ns.")
    # Bytes that claim a terabyte.
    txn.put(b"claims-1tib", b"\x80\x05\x8e" + (1 << 40).to_bytes(8, "little") + b".")
    txn.put(b"fine", pickle.dumps({"ok": True}))
env.close()
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
store = LmdbObjectStore(path)
for key, words in ((b"deep-key", "nested"), (b"claims-1tib", "truncated")):
    try:
        store[key]
    except UnpickleError as exc:
        assert str(exc).startswith(f"Failed to unpickle DB key '{key.decode()}': "), exc
        assert isinstance(exc.__cause__, pickle.UnpicklingError), repr(exc.__cause__)
        assert words in str(exc.__cause__), exc.__cause__
    else:
        raise AssertionError(key)
assert store[b"fine"] == {"ok": True}
store.close()
print("ok")
"""


def test_crafted_values_raise_unpickle_error_not_crash_or_exhaust(tmp_path):
    assert run_python(CRAFTED_IN_STORE, str(tmp_path / "db"), timeout=120).strip() == "ok"


def test_malformed_plain_pickles_keep_cpythons_errors(db_path, raw_env):
    """Malformed streams of plain opcodes go to CPython's unpickler, so the
    error (the ``__cause__``) is the one ``pickle.loads`` raises."""
    good = pickle.dumps({"a": [1, 2, 3]}, 5)
    bad = {
        b"truncated": good[:-3],
        b"underflow": b"\x80\x05a.",
        b"bad-memo": b"\x80\x05h\x07.",
        b"odd-setitems": b"\x80\x05}(K\x01u.",
    }
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        for k, v in bad.items():
            txn.put(k, v)
    env.close()
    with LmdbObjectStore(db_path) as store:
        for k, v in bad.items():
            with pytest.raises(UnpickleError) as exc_info:
                store[k]
            with pytest.raises(Exception) as want:
                pickle.loads(v)
            cause = exc_info.value.__cause__
            assert type(cause) is type(want.value) and str(cause) == str(want.value), k
