"""Store calls under a memory limit (``RLIMIT_AS``): ``MemoryError``, never an
abort, and nothing half done (SPEC 9; docs/reliability.md "Failed
allocations").

Each case runs in a child interpreter that makes its data, lowers its
address-space limit to a little above what it uses, runs store calls until
one fails, lifts the limit and reports what it saw as JSON. A signal (Rust's
abort on a failed allocation) fails the test through the child's exit status.
"""

from __future__ import annotations

import json

import pytest

from helpers import run_python

PRELUDE = """
import json, resource, sys
from lmdb_object_store import LmdbObjectStore

MiB = 1 << 20
HARD = resource.getrlimit(resource.RLIMIT_AS)[1]

def vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

def limit(headroom):
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom, HARD))

def lift():
    resource.setrlimit(resource.RLIMIT_AS, (HARD, HARD))

def outcome(call):
    # BaseException: PyO3's PanicException is not an Exception.
    try:
        call()
    except BaseException as exc:
        return type(exc).__name__
    return None

def write_until_limit(store, keys, values, headroom):
    # store.put(keys[i], values[i]) for each i under a limit of `headroom`
    # more bytes, until a write raises (values=None: the value is i); reports
    # what raised and how many writes were acknowledged before it.
    indexes = list(range(len(keys)))
    values = indexes if values is None else values
    total = len(keys)
    raised = None
    limit(headroom)
    # Nothing in this loop but `put` makes an object (every int above was
    # made before the limit): whatever raises, `i` is the number of writes
    # acknowledged before it.
    try:
        for i in indexes:
            store.put(keys[i], values[i])
        i = total
    except BaseException as exc:
        raised = exc
    lift()
    report["raised"] = type(raised).__name__ if raised is not None else None
    report["acked"] = i

path = sys.argv[1]
report = {}
"""


def run_case(code: str, path: str) -> dict:
    out = run_python(PRELUDE + code, path, timeout=180)

    return json.loads(out.strip().splitlines()[-1])


WRITES_ONE_AT_A_TIME = """
# Everything stays in the buffer until the limit stops the writes.
store = LmdbObjectStore(path, batch_size=10**9, max_buffer_bytes=1 << 40)
keys = [b"k%08d" % i for i in range(4_000_000)]
write_until_limit(store, keys, None, 48 * MiB)
report["pending"] = store.pending
store.flush()
report["len"] = len(store)
acked = report["acked"]
step = max(1, acked // 1000)
report["read_back"] = all(store[keys[i]] == i for i in range(0, acked, step))
store.close()
print(json.dumps(report))
"""


def test_writes_one_at_a_time_stop_with_memory_error_and_keep_every_acknowledged_one(tmp_path):
    report = run_case(WRITES_ONE_AT_A_TIME, str(tmp_path / "db"))
    assert report["raised"] == "MemoryError", report
    assert report["acked"] > 0
    assert report["pending"] == report["acked"]
    assert report["len"] == report["acked"]
    assert report["read_back"]


MANY_AT_ONCE = """
store = LmdbObjectStore(path)
store.put_many({b"base%04d" % i: i for i in range(100)})
store.put(b"buffered", "mine")
items = {b"k%08d" % i: i for i in range(2_000_000)}
limit(48 * MiB)
report["put_many"] = outcome(lambda: store.put_many(items))
report["update"] = outcome(lambda: store.update(items))
lift()
report["pending"] = store.pending
report["len"] = len(store)
report["buffered"] = store[b"buffered"]
report["absent"] = sum(k in store for k in list(items)[:100])
store.put_many(dict(list(items.items())[:1000]))
report["len_after"] = len(store)
store.close()
print(json.dumps(report))
"""


def test_put_many_and_update_too_big_for_memory_change_nothing(tmp_path):
    report = run_case(MANY_AT_ONCE, str(tmp_path / "db"))
    assert report["put_many"] == "MemoryError", report
    assert report["update"] == "MemoryError", report
    assert report["pending"] == 1
    assert report["len"] == 101
    assert report["buffered"] == "mine"
    assert report["absent"] == 0
    assert report["len_after"] == 1101


