"""Process helpers for the multi-process tests (imported as ``proc_workers``).

The functions run in ``spawn``/``forkserver`` workers must live in an importable
module: the workers import this one by name (``tests/`` is on ``sys.path`` of the
parent, and multiprocessing hands the parent's ``sys.path`` to its children).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback

from lmdb_object_store import LmdbObjectStore

# --------------------------------------------------------------------------
# Deterministic data, so a worker can check what it reads without being told
# --------------------------------------------------------------------------


def writer_key(worker: int, i: int) -> bytes:
    return b"w%d-%05d" % (worker, i)


def writer_value(worker: int, i: int, size: int = 500) -> bytes:
    return ((b"w%d:i%05d|" % (worker, i)) * (size // 10 + 1))[:size]


def sample_key(i: int) -> bytes:
    return b"sample-%05d" % i


def sample_value(i: int) -> dict:
    return {"index": i, "label": i % 7, "blob": bytes([i % 256]) * (64 + i % 50)}


# --------------------------------------------------------------------------
# spawn / forkserver workers
# --------------------------------------------------------------------------


def grow_writer(path: str, worker: int, count: int, value_size: int, barrier) -> None:
    """Open a 1 MiB store, wait for the others, then write ``count`` keys.

    Reads keys of the other writers along the way (so reads meet the growth done
    by other processes too) and checks its own keys at the end. Any failure
    raises, which gives the process a non-zero exit code.
    """
    store = LmdbObjectStore(path, batch_size=100, map_size=1 << 20)
    try:
        store.get(b"never-written")  # use a read transaction before anyone grows
        barrier.wait(30)
        for i in range(count):
            store.put(writer_key(worker, i), writer_value(worker, i, value_size))
            if i % 200 == 199:
                other = (worker + 1) % barrier.parties
                got = store.get(writer_key(other, 0))
                assert got is None or got == writer_value(other, 0, value_size)
        store.flush()
        keys = [writer_key(worker, i) for i in range(count)]
        found, not_found = store.get_many(keys)
        assert not_found == [], f"worker {worker}: {len(not_found)} keys missing"
        for i, key in enumerate(keys):
            assert found[key] == writer_value(worker, i, value_size), key
    finally:
        store.close()


def grown_key(i: int) -> bytes:
    return b"grown%03d" % i


def grow_store(path: str, count: int, value_size: int) -> None:
    """Write ``count`` values of ``value_size`` bytes on a 1 MiB map (so it grows)."""
    with LmdbObjectStore(path, map_size=1 << 20) as store:
        store.put_many({grown_key(i): bytes([i % 256]) * value_size for i in range(count)})
        assert store.info()["map_size"] > 1 << 20


class StoreDataset:
    """A map-style dataset holding a store as an attribute (the DataLoader way)."""

    def __init__(self, store, keys):
        self.store = store
        self.keys = list(keys)

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        return self.store[self.keys[index]]


def dataset_worker(dataset: StoreDataset, worker_id: int, num_workers: int) -> None:
    """Read this worker's share of ``dataset`` (keys ``sample_key(i)``) and check it."""
    seen = 0
    for index in range(worker_id, len(dataset), num_workers):
        key = dataset.keys[index]
        i = int(key.split(b"-")[1])
        assert dataset[index] == sample_value(i), key
        seen += 1
    assert seen == len(range(worker_id, len(dataset), num_workers))
    # The whole dataset in one call as well.
    found, not_found = dataset.store.get_many(dataset.keys)
    assert not_found == []
    assert len(found) == len(dataset)


_WORKER_STORE = None


def init_worker_store(store) -> None:
    """Pool initializer: keep the (unpickled) store for the tasks."""
    global _WORKER_STORE
    _WORKER_STORE = store


def read_from_worker_store(key):
    return key, _WORKER_STORE[key]


def describe_worker_store() -> dict:
    return describe(_WORKER_STORE)


