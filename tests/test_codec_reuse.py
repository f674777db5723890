"""What the native codec keeps from one call to the next (the reader's working
vectors and whether it starts with a memo, the writer's output buffer) never
shows in a result: reads and writes in any order give what ``pickle`` gives,
and a read started inside another read works with state of its own."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from test_codec_format import assert_same_graph

from helpers import MiB, run_python
from lmdb_object_store import LmdbObjectStore, _native


def values_with_and_without_references_back():
    """Plain values, alternating between pickles with a GET (shared objects,
    cycles) and pickles without (each object met once)."""
    shared = ["s", 1]
    looped: list = []
    looped.append(looped)
    in_tuple = ([],)
    in_tuple[0].append(in_tuple)
    many = [f"v{i}" for i in range(40)]
    return [
        {"id": 1, "name": "user1", "tags": ["a", "b"], "score": 0.5},
        [shared, shared, (shared,)],
        list(range(50)),
        looped,
        {"k": many, "again": many},
        [1.5] * 30,
        in_tuple,
        {"a": {"b": {"c": []}}},
        {"x": (1, 2), "y": (1, 2)},
        [[], [], [[]]],
    ]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_in_a_row_keep_each_values_sharing(db_path, protocol):
    """A read skips the memo until a GET shows it is needed, and the next
    read starts the way the last one ended: whatever the order, every value
    comes back with exactly the sharing ``pickle.loads`` gives it."""
    values = values_with_and_without_references_back()
    pickles = [pickle.dumps(v, protocol) for v in values]
    for order in (pickles, pickles[::-1], pickles * 3):
        for data in order:
            handled, got = _native._codec_loads(data)
            assert handled
            assert_same_graph(got, pickle.loads(data))
    keys = [str(i).encode() for i in range(len(values))]
    with LmdbObjectStore(db_path, pickle_protocol=protocol) as store:
        store.put_many(dict(zip(keys, values, strict=True)))
        store.flush()
        singles = [store[k] for k in keys + keys[::-1]]
        found, _ = store.get_many(keys)
        scanned = dict(store.items())
    for got, data in zip(singles, pickles + pickles[::-1], strict=True):
        assert_same_graph(got, pickle.loads(data))
    for k, data in zip(keys, pickles, strict=True):
        assert_same_graph(found[k], pickle.loads(data))
        assert_same_graph(scanned[k], pickle.loads(data))


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 999, 1000, 1001, 2500])
@pytest.mark.parametrize("protocol", [2, 5])
def test_list_batches_build_the_same_lists(n, protocol):
    """A list's batch is built at its final size when only the reader holds
    the list, or appended to it (one by one, or in one step when long) when
    the memo holds it too: the same list either way, however many batches."""
    items = [f"i{i}" for i in range(n)]
    inner = list(range(n))
    cases = [
        items,
        [inner, inner],  # the second is a GET: the memo holds the list
        {"l": items, "again": items},
        [items, (items,)],
    ]
    looped = list(range(n))
    looped.append(looped)
    cases.append(looped)
    for value in cases:
        data = pickle.dumps(value, protocol)
        handled, got = _native._codec_loads(data)
        assert handled
        assert_same_graph(got, pickle.loads(data))


def test_lists_extended_by_a_hand_made_stream():
    """Batches CPython's pickler never writes: APPENDS onto a list that
    already has items, and a LIST opcode with a mark."""
    # [1, 2] then APPENDS of 20 items onto it, then one more APPEND.
    twenty = b"".join(b"K" + bytes([i]) for i in range(20))
    data = b"\x80\x02](K\x01K\x02e(" + twenty + b"eK\x63a."
    assert _native._codec_loads(data) == (True, pickle.loads(data))
    # (LIST of three items, memoized, referred to twice in a tuple.
    data = b"\x80\x02(K\x01K\x02K\x03lq\x00h\x00\x86."
    handled, got = _native._codec_loads(data)
    assert handled
    assert_same_graph(got, pickle.loads(data))


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_writes_around_the_kept_buffer_size_are_pickle_dumps(protocol):
    """The writer keeps its buffer (up to 256 KiB) and writes longer pickles
    into a bytes object in place: sizes on both sides of that line, in every
    order, give exactly ``pickle.dumps``."""
    sizes = [0, 10, 300, 64 * 1024 - 20, 64 * 1024, 200_000, 256 * 1024 - 50, 256 * 1024, MiB]
    values = []
    for size in sizes:
        values.append(b"x" * size)
        values.append(["y" * (size // 2), [i * 0.5 for i in range(size // 9 // 64)]])
        values.append({"small": 1, "big": "z" * size})
    for order in (values, values[::-1], values[::2] + values[1::2]):
        for value in order:
            assert _native._codec_dumps(value, protocol) == pickle.dumps(value, protocol)


READ_INSIDE_A_READ = r"""
import gc, pickle, sys
from lmdb_object_store import LmdbObjectStore, _native
sys.path.insert(0, sys.argv[2])
from helpers import Hooked

store = LmdbObjectStore(sys.argv[1])
shared = ["s"]
with_get = {f"k{i}": [shared, shared, (i, shared), [i]] for i in range(400)}
without_get = {f"k{i}": [i, str(i), {"n": i}, [i]] for i in range(400)}
store.put_many({b"with": with_get, b"without": without_get, b"hooked": [Hooked(1), shared]})
store.flush()
seen = {"inner": 0, "budget": 2000}


def read_inside():
    # Both kinds of stream, from inside another read that is using the
    # reader's kept state and whose memo is on or off.
    got = store.get(b"with")
    assert got == with_get and got["k1"][0] is got["k2"][1]
    assert store.get(b"without") == without_get
    handled, back = _native._codec_loads(pickle.dumps(with_get, 5))
    assert handled and back == with_get
    seen["inner"] += 1


class Reenter:
    def __init__(self):
        self.me = self

    def __del__(self):
        if seen["budget"] > 0:
            seen["budget"] -= 1
            read_inside()
            Reenter()


# A read CPython's unpickler does (a class in the value) runs a hook that
# reads natively again.
Hooked.hook = lambda obj: read_inside()
gc.set_threshold(1, 10**9, 10**9)
Reenter()
for _ in range(5):
    for key, want in ((b"with", with_get), (b"without", without_get)):
        got = store.get(key)
        assert got == want
        if key == b"with":
            assert got["k1"][0] is got["k2"][1] is got["k3"][2][1]
    found, _ = store.get_many([b"with", b"without", b"hooked"])
    assert found[b"with"] == with_get and found[b"without"] == without_get
    assert found[b"hooked"][0] == Hooked(1)
gc.set_threshold(700, 10, 10)
# Free lists spare most allocations the collector's count, so it runs far
# less often than at every one.
assert seen["inner"] > 50, seen
seen["budget"] = 0
store.close()
print("ok")
"""


def test_a_read_inside_a_read_has_state_of_its_own(tmp_path):
    """The reader's kept state is lent to one read at a time: a read started
    by the collector (a ``__del__``) or by CPython's unpickler (a class's
    ``__setstate__``) in the middle of another read works without it, and
    neither read sees the other's stack, marks or memo."""
    tests_dir = str(Path(__file__).resolve().parent)
    out = run_python(READ_INSIDE_A_READ, str(tmp_path / "db"), tests_dir, timeout=120)
    assert out.strip() == "ok"
