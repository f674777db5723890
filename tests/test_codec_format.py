"""The native codec speaks exactly CPython's pickle format: for the plain data
types it writes the bytes ``pickle.dumps(obj, protocol)`` writes, and reads
any pickle of them back to the same graph (same values, exact types, the same
sharing and cycles). Property tests over random graphs, then the edge cases
of the format one by one."""

from __future__ import annotations

import math
import pickle
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import soak_rounds
from lmdb_object_store import _native

codec_dumps = _native._codec_dumps
codec_loads = _native._codec_loads

PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- strategies

# Integers around every boundary of the integer opcodes (BININT1/2, BININT,
# LONG1 and its redundant-sign-byte rule, LONG4), and plain random ones.
edge_ints = st.sampled_from(
    [
        sign * (2**bits) + delta
        for bits in (7, 8, 15, 16, 31, 32, 63, 64, 127, 2039, 2040, 2047, 2048)
        for delta in (-1, 0, 1)
        for sign in (1, -1)
    ]
)
ints = st.one_of(st.integers(), st.integers(-(2**70), 2**70), edge_ints)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, sys.float_info.max]),
)
# Non-BMP and every other category but lone surrogates (those are below).
texts = st.text(max_size=40)
blobs = st.binary(max_size=40)

atoms = st.one_of(st.none(), st.booleans(), ints, floats, texts, blobs)
# Keys and set items, nested two levels (a recursive strategy inside the
# recursive one below makes hypothesis slow to set up).
small_hashables = st.one_of(
    atoms, st.lists(atoms, max_size=3).map(tuple), st.frozensets(atoms, max_size=3)
)
hashables = st.one_of(
    small_hashables,
    st.lists(small_hashables, max_size=3).map(tuple),
    st.frozensets(small_hashables, max_size=3),
)


def containers(inner):
    return st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(hashables, inner, max_size=6),
        st.sets(hashables, max_size=6),
        st.frozensets(hashables, max_size=6),
        blobs.map(bytearray),
    )


trees = st.recursive(st.one_of(atoms, blobs.map(bytearray)), containers, max_leaves=30)


def _walk(obj, seen, out):
    """Every object of the graph once (by identity), depth first."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen[id(o)] = o
        out.append(o)
        if isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())


@st.composite
def graphs(draw):
    """A tree, then references from its lists and dicts to other objects of
    it: shared objects, and cycles (through tuples too)."""
    root = draw(trees)
    objs: list = []
    _walk(root, {}, objs)
    mutable = [o for o in objs if type(o) in (list, dict)]
    for _ in range(draw(st.integers(0, 4)) if mutable else 0):
        target = mutable[draw(st.integers(0, len(mutable) - 1))]
        ref = objs[draw(st.integers(0, len(objs) - 1))]
        if type(target) is list:
            target.insert(draw(st.integers(0, len(target))), ref)
        else:
            target[draw(hashables)] = ref
    return root


# ---------------------------------------------------------------- comparison


def canonical(value) -> str:
    """A rendering that does not depend on set order (for hashable values)."""
    if isinstance(value, (tuple, frozenset)):
        parts = [canonical(v) for v in value]
        if isinstance(value, frozenset):
            parts.sort()
        return f"{type(value).__name__}({', '.join(parts)})"
    return f"{type(value).__name__}:{value!r}"


def assert_same_graph(got, want):
    """``got`` is ``want`` rebuilt: equal values with the exact types, NaN for
    NaN, -0.0 for -0.0, and the same sharing of containers, bytes and tuples
    (a memo entry per object; equal strings may be one object on either side:
    CPython itself hands out one object for every 1-character string)."""
    pairs: dict[int, int] = {}
    stack = [(got, want)]
    while stack:
        g, w = stack.pop()
        assert type(g) is type(w), (type(g), type(w))
        if isinstance(w, float):
            assert (math.isnan(g) and math.isnan(w)) or (
                g == w and math.copysign(1, g) == math.copysign(1, w)
            ), (g, w)
            continue
        if isinstance(w, (type(None), bool, int, str)):
            assert g == w
            continue
        if len(w) == 0 and isinstance(w, tuple):
            assert g == ()
            continue
        # A container met before must map to the same one.
        if id(w) in pairs:
            assert pairs[id(w)] == id(g), "sharing differs"
            continue
        pairs[id(w)] = id(g)
        if isinstance(w, (bytes, bytearray)):
            assert g == w
        elif isinstance(w, (list, tuple)):
            assert len(g) == len(w)
            stack.extend(zip(g, w, strict=True))
        elif isinstance(w, dict):
            assert len(g) == len(w)
            # Dicts keep insertion order: pair them item by item.
            for (gk, gv), (wk, wv) in zip(g.items(), w.items(), strict=True):
                stack.append((gk, wk))
                stack.append((gv, wv))
        else:
            # Sets: their order follows hashes, and a NaN hashes by identity,
            # so elements are paired by a canonical rendering.
            assert len(g) == len(w)
            stack.extend(zip(sorted(g, key=canonical), sorted(w, key=canonical), strict=True))
    # No two objects of `want` became one of `got`.
    assert len(set(pairs.values())) == len(pairs)


def check(value, protocol, *, native=True):
    """``native``: the protocol has opcodes for every type in the value, so
    the codec must write and read it itself; otherwise it may hand it over,
    but whatever it writes or reads must be CPython's."""
    expected = pickle.dumps(value, protocol)
    written = codec_dumps(value, protocol)
    if native:
        assert written is not None, "the native encoder declined a plain value"
    if written is not None:
        assert written == expected
    handled, back = codec_loads(expected)
    if native:
        assert handled, "the native decoder declined a plain pickle"
    if handled:
        assert_same_graph(back, pickle.loads(expected))


