"""Measure one group of operations on one system, in a process of its own.

    python benchmarks/worker.py --system NAME --group GROUP --n N --out FILE

GROUP is basic, large, threads, codec, ser-NAME (one serializer of this
store) or arrays (float32 vectors read in batches).

``run.py`` starts one worker per system, group and round, each in a fresh
temporary directory, so that systems sharing an import name never meet, peak
RSS belongs to one system, and no run warms the next one's caches. The worker
writes its figures to ``--out`` as JSON:

    {"system": ..., "group": ..., "version": ..., "detail": ...,
     "peak_rss_mib": ..., "results": {operation: {"status": "ok", "value": ...,
     "unit": ...} | {"status": "unsupported" | "error", "reason": ...}}}

Each operation is timed on its own; the garbage collector is paused inside a
timed section (as ``timeit`` does) so that a collection triggered by earlier
allocations is not charged to whichever system happened to be running.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pickle
import platform
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from typing import Any

from systems import MAP_SIZE, PROTOCOL, SYSTEMS, Adapter, Unsupported

MIB = 1 << 20
SAMPLE = 200  # keys whose values are checked after each read operation


# --- the workload -----------------------------------------------------------


def make_keys(n: int) -> list[bytes]:
    return [f"key:{i:08d}".encode() for i in range(n)]


def make_values(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"user{i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(n)]


def read_order(n: int, seed: int) -> list[int]:
    """The fixed shuffled order in which every system reads the keys."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def make_large_values(count: int, size: int, seed: int) -> list[bytes]:
    """Distinct incompressible values: one random block, a different head on each."""
    block = random.Random(seed).randbytes(size)
    return [i.to_bytes(8, "big") + block[8:] for i in range(count)]


# --- measuring ----------------------------------------------------------------


class Failed(Exception):
    """A check on the values read back did not hold."""


def timed(fn: Callable[[], Any], collector: bool = False) -> float:
    """Seconds taken by ``fn()``, with the garbage collector paused (or, with
    ``collector``, running as it does in a program)."""
    gc.collect()
    if not collector:
        gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


