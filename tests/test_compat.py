"""The on-disk format: a plain LMDB environment, key = normalised key bytes,
value = exactly pickle.dumps(obj, protocol) (docs/migrating.md "The same files,
both ways" and "What stays the same"). Proven both ways with py-lmdb. (py-lmdb
only opens a path once our store on it is closed.)"""

from __future__ import annotations

import datetime
import decimal
import pickle

import pytest

from helpers import MiB, raw_items
from lmdb_object_store import LmdbObjectStore

# Values whose pickle.dumps output is deterministic (no sets of str: their
# iteration order depends on the hash seed).
VALUES = {
    b"int": 42,
    b"neg": -(2**70),
    b"float": 2.5,
    b"str": "héllo wörld",
    b"bytes": b"\x00\x01\xff" * 100,
    b"none": None,
    b"bool": True,
    b"list": [1, [2, [3, None]], "x"],
    b"tuple": (1, "a", b"b", 2.0),
    b"dict": {"a": {"b": [1, 2]}, "c": (None, False)},
    b"ints-set": frozenset({1, 2, 3}),
    b"floats-set": {3.5, 4.5},
    b"decimal": decimal.Decimal("1.25"),
    b"date": datetime.date(2024, 2, 29),
    b"bytearray": bytearray(b"mutable"),
    b"\x00binary-key\xff": "binary key",
    b"big": b"B" * (300 * 1024),
}


def test_store_written_here_is_plain_lmdb_with_exact_pickles(db_path, read_raw):
    with LmdbObjectStore(db_path) as store:
        store.put_many(VALUES)
        store.put(b"buffered", {"still": "buffered"})  # flushed by close
        store.put(b"deleted", 1)
        store.flush()
        store.delete(b"deleted")
    raw = read_raw(db_path)
    expected = {k: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for k, v in VALUES.items()}
    expected[b"buffered"] = pickle.dumps({"still": "buffered"}, protocol=pickle.HIGHEST_PROTOCOL)
    assert raw == expected


@pytest.mark.parametrize("protocol", list(range(0, pickle.HIGHEST_PROTOCOL + 1)))
def test_values_are_pickle_dumps_with_the_configured_protocol(db_path, read_raw, protocol):
    with LmdbObjectStore(db_path, pickle_protocol=protocol) as store:
        for k, v in VALUES.items():
            store.put(k, v)
        store.put_many({b"via-put-many": VALUES[b"dict"]})
    raw = read_raw(db_path)
    for k, v in VALUES.items():
        assert raw[k] == pickle.dumps(v, protocol=protocol), k
    assert raw[b"via-put-many"] == pickle.dumps(VALUES[b"dict"], protocol=protocol)


def test_store_written_by_py_lmdb_opens_and_reads_here(db_path, raw_env):
    env = raw_env(db_path, map_size=64 * MiB)
    with env.begin(write=True) as txn:
        for i, (k, v) in enumerate(VALUES.items()):
            txn.put(k, pickle.dumps(v, protocol=i % (pickle.HIGHEST_PROTOCOL + 1)))
    env.close()
    with LmdbObjectStore(db_path) as store:
        for k, v in VALUES.items():
            got = store[k]
            assert got == v and type(got) is type(v), k
        found, not_found = store.get_many([*VALUES, b"absent"])
        assert found == VALUES
        assert not_found == [b"absent"]
        assert store.stat()["entries"] == len(VALUES)
        assert list(store.keys()) == sorted(VALUES)
        # ... and we can keep writing to it.
        store.put(b"added-here", [1])
        del store[b"int"]
    with raw_env(db_path, readonly=True).begin() as txn:
        assert pickle.loads(txn.get(b"added-here")) == [1]
        assert txn.get(b"int") is None
        assert pickle.loads(txn.get(b"str")) == VALUES[b"str"]