GET_MANY = """
store = LmdbObjectStore(path)
store.put_many({b"k%04d" % i: i for i in range(1000)})
asked = [b"k%04d" % (i % 1000) for i in range(4_000_000)]
limit(40 * MiB)
report["get_many"] = outcome(lambda: store.get_many(asked))
lift()
found, missing = store.get_many(asked[:5000])
report["found"] = len(found)
report["missing"] = len(missing)
store.close()
print(json.dumps(report))
"""


def test_get_many_of_more_keys_than_memory_allows(tmp_path):
    report = run_case(GET_MANY, str(tmp_path / "db"))
    assert report["get_many"] == "MemoryError", report
    assert report["found"] == 1000
    assert report["missing"] == 0


SCANS = """
store = LmdbObjectStore(path, key_encoding="utf-8")
store.put_many({"k%07d" % i: i for i in range(400_000)})
report["len"] = len(store)
for name, scan in [
    ("keys", lambda: list(store.keys())),
    ("values", lambda: list(store.values())),
    ("items", lambda: list(store.items())),
    ("dict", lambda: dict(store)),
]:
    limit(16 * MiB)
    report[name] = outcome(scan)
    lift()
report["keys_lifted"] = len(list(store.keys()))
store.close()
print(json.dumps(report))
"""


def test_scans_that_run_out_of_memory_raise_memory_error(tmp_path):
    report = run_case(SCANS, str(tmp_path / "db"))
    for name in ("keys", "values", "items", "dict"):
        assert report[name] in (None, "MemoryError"), (name, report)
    assert "MemoryError" in {report[n] for n in ("keys", "values", "items", "dict")}, report
    assert report["keys_lifted"] == report["len"] == 400_000


BIG_VALUE = """
store = LmdbObjectStore(path)
big = b"x" * (200 * MiB)
limit(100 * MiB)
report["put"] = outcome(lambda: store.put(b"big", big))
lift()
report["pending"] = store.pending
report["present"] = b"big" in store
store.put(b"big", big)
store.flush()
report["size"] = len(store[b"big"])
store.close()
print(json.dumps(report))
"""


def test_a_value_bigger_than_memory_allows(tmp_path):
    report = run_case(BIG_VALUE, str(tmp_path / "db"))
    assert report == {
        "put": "MemoryError",
        "pending": 0,
        "present": False,
        "size": 200 * 2**20,
    }


@pytest.mark.parametrize("headroom_mib", [8, 24, 40])
def test_writes_under_many_limits_never_end_the_process(tmp_path, headroom_mib):
    """The limit met at a different point of a write each time: whatever
    fails, the writes acknowledged are all there."""
    code = WRITES_ONE_AT_A_TIME.replace("None, 48 * MiB)", f"None, {headroom_mib} * MiB)")
    assert code != WRITES_ONE_AT_A_TIME
    report = run_case(code, str(tmp_path / "db"))
    assert report["raised"] == "MemoryError", report
    assert report["pending"] == report["len"] == report["acked"]
    assert report["read_back"]


