"""Edge cases of logging, iteration errors, options and pickling."""

import logging
import os
import pickle
import stat

import lmdb
import pytest

from lmdb_object_store import LmdbObjectStore, MapFullError, UnpickleError


def test_growth_is_logged_even_when_the_write_then_fails_at_the_cap(tmp_path, caplog):
    store = LmdbObjectStore(tmp_path / "db", map_size=1 << 20, max_map_size=3 << 20)
    with caplog.at_level(logging.INFO, logger="lmdb_object_store"):
        with pytest.raises(MapFullError):
            store.put_many((b"k%d" % i, b"x" * 200_000) for i in range(40))
    grew = [r for r in caplog.records if r.name == "lmdb_object_store" and "growing" in r.message]
    assert grew, "the growth that happened before MapFullError must be logged"
    assert store.info()["map_size"] == 3 << 20
    store.close()


def test_iteration_yields_good_items_before_an_unpicklable_one(tmp_path):
    path = tmp_path / "db"
    with LmdbObjectStore(path) as store:
        store.put_many({b"a": 1, b"b": 2})
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"c", b"not a pickle")
    env.close()
    with LmdbObjectStore(path) as store:
        it = iter(store.items())
        assert next(it) == (b"a", 1)
        assert next(it) == (b"b", 2)
        with pytest.raises(UnpickleError, match="DB key 'c'"):
            next(it)


def test_created_directory_follows_mode(tmp_path):
    old = os.umask(0)
    try:
        LmdbObjectStore(tmp_path / "db", mode=0o750).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "db").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "db" / "data.mdb").st_mode) == 0o750


def test_negative_pickle_protocol_means_the_highest(tmp_path):
    with LmdbObjectStore(tmp_path / "db", pickle_protocol=-1) as store:
        assert store.pickle_protocol == pickle.HIGHEST_PROTOCOL


@pytest.mark.parametrize(("given", "expected"), [(0, False), (1, True), ("", False), (None, True)])
def test_autoflush_on_read_takes_any_truthy_value(tmp_path, given, expected):
    with LmdbObjectStore(tmp_path / "db", autoflush_on_read=given) as store:
        assert store.autoflush_on_read is expected


def test_pickled_store_keeps_a_non_utf8_path(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"db-\xff")
    with LmdbObjectStore(path) as store:
        store[b"k"] = "v"
        store.flush()
        again = pickle.loads(pickle.dumps(store))
        assert again[b"k"] == "v"
        again.close()
