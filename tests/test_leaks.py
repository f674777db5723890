"""Leaks: memory, Python objects and file descriptors over many store lifetimes.

Each round opens a store in a new directory, puts 50,000 small dicts, flushes,
reads every key back with ``get``, then once more with one ``get_many`` and
with one iteration over ``items()``, and closes. After a couple of warm-up
rounds nothing the process holds may keep growing: resident memory, objects
tracked by the garbage collector, blocks of Python's allocator, open file
descriptors. Linux only (``/proc``), like CI.

The default is 20 rounds of 50,000 (a few seconds). ``LMDB_OBJECT_STORE_SOAK=<n>``
runs more rounds (see ``ROUNDS``), staying under the 60 s watchdog of conftest.py.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
import weakref
from array import array

import pytest

from helpers import SOAK, MiB, fd_count
from lmdb_object_store import LmdbObjectStore

PUTS = 50_000
# A round takes about 0.3 s on one core; 60 rounds stay inside the 60 s
# watchdog even on a machine busy with other work.
ROUNDS = min(20 * (1 + SOAK), 60)
# Rounds 1 and 2 fill the allocators' pools, free lists and caches; round 3 is
# the baseline every later round is compared with.
WARMUP = 2

# Allowed growth of resident memory from the end of round 3 to the end of the
# last round. What may legitimately move between rounds of identical work:
# - glibc malloc keeps freed memory in its heap and trims the top only past a
#   threshold, and its mmap threshold adapts to the largest blocks freed, so a
#   big block (the write buffer's table, get_many's result) may land in the
#   heap in one round and in its own mapping in the next: a few hundred KiB;
# - CPython's allocator returns a 1 MiB arena only when every object in it is
#   gone, so one long-lived object (say an attribute name held by the type
#   cache) can keep one arena resident: each such arena is at most 1 MiB;
# - free lists and interpreter caches are bounded and filled in warm-up.
# LMDB's map is a file-backed mapping whose touched pages count as resident
# only while it is mapped; close unmaps it, so a new store per round adds
# nothing. Observed: flat to within about 0.1 MiB from round 3 on.
# What real leaks would add over the 17 compared rounds:
# - one pickle kept per put (~70 bytes + malloc overhead): ~4.5 MiB per round,
#   ~75 MiB in all;
# - one key kept per put (~12 bytes, a 32-byte malloc block): ~1.5 MiB per
#   round, ~26 MiB in all;
# - one returned value kept per get (a dict and a list, ~300 bytes): ~14 MiB
#   per round;
# - an environment never closed: its map stays mapped with the ~6 MiB of pages
#   this round wrote and read, plus its descriptors (checked exactly below).
# 4 MiB sits between the two: several times the noise, a fraction of the
# smallest of those leaks.
RSS_BOUND = 4 * MiB
# Objects tracked by the garbage collector, and blocks of Python's small-object
# allocator (which also counts untracked objects: bytes, str, int, such as a
# key or a pickle kept by mistake). With the type cache cleared (see settle)
# and the measurements kept in preallocated arrays, both counts are identical
# after every round from the first: observed growth 0. The slack allows for a
# one-off lazy initialisation in a later round. Leaks it still catches: one
# object per put or per get adds 50,000 per round; one object kept per round
# (a store, a view, an iterator, a name) adds 17 over the compared rounds.
GC_OBJECTS_BOUND = 8
BLOCKS_BOUND = 8


# CPython's type attribute cache keeps a strong reference to the name of each
# recent attribute lookup. A name built afresh for each call (not interned)
# therefore stays alive until its slot is reused: bounded (4096 slots), but it
# adds a few blocks per round to the counts below, and one such name can keep
# a 1 MiB arena resident. Clearing the cache before each measurement removes
# that noise and nothing else: a reference leaked by the store survives it.
_clear_caches = getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache


def settle() -> None:
    gc.collect()
    _clear_caches()


def rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def make_keys(n: int) -> list[bytes]:
    return [b"key:%08d" % i for i in range(n)]


def value_for(i: int) -> dict:
    return {"i": i, "name": "item", "tags": [i, i + 1]}


def one_round(path, keys: list[bytes]) -> weakref.ref:
    """Open, write, read back three ways, close. Returns a weak reference to
    the store, which must be dead once the caller drops everything."""
    store = LmdbObjectStore(path)
    for i, key in enumerate(keys):
        store.put(key, value_for(i))
    store.flush()
    assert store.pending == 0
    assert len(store) == len(keys)

    for i, key in enumerate(keys):
        value = store.get(key)
        # The local name and getrefcount's argument: the store keeps nothing.
        # (Counted outside `assert`: pytest's rewriting holds temporaries.)
        refs = sys.getrefcount(value)
        assert refs == 2
        assert value["i"] == i
    del value

    missing = b"key:absent"
    found, not_found = store.get_many([*keys, missing])
    assert not_found == [missing]
    assert len(found) == len(keys)
    assert found[keys[-1]] == value_for(len(keys) - 1)
    # Dropped before the next call: this test is about what the store keeps,
    # not about where the allocator puts the next round's objects.
    del found, not_found

    seen = 0
    for key, value in store.items():
        assert value["i"] == seen and key == keys[seen]
        seen += 1
    assert seen == len(keys)

    store.close()
    return weakref.ref(store)


def test_repeated_store_lifetimes_leak_nothing(tmp_path):
    keys = make_keys(PUTS)
    sampled = keys[:: PUTS // 16]
    key_refs = [sys.getrefcount(k) for k in sampled]
    fds_before = fd_count()

    # Preallocated C arrays: appending to lists would itself allocate an int
    # object per round, which the block count would see.
    rss_after = array("q", [0]) * ROUNDS
    objects_after = array("q", [0]) * ROUNDS
    blocks_after = array("q", [0]) * ROUNDS
    for r in range(ROUNDS):
        dead = one_round(tmp_path / f"round-{r:03d}", keys)
        settle()
        assert dead() is None, f"round {r + 1}: the store object outlived close() and del"
        assert fd_count() == fds_before, (
            f"round {r + 1}: {fd_count() - fds_before} file descriptor(s) still open "
            "after close (an environment not closed?)"
        )
        blocks_after[r] = sys.getallocatedblocks()
        objects_after[r] = len(gc.get_objects())
        rss_after[r] = rss()

    # The caller's key objects gained no references (not kept in any cache).
    now = [sys.getrefcount(k) for k in sampled]
    assert now == key_refs

    base = WARMUP
    rss_mib = [round(b / MiB, 2) for b in rss_after]
    print(f"RSS MiB per round: {rss_mib}")
    print(f"gc objects per round: {objects_after.tolist()}")
    print(f"allocator blocks per round: {blocks_after.tolist()}")
    grown = max(rss_after[base:]) - rss_after[base]
    assert grown <= RSS_BOUND, (
        f"resident memory grew by {grown / MiB:.1f} MiB over rounds {base + 1}..{ROUNDS} "
        f"(bound {RSS_BOUND / MiB:.0f} MiB): {rss_mib}"
    )
    assert objects_after[-1] - objects_after[base] <= GC_OBJECTS_BOUND, objects_after
    assert blocks_after[-1] - blocks_after[base] <= BLOCKS_BOUND, blocks_after


def test_python_allocations_return_to_their_level(tmp_path):
    """Every byte the interpreter's allocators hand out during a round (the
    store's pickles, keys, values, views, iterators, exceptions) is given
    back: traced memory after each later round equals that after round 3.
    Catches what the block count cannot see, such as one large object kept
    per round. Rounds are smaller here: tracing makes each call slower."""
    keys = make_keys(5_000)
    big = {"blob": b"x" * 4096}  # larger than the small-object allocator serves
    traced = array("q", [0]) * 10
    tracemalloc.start()
    try:
        for r in range(len(traced)):
            path = tmp_path / f"round-{r:03d}"
            with LmdbObjectStore(path, batch_size=512) as store:
                for i, key in enumerate(keys):
                    store[key] = big if i % 100 == 0 else value_for(i)
                found, _ = store.get_many(keys)
                del found
                assert sum(1 for _ in store.values()) == len(keys)
                assert store.get(b"absent", None) is None
                with pytest.raises(KeyError):
                    store[b"absent"]
            settle()
            traced[r] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    print(f"traced bytes per round: {traced.tolist()}")
    # One kilobyte kept per round would show as 7 KiB.
    assert traced[-1] - traced[WARMUP] <= 1024, traced.tolist()


def test_stored_and_returned_objects_gain_no_references(tmp_path):
    """The store keeps pickles, never the caller's objects: the value and key
    objects passed in, and every value it returns, own no extra reference."""
    value = {"payload": list(range(8)), "name": "shared"}
    key = b"the-key"
    other_keys = make_keys(100)
    value_refs, key_refs = sys.getrefcount(value), sys.getrefcount(key)
    other_refs = [sys.getrefcount(k) for k in other_keys]

    with LmdbObjectStore(tmp_path / "db", batch_size=64) as store:
        for i in range(5_000):
            store.put(key, value)  # replaced in the buffer, committed every 64
            store[other_keys[i % 100]] = value
            got = store.get(key)  # buffered or committed, depending on i
            # Counted outside `assert`: pytest's rewriting holds temporaries.
            refs = sys.getrefcount(got)
            assert refs == 2
            assert got == value and got is not value
            assert store[key] == value
            assert key in store
        store.flush()
        for _ in range(5_000):
            got = store.get(key)  # from LMDB, through the zero-copy path
            refs = sys.getrefcount(got)
            assert refs == 2
            found, not_found = store.get_many([key, b"absent"])
            refs = sys.getrefcount(found[key])  # the dict's and the argument's
            assert refs == 2
            del found, not_found
        del got
        # A store that stays open holds none of them either.
        now = sys.getrefcount(value), sys.getrefcount(key)
        assert now == (value_refs, key_refs)
        now_other = [sys.getrefcount(k) for k in other_keys]
        assert now_other == other_refs


def test_stores_dropped_without_close_leak_no_descriptors(tmp_path):
    """A store garbage-collected while open is closed (and its buffer
    committed): nothing of its environment stays open."""
    fds_before = fd_count()
    for r in range(50):
        store = LmdbObjectStore(tmp_path / f"db-{r}")
        store[b"k"] = r
        dead = weakref.ref(store)
        del store
        settle()
        assert dead() is None
        assert fd_count() == fds_before, f"after store {r + 1}"
    with LmdbObjectStore(tmp_path / "db-49", readonly=True) as store:
        assert store[b"k"] == 49  # committed on the way out