class Results:
    """The figures of one worker, keyed by operation."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, Any]] = {}

    def ok(self, op: str, value: float, unit: str) -> None:
        self.ops[op] = {"status": "ok", "value": value, "unit": unit}

    def skip(self, op: str, status: str, reason: str) -> None:
        self.ops[op] = {"status": status, "reason": reason}

    def measure(
        self, op: str, unit: str, amount: float, fn: Callable[[], Any], collector: bool = False
    ) -> bool:
        """Time ``fn`` and record ``amount`` per second; False if it did not run."""
        try:
            seconds = timed(fn, collector)
        except Unsupported as exc:
            self.skip(op, "unsupported", str(exc))
            return False
        except Exception as exc:
            self.skip(op, "error", describe(exc))
            return False
        self.ok(op, amount / seconds, unit)
        return True

    def check(self, op: str, fn: Callable[[], None]) -> None:
        """Run a correctness check; turn ``op`` into an error if it fails."""
        if self.ops.get(op, {}).get("status") != "ok":
            return
        try:
            fn()
        except Exception as exc:
            self.skip(op, "error", "wrong result: " + describe(exc))


def expect(actual: Any, wanted: Any, what: str) -> None:
    if actual != wanted:
        raise Failed(f"{what}: got {actual!r:.80}, expected {wanted!r:.80}")


def lookup(result: Any, keys: list[bytes], index: int) -> Any:
    """The value for ``keys[index]`` in a batch read (a dict, or a list in key order)."""
    if isinstance(result, dict):
        return result[keys[index]]
    return result[index]


# --- operation groups -----------------------------------------------------------


def run_basic(adapter: Adapter, args: argparse.Namespace, workdir: str) -> Results:
    """put, get and iterate on one store; put with sync=False; put_many/get_many."""
    res = Results()
    n = args.n
    keys, values = make_keys(n), make_values(n)
    order = read_order(n, args.seed)
    shuffled = [keys[i] for i in order]
    sample = order[:SAMPLE]

    def put_all() -> None:
        put_each(adapter, keys, values)

    def get_all() -> None:
        get = adapter.get
        with adapter.reading():
            for k in shuffled:
                get(k)

    def check_gets() -> None:
        with adapter.reading():
            for i in sample:
                expect(adapter.get(keys[i]), values[i], f"get({keys[i]!r})")

    seen = 0

    def iterate() -> None:
        nonlocal seen
        for _k, _v in adapter.items():
            seen += 1

    adapter.open(os.path.join(workdir, "basic"), sync=True)
    if res.measure("put", "ops/s", n, put_all):
        res.measure("get", "ops/s", n, get_all)
        res.check("get", check_gets)
        res.measure("iterate", "ops/s", n, iterate)
        res.check("iterate", lambda: expect(seen, n, "items yielded"))
    else:
        for op in ("get", "iterate"):
            res.skip(op, "error", "not run: put failed")
    adapter.close()

    if adapter.has_sync_option:
        adapter.open(os.path.join(workdir, "nosync"), sync=False)
        res.measure("put_nosync", "ops/s", n, put_all)
        adapter.close()
    else:
        res.skip("put_nosync", "unsupported", "no sync option")

    items = list(zip(keys, values, strict=True))
    batch: Any = None

    def get_many() -> None:
        nonlocal batch
        batch = adapter.get_many(shuffled)

    def check_many() -> None:
        for pos in range(min(SAMPLE, n)):
            i = order[pos]
            expect(lookup(batch, shuffled, pos), values[i], f"get_many[{keys[i]!r}]")

    adapter.open(os.path.join(workdir, "many"), sync=True)
    res.measure("put_many", "ops/s", n, lambda: adapter.put_many(items))
    if res.ops["put_many"]["status"] == "unsupported":
        put_all()  # get_many needs the data all the same
    if res.ops["put_many"]["status"] != "error":
        res.measure("get_many", "ops/s", n, get_many)
        res.check("get_many", check_many)
    else:
        res.skip("get_many", "error", "not run: put_many failed")
    adapter.close()
    return res


def rss_rise_of_one_get(adapter: Adapter, key: bytes) -> float | None:
    """MiB by which the resident set peaks above its level while one value is read.

    Linux with glibc only: writing 5 to /proc/self/clear_refs resets the peak
    (VmHWM) to the current RSS. First, malloc is told to serve big blocks with
    mmap and to hand the free memory it holds back to the system, so that the
    resident set follows the live allocations; and the value is read once
    beforehand so that its file pages (LMDB maps the file) are already resident
    and not counted. What is left is what the read allocates: about one value
    when the path is zero-copy, two when the value is copied on the way.
    """
    try:
        libc = ctypes.CDLL(None)
        m_mmap_threshold = -3
        if not libc.mallopt(m_mmap_threshold, 128 * 1024):
            return None
        adapter.get(key)
        gc.collect()
        libc.malloc_trim(0)
        before = proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        value = adapter.get(key)
        peak = proc_status_kib("VmHWM")
        del value
    except (OSError, AttributeError, ValueError):
        return None
    return max(0, peak - before) / 1024


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(field)


def run_large(adapter: Adapter, args: argparse.Namespace, workdir: str) -> Results:
    """Few big bytes values: put + commit, then get; MB/s."""
    res = Results()
    values = make_large_values(args.large_count, args.large_size, args.seed)
    keys = [f"large:{i:04d}".encode() for i in range(len(values))]
    megabytes = len(values) * args.large_size / 1e6

    def put_all() -> None:
        put_each(adapter, keys, values)

    def get_all() -> None:
        size = args.large_size
        with adapter.reading():
            for k in keys:
                if len(adapter.get(k)) != size:
                    raise Failed(f"get({k!r}): wrong length")

    def check() -> None:
        with adapter.reading():
            for i in (0, len(keys) - 1):
                expect(adapter.get(keys[i]) == values[i], True, f"get({keys[i]!r}) == value")

    adapter.open(os.path.join(workdir, "large"), sync=True)
    if res.measure("large_put", "MB/s", megabytes, put_all):
        res.measure("large_get", "MB/s", megabytes, get_all)
        res.check("large_get", check)
        if res.ops["large_get"]["status"] == "ok":
            rise = rss_rise_of_one_get(adapter, keys[0])
            if rise is not None:
                res.ok("large_get_rss_rise", rise, "MiB")
    else:
        res.skip("large_get", "error", "not run: put failed")
    adapter.close()
    return res


def put_each(adapter: Adapter, keys: list[bytes], values: list[Any]) -> None:
    """One put per entry, then the store's commit."""
    adapter.begin()
    for k, v in zip(keys, values, strict=True):
        adapter.put(k, v)
    adapter.commit()


