"""Constructor options (docs/usage.md "Opening a store") and the str-key
options (docs/usage.md "Keys")."""

from __future__ import annotations

import os
import pickle
import stat

import pytest

from helpers import KiB, MiB
from lmdb_object_store import LmdbObjectStore

# --------------------------------------------------------------------------
# Positional / keyword signature
# --------------------------------------------------------------------------


def test_batch_size_is_the_second_positional_argument(make_store):
    store = make_store(None, 3)
    assert store.batch_size == 3
    store.put(b"a", 1)
    store.put(b"b", 2)
    assert store.pending == 2
    store.put(b"c", 3)
    assert store.pending == 0


def test_db_path_and_batch_size_by_keyword(db_path):
    with LmdbObjectStore(db_path=db_path, batch_size=2) as store:
        assert store.batch_size == 2


def test_everything_else_is_keyword_only(db_path):
    with pytest.raises(TypeError):
        LmdbObjectStore(db_path, 10, True)


# --------------------------------------------------------------------------
# map_size, subdir, create, mode, max_readers, flags
# --------------------------------------------------------------------------


def test_signature_shows_the_constructor():
    import inspect

    params = inspect.signature(LmdbObjectStore).parameters
    assert list(params)[:2] == ["db_path", "batch_size"]
    assert params["batch_size"].default == 1000
    assert params["key_encoding"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["lmdb_options"].kind is inspect.Parameter.VAR_KEYWORD
    assert "db_path" in (LmdbObjectStore.__text_signature__ or "")


def test_default_map_size_is_10_mib(store):
    assert store.info()["map_size"] == 10 * MiB


def test_map_size_option(make_store):
    store = make_store(map_size=3 * MiB)
    assert store.info()["map_size"] == 3 * MiB


def test_default_subdir_creates_a_directory(store, tmp_path):
    store.put(b"a", 1)
    store.flush()
    assert (tmp_path / "db").is_dir()
    assert (tmp_path / "db" / "data.mdb").is_file()
    assert (tmp_path / "db" / "lock.mdb").is_file()


def test_subdir_false_uses_a_single_file(tmp_path, read_raw):
    path = str(tmp_path / "single.mdb")
    with LmdbObjectStore(path, subdir=False) as store:
        store.put(b"a", 1)
    assert os.path.isfile(path)
    assert os.path.isfile(path + "-lock")
    with LmdbObjectStore(path, subdir=False) as store:
        assert store[b"a"] == 1
    assert read_raw(path, subdir=False) == {b"a": pickle.dumps(1, protocol=pickle.HIGHEST_PROTOCOL)}


def test_create_false_on_existing_store_opens(db_path):
    LmdbObjectStore(db_path).close()
    with LmdbObjectStore(db_path, create=False) as store:
        store.put(b"a", 1)
        assert store.get(b"a") == 1


def test_mode_applies_to_created_files(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "m"
        with LmdbObjectStore(str(path), mode=0o600) as store:
            store.put(b"a", 1)
        assert stat.S_IMODE(os.stat(path / "data.mdb").st_mode) == 0o600
        path2 = tmp_path / "m2"
        with LmdbObjectStore(str(path2), mode=0o644) as store:
            store.put(b"a", 1)
        assert stat.S_IMODE(os.stat(path2 / "data.mdb").st_mode) == 0o644
    finally:
        os.umask(old_umask)


def test_created_directory_follows_mode(tmp_path):
    old_umask = os.umask(0)
    try:
        LmdbObjectStore(tmp_path / "db", mode=0o750).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "db").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "db" / "data.mdb").st_mode) == 0o750


def test_default_max_readers_is_1024(store):
    assert store.info()["max_readers"] == 1024


def test_max_readers_option(make_store):
    assert make_store(max_readers=50).info()["max_readers"] == 50