def writes_natively(value, protocol):
    """Whether this protocol has native opcodes for every type in the value
    (sets need 4, bytearray 5, bytes 3)."""
    objs: list = []
    _walk(value, {}, objs)
    types = {type(o) for o in objs}
    if protocol < 5 and bytearray in types:
        return False
    if protocol < 4 and types & {set, frozenset}:
        return False
    return not (protocol < 3 and bytes in types)


# ---------------------------------------------------------------- properties


# Thousands of graphs for the protocols the store writes by default, in
# shards of 2,000; LMDB_OBJECT_STORE_SOAK=<n> runs n shards of each (6 gives
# the 24,000 of a full check). The watchdog restarts at every example (a
# shard runs for a minute or so on a busy machine).
SHARDS = range(soak_rounds(1))
SHARD = settings(
    PROPERTY,
    max_examples=2_000,
    suppress_health_check=[*PROPERTY.suppress_health_check, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("shard", SHARDS)
@SHARD
@given(value=graphs())
def test_protocol_5_random_graphs(shard, value, rearm_watchdog):
    rearm_watchdog()
    check(value, 5)


@pytest.mark.parametrize("shard", SHARDS)
@SHARD
@given(value=graphs())
def test_protocol_4_random_graphs(shard, value, rearm_watchdog):
    rearm_watchdog()
    check(value, 4, native=writes_natively(value, 4))


@pytest.mark.parametrize("protocol", [2, 3])
@settings(SHARD, max_examples=750)
@given(value=graphs())
def test_protocols_2_and_3_random_graphs(protocol, value, rearm_watchdog):
    rearm_watchdog()
    check(value, protocol, native=writes_natively(value, protocol))


@settings(SHARD, max_examples=300)
@given(value=graphs(), protocol=st.sampled_from([0, 1]))
def test_protocols_0_and_1_are_read_or_handed_over(value, protocol, rearm_watchdog):
    rearm_watchdog()
    data = pickle.dumps(value, protocol)
    assert codec_dumps(value, protocol) is None
    handled, back = codec_loads(data)
    if handled:
        assert_same_graph(back, pickle.loads(data))


# ---------------------------------------------------------------- edge cases

PROTOCOLS = [2, 3, 4, 5]


def recursive_values():
    lst = [1]
    lst.append(lst)
    dct = {}
    dct["self"] = dct
    # A tuple that contains itself through a list referenced only by it.
    t1 = ([],)
    t1[0].append(t1)
    t4 = ([], 2, 3, 4)
    t4[0].append(t4)
    deep = ({},)
    deep[0]["k"] = [deep, ("x", [deep])]
    shared = "shared"
    sub = [shared]
    return [lst, dct, t1, t4, deep, [t1, t1], (t1,), [shared, shared, (shared,)], [sub, sub]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("index", range(len(recursive_values())))
def test_shared_and_recursive_references(protocol, index):
    check(recursive_values()[index], protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "n", [0, 1, 2, 999, 1000, 1001, 1999, 2000, 2001, 3000], ids=lambda n: f"n{n}"
)
def test_batches_of_a_thousand(protocol, n):
    check(list(range(n)), protocol)
    check({i: None for i in range(n)}, protocol)
    check(tuple(range(n)), protocol)
    check(set(range(n)), protocol, native=protocol >= 4)
    check(frozenset(range(n)), protocol, native=protocol >= 4)


def test_batch_endings_are_cpythons():
    # Dicts and sets of exactly k*1000 items end with an empty MARK+SETITEMS
    # (ADDITEMS); lists do not; one-item lists and dicts use APPEND/SETITEM.
    assert codec_dumps({i: i for i in range(1000)}, 4).endswith(b"(u.")
    assert codec_dumps(set(range(1000)), 4).endswith(b"\x90(\x90.")
    assert codec_dumps(list(range(1000)), 4).endswith(b"e.")
    assert not codec_dumps(list(range(1000)), 4).endswith(b"(e.")
    assert codec_dumps([7], 4).endswith(b"K\x07a.")
    assert codec_dumps({7: 8}, 4).endswith(b"K\x07K\x08s.")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "size",
    [0, 3, 4, 255, 256, 65535, 65536, 65537, 200_000],
    ids=lambda n: f"s{n}",
)
def test_payload_sizes_and_frames(protocol, size):
    # Payloads of 64 KiB and more are written outside frames; frames commit
    # at 64 KiB; frames under 4 bytes are dropped.
    check("a" * size, protocol)
    check("é" * size, protocol)
    check(b"b" * size, protocol, native=protocol >= 3)
    check(bytearray(b"c" * size), protocol, native=protocol >= 5)
    check([b"x" * size, "tail", 1], protocol, native=protocol >= 3)
    check(["s" * (size // 7)] * 9, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_frames_commit_before_every_object(protocol):
    # Many small atoms cross 64 KiB inside one list: the frame ends exactly
    # where CPython ends it, before the object that finds it full.
    check([1.5] * 20_000, protocol)
    check([i for i in range(40_000)], protocol)
    check({f"k{i}": i for i in range(9_000)}, protocol)
    check([("t", i, None) for i in range(8_000)], protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ints(protocol):
    for bits in range(0, 2100, 7):
        for v in (2**bits - 1, 2**bits, -(2**bits), -(2**bits) - 1, 2**bits + 1):
            check(v, protocol)
    check([True, False, 1, 0, -1], protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_floats(protocol):
    for v in [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, 1e-310, 1.5]:
        check(v, protocol)
        check([v], protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_with_lone_surrogates_and_wide_characters(protocol):
    for s in ["\ud800", "a\udfffb", "\udc80" * 300, "😀", "x😀" * 200, "\u0100" * 70_000, "ÿ"]:
        check(s, protocol)
        check({s: s}, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_benchmark_value(protocol):
    check({"id": 7, "name": "user7", "tags": ["a", "b"], "score": 3.5}, protocol)


class SubList(list):
    pass


class SubDict(dict):
    pass


class SubStr(str):
    pass


class SubInt(int):
    pass


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize(
    "value",
    [
        SubList([1]),
        SubDict(a=1),
        SubStr("x"),
        SubInt(3),
        [1, SubInt(2)],
        {"k": SubList()},
        complex(1, 2),
        1j,
        range(3),
        pickle.PickleBuffer(b"abc"),
    ],
    # A PickleBuffer's repr holds its address: the test ids must not change
    # from run to run (--lf, -k, comparing two collections).
    ids=lambda v: "PickleBuffer" if isinstance(v, pickle.PickleBuffer) else repr(v),
)
def test_everything_else_goes_to_cpython_whole(value, protocol):
    """Subclasses and other types anywhere in the graph: the encoder declines
    (the store then uses pickle.dumps for the whole value); what it writes
    for plain values it writes exactly."""
    assert codec_dumps(value, protocol) is None
    try:
        data = pickle.dumps(value, protocol)
    except Exception:
        return
    handled, back = codec_loads(data)
    if isinstance(value, pickle.PickleBuffer):
        # Written in band as plain bytes.
        assert handled and back == pickle.loads(data)
    else:
        # GLOBAL / REDUCE / NEWOBJ streams are read by CPython's unpickler.
        assert not handled


def test_deep_nesting_goes_to_cpython():
    value: list = []
    for _ in range(300):
        value = [value]
    assert codec_dumps(value, 5) is None
    # ... and is read natively (reading does not recurse).
    handled, back = codec_loads(pickle.dumps(value, 5))
    assert handled
    assert pickle.dumps(back, 5) == pickle.dumps(value, 5)


def test_protocols_outside_2_to_5_are_declined():
    for protocol in (-1, 0, 1, 6, 99):
        assert codec_dumps([1], protocol) is None


def test_protocol_1_is_read_natively_and_protocol_0_text_by_cpython():
    # (Protocol 1 writes ints beyond 32 bits with the text opcode LONG.)
    value = {"a": [1, 2.5, (None, "x")], "b": {"c": -(2**31)}}
    assert codec_loads(pickle.dumps(value, 1)) == (True, value)
    assert codec_loads(pickle.dumps(value, 0)) == (False, None)


def test_trailing_bytes_after_stop_are_ignored_like_pickle_loads():
    data = pickle.dumps([1, 2], 5) + b"garbage"
    assert codec_loads(data) == (True, [1, 2])
    assert pickle.loads(data) == [1, 2]