OTHER_VALUE_PATHS = """
options = json.loads(sys.argv[2])
store = LmdbObjectStore(path, batch_size=10**9, max_buffer_bytes=1 << 40, **options)
store.put_many({b"s%07d" % i: {"n": i, "text": "v" * 40} for i in range(200_000)})
value = {"n": 1, "text": "w" * 40}
keys = [b"k%08d" % i for i in range(4_000_000)]
values = [value] * len(keys)
asked = [b"s%07d" % i for i in range(200_000)]
for name, scan in [
    ("values", lambda: list(store.values())),
    ("get_many", lambda: store.get_many(asked)),
]:
    limit(16 * MiB)
    report[name] = outcome(scan)
    lift()
# More than the reserve: a scan above may have used it up, and a store
# call needs room to take it back.
write_until_limit(store, keys, values, 48 * MiB)
report["pending"] = store.pending
store.flush()
report["len"] = len(store)
report["last"] = store[keys[report["acked"] - 1]] == value
store.close()
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "options",
    [
        {"serializer": "json"},
        {"serializer": "raw"},
        {"compression": "zstd", "compression_threshold": 1},
    ],
    ids=["json", "raw", "zstd"],
)
def test_other_serializers_and_compression_under_the_limit(tmp_path, options):
    if options.get("serializer") == "raw":
        code = OTHER_VALUE_PATHS.replace('{"n": i, "text": "v" * 40}', 'b"v" * 60')
        code = code.replace('{"n": 1, "text": "w" * 40}', 'bytearray(b"w" * 60)')
    else:
        code = OTHER_VALUE_PATHS
    out = run_python(PRELUDE + code, str(tmp_path / "db"), json.dumps(options), timeout=180)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["values"] in (None, "MemoryError"), report
    assert report["get_many"] in (None, "MemoryError"), report
    assert report["raised"] == "MemoryError", report
    assert report["pending"] == report["acked"] > 0, report
    assert report["len"] == 200_000 + report["acked"], report
    assert report["last"], report


BIG_VALUE_OTHER_PATHS = """
options = json.loads(sys.argv[2])
kind = options.pop("kind")
store = LmdbObjectStore(path, **options)
if kind == "read":
    # Written before the limit; reading it needs its size again.
    store.put(b"big", "x" * (120 * MiB) if options["serializer"] == "json" else b"x" * (120 * MiB))
    store.flush()
    limit(60 * MiB)
    report["call"] = outcome(lambda: store[b"big"])
elif kind == "bytearray":
    big = bytearray(120 * MiB)
    limit(60 * MiB)
    report["call"] = outcome(lambda: store.put(b"big", big))
else:
    # Incompressible: compressing it needs about its size twice more.
    big = os.urandom(120 * MiB)
    limit(180 * MiB)
    report["call"] = outcome(lambda: store.put(b"big", big))
lift()
report["pending"] = store.pending
store.put(b"after", b"fine" if options["serializer"] == "raw" else "fine")
store.flush()
report["after"] = store[b"after"] in (b"fine", "fine")
store.close()
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "read", "serializer": "json"},
        {"kind": "read", "serializer": "msgpack"},
        {"kind": "bytearray", "serializer": "raw"},
        {"kind": "compress", "serializer": "raw", "compression": "zstd"},
        {"kind": "compress", "serializer": "raw", "compression": "lz4"},
    ],
    ids=["json-read", "msgpack-read", "raw-bytearray-put", "zstd-put", "lz4-put"],
)
def test_a_big_value_through_other_serializers_and_compression(tmp_path, options):
    code = "import os\n" + BIG_VALUE_OTHER_PATHS
    out = run_python(PRELUDE + code, str(tmp_path / "db"), json.dumps(options), timeout=180)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["call"] == "MemoryError", report
    assert report["pending"] == 0, report
    assert report["after"], report