def fill(adapter: Adapter, keys: list[bytes], values: list[Any]) -> None:
    """Load the data, untimed: in one batch where the store has one."""
    try:
        adapter.put_many(list(zip(keys, values, strict=True)))
    except Unsupported:
        put_each(adapter, keys, values)


def run_threads(adapter: Adapter, args: argparse.Namespace, workdir: str) -> Results:
    """4 reader threads doing get, first alone, then beside 1 writer doing put + commit."""
    res = Results()
    ops = ("threads_reads_alone", "threads_reads", "threads_writes")
    if not adapter.thread_safe:
        for op in ops:
            res.skip(op, "unsupported", "not thread-safe")
        return res
    n = args.n
    keys, values = make_keys(n), make_values(n)
    shuffled = [keys[i] for i in read_order(n, args.seed)]

    adapter.open(os.path.join(workdir, "threads"), sync=True)
    try:
        fill(adapter, keys, values)
        alone = thread_phase(adapter, args, keys, values, shuffled, writer=False)
        mixed = thread_phase(adapter, args, keys, values, shuffled, writer=True)
    except Exception as exc:
        for op in ops:
            res.skip(op, "error", describe(exc))
        return res
    finally:
        adapter.close()
    res.ok("threads_reads_alone", alone["reads"], "reads/s")
    res.ok("threads_reads", mixed["reads"], "reads/s")
    res.ok("threads_writes", mixed["writes"], "writes/s")
    return res


def thread_phase(
    adapter: Adapter,
    args: argparse.Namespace,
    keys: list[bytes],
    values: list[Any],
    shuffled: list[bytes],
    *,
    writer: bool,
) -> dict[str, float]:
    """Run the readers (and the writer) for ``args.duration`` seconds; their rates."""
    n = len(keys)
    readers = args.readers
    stop = threading.Event()
    start = threading.Barrier(readers + int(writer) + 1)
    reads = [0] * readers
    ends = [0.0] * (readers + 1)
    written = [0]
    errors: list[BaseException] = []

    def read_loop(idx: int) -> None:
        get, is_set = adapter.get, stop.is_set
        i = idx * n // readers  # each reader starts at its own place in the order
        count = 0
        try:
            start.wait()
            while not is_set():
                if get(shuffled[i]) is None:
                    raise Failed(f"get({shuffled[i]!r}) found nothing")
                count += 1
                i = i + 1 if i + 1 < n else 0
        except BaseException as exc:
            errors.append(exc)
        reads[idx] = count
        ends[idx] = time.perf_counter()

    def write_loop() -> None:
        i = 0
        try:
            start.wait()
            while not stop.is_set():
                adapter.begin()
                for _ in range(args.write_batch):
                    adapter.put(keys[i], values[i])
                    i = i + 1 if i + 1 < n else 0
                adapter.commit()
                written[0] += args.write_batch
        except BaseException as exc:
            errors.append(exc)
        ends[readers] = time.perf_counter()

    threads = [threading.Thread(target=read_loop, args=(r,)) for r in range(readers)]
    if writer:
        threads.append(threading.Thread(target=write_loop))
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    rates = {"reads": sum(reads) / (max(ends[:readers]) - t0)}
    if writer:
        rates["writes"] = written[0] / (ends[readers] - t0)
    return rates


def run_floor(args: argparse.Namespace) -> Results:
    """pickle alone: what any store of pickled values has to pay at least."""
    res = Results()
    if args.group == "basic":
        values = make_values(args.n)
        pickles = [pickle.dumps(v, PROTOCOL) for v in values]
    elif args.group == "large":
        values = make_large_values(args.large_count, args.large_size, args.seed)
        pickles = [pickle.dumps(v, PROTOCOL) for v in values]
    else:
        return res

    def dumps_all() -> None:
        dumps = pickle.dumps
        for v in values:
            dumps(v, PROTOCOL)

    def loads_all() -> None:
        loads = pickle.loads
        for p in pickles:
            loads(p)

    def loads_into_dict() -> None:
        # What a batch read has to do besides finding the bytes: unpickle
        # every value, in the shuffled order, into one dict that keeps them all.
        loads = pickle.loads
        kept.update((k, loads(p)) for k, p in shuffled)

    kept: dict[bytes, Any] = {}
    if args.group == "basic":
        keys = make_keys(args.n)
        shuffled = [(keys[i], pickles[i]) for i in read_order(args.n, args.seed)]
        res.measure("put", "ops/s", args.n, dumps_all)
        res.measure("get", "ops/s", args.n, loads_all)
        res.measure("get_many", "ops/s", args.n, loads_into_dict)
    else:
        megabytes = len(values) * args.large_size / 1e6
        res.measure("large_put", "MB/s", megabytes, dumps_all)
        res.measure("large_get", "MB/s", megabytes, loads_all)
    return res


