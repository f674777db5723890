"""The json serializer writes values made only of exact dict (with str keys),
list, tuple, str, int, float, bool and None itself, byte for byte what the
``json`` module writes with the store's settings; every other value, and every
value the module refuses, goes through the module, so its bytes and its errors
stay the module's."""

from __future__ import annotations

import collections
import enum
import json
import json.encoder
import math
import sys
import traceback

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import soak_rounds

# The store's JSON settings: compact, UTF-8, strict.
ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def module_bytes(value):
    return ENCODER.encode(value).encode()


def module_error(value):
    try:
        module_bytes(value)
    except Exception as exc:
        return exc
    raise AssertionError("the json module encodes this value")


def stored(store, want):
    """The bytes stored under b"k" (room for a little more than ``want``)."""
    buf = bytearray(len(want) + 64)
    return bytes(buf[: store.get_into(b"k", buf)])


def nest(depth, leaf=0):
    """``leaf`` inside ``depth`` containers, dicts and lists by turns."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.fixture
def module_calls():
    """The calls ``json_store`` makes to the json module's C encoder."""
    return []


@pytest.fixture
def json_store(module_calls, make_store, monkeypatch):
    """A json store whose calls into the module's C encoder are counted. The
    store looks the encoder up when it opens; the module gets its own back at
    once, so the tests' reference encodings are not counted."""
    make = json.encoder.c_make_encoder
    assert make is not None, "this interpreter's json module has no C encoder"

    def counting(*args):
        module_calls.append(args)
        return make(*args)

    with monkeypatch.context() as patch:
        patch.setattr(json.encoder, "c_make_encoder", counting)
        return make_store(serializer="json")


# ---------------------------------------------------------------- strategies

# Every character that is escaped, the edges of each UTF-8 length, and text
# beyond the BMP; lone surrogates are errors (tested below).
SPECIAL = (
    "".join(map(chr, range(0x20))) + '"\\/\x7f\x80\xff\u0100\u07ff\u0800\u2028\u2029\ufeff\uffff'
)
texts = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(SPECIAL),
        st.characters(max_codepoint=0xFF),
        st.characters(min_codepoint=0x10000, codec="utf-8"),
    ),
    max_size=30,
)
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**64) - 2, max_value=2**64 + 2),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, -(2**64)]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1]
        + [1e15, 1e16, 9999999999999998.0, 1e-4, 1e-5, 1 / 3, 1e22, 1e23, -1.5e-7, 123456789.125]
    ),
)
scalars = st.none() | st.booleans() | ints | floats | texts
values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=6)
        | st.lists(kids, max_size=6).map(tuple)
        | st.dictionaries(texts, kids, max_size=6)
    ),
    max_leaves=60,
)
# Deep-ish: up to 150 levels (the store's own walk goes to 200).
deep = st.builds(nest, st.integers(min_value=0, max_value=150), values)

