"""On-disk format: a plain LMDB environment whose values are exactly
pickle.dumps(obj, protocol); py-lmdb reads what we write and we read what
py-lmdb writes."""

import pickle

import lmdb
import pytest

from lmdb_object_store import LmdbObjectStore

VALUES = {
    b"int": 42,
    b"dict": {"a": [1, 2, 3], "b": ("x", None)},
    b"big": b"\x00" * 300_000,
    b"\xff\x00bin": {3.5, 4.5},
}


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_values_are_exactly_pickle_dumps_and_py_lmdb_reads_them(tmp_path, protocol):
    path = tmp_path / "db"
    with LmdbObjectStore(path, pickle_protocol=protocol) as store:
        store.put_many(VALUES.items())
        store[b"buffered"] = ["still", "buffered"]
    env = lmdb.open(str(path), readonly=True)
    with env.begin() as txn:
        for key, value in [*VALUES.items(), (b"buffered", ["still", "buffered"])]:
            raw = txn.get(key)
            assert raw == pickle.dumps(value, protocol=protocol)
        assert txn.stat()["entries"] == len(VALUES) + 1
    env.close()


def test_a_store_written_by_py_lmdb_opens_and_reads(tmp_path):
    path = tmp_path / "db"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in VALUES.items():
            txn.put(key, pickle.dumps(value))
    env.close()
    with LmdbObjectStore(path) as store:
        for key, value in VALUES.items():
            assert store[key] == value
        found, missing = store.get_many([b"int", b"nope"])
        assert found == {b"int": 42} and missing == [b"nope"]
        assert sorted(store.keys()) == sorted(VALUES)


def test_a_single_file_store_is_compatible_both_ways(tmp_path):
    path = tmp_path / "one.lmdb"
    with LmdbObjectStore(path, subdir=False) as store:
        store[b"ours"] = "written here"
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        assert pickle.loads(txn.get(b"ours")) == "written here"
        txn.put(b"theirs", pickle.dumps("written by py-lmdb"))
    env.close()
    with LmdbObjectStore(path, subdir=False) as store:
        assert store[b"theirs"] == "written by py-lmdb"


def test_deletions_reach_the_file(tmp_path):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as store:
        store.put_many({b"a": 1, b"b": 2})
        del store[b"a"]
    env = lmdb.open(str(path), readonly=True)
    with env.begin() as txn:
        assert txn.get(b"a") is None
        assert pickle.loads(txn.get(b"b")) == 2
    env.close()


def test_the_bundled_lmdb_is_used():
    # lmdb-rkv-sys bundles LMDB 0.9.24; the build never links a system
    # liblmdb (LIBLMDB_NO_PKG_CONFIG in .cargo/config.toml).
    from lmdb_object_store import lmdb_version

    assert lmdb_version() == (0, 9, 24)


def test_sdist_carries_the_build_setting():
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    cargo_config = (root / ".cargo" / "config.toml").read_text()
    assert 'LIBLMDB_NO_PKG_CONFIG = "1"' in cargo_config
    pyproject = (root / "pyproject.toml").read_text()
    assert '{ path = ".cargo/config.toml", format = "sdist" }' in pyproject