# --- serializers ----------------------------------------------------------------

#: This store's serializers, each measured on the workload in a group of its own.
SERIALIZERS = ("pickle", "safe", "raw", "json", "msgpack")


def make_json_values(n: int) -> list[dict[str, Any]]:
    """The workload's values, checked to be JSON-able: str keys, int, str, a list
    of str and a float, which JSON and MessagePack give back equal (a tuple or
    bytes would not), so every serializer and every floor sees the same values."""
    values = make_values(n)
    for v in values[:SAMPLE]:
        if json.loads(json.dumps(v)) != v:
            raise Failed(f"not JSON-able: {v!r}")
    return values


def serializer_floor(name: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """What a serializer costs alone: pickle for the pickle-based ones (raw's
    values are pickles made beforehand), ``json.dumps``/``json.loads`` and
    ``msgpack.packb``/``msgpack.unpackb`` for the others."""
    if name == "json":
        return json.dumps, json.loads
    if name == "msgpack":
        try:
            import msgpack
        except ImportError as exc:
            raise Unsupported("msgpack is not installed") from exc
        return msgpack.packb, msgpack.unpackb
    return (lambda v: pickle.dumps(v, PROTOCOL)), pickle.loads


def run_serializer(args: argparse.Namespace, workdir: str) -> Results:
    """put, get and get_many on a store with one serializer (the system "this"),
    or the serializer alone (the floor); ops/s."""
    name = args.group.removeprefix("ser-")
    ops = [f"ser_{name}_{op}" for op in ("put", "get", "get_many")]
    res = Results()
    n = args.n
    keys, values = make_keys(n), make_json_values(n)
    order = read_order(n, args.seed)
    shuffled = [keys[i] for i in order]
    try:
        dumps, loads = serializer_floor(name)
    except Unsupported as exc:
        for op in ops:
            res.skip(op, "unsupported", str(exc))
        return res
    if name == "raw":
        # Raw stores bytes: the values are pickled here, outside every timed section.
        values = [pickle.dumps(v, PROTOCOL) for v in values]
    put_op, get_op, many_op = ops

    if args.system == "floor":
        encoded = [dumps(v) for v in values]
        if name == "json":
            encoded = [e.encode() for e in encoded]  # what a store reads back: UTF-8
        by_key = [(keys[i], encoded[i]) for i in order]
        kept: dict[bytes, Any] = {}

        def dumps_all() -> None:
            for v in values:
                dumps(v)

        def loads_all() -> None:
            for e in encoded:
                loads(e)

        def loads_into_dict() -> None:
            kept.update((k, loads(e)) for k, e in by_key)

        res.measure(put_op, "ops/s", n, dumps_all)
        res.measure(get_op, "ops/s", n, loads_all)
        res.measure(many_op, "ops/s", n, loads_into_dict)
        return res

    from lmdb_object_store import LmdbObjectStore

    store = LmdbObjectStore(os.path.join(workdir, name), map_size=MAP_SIZE, serializer=name)
    batch: Any = None

    def put_all() -> None:
        for k, v in zip(keys, values, strict=True):
            store[k] = v
        store.flush()

    def get_all() -> None:
        for k in shuffled:
            store[k]

    def get_many() -> None:
        nonlocal batch
        batch, _missing = store.get_many(shuffled)

    def check_gets() -> None:
        for i in order[:SAMPLE]:
            expect(store[keys[i]], values[i], f"get({keys[i]!r})")

    def check_many() -> None:
        for i in order[:SAMPLE]:
            expect(batch[keys[i]], values[i], f"get_many[{keys[i]!r}]")

    try:
        if res.measure(put_op, "ops/s", n, put_all):
            res.measure(get_op, "ops/s", n, get_all)
            res.check(get_op, check_gets)
            res.measure(many_op, "ops/s", n, get_many)
            res.check(many_op, check_many)
        else:
            for op in (get_op, many_op):
                res.skip(op, "error", "not run: put failed")
    finally:
        store.close()
    return res


# --- arrays ------------------------------------------------------------------------


def run_arrays(args: argparse.Namespace, workdir: str) -> Results:
    """The batch read of a data loader: float32 vectors of ``--arrays-dim`` read
    in batches of ``--arrays-batch`` shuffled keys, every vector once; vectors/s.

    This package: ``get_arrays`` (a new array per batch, and into one ``out=``
    array), and the same arrays stored pickled, read with ``get_many`` and
    stacked. The floor: ``pickle.loads`` of the pickles held in memory, stacked.
    lightning-disk-kv: its vector path, ``store_vectors`` / ``get_vectors_batch``.
    """
    res = Results()
    ops = {
        "this": ["arrays_get_arrays", "arrays_get_arrays_out", "arrays_pickle_get_many"],
        "floor": ["arrays_pickle_floor"],
        "lightning-disk-kv": ["arrays_ldkv"],
    }[args.system]
    try:
        import numpy as np
    except ImportError:
        for op in ops:
            res.skip(op, "unsupported", "numpy is not installed")
        return res
    n, dim, size = args.arrays_count, args.arrays_dim, args.arrays_batch
    vectors = np.random.default_rng(args.seed).random((n, dim), dtype=np.float32)
    keys = [f"vec:{i:08d}".encode() for i in range(n)]
    order = read_order(n, args.seed)
    batches = [order[s : s + size] for s in range(0, n, size)]
    want = vectors[batches[-1]]
    got: Any = None

    def check(op: str) -> None:
        res.check(op, lambda: expect(np.array_equal(got, want), True, "last batch read back"))

    def measure(op: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            nonlocal got
            got = fn()

        res.measure(op, "vectors/s", n, run)
        check(op)

    key_batches = [[keys[i] for i in b] for b in batches]

    # Every way keeps only the batch at hand, as a loader hands each one on.
    def each(read: Callable[[Any], Any], over: list[Any]) -> Callable[[], Any]:
        def run() -> Any:
            for b in over:
                last = read(b)
            return last

        return run

    if args.system == "floor":
        pickles = [pickle.dumps(v, PROTOCOL) for v in vectors]
        measure(
            "arrays_pickle_floor",
            each(lambda b: np.stack([pickle.loads(pickles[i]) for i in b]), batches),
        )
    elif args.system == "lightning-disk-kv":
        from lightning_disk_kv import LDKV

        db = LDKV(os.path.join(workdir, "ldkv"), 5, MAP_SIZE)
        try:
            db.store_vectors(vectors, list(range(n)))
            db.sync()
            measure("arrays_ldkv", each(lambda b: db.get_vectors_batch(b)[0], batches))
        finally:
            db.close()
    else:
        from lmdb_object_store import LmdbObjectStore

        npy = LmdbObjectStore(os.path.join(workdir, "npy"), map_size=MAP_SIZE)
        pickled = LmdbObjectStore(os.path.join(workdir, "pickled"), map_size=MAP_SIZE)
        try:
            for k, v in zip(keys, vectors, strict=True):
                npy.put_array(k, v)
                pickled[k] = v
            npy.flush()
            pickled.flush()
            out = np.empty((size, dim), np.float32)

            def into_out(b: list[bytes]) -> Any:
                return npy.get_arrays(b, out=out if len(b) == size else None)

            def pickle_get_many(b: list[bytes]) -> Any:
                found, _missing = pickled.get_many(b)
                return np.stack([found[k] for k in b])

            measure("arrays_get_arrays", each(npy.get_arrays, key_batches))
            measure("arrays_get_arrays_out", each(into_out, key_batches))
            measure("arrays_pickle_get_many", each(pickle_get_many, key_batches))
        finally:
            npy.close()
            pickled.close()
    return res


# --- the codec alone ------------------------------------------------------------

# Values of each shape (besides the workload's): built once, pickled again and
# again; ``reps`` scales how many times per N = 100,000.
CODEC_SHAPES: dict[str, tuple[Callable[[], Any], int]] = {
    "floats": (lambda: [i / 7 for i in range(1000)], 2_000),
    "config": (
        lambda: {
            f"option_{i}": [i, f"value {i}", i * 0.5, i % 2 == 0, None] if i % 5 else {"on": True}
            for i in range(50)
        },
        20_000,
    ),
    "strings": (lambda: [f"word{i}" for i in range(100)], 40_000),
    "bytes": (lambda: random.Random(0).randbytes(MIB), 2_000),
}


def codec_functions(system: str) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
    """pickle's dumps/loads for the floor; this package's serializer (the
    native codec, handing anything else to pickle) for "this"."""
    if system == "floor":
        return pickle.dumps, pickle.loads
    from lmdb_object_store import _native

    return _native._dumps, _native._loads


def run_codec(args: argparse.Namespace) -> Results:
    """dumps and loads alone on the workload's values and on other shapes,
    with the collector paused and running; values per second."""
    res = Results()
    dumps, loads = codec_functions(args.system)
    shapes: dict[str, list[Any]] = {"workload": make_values(args.n)}
    for shape, (make, reps) in CODEC_SHAPES.items():
        value = make()
        shapes[shape] = [value] * max(1, reps * args.n // 100_000)
    for shape, values in shapes.items():
        codec_shape(res, shape, values, dumps, loads)
    return res


def codec_shape(
    res: Results,
    shape: str,
    values: list[Any],
    dumps: Callable[..., Any],
    loads: Callable[[Any], Any],
) -> None:
    pickles = [pickle.dumps(v, PROTOCOL) for v in values]
    kept: list[Any] = []

    def dumps_all() -> None:
        for v in values:
            dumps(v, PROTOCOL)

    def loads_all() -> None:
        # Every value read is kept, as a batch read keeps them: what the
        # collector then finds to walk is part of the cost.
        kept.clear()
        append = kept.append
        for p in pickles:
            append(loads(p))

    for collector, suffix in ((False, ""), (True, "_gc")):
        n = len(values)
        res.measure(f"codec_{shape}_dumps{suffix}", "values/s", n, dumps_all, collector)
        res.measure(f"codec_{shape}_loads{suffix}", "values/s", n, loads_all, collector)
    res.check(f"codec_{shape}_loads", lambda: expect(kept == values, True, "values read back"))
    res.check(f"codec_{shape}_dumps", lambda: check_dumps(dumps, values, pickles))


def check_dumps(dumps: Callable[..., Any], values: list[Any], pickles: list[bytes]) -> None:
    for v, p in zip(values[:SAMPLE], pickles[:SAMPLE], strict=True):
        expect(dumps(v, PROTOCOL), p, "dumps is pickle.dumps")


# --- entry point -----------------------------------------------------------------

GROUPS = {"basic": run_basic, "large": run_large, "threads": run_threads}


def version_of(adapter: Adapter) -> str:
    if adapter.dist is None:
        return platform.python_version()
    try:
        return metadata.version(adapter.dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument(
        "--group",
        required=True,
        choices=sorted([*GROUPS, "codec", "arrays", *(f"ser-{s}" for s in SERIALIZERS)]),
    )
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--large-count", type=int, default=64)
    p.add_argument("--large-size", type=int, default=4 * MIB)
    p.add_argument("--readers", type=int, default=4)
    p.add_argument("--write-batch", type=int, default=1000)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per threads phase")
    p.add_argument("--arrays-count", type=int, default=65_536, help="vectors in arrays")
    p.add_argument("--arrays-dim", type=int, default=512)
    p.add_argument("--arrays-batch", type=int, default=256)
    p.add_argument("--out", required=True, help="file to write the JSON figures to")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    adapter = SYSTEMS[args.system]()
    report: dict[str, Any] = {"system": args.system, "group": args.group}
    try:
        if args.group == "codec":
            results = run_codec(args)
        elif args.group.startswith("ser-") or args.group == "arrays":
            run = run_arrays if args.group == "arrays" else run_serializer
            with tempfile.TemporaryDirectory(prefix=f"bench-{args.system}-") as workdir:
                results = run(args, workdir)
        elif args.system == "floor":
            results = run_floor(args)
        else:
            with tempfile.TemporaryDirectory(prefix=f"bench-{args.system}-") as workdir:
                results = GROUPS[args.group](adapter, args, workdir)
            report["detail"] = adapter.detail
        report["results"] = results.ops
    except Exception as exc:
        # Typically the import or the first open: every operation of the group failed.
        report["error"] = describe(exc)
        traceback.print_exc()
    report["version"] = version_of(adapter)
    report["python"] = platform.python_version()
    report["peak_rss_mib"] = peak_rss_mib()
    with open(args.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
