"""The buffer, iteration and threads under load (docs/semantics.md "Buffering
and atomicity", "Iteration", "Threads and close"): 16 threads on one store for
a bounded time.

Every thread does random puts, gets, deletes, get_many, put_many, flushes,
scans, ``in`` and ``len`` on one store that starts with a 1 MiB map and a
batch size of 64, so automatic commits and map growth happen during the run.
In one variant a thread closes the store at a random moment.

Each thread owns the keys ``t<tid>:<n>``; it alone writes them, and it keeps a
model of its keys as the store acknowledged them (a write that returned). So a
thread can check exactly what it reads of its own keys while the others write
theirs, and after reopening the store every acknowledged write must be there.

The run lasts a few seconds; set ``LMDB_OBJECT_STORE_SOAK=<n>`` to run n rounds
of each test, each longer. ``LMDB_OBJECT_STORE_SEED`` replays the random choices
of a failed run (the seed is printed; thread timing still differs).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from helpers import SOAK, MiB, start_thread
from lmdb_object_store import ClosedError, LmdbObjectStore

ROUNDS = max(1, SOAK)
# Seconds of load per run. Soak runs are longer, but one test stays well under
# the 60 s watchdog of conftest.py.
DURATION = 2.0 * min(max(1, SOAK * 3), 10)
# Time allowed, after the run should have ended, for every thread to finish.
JOIN_GRACE = 20.0

N_THREADS = 16
KEYS_PER_THREAD = 48
UNIVERSE = N_THREADS * KEYS_PER_THREAD
# Value paddings, in bytes: mostly small, some large enough that the live data
# outgrows the initial 1 MiB map.
PADDINGS = (0, 0, 0, 16, 200, 3000, 12_000)
FILL_PADDING = 3000
MISSING = object()


def _seed() -> int:
    given = os.environ.get("LMDB_OBJECT_STORE_SEED")
    seed = int(given) if given else random.randrange(2**32)
    print(f"stress seed: {seed} (replay with LMDB_OBJECT_STORE_SEED={seed})")
    return seed


def prefix_of(tid: int) -> bytes:
    return b"t%02d:" % tid


def key_of(tid: int, n: int) -> bytes:
    return prefix_of(tid) + b"%03d" % n


def belongs(key, value) -> bool:
    """Values are ``(key, tid, counter, padding)``: each names its own key."""
    return isinstance(value, tuple) and len(value) == 4 and value[0] == key


def check_iteration(keys: list, where: str) -> None:
    """Strictly ascending keys: in order, and none yielded twice
    (docs/semantics.md "Iteration")."""
    for a, b in zip(keys, keys[1:], strict=False):
        assert a < b, f"{where}: {a!r} then {b!r} (out of order or repeated)"


class Worker:
    """One thread's random operations on its own keys, checked against its model."""

    def __init__(self, store, tid: int, seed: int, close_started: threading.Event):
        self.store = store
        self.tid = tid
        self.rng = random.Random(f"{seed}-{tid}")
        self.close_started = close_started
        self.prefix = prefix_of(tid)
        self.model: dict[bytes, tuple] = {}
        self.counter = 0
        self.ops = 0
        self.closed_seen = False
        self.table = [
            (30, self.op_put),
            (14, self.op_get),
            (8, self.op_delete),
            (3, self.op_delitem),
            (8, self.op_get_many),
            (6, self.op_put_many),
            (3, self.op_flush),
            (8, self.op_contains),
            (3, self.op_len),
            (3, self.op_scan_own),
            (2, self.op_scan_other),
            (1, self.op_iterate_all),
            (3, self.op_pop),
            (2, self.op_setdefault),
        ]
        self.weights = [w for w, _ in self.table]

    # -- helpers ---------------------------------------------------------

    def key(self) -> bytes:
        return key_of(self.tid, self.rng.randrange(KEYS_PER_THREAD))

    def value(self, key: bytes) -> tuple:
        self.counter += 1
        return (key, self.tid, self.counter, bytes(self.rng.choice(PADDINGS)))

    def expected_own(self, pairs) -> None:
        """``pairs`` (from a scan) restricted to this thread's keys is its model:
        nobody else writes these keys, and a scan commits the buffer first."""
        own = [(k, v) for k, v in pairs if k.startswith(self.prefix)]
        assert own == sorted(self.model.items()), f"thread {self.tid}: scan != model"

    # -- operations ------------------------------------------------------

    def op_put(self):
        k = self.key()
        v = self.value(k)
        if self.rng.random() < 0.5:
            self.store.put(k, v)
        else:
            self.store[k] = v
        self.model[k] = v
        if self.rng.random() < 0.3:
            assert self.store.get(k) == v, f"read-your-write of {k!r}"

    def op_get(self):
        k = self.key()
        if self.rng.random() < 0.5:
            got = self.store.get(k, MISSING)
            if k in self.model:
                assert got == self.model[k], f"get({k!r})"
            else:
                assert got is MISSING, f"get({k!r}) of a deleted key gave {got!r:.60}"
        elif k in self.model:
            assert self.store[k] == self.model[k], f"[{k!r}]"
        else:
            with pytest.raises(KeyError):
                self.store[k]

    def op_delete(self):
        k = self.key()
        self.store.delete(k)
        self.model.pop(k, None)

    def op_delitem(self):
        k = self.key()
        if k in self.model:
            del self.store[k]
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                del self.store[k]

    def op_get_many(self):
        own = [self.key() for _ in range(self.rng.randrange(1, 12))]
        others = [
            key_of(self.rng.randrange(N_THREADS), self.rng.randrange(KEYS_PER_THREAD))
            for _ in range(self.rng.randrange(4))
        ]
        found, not_found = self.store.get_many(own + others)
        for k in own:
            if k in self.model:
                assert found.get(k, MISSING) == self.model[k], f"get_many: {k!r}"
            else:
                assert k not in found and k in not_found, f"get_many: deleted {k!r}"
        for k, v in found.items():
            assert belongs(k, v), f"get_many: {k!r} -> {v!r:.60}"
        assert len(not_found) + sum(k in found for k in own + others) == len(own + others)

    def op_put_many(self):
        pairs = []
        for _ in range(self.rng.randrange(1, 20)):
            k = self.key()
            pairs.append((k, self.value(k)))
        # A list may name a key twice (the last wins); a dict cannot.
        self.store.put_many(pairs if self.rng.random() < 0.5 else dict(pairs))
        self.model.update(pairs)

    def op_flush(self):
        self.store.flush()

    def op_contains(self):
        k = self.key()
        live = k in self.model
        if self.rng.random() < 0.5:
            assert (k in self.store) is live, f"{k!r} in store"
        else:
            assert self.store.exists(k) is live, f"exists({k!r})"

    def op_len(self):
        n = len(self.store)
        assert 0 <= n <= UNIVERSE, n

    def op_scan_own(self):
        choice = self.rng.randrange(3)
        if choice == 0:
            keys = list(self.store.keys(prefix=self.prefix))
            check_iteration(keys, "keys(prefix=own)")
            assert keys == sorted(self.model), f"thread {self.tid}: own keys != model"
        elif choice == 1:
            pairs = list(self.store.items(prefix=self.prefix))
            check_iteration([k for k, _ in pairs], "items(prefix=own)")
            assert pairs == sorted(self.model.items()), f"thread {self.tid}: own items"
        else:
            pairs = list(self.store.scan(prefix=self.prefix, reverse=True))
            keys = [k for k, _ in pairs]
            check_iteration(keys[::-1], "scan(prefix=own, reverse=True)")
            self.expected_own(pairs[::-1])

    def op_scan_other(self):
        other = prefix_of(self.rng.randrange(N_THREADS))
        pairs = list(self.store.scan(prefix=other))
        check_iteration([k for k, _ in pairs], f"scan(prefix={other!r})")
        for k, v in pairs:
            assert k.startswith(other) and belongs(k, v), f"scan({other!r}): {k!r}"
        if other == self.prefix:
            self.expected_own(pairs)

    def op_iterate_all(self):
        if self.rng.random() < 0.5:
            keys = list(self.store.keys())
            check_iteration(keys, "keys()")
            own = [k for k in keys if k.startswith(self.prefix)]
            assert own == sorted(self.model), f"thread {self.tid}: keys() != model"
        else:
            pairs = list(self.store.items())
            check_iteration([k for k, _ in pairs], "items()")
            for k, v in pairs:
                assert belongs(k, v), f"items(): {k!r} -> {v!r:.60}"
            self.expected_own(pairs)

    def op_pop(self):
        k = self.key()
        if k in self.model:
            got = self.store.pop(k)
            assert got == self.model[k], f"pop({k!r})"
            del self.model[k]
        else:
            assert self.store.pop(k, MISSING) is MISSING, f"pop({k!r}) of a deleted key"

    def op_setdefault(self):
        k = self.key()
        v = self.value(k)
        got = self.store.setdefault(k, v)
        if k in self.model:
            assert got == self.model[k], f"setdefault({k!r}) of a live key"
        else:
            assert got == v, f"setdefault({k!r}) of a missing key"
            self.model[k] = v

    # -- the loop --------------------------------------------------------

    def op_fill(self):
        """Every key at once, 3 KB each: together the threads write more than
        the initial map holds, so it must grow while they race."""
        pairs = {}
        for n in range(KEYS_PER_THREAD):
            k = key_of(self.tid, n)
            self.counter += 1
            pairs[k] = (k, self.tid, self.counter, bytes(FILL_PADDING))
        self.store.put_many(pairs)
        self.model.update(pairs)

    def run(self, deadline: float) -> int:
        op = self.op_fill  # first, whatever the time: every thread does some work
        while op == self.op_fill or time.monotonic() < deadline:
            try:
                op()
            except ClosedError as exc:
                self.after_closed(exc)
                return self.ops
            self.ops += 1
            (op,) = self.rng.choices([fn for _, fn in self.table], self.weights)
        return self.ops

    def after_closed(self, exc: ClosedError) -> None:
        assert self.close_started.is_set(), f"thread {self.tid}: ClosedError before close: {exc}"
        assert "closed" in str(exc)
        self.closed_seen = True
        # Every later write fails too, and so is not acknowledged.
        k = self.key()
        with pytest.raises(ClosedError):
            self.store.put(k, self.value(k))
        with pytest.raises(ClosedError):
            self.store.put_many([(k, self.value(k))])
        # Several threads may close at once; each returns once it is closed.
        if self.rng.random() < 0.5:
            self.store.close()
            assert self.store.closed


