"""Iteration with threads: it never holds a read transaction between items
(docs/semantics.md "Iteration").

One thread iterates while others write and grow the map, starting from a 1 MiB
map. Every join has a timeout, so a deadlock fails the test instead of hanging.
"""

from __future__ import annotations

import random
import threading

import pytest

from helpers import MiB, join_or_fail, start_thread
from lmdb_object_store import ClosedError, LmdbObjectStore

TIMEOUT = 30.0

# Big enough that the writers' live data is several MiB: the map must grow.
BIG = 48 * 1024
SEEDS = 200


def seed_key(i: int) -> bytes:
    return b"k%03d" % i


def writer_key(i: int, writer: int) -> bytes:
    # Sorts right after seed_key(i): writer keys are interleaved with the seeds.
    return b"k%03d-%d" % (i, writer)


def check_pass(pairs, problems, seeds):
    """One complete pass: strictly ascending keys, values tagged with their key,
    every seed key present exactly once."""
    keys = [k for k, _ in pairs]
    for a, b in zip(keys, keys[1:], strict=False):
        if not a < b:
            problems.append(f"not strictly ascending: {a!r} then {b!r}")
    if len(set(keys)) != len(keys):
        problems.append("a key was yielded twice in one pass")
    for k, v in pairs:
        if not (isinstance(v, tuple) and v[0] == k):
            problems.append(f"value {v!r:.60} does not belong to key {k!r}")
    missing = seeds - set(keys)
    if missing:
        problems.append(f"seed keys skipped: {sorted(missing)[:5]}")


def run_writer(store, writer: int, ops: int, model: dict):
    """Random puts and deletes on this writer's own keys; ``model`` records each
    write once the store has acknowledged it."""
    rng = random.Random(writer)
    for i in range(ops):
        k = writer_key(rng.randrange(SEEDS), writer)
        if rng.random() < 0.25:
            store.delete(k)
            model.pop(k, None)
        else:
            size = BIG if rng.random() < 0.6 else 16
            v = (k, i, rng.randbytes(size))
            store[k] = v
            model[k] = v


def test_iterate_while_writers_put_delete_and_grow(make_store):
    store = make_store(map_size=1 << 20, batch_size=8, sync=False)
    seeds = {seed_key(i): (seed_key(i), -1, b"") for i in range(SEEDS)}
    store.put_many(seeds)
    seed_keys = set(seeds)
    start_map = store.info()["map_size"]
    assert start_map == 1 << 20

    models = [{}, {}]
    stop = threading.Event()
    problems: list[str] = []
    last_pass: list = []

    def iterate():
        passes = 0
        while True:
            done = stop.is_set()
            pairs = list(store.items())
            check_pass(pairs, problems, seed_keys)
            passes += 1
            if done:
                last_pass[:] = pairs
                return passes

    reader, reader_out = start_thread(iterate)
    writers = [start_thread(lambda w=w: run_writer(store, w, 300, models[w])) for w in range(2)]
    for t, _ in writers:
        join_or_fail(t, TIMEOUT)
    stop.set()
    join_or_fail(reader, TIMEOUT)

    for _, out in writers:
        assert "error" not in out, repr(out.get("error"))
    assert "error" not in reader_out, repr(reader_out.get("error"))
    assert reader_out["result"] >= 1
    assert problems == []

    expected = dict(seeds)
    for m in models:
        expected.update(m)
    # The last pass started after every writer returned: it sees all of it.
    assert last_pass == sorted(expected.items())
    assert store.info()["map_size"] > start_map
    assert len(store) == len(expected)
    assert dict(store.items()) == expected

    path = store.path
    store.close()
    with LmdbObjectStore(path, readonly=True) as ro:
        assert dict(ro.items()) == expected