# Shards of 2,000 examples; LMDB_OBJECT_STORE_SOAK=<n> runs n of them.
SHARDS = range(soak_rounds(1))
PROPERTY = settings(
    deadline=None,
    max_examples=2_000,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# ---------------------------------------------------------------- plain values


@pytest.mark.parametrize("shard", SHARDS)
@PROPERTY
@given(value=values | deep)
def test_plain_values_store_the_modules_bytes(
    shard, value, json_store, module_calls, rearm_watchdog
):
    rearm_watchdog()
    want = module_bytes(value)
    json_store[b"k"] = value
    assert stored(json_store, want) == want
    assert not module_calls, "a plain value went through the json module"


shared = [1, "two"]
EDGES = {
    "empty dict": {},
    "empty list": [],
    "empty tuple": (),
    "empty str": "",
    "empty key": {"": ""},
    "nested empties": {"a": [[], {}, ()], "b": [{}]},
    "every control character": "".join(map(chr, range(0x20))),
    "quote, backslash, slash, DEL": '"\\/\x7f',
    "latin-1": "".join(map(chr, range(0x80, 0x100))),
    "BMP and beyond": "\u0100\u07ff\u0800\u2028\ufffd\uffff\U00010000\U0001d11e\U0010ffff",
    "keys that need escapes": {'"\n\t\x00': 1, "ключ\U0001f600": 2},
    "int bounds": [0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, -(2**200)],
    "floats": [0.0, -0.0, 5e-324, 1.7976931348623157e308, 1e16, 1e15, 1e-4, 1e-5, 0.1],
    "bool, None": [True, False, None],
    "tuples as lists": (1, (2, (3,)), [()]),
    "the same list twice": {"a": shared, "b": shared},
    "150 levels": nest(150),
    "the benchmark's value": {"id": 7, "name": "user7", "tags": ["a", "b"], "score": 3.5},
}


@pytest.mark.parametrize("value", EDGES.values(), ids=EDGES.keys())
def test_edge_values_store_the_modules_bytes(value, json_store, module_calls):
    want = module_bytes(value)
    json_store[b"k"] = value
    assert stored(json_store, want) == want
    json_store.flush()
    assert stored(json_store, want) == want
    assert json_store[b"k"] == json.loads(want)
    assert not module_calls


def test_a_large_value_then_small_ones(json_store, module_calls):
    # Over the size at which the encoder's buffer is freed rather than kept.
    for value in [["x" * 1_500_000, 1], {"a": 1}, "small", ["y" * 10, 2]]:
        want = module_bytes(value)
        json_store[b"k"] = value
        assert stored(json_store, want) == want
    assert not module_calls


# ---------------------------------------------------------------- other values


class Str(str):
    pass


class Int(int):
    pass


class Float(float):
    pass


class List(list):
    pass


class Dict(dict):
    pass


Color = enum.IntEnum("Color", "RED GREEN")
Point = collections.namedtuple("Point", "x y")

OTHER = {
    "int key": {1: "a", "b": 2},
    "float key": {2.5: 1},
    "bool key": {True: 1},
    "None key": {None: 1},
    "str subclass": ["a", Str("b")],
    "str subclass key": {Str("k"): 1},
    "int subclass": [Int(5)],
    "IntEnum": {"c": Color.GREEN},
    "float subclass": [Float(1.5)],
    "list subclass": {"a": List([1])},
    "dict subclass": [Dict(a=1)],
    "OrderedDict": collections.OrderedDict(b=1, a=2),
    "namedtuple": [Point(1, 2)],
    "the last item of many": [1, "two", 3.0, {"x": [None, Int(4)]}],
    "deeper than the walk": nest(300),
}


@pytest.mark.parametrize("value", OTHER.values(), ids=OTHER.keys())
def test_other_values_store_the_modules_bytes(value, json_store, module_calls):
    want = module_bytes(value)
    json_store[b"k"] = value
    assert stored(json_store, want) == want
    assert len(module_calls) == 1


def cycle_list():
    value: list = [1]
    value.append({"a": value})
    return value


def cycle_dict():
    value: dict = {"a": 1}
    value["b"] = [value]
    return value


ERRORS = {
    "nan": math.nan,
    "inf in a list": [1, math.inf],
    "-inf in a dict": {"a": -math.inf},
    "nan after good items": {"a": [1, 2.5, "x"], "b": [math.nan]},
    "lone surrogate": "\ud800",
    "lone surrogate in a key": {"\udfff": 1},
    "surrogate pair as two code points": [["x\ud83d\ude00"]],
    "set": {"a": {1}},
    "bytes": [b"x"],
    "object": [object()],
    "complex": 1j,
    "tuple key": {(1,): 2},
    "int of more digits than allowed": [10**5000],
    "object before nan": [object(), math.nan],
    "cycle through a list": cycle_list(),
    "cycle through a dict": cycle_dict(),
    # Beyond every supported version's limit (3.12 on bound C code by its own).
    "deeper than the recursion limit": nest(100_000),
}


@pytest.mark.parametrize("value", ERRORS.values(), ids=ERRORS.keys())
def test_errors_are_the_modules(value, json_store, module_calls):
    expected = module_error(value)
    with pytest.raises(type(expected)) as info:
        json_store[b"k"] = value
    assert type(info.value) is type(expected)
    message = str(info.value)
    if sys.version_info < (3, 11):
        # Exceptions have no notes here: the store's ends the message.
        message = message.split("\nwhile encoding the value for key ", 1)[0]
    assert message == str(expected)
    assert json_store.pending == 0
    assert len(module_calls) == 1
    # Nothing is left behind: the next plain value is written in Rust.
    json_store[b"k"] = {"after": [1]}
    assert stored(json_store, b'{"after":[1]}') == b'{"after":[1]}'
    assert len(module_calls) == 1


def outcome(store, value):
    try:
        store[b"k"] = value
    except RecursionError as exc:
        return ("RecursionError", str(exc))
    buf = bytearray(64 * 1024)
    return ("stored", bytes(buf[: store.get_into(b"k", buf)]))


def test_the_recursion_limit_stops_both_paths_at_the_same_depth(json_store):
    # The same 150 levels twice: plain (written in Rust when the module would
    # write it), and with an int subclass at the bottom (always the module's,
    # and no deeper for it). At every recursion limit around that depth, both
    # end the same way.
    plain = nest(150, 0)
    theirs = nest(150, Int(0))
    old = sys.getrecursionlimit()
    here = len(traceback.extract_stack())
    seen = set()
    try:
        for limit in range(here + 100, here + 300):
            sys.setrecursionlimit(limit)
            ours = outcome(json_store, plain)
            module = outcome(json_store, theirs)
            assert ours == module, limit
            seen.add(ours[0])
    finally:
        sys.setrecursionlimit(old)
    if sys.version_info < (3, 12):
        # Here sys.setrecursionlimit also bounds C code: both outcomes met.
        assert seen == {"RecursionError", "stored"}