@pytest.mark.parametrize(
    "flags",
    [
        {"sync": False},
        {"metasync": False},
        {"sync": True, "metasync": True},
        {"map_async": True, "writemap": True},
        {"writemap": True},
        {"readahead": False},
        {"meminit": False},
        {"lock": True},
        {"lock": False},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_lmdb_flags_are_accepted_and_the_store_works(db_path, flags):
    with LmdbObjectStore(db_path, **flags) as store:
        store.put(b"a", {"flags": list(flags)})
        store.put_many({b"b": 2})
        store.sync()
        assert store.get(b"a") == {"flags": list(flags)}
    with LmdbObjectStore(db_path, **flags) as store:
        assert store.get_many([b"a", b"b"]) == ({b"a": {"flags": list(flags)}, b"b": 2}, [])


def test_readonly_option_and_property(db_path):
    LmdbObjectStore(db_path).close()
    with LmdbObjectStore(db_path, readonly=True) as ro:
        assert ro.readonly is True
    with LmdbObjectStore(db_path, readonly=False) as rw:
        assert rw.readonly is False


# --------------------------------------------------------------------------
# str_normalize
# --------------------------------------------------------------------------

E_ACUTE_NFC = "\u00e9"
E_ACUTE_NFD = "e\u0301"


@pytest.mark.parametrize(
    ("form", "given", "stored"),
    [
        ("NFC", E_ACUTE_NFD, E_ACUTE_NFC),
        ("NFC", E_ACUTE_NFC, E_ACUTE_NFC),
        ("NFD", E_ACUTE_NFC, E_ACUTE_NFD),
        ("NFKC", "\ufb01le", "file"),  # "fi" ligature
        ("NFKD", "\ufb01" + E_ACUTE_NFC, "fi" + E_ACUTE_NFD),
        ("NFKC", "\u2460", "1"),  # circled digit one
        (None, E_ACUTE_NFD, E_ACUTE_NFD),
    ],
)
def test_str_normalize_forms(make_store, form, given, stored):
    store = make_store(key_encoding="utf-8", str_normalize=form)
    store[given] = "v"
    store.flush()
    assert store.get(stored.encode("utf-8")) == "v"
    assert store[given] == "v"
    found, _ = store.get_many([given])
    assert list(found) == [stored.encode("utf-8")]
    found, _ = store.get_many([given], decode_keys=True)
    assert list(found) == [stored]


def test_str_normalize_makes_equivalent_strings_one_key(make_store):
    store = make_store(key_encoding="utf-8", str_normalize="NFC")
    store[E_ACUTE_NFD] = 1
    store[E_ACUTE_NFC] = 2
    assert store.pending == 1
    assert store[E_ACUTE_NFD] == 2
    assert E_ACUTE_NFC in store
    del store[E_ACUTE_NFD]
    assert E_ACUTE_NFC not in store


def test_without_str_normalize_equivalent_strings_are_distinct(make_store):
    store = make_store(key_encoding="utf-8")
    store[E_ACUTE_NFD] = 1
    store[E_ACUTE_NFC] = 2
    assert store.pending == 2
    assert store[E_ACUTE_NFD] == 1
    assert store[E_ACUTE_NFC] == 2


def test_str_normalize_does_not_touch_bytes_keys(make_store):
    store = make_store(key_encoding="utf-8", str_normalize="NFC")
    store[E_ACUTE_NFD.encode()] = "bytes"
    store.flush()
    assert store.get(E_ACUTE_NFC.encode()) is None
    assert store.get(E_ACUTE_NFD.encode()) == "bytes"


def test_invalid_str_normalize_is_value_error(db_path):
    store = None
    with pytest.raises(ValueError):
        store = LmdbObjectStore(db_path, key_encoding="utf-8", str_normalize="NFX")
        store.put("a", 1)  # if not rejected at construction, at first use
    if store is not None:
        store.close()


# --------------------------------------------------------------------------
# key_encoding / key_errors
# --------------------------------------------------------------------------


def test_utf16le_encoding(make_store, db_path, read_raw):
    store = make_store(key_encoding="utf-16-le")
    store["ab"] = 1
    store["é"] = 2
    store.flush()
    assert store[b"a\x00b\x00"] == 1
    assert store.get("é".encode("utf-16-le")) == 2
    found, not_found = store.get_many(["ab", "zz"], decode_keys=True)
    assert found == {"ab": 1}
    assert not_found == ["zz"]
    found, not_found = store.get_many(["ab", "zz"])
    assert found == {b"a\x00b\x00": 1}
    store.close()
    assert set(read_raw(db_path)) == {b"a\x00b\x00", "é".encode("utf-16-le")}


def test_latin1_encoding(make_store):
    store = make_store(key_encoding="latin-1")
    store["é"] = 1
    store.flush()
    assert store[b"\xe9"] == 1
    assert store.get_many([b"\xe9"], decode_keys=True) == ({"é": 1}, [])
    with pytest.raises(UnicodeEncodeError):
        store["€"] = 2
    assert store.pending == 0


@pytest.mark.parametrize(
    ("errors", "stored"),
    [
        ("replace", b"a?b"),
        ("ignore", b"ab"),
        ("xmlcharrefreplace", b"a&#8364;b"),
        ("backslashreplace", b"a\\u20acb"),
    ],
)
def test_key_errors_handlers(make_store, errors, stored):
    store = make_store(key_encoding="latin-1", key_errors=errors)
    store["a€b"] = "v"
    store.flush()
    assert store.get(stored) == "v"
    assert store["a€b"] == "v"


def test_key_errors_strict_is_default(make_store):
    store = make_store(key_encoding="ascii")
    with pytest.raises(UnicodeEncodeError):
        store.put("ü", 1)
    store.put("u", 1)
    assert store.pending == 1


def test_key_errors_in_decode_keys(make_store):
    store = make_store(key_encoding="utf-8", key_errors="replace")
    store.put(b"\xffx", 1)
    found, _ = store.get_many([b"\xffx"], decode_keys=True)
    assert found == {"\ufffdx": 1}


def test_unknown_key_encoding_is_lookup_error(db_path):
    store = None
    with pytest.raises(LookupError):
        store = LmdbObjectStore(db_path, key_encoding="no-such-codec-xyz")
        store.put("a", 1)  # if not rejected at construction, at first use
    if store is not None:
        store.close()


def test_utf8_spellings(make_store, db_path):
    for i, spelling in enumerate(["utf-8", "UTF-8", "utf8"]):
        store = make_store(f"{db_path}-{i}", key_encoding=spelling)
        store["ä"] = i
        store.flush()
        assert store[b"\xc3\xa4"] == i
        store.close()


# --------------------------------------------------------------------------
# autoflush_on_read
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [(0, False), (1, True), ("", False), (None, True)])
def test_autoflush_on_read_takes_any_truthy_value(db_path, given, expected):
    with LmdbObjectStore(db_path, autoflush_on_read=given) as store:
        assert store.autoflush_on_read is expected


# --------------------------------------------------------------------------
# pickle_protocol
# --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_pickle_protocol_honoured(db_path, read_raw, protocol):
    value = {"a": [1, 2.5, "x", b"y"], "b": (None, True)}
    with LmdbObjectStore(db_path, pickle_protocol=protocol) as store:
        store.put(b"put", value)
        store.put_many({b"many": value})
        store[b"set"] = value
    raw = read_raw(db_path)
    expected = pickle.dumps(value, protocol=protocol)
    assert raw == {b"put": expected, b"many": expected, b"set": expected}


def test_default_pickle_protocol_is_highest(db_path, read_raw):
    with LmdbObjectStore(db_path) as store:
        store.put(b"k", [1, "two"])
    assert read_raw(db_path)[b"k"] == pickle.dumps([1, "two"], protocol=pickle.HIGHEST_PROTOCOL)


def test_negative_pickle_protocol_means_the_highest(db_path):
    with LmdbObjectStore(db_path, pickle_protocol=-1) as store:
        assert store.pickle_protocol == pickle.HIGHEST_PROTOCOL


# --------------------------------------------------------------------------
# max_buffer_bytes, max_map_size
# --------------------------------------------------------------------------


def test_max_buffer_bytes_triggers_a_flush(make_store):
    store = make_store(batch_size=10_000, max_buffer_bytes=64 * KiB)
    for i in range(5):
        store.put(b"k%d" % i, b"x" * (10 * KiB))
    assert store.pending == 5  # ~50 KiB: under the limit
    for i in range(5, 8):
        store.put(b"k%d" % i, b"x" * (10 * KiB))
    assert store.pending < 8  # went over 64 KiB: flushed
    store.flush()
    assert store.stat()["entries"] == 8


def test_default_max_buffer_bytes_is_64_mib(make_store):
    store = make_store(batch_size=10_000, map_size=256 * MiB, sync=False)
    chunk = b"x" * MiB
    for i in range(60):
        store.put(b"k%02d" % i, chunk)
    assert store.pending == 60  # 60 MiB: under the default 64 MiB
    for i in range(60, 70):
        store.put(b"k%02d" % i, chunk)
    assert store.pending < 70


def test_max_map_size_option(make_store):
    store = make_store(map_size=1 * MiB, max_map_size=2 * MiB)
    assert store.max_map_size == 2 * MiB
