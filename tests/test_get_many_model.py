"""get_many against a plain dict, over keys that sit before, between, after and
among the stored ones.

The store answers a batch in key order through one cursor that only moves
forward, deciding many keys without a search (the key it stands on, the next
one, or a key sorting between them that is not stored). These tests ask for
keys chosen to land on each of those cases: prefixes and extensions of stored
keys, repeats, gaps, keys past both ends, keys LMDB cannot hold, values on
overflow pages, and stored keys spread over many pages.
"""

from __future__ import annotations

import pickle
import random
import shutil
import subprocess
import sys
import tempfile

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdb_object_store import LmdbObjectStore

# Stored keys: two-letter stems with a number, so that stored keys share
# prefixes and a few hundred of them span many LMDB pages.
STORED = sorted({f"{stem}{n}".encode() for stem in ("ab", "ba", "m") for n in range(0, 400, 3)})
# Keys around them: prefixes, extensions, neighbours, both ends, bad lengths.
PROBES = sorted(
    (
        {k[:-1] for k in STORED}
        | {k + b"\x00" for k in STORED[::7]}
        | {k + b"5" for k in STORED[::5]}
        | {b"a", b"aa", b"zz", b"\x00", b"\xff" * 8, b"", b"k" * 512}
    )
    - set(STORED)
)


def value_of(key: bytes) -> object:
    # Every 37th value is big enough to sit on overflow pages.
    if sum(key) % 37 == 0:
        return key * (5000 // len(key))
    return {"key": key, "pad": key * 20}


@pytest.fixture(scope="module")
def db_path():
    path = tempfile.mkdtemp(prefix="los-get-many-") + "/db"
    with LmdbObjectStore(path) as store:
        store.put_many((k, value_of(k)) for k in STORED)
    yield path
    shutil.rmtree(path.rsplit("/", 1)[0], ignore_errors=True)


def test_the_stored_keys_span_many_pages(db_path):
    env = lmdb.open(db_path, readonly=True, lock=False)
    try:
        stat = env.stat()
    finally:
        env.close()
    assert stat["leaf_pages"] >= 10
    assert stat["overflow_pages"] > 0
    assert stat["depth"] >= 2


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(STORED) | st.sampled_from(PROBES), max_size=60),
)
def test_get_many_matches_a_dict(db_path, keys):
    with LmdbObjectStore(db_path, readonly=True) as store:
        found, not_found = store.get_many(keys)
    stored = set(STORED)
    assert found == {k: value_of(k) for k in keys if k in stored}
    assert not_found == [k for k in keys if k not in stored]


@settings(max_examples=100, deadline=None)
@given(st.sets(st.sampled_from(STORED)), st.sets(st.sampled_from(PROBES)))
def test_dense_and_sparse_batches(db_path, present, absent):
    # Sets of stored keys are runs of neighbours once sorted; the probes fall
    # in the gaps between them.
    keys = sorted(present | absent, reverse=True)
    with LmdbObjectStore(db_path, readonly=True) as store:
        found, not_found = store.get_many(keys)
    assert found == {k: value_of(k) for k in present}
    assert sorted(not_found) == sorted(absent)


def test_every_stored_key_then_every_probe(db_path):
    with LmdbObjectStore(db_path, readonly=True) as store:
        found, not_found = store.get_many(STORED + PROBES)
    assert list(found) == STORED
    assert found == {k: value_of(k) for k in STORED}
    assert not_found == PROBES


def test_a_database_written_with_py_lmdb(tmp_path):
    # The same walk over a file another program wrote, with values of every
    # size between neighbours.
    path = str(tmp_path / "db")
    env = lmdb.open(path, map_size=64 << 20)
    with env.begin(write=True) as txn:
        for i in range(0, 3000, 2):
            txn.put(b"%05d" % i, pickle.dumps(b"v" * (i % 5000)))
    env.close()
    keys = [b"%05d" % i for i in range(2999, -1, -1)]
    with LmdbObjectStore(path, readonly=True) as store:
        found, not_found = store.get_many(keys)
    assert found == {b"%05d" % i: b"v" * (i % 5000) for i in range(0, 3000, 2)}
    assert not_found == [b"%05d" % i for i in range(2999, -1, -2)]


UNPICKLED: list[bytes] = []


def _unpickled(key: bytes) -> bytes:
    UNPICKLED.append(key)
    return key


class Recorded:
    """Unpickles to its key, noting when it was unpickled."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __reduce__(self):
        return (_unpickled, (self.key,))


def test_values_are_unpickled_in_the_order_the_keys_are_given(tmp_path):
    # The lookups run in key order; the values are then decoded in the
    # caller's order (the order of `found`), each repeated key once.
    keys = [b"%04d" % i for i in range(600)]
    with LmdbObjectStore(str(tmp_path / "db")) as store:
        store.put_many((k, Recorded(k)) for k in keys)
        store.flush()
        asked = keys[::2] + [b"missing", b"0001x"]
        random.Random(5).shuffle(asked)
        asked += asked[:40]  # repeats
        UNPICKLED.clear()
        found, not_found = store.get_many(asked)
    stored = set(keys)
    first_seen = list(dict.fromkeys(k for k in asked if k in stored))
    assert UNPICKLED == first_seen
    assert list(found) == first_seen
    assert found == {k: k for k in first_seen}
    assert not_found == [k for k in asked if k not in stored]


def _written_elsewhere(path: str) -> str:
    # Another process commits a new value of b"b" while get_many's read
    # transaction is open.
    code = (
        "import sys\n"
        "from lmdb_object_store import LmdbObjectStore\n"
        "with LmdbObjectStore(sys.argv[1]) as s:\n"
        "    s.put(b'b', 'new')\n"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)
    return "first"


class WritesWhileRead:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_written_elsewhere, (self.path,))


def test_one_read_transaction_for_the_whole_call(tmp_path):
    # SPEC 6: "One read transaction for the whole call": a commit made while
    # the call runs (here, by another process while the first value is
    # unpickled) is not seen by the values read after it in the same call.
    path = str(tmp_path / "db")
    with LmdbObjectStore(path) as store:
        store.put_many({b"a": WritesWhileRead(path), b"b": "old"})
        store.flush()
        found, not_found = store.get_many([b"a", b"b"])
        assert found == {b"a": "first", b"b": "old"}
        assert not_found == []
        assert store[b"b"] == "new"