# Calls whose own memory grows with their input (the sorted list of a commit,
# the lists handed to LMDB, a transaction's log and the copies of its scans,
# the second vector of get_many's sort, the buffered writes a read merges),
# each run under a ladder of limits so that one of them fails inside that
# memory rather than at the call's start.
BIG_CALLS = """
import os
N = 600_000
items = [(b"k%09d" % i, i) for i in range(N)]
READS = ("get_many", "txn_items", "txn_get_many")
keys = [k for k, _ in items] if KIND in READS else None
# Reads with autoflush_on_read=False: len() merges the buffer with the
# database; a scan commits it first, and merges it when that commit fails.
UNFLUSHED = ("unflushed_keys", "unflushed_len")

def open_store(name):
    # update() commits what it buffered once a batch is full (its own flush);
    # the others keep everything buffered until their call.
    batch = 1000 if KIND == "update" else 10**9
    return LmdbObjectStore(os.path.join(path, name), map_size=1 << 30,
                           batch_size=batch, max_buffer_bytes=1 << 40,
                           autoflush_on_read=KIND not in UNFLUSHED)

def fill_in_transaction(store):
    with store.transaction() as t:
        for k, v in items:
            t[k] = v

def scan_in_transaction(store):
    with store.transaction() as t:
        return t.items()

def get_many_in_transaction(store):
    with store.transaction() as t:
        return t.get_many(keys)

CALLS = {
    "put_many": lambda s: s.put_many(items),
    "update": lambda s: s.update(items),
    "flush": lambda s: s.flush(),
    "txn": fill_in_transaction,
    "get_many": lambda s: s.get_many(keys),
    "txn_items": scan_in_transaction,
    "txn_get_many": get_many_in_transaction,
    "unflushed_keys": lambda s: list(s.keys()),
    "unflushed_len": len,
}
runs = []
shared = None
if KIND in READS or KIND == "unflushed_len":
    # Calls that leave the store as it was share one.
    shared = open_store("shared")
    if KIND in READS:
        shared.put_many(items)
    else:
        for k, v in items:
            shared[k] = v
# Calls that leave the store as it was are cheap to repeat: finer steps low
# down. A transaction's get_many of every key needs more than 136 MiB.
TOP = 240 if KIND == "txn_get_many" else 144
RUNGS = range(0, TOP, 8) if shared is None else [*range(0, 72, 4), *range(72, TOP, 8)]
for mib in RUNGS:
    store = shared or open_store(str(mib))
    if KIND in ("flush", "unflushed_keys"):
        for k, v in items:
            store[k] = v
    limit(mib * MiB)
    raised = outcome(lambda: CALLS[KIND](store))
    lift()
    pending = store.pending
    if KIND != "unflushed_len":  # its buffer serves every rung
        store.flush()
    run = {"mib": mib, "raised": raised, "pending": pending, "len": len(store)}
    if KIND in READS:
        run["found"] = len(store.get_many(keys[::1000])[0])
    runs.append(run)
    if store is not shared:
        store.close()
report["runs"] = runs
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "kind",
    [
        "put_many",
        "update",
        "flush",
        "txn",
        "get_many",
        "txn_items",
        "txn_get_many",
        "unflushed_keys",
        "unflushed_len",
    ],
)
def test_calls_whose_memory_grows_with_their_input_never_end_the_process(tmp_path, kind):
    code = BIG_CALLS.replace("KIND", repr(kind))
    runs = run_case(code, str(tmp_path))["runs"]
    n = 600_000
    for run in runs:
        raised = run["raised"]
        if kind in ("get_many", "txn_items", "txn_get_many"):
            # A read changes nothing, whatever it raised.
            assert raised in (None, "MemoryError"), run
            assert (run["pending"], run["len"], run["found"]) == (0, n, 600), run
        elif kind.startswith("unflushed"):
            # The buffer stays whole, committed by the scan or not at all.
            assert raised in (None, "MemoryError", "Error"), run
            assert run["pending"] in ((n, 0) if kind == "unflushed_keys" else (n,)), run
            assert run["len"] == n, run
        elif kind in ("put_many", "txn"):
            # One transaction: all or nothing.
            assert raised in (None, "MemoryError", "Error"), run
            assert run["pending"] == 0, run
            assert run["len"] == (n if raised is None else 0), run
        else:
            # Buffered writes: refused before they are taken (MemoryError),
            # or taken and kept through a commit that failed (Error), which
            # the flush after the limit makes.
            assert raised in (None, "MemoryError", "Error"), run
            taken = raised != "MemoryError" or kind == "flush"
            assert run["pending"] == (n if raised is not None and taken else 0), run
            assert run["len"] == (n if taken else 0), run
    # The ladder reached both ends: refused at the bottom, done at the top.
    assert runs[0]["raised"] is not None and runs[-1]["raised"] is None, runs