def test_reverse_and_bounded_iterators_while_writers_grow(make_store):
    store = make_store(map_size=1 << 20, batch_size=4, sync=False)
    seeds = {seed_key(i): (seed_key(i), -1, b"") for i in range(SEEDS)}
    store.put_many(seeds)
    models = [{}, {}]
    stop = threading.Event()
    problems: list[str] = []

    def iterate_reverse():
        passes = 0
        while not stop.is_set() or passes == 0:
            pairs = list(store.items(reverse=True))
            pairs.reverse()
            check_pass(pairs, problems, set(seeds))
            passes += 1
        return passes

    def iterate_bounded():
        passes = 0
        lo, hi = seed_key(50), seed_key(150)
        wanted = {k for k in seeds if lo <= k < hi}
        while not stop.is_set() or passes == 0:
            pairs = list(store.scan(start=lo, stop=hi))
            if any(not (lo <= k < hi) for k, _ in pairs):
                problems.append("scan went outside its bounds")
            check_pass(pairs, problems, wanted)
            keys = list(store.keys(prefix=b"k1"))
            if keys != sorted(set(keys)) or any(not k.startswith(b"k1") for k in keys):
                problems.append("prefix scan out of order, repeated or outside the prefix")
            passes += 1
        return passes

    readers = [start_thread(iterate_reverse), start_thread(iterate_bounded)]
    writers = [start_thread(lambda w=w: run_writer(store, w, 200, models[w])) for w in range(2)]
    for t, _ in writers:
        join_or_fail(t, TIMEOUT)
    stop.set()
    for t, _ in readers:
        join_or_fail(t, TIMEOUT)
    for _, out in writers + readers:
        assert "error" not in out, repr(out.get("error"))
    assert problems == []
    expected = dict(seeds)
    for m in models:
        expected.update(m)
    assert list(store.items(reverse=True)) == sorted(expected.items(), reverse=True)
    assert store.info()["map_size"] > 1 << 20


def test_suspended_iterator_does_not_block_growth_from_another_thread(make_store):
    store = make_store(map_size=1 << 20, batch_size=1, sync=False)
    store.put_many((seed_key(i), (seed_key(i), -1, b"")) for i in range(SEEDS))
    it = iter(store.items())
    first = [next(it) for _ in range(10)]  # then leave the iterator suspended

    model: dict = {}

    def grow():
        for i in range(120):  # ~6 MiB of values into a 1 MiB map
            k = b"z%03d" % i
            v = (k, i, bytes(BIG))
            store[k] = v
            model[k] = v

    t, out = start_thread(grow)
    join_or_fail(t, TIMEOUT)
    assert "error" not in out, repr(out.get("error"))
    assert store.info()["map_size"] > 1 << 20

    rest = list(it)
    keys = [k for k, _ in first + rest]
    assert keys == sorted(set(keys))
    assert {seed_key(i) for i in range(SEEDS)} <= set(keys)
    assert len(store) == SEEDS + 120
    assert dict(store.items(prefix=b"z")) == model


def test_suspended_iterator_does_not_block_close_from_another_thread(make_store):
    store = make_store()
    store.put_many((seed_key(i), i) for i in range(SEEDS))
    it = iter(store.keys())
    assert next(it) == seed_key(0)

    t, out = start_thread(store.close)
    join_or_fail(t, TIMEOUT)
    assert "error" not in out, repr(out.get("error"))
    assert store.closed

    with pytest.raises(ClosedError):
        next(it)


def test_iterator_in_one_thread_while_another_closes(make_store):
    store = make_store()
    store.put_many((seed_key(i), i) for i in range(SEEDS))
    paused = threading.Event()
    closed = threading.Event()

    def iterate():
        it = iter(store.items())
        got = [next(it), next(it)]
        paused.set()
        if not closed.wait(TIMEOUT):
            return "close never happened"
        try:
            next(it)
        except ClosedError:
            return got
        return "next() after close did not raise ClosedError"

    t, out = start_thread(iterate)
    assert paused.wait(TIMEOUT), "the iterating thread never started"
    closer, closer_out = start_thread(store.close)
    join_or_fail(closer, TIMEOUT)
    closed.set()
    join_or_fail(t, TIMEOUT)
    assert "error" not in closer_out, repr(closer_out.get("error"))
    assert "error" not in out, repr(out.get("error"))
    assert out["result"] == [(seed_key(0), 0), (seed_key(1), 1)]


def test_many_threads_iterate_one_store_at_once(make_store):
    store = make_store(map_size=4 * MiB)
    expected = {seed_key(i): (seed_key(i), i, b"") for i in range(SEEDS)}
    store.put_many(expected)
    barrier = threading.Barrier(6)

    def iterate():
        barrier.wait(TIMEOUT)
        return [list(store.items()) for _ in range(5)]

    threads = [start_thread(iterate) for _ in range(6)]
    for t, _ in threads:
        join_or_fail(t, TIMEOUT)
    for _, out in threads:
        assert "error" not in out, repr(out.get("error"))
        assert all(p == sorted(expected.items()) for p in out["result"])