def expected_contents(workers) -> dict:
    expected: dict = {}
    for w in workers:
        expected.update(w.model)
    return expected


def assert_contents(got: dict, expected: dict, where: str, seed: int) -> None:
    if got == expected:
        return
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
    raise AssertionError(
        f"{where} (seed {seed}): missing {missing}, unexpected {extra}, wrong values {wrong}"
    )


def join_all(threads, deadline: float, seed: int) -> None:
    for t, _ in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    stuck = [i for i, (t, _) in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} still running (deadlock?), seed {seed}"


# How a full buffer commits: inside the write (a small batch, no fsync), or on
# the store's background thread (batches of 256 or more on a store that syncs).
COMMITS = {
    "inline": {"batch_size": 64, "sync": False},
    "background": {"batch_size": 256, "sync": True},
}


def open_stress_store(make_store, commits="inline", **kwargs):
    store = make_store(map_size=1 * MiB, **COMMITS[commits], **kwargs)
    assert store.info()["map_size"] == 1 * MiB
    return store


# --------------------------------------------------------------------------
# With a close at a random moment
# --------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("commits", list(COMMITS))
@pytest.mark.parametrize("autoflush", [True, False])
def test_stress_with_close_at_a_random_moment(make_store, db_path, autoflush, commits, round_):
    seed = _seed()
    store = open_stress_store(make_store, commits, autoflush_on_read=autoflush)
    close_started = threading.Event()
    workers = [Worker(store, tid, seed, close_started) for tid in range(N_THREADS - 1)]
    rng = random.Random(f"{seed}-closer")
    start = time.monotonic()
    deadline = start + DURATION
    close_at = start + rng.uniform(0.05, 0.9) * DURATION

    def closer():
        # Until its moment the closing thread reads, scans and flushes too.
        reads = 0
        while time.monotonic() < close_at:
            pick = rng.randrange(4)
            if pick == 0:
                assert 0 <= len(store) <= UNIVERSE
            elif pick == 1:
                pairs = list(store.items(prefix=prefix_of(rng.randrange(N_THREADS))))
                check_iteration([k for k, _ in pairs], "closer items(prefix)")
                assert all(belongs(k, v) for k, v in pairs)
            elif pick == 2:
                found, _ = store.get_many(
                    [key_of(rng.randrange(N_THREADS), rng.randrange(KEYS_PER_THREAD))]
                )
                assert all(belongs(k, v) for k, v in found.items())
            else:
                store.flush()
            reads += 1
        close_started.set()
        store.close()
        assert store.closed
        return reads

    # The workers go on until the close stops them: each must end with a
    # ClosedError long before this later deadline.
    threads = [start_thread(lambda w=w: w.run(deadline + JOIN_GRACE / 2)) for w in workers]
    threads.append(start_thread(closer))
    join_all(threads, deadline + JOIN_GRACE, seed)
    for (_, outcome), who in zip(threads, [*range(N_THREADS - 1), "closer"], strict=True):
        assert "error" not in outcome, f"thread {who}, seed {seed}: {outcome.get('error')!r}"

    assert close_started.is_set() and store.closed
    assert all(w.closed_seen for w in workers), "a thread went on working after close"
    with pytest.raises(ClosedError, match="closed"):
        store.get(key_of(0, 0))
    acked = expected_contents(workers)
    assert sum(w.ops for w in workers) > 0

    # Every write acknowledged before the close is on disk; nothing else is.
    with LmdbObjectStore(db_path) as again:
        assert_contents(dict(again.items()), acked, "after reopen", seed)
        assert len(again) == len(acked)