def test_py_lmdb_store_bigger_than_our_map_size(db_path, raw_env):
    """A store py-lmdb filled beyond our default map size opens and grows."""
    env = raw_env(db_path, map_size=64 * MiB)
    with env.begin(write=True) as txn:
        for i in range(12):
            txn.put(b"chunk%02d" % i, pickle.dumps(bytes([i]) * MiB))
    env.close()
    with LmdbObjectStore(db_path, map_size=2 * MiB) as store:
        assert store[b"chunk11"] == bytes([11]) * MiB
        store.put_many({b"more": b"m" * (4 * MiB)})
        assert store[b"more"] == b"m" * (4 * MiB)
    raw = raw_items(raw_env(db_path, readonly=True))
    assert pickle.loads(raw[b"more"]) == b"m" * (4 * MiB)
    assert len(raw) == 13


def test_single_file_store_both_ways(tmp_path, raw_env):
    path = str(tmp_path / "single.lmdb")
    env = raw_env(path, subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"from-py-lmdb", pickle.dumps({"x": 1}))
    env.close()
    with LmdbObjectStore(path, subdir=False) as store:
        assert store[b"from-py-lmdb"] == {"x": 1}
        store[b"from-here"] = [2]
    assert (tmp_path / "single.lmdb").is_file()
    assert (tmp_path / "single.lmdb-lock").is_file()
    raw = raw_items(raw_env(path, subdir=False, readonly=True))
    assert raw == {
        b"from-py-lmdb": pickle.dumps({"x": 1}),
        b"from-here": pickle.dumps([2], protocol=pickle.HIGHEST_PROTOCOL),
    }


def test_single_file_store_made_here_takes_py_lmdb_writes(tmp_path, raw_env):
    path = str(tmp_path / "one.lmdb")
    with LmdbObjectStore(path, subdir=False) as store:
        store[b"ours"] = "written here"
    env = raw_env(path, subdir=False)
    with env.begin(write=True) as txn:
        assert pickle.loads(txn.get(b"ours")) == "written here"
        txn.put(b"theirs", pickle.dumps("written by py-lmdb"))
    env.close()
    with LmdbObjectStore(path, subdir=False) as store:
        assert store[b"theirs"] == "written by py-lmdb"


def test_keys_on_disk_are_the_normalised_key_bytes(db_path, read_raw):
    with LmdbObjectStore(db_path, key_encoding="utf-8", str_normalize="NFC") as store:
        store["e\u0301"] = 1  # decomposed é, stored as NFC
        store[bytearray(b"ba")] = 2
        store[memoryview(b"mv")] = 3
        store["日本"] = 4
    raw = read_raw(db_path)
    assert set(raw) == {"\u00e9".encode(), b"ba", b"mv", "日本".encode()}


def test_key_order_on_disk_is_lmdb_byte_order(db_path, raw_env):
    keys = [b"b", b"a", b"\xff", b"\x00", b"aa", b"A"]
    with LmdbObjectStore(db_path) as store:
        for k in keys:
            store.put(k, k)
    env = raw_env(db_path, readonly=True)
    with env.begin() as txn:
        assert [bytes(k) for k in txn.cursor().iternext(values=False)] == sorted(keys)


def test_reference_package_layout_values(db_path, raw_env):
    """What lmdb-object-store 0.1.0 writes (py-lmdb + pickle.dumps with the
    highest protocol, str keys encoded) reads back here unchanged."""
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        txn.put("ключ".encode(), pickle.dumps({"v": 1}, protocol=pickle.HIGHEST_PROTOCOL))
    env.close()
    with LmdbObjectStore(db_path, key_encoding="utf-8") as store:
        assert store["ключ"] == {"v": 1}
        assert store.get_many(["ключ"], decode_keys=True) == ({"ключ": {"v": 1}}, [])


def test_round_trip_here_then_py_lmdb_then_here(db_path, raw_env):
    with LmdbObjectStore(db_path) as store:
        store.put(b"k", 1)
    env = raw_env(db_path)
    with env.begin(write=True) as txn:
        assert pickle.loads(txn.get(b"k")) == 1
        txn.put(b"k", pickle.dumps(2))
    env.close()
    with LmdbObjectStore(db_path) as store:
        assert store[b"k"] == 2
        store[b"k"] = 3
    with raw_env(db_path, readonly=True).begin() as txn:
        assert pickle.loads(txn.get(b"k")) == 3