def describe(store) -> dict:
    """What a worker sees of a store it received by pickle."""
    return {
        "pid": os.getpid(),
        "path": os.fspath(store.path),
        "closed": store.closed,
        "readonly": store.readonly,
        "batch_size": store.batch_size,
        "autoflush_on_read": store.autoflush_on_read,
        "max_map_size": store.max_map_size,
        "map_size": store.info()["map_size"],
    }


def write_with_store(args):
    """Pool task: ``(store, key, value)`` -> write and flush in the worker."""
    store, key, value = args
    store.put(key, value)
    store.flush()
    assert store.pending == 0
    return os.getpid()


# --------------------------------------------------------------------------
# Crash safety: a writer that is killed at a random moment (test_crash.py)
# --------------------------------------------------------------------------

CRASH_KEYS_PER_BATCH = 50


def crash_key(batch: int, i: int) -> bytes:
    return b"b%07d:%02d" % (batch, i)


def crash_count_key(batch: int) -> bytes:
    return b"b%07d:count" % batch


def crash_value_size(batch: int) -> int:
    # Every 16th batch is large, so that its flush takes a while and a kill
    # can land inside the write of the data pages or the fsync.
    return 4000 if batch % 16 == 15 else 120


def crash_batch(batch: int) -> dict:
    """The keys and values of one batch: ``count`` says how many data keys it has."""
    size = crash_value_size(batch)
    items: dict = {}
    for i in range(CRASH_KEYS_PER_BATCH):
        blob = ((b"%d/%d;" % (batch, i)) * (size // 4 + 1))[:size]
        items[crash_key(batch, i)] = {"batch": batch, "i": i, "blob": blob}
    items[crash_count_key(batch)] = CRASH_KEYS_PER_BATCH
    return items


def crash_writer(path: str, sync: str, start: str, record: str, announce: str) -> None:
    """Write batches ``start``, ``start + 1``, ... until killed.

    Each batch is buffered with ``put`` and committed by one ``flush()``. The
    record file gets ``flushing <b>`` before the flush and ``done <b>`` after
    it returns, the latter made durable with ``fsync``. Stdout gets ``ready``
    once the store is open and ``flush`` right before the flush of batch
    ``announce``, so the parent can aim its kill at that flush.
    """
    store = LmdbObjectStore(path, batch_size=1_000_000, sync=sync == "1")
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    batch, announce_at = int(start), int(announce)
    while True:
        for key, value in crash_batch(batch).items():
            store.put(key, value)
        os.write(fd, b"flushing %d\n" % batch)
        if batch == announce_at:
            out.write(b"flush\n")
            out.flush()
        store.flush()
        os.write(fd, b"done %d\n" % batch)
        os.fsync(fd)
        batch += 1


# --------------------------------------------------------------------------
# Fault injection: a data file that may not grow (test_faults.py)
# --------------------------------------------------------------------------

FSIZE_BASE = 20
FSIZE_COUNT = 200
FSIZE_VALUE_SIZE = 10_000


def fsize_base_key(i: int) -> bytes:
    return b"base%03d" % i


def fsize_key(prefix: bytes, i: int) -> bytes:
    return prefix + b"%04d" % i


def fsize_value(prefix: bytes, i: int) -> bytes:
    return ((b"%s:%d|" % (prefix, i)) * (FSIZE_VALUE_SIZE // 6 + 1))[:FSIZE_VALUE_SIZE]


def fsize_items(prefix: bytes) -> dict:
    """~2 MB of values: far more than the data file's headroom."""
    return {fsize_key(prefix, i): fsize_value(prefix, i) for i in range(FSIZE_COUNT)}


def _outcome(fn) -> dict:
    """Run ``fn``; describe how it ended, for the JSON report."""
    from lmdb_object_store import Error, MapFullError

    try:
        fn()
    except BaseException as exc:  # reported to the parent
        return {
            "raised": type(exc).__name__,
            "is_error": isinstance(exc, Error),
            "is_map_full": isinstance(exc, MapFullError),
            "message": str(exc),
        }
    return {"raised": None}


def fsize_limited_writer(path: str, headroom: str) -> None:
    """Write to the store at ``path`` while its data file may not grow.

    Sets RLIMIT_FSIZE to the data file's size + ``headroom`` bytes (SIGXFSZ
    ignored, so a write past it fails with EFBIG or comes back short), then
    tries a put_many and a flush that need the file to grow, lifts the limit
    and retries both. Prints one JSON report on stdout; the parent judges it.
    """
    import json
    import resource

    data_file = os.path.join(path, "data.mdb")
    size = os.path.getsize(data_file)
    limit = size + int(headroom)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    report: dict = {"data_file_size": size, "limit": limit}

    # The store must still open under the limit: opening writes nothing.
    store = LmdbObjectStore(path, batch_size=1_000_000)
    base = {fsize_base_key(i): i for i in range(FSIZE_BASE)}
    report["entries_before"] = store.stat()["entries"]

    many = fsize_items(b"many")
    report["put_many"] = _outcome(lambda: store.put_many(many))
    report["entries_after_put_many"] = store.stat()["entries"]
    report["put_many_keys_visible"] = sum(store.get(k) is not None for k in many)
    report["pending_after_put_many"] = store.pending

    buffered = fsize_items(b"buf")
    for key, value in buffered.items():
        store.put(key, value)
    report["pending_before_flush"] = store.pending
    report["flush"] = _outcome(store.flush)
    report["pending_after_flush"] = store.pending
    report["buffered_readable"] = sum(store.get(k) == v for k, v in buffered.items())
    report["flush_again"] = _outcome(store.flush)
    report["pending_after_flush_again"] = store.pending
    # A read that misses the buffer flushes first (autoflush_on_read), so it
    # meets the same failure; it answers anyway, and the buffer survives.
    report["autoflush_get"] = _outcome(lambda: store.get(fsize_base_key(0)))
    report["autoflush_get_value"] = store.get(fsize_base_key(0))
    report["pending_after_autoflush_get"] = store.pending
    # Still usable: committed data is there, for reads that need no flush.
    report["base_present"] = sum(store.exists(k, flush=False) for k in base)
    reader = LmdbObjectStore(path, autoflush_on_read=False)
    report["base_readable"] = sum(reader.get(k) == v for k, v in base.items())
    reader.close()
    report["entries_after_flush"] = store.stat()["entries"]
    report["last_pgno_after_failures"] = store.info()["last_pgno"]
    report["file_size_after_failures"] = os.path.getsize(data_file)

    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    report["flush_lifted"] = _outcome(store.flush)
    report["pending_after_lift"] = store.pending
    report["put_many_lifted"] = _outcome(lambda: store.put_many(many))
    report["entries_after_lift"] = store.stat()["entries"]
    report["close"] = _outcome(store.close)
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


# --------------------------------------------------------------------------
# os.fork helpers
# --------------------------------------------------------------------------


def fork_child(fn) -> int:
    """Fork; the child runs ``fn()`` and exits with its return value (0 if None).

    An exception in the child prints its traceback and exits with 1. The child
    never returns into the caller (so never into pytest).
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        result = fn()
        code = 0 if result is None else int(result)
    except BaseException:  # the child must not unwind into the test runner
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """Wait for a forked child; return its exit code.

    A child still running after ``timeout`` seconds is killed (SIGKILL) and the
    calling test fails: a hung child is a deadlock, never a pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            kill_and_reap(pid)
            raise AssertionError(f"child {pid} still running after {timeout}s (deadlock?)")
        time.sleep(0.01)


def kill_and_reap(pid: int) -> int:
    """SIGKILL a forked child and reap it; return its wait status code."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def wait_readable(fd: int, nbytes: int, timeout: float = 20.0) -> bytes:
    """Read exactly ``nbytes`` from ``fd``, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < nbytes:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, nbytes - len(data))
        if not chunk:  # every writer is gone
            break
        data += chunk
    return data


def run_processes(processes, timeout: float = 45.0) -> list[int]:
    """Start multiprocessing processes, join them all with one deadline.

    Stragglers are killed and the test fails. Returns the exit codes.
    """
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in processes if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join(10)
    assert not stuck, f"{len(stuck)} process(es) still running after {timeout}s"
    return [p.exitcode for p in processes]