# --------------------------------------------------------------------------
# Without close: check the open store, then the reopened one
# --------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("commits", list(COMMITS))
def test_stress_then_verify_open_and_reopened(make_store, db_path, commits, round_):
    seed = _seed()
    store = open_stress_store(make_store, commits, autoflush_on_read=False)
    never = threading.Event()  # no close in this run: a ClosedError is a failure
    workers = [Worker(store, tid, seed, never) for tid in range(N_THREADS)]
    deadline = time.monotonic() + DURATION
    threads = [start_thread(lambda w=w: w.run(deadline)) for w in workers]
    join_all(threads, deadline + JOIN_GRACE, seed)
    for (_, outcome), w in zip(threads, workers, strict=True):
        assert "error" not in outcome, f"thread {w.tid}, seed {seed}: {outcome.get('error')!r}"
        assert not w.closed_seen
    assert all(w.ops > 0 for w in workers)

    expected = expected_contents(workers)
    # The open store, buffer included, before anything commits it.
    assert len(store) == len(expected)
    universe = [key_of(t, n) for t in range(N_THREADS) for n in range(KEYS_PER_THREAD)]
    found, not_found = store.get_many(universe)
    assert_contents(found, expected, "get_many on the open store", seed)
    assert sorted(not_found) == sorted(set(universe) - set(expected))
    for k, v in expected.items():
        assert store[k] == v
    # Then a scan, which commits the buffer first.
    assert_contents(dict(store.items()), expected, "items() on the open store", seed)
    assert store.pending == 0
    # The threads' first writes alone (16 x 48 x 3 KB) outgrow the 1 MiB map.
    assert store.info()["map_size"] > 1 * MiB, "the map never grew"

    store.close()
    with LmdbObjectStore(db_path, readonly=True) as again:
        assert_contents(dict(again.items()), expected, "after reopen", seed)
        assert len(again) == len(expected)
