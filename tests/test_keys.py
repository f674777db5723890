"""Keys (docs/usage.md "Keys") and the key-related parts of reads: KeyError
messages and get_many (docs/usage.md "Reads", "get_many")."""

from __future__ import annotations

import array
import gc
import random

import pytest

from helpers import last_txnid

# --------------------------------------------------------------------------
# Accepted key types
# --------------------------------------------------------------------------


def test_bytes_bytearray_memoryview_are_the_same_key(store):
    store.put(bytearray(b"key"), 1)
    assert store.get(b"key") == 1
    assert store.get(memoryview(b"key")) == 1
    assert store.get(bytearray(b"key")) == 1
    store.put(memoryview(b"key"), 2)
    assert store.pending == 1  # still one buffered entry for that key
    store.flush()
    assert store.get(b"key") == 2
    assert store[bytearray(b"key")] == 2
    assert memoryview(b"key") in store


def test_memoryview_slice_uses_the_viewed_bytes(store):
    view = memoryview(b"xxkeyxx")[2:5]
    store[view] = "v"
    store.flush()
    assert store.get(b"key") == "v"
    found, not_found = store.get_many([b"key"])
    assert found == {b"key": "v"}
    assert not_found == []


def test_memoryview_of_non_byte_items_uses_its_raw_bytes(store):
    arr = array.array("H", [1, 2, 3])
    store.put(memoryview(arr), "shorts")
    store.flush()
    assert store.get(arr.tobytes()) == "shorts"


def test_mutating_bytearray_after_put_does_not_change_key(store):
    key = bytearray(b"abc")
    store.put(key, 1)
    key[0] = ord("z")
    assert store.get(b"abc") == 1
    assert store.get(b"zbc") is None
    store.flush()
    assert store.get(b"abc") == 1
    assert store.get(b"zbc") is None


def test_found_keys_are_normalised_to_bytes(store):
    store.put(b"a", 1)
    store.put(b"b", 2)
    store.flush()
    found, _ = store.get_many([bytearray(b"a"), memoryview(b"b")])
    assert found == {b"a": 1, b"b": 2}
    assert all(type(k) is bytes for k in found)


# --------------------------------------------------------------------------
# Rejected key types
# --------------------------------------------------------------------------


def _every_key_call(store, key):
    """One lambda per public method that takes a key."""
    return {
        "put": lambda: store.put(key, 1),
        "setitem": lambda: store.__setitem__(key, 1),
        "get": lambda: store.get(key),
        "getitem": lambda: store[key],
        "delete": lambda: store.delete(key),
        "delitem": lambda: store.__delitem__(key),
        "exists": lambda: store.exists(key),
        "contains": lambda: key in store,
        "get_many": lambda: store.get_many([b"ok", key]),
        "put_many": lambda: store.put_many([(b"ok", 1), (key, 2)]),
    }


CALLS = [
    "put",
    "setitem",
    "get",
    "getitem",
    "delete",
    "delitem",
    "exists",
    "contains",
    "get_many",
    "put_many",
]


@pytest.mark.parametrize("call", CALLS)
def test_none_key_is_type_error_with_exact_message(store, call):
    store.put(b"buffered", 1)
    with pytest.raises(TypeError) as exc_info:
        _every_key_call(store, None)[call]()
    assert str(exc_info.value) == "Key cannot be None."
    assert store.pending == 1
    assert store.get(b"ok") is None


@pytest.mark.parametrize("call", CALLS)
def test_str_key_without_key_encoding_is_type_error(store, call):
    store.put(b"buffered", 1)
    with pytest.raises(TypeError, match="str keys are not allowed"):
        _every_key_call(store, "text")[call]()
    assert store.pending == 1
    assert store.get(b"ok") is None


@pytest.mark.parametrize("call", CALLS)
def test_int_key_is_type_error_naming_the_type(store, call):
    store.put(b"buffered", 1)
    with pytest.raises(TypeError) as exc_info:
        _every_key_call(store, 42)[call]()
    msg = str(exc_info.value)
    assert "Key must be bytes-like" in msg
    assert "int" in msg
    assert store.pending == 1
    assert store.get(b"ok") is None


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(1.5, "float"), ([b"a"], "list"), ((b"a",), "tuple"), (object(), "object")],
)
def test_other_key_types_are_type_error_naming_the_type(store, key, type_name):
    for fn in (lambda: store.put(key, 1), lambda: store.get(key), lambda: key in store):
        with pytest.raises(TypeError) as exc_info:
            fn()
        assert "Key must be bytes-like" in str(exc_info.value)
        assert type_name in str(exc_info.value)
    assert store.pending == 0


def test_str_key_rejected_even_for_reads_of_missing_keys(make_store):
    store = make_store(autoflush_on_read=False)
    with pytest.raises(TypeError, match="str keys are not allowed"):
        store.get("missing", "default")


def test_bool_is_not_a_key(store):
    with pytest.raises(TypeError, match="Key must be bytes-like"):
        store.put(True, 1)


# --------------------------------------------------------------------------
# str keys with key_encoding
# --------------------------------------------------------------------------


def test_str_keys_with_utf8_encoding(make_store):
    store = make_store(key_encoding="utf-8")
    store["café"] = 1
    store.put("日本", 2)
    store.flush()
    assert store.get("café".encode()) == 1
    assert store["日本".encode()] == 2
    assert store["café"] == 1
    assert "日本" in store
    assert store.exists("café")
    store.delete("café")
    assert store.get("café") is None
    assert store.get("café".encode()) is None


def test_str_and_bytes_keys_are_one_entry(make_store):
    store = make_store(key_encoding="utf-8")
    store["k"] = 1
    store[b"k"] = 2
    assert store.pending == 1
    assert store["k"] == 2


def test_str_key_errors_strict_raises_unicode_error(make_store):
    store = make_store(key_encoding="ascii")
    with pytest.raises(UnicodeEncodeError):
        store.put("é", 1)
    assert store.pending == 0


def test_str_key_encoding_still_rejects_other_types(make_store):
    store = make_store(key_encoding="utf-8")
    with pytest.raises(TypeError, match="Key must be bytes-like") as exc_info:
        store.put(3, 1)
    assert "int" in str(exc_info.value)
    with pytest.raises(TypeError) as exc_info:
        store.put(None, 1)
    assert str(exc_info.value) == "Key cannot be None."


def test_surrogate_in_utf8_key_fails_strict(make_store):
    store = make_store(key_encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        store.put("\ud800", 1)
    assert store.pending == 0


def test_surrogate_in_utf8_key_with_surrogatepass(make_store):
    store = make_store(key_encoding="utf-8", key_errors="surrogatepass")
    store.put("\ud800", 1)
    store.flush()
    assert store.get(b"\xed\xa0\x80") == 1


# --------------------------------------------------------------------------
# Key size: 1..=511 bytes
# --------------------------------------------------------------------------


def test_key_sizes_1_and_511_are_accepted(store):
    store.put(b"k", 1)
    store.put(b"x" * 511, 2)
    store.put_many([(b"y" * 511, 3)])
    store.flush()
    assert store.get(b"k") == 1
    assert store.get(b"x" * 511) == 2
    assert store[b"y" * 511] == 3
    found, _ = store.get_many([b"x" * 511])
    assert found == {b"x" * 511: 2}


BAD_KEYS = [b"", b"k" * 512, b"k" * 4096]


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["empty", "512", "4096"])
@pytest.mark.parametrize(
    "write",
    ["put", "setitem", "put_many_first", "put_many_last", "put_many_mapping"],
)
def test_out_of_range_key_write_is_value_error_and_changes_nothing(store, bad, write):
    store.put(b"committed", 0)
    store.flush()
    store.put(b"buffered", 1)
    txnid = last_txnid(store)
    calls = {
        "put": lambda: store.put(bad, 2),
        "setitem": lambda: store.__setitem__(bad, 2),
        "put_many_first": lambda: store.put_many([(bad, 2), (b"other", 3)]),
        "put_many_last": lambda: store.put_many([(b"other", 3), (bad, 2)]),
        "put_many_mapping": lambda: store.put_many({b"other": 3, bad: 2}),
    }
    with pytest.raises(ValueError) as exc_info:
        calls[write]()
    assert "key" in str(exc_info.value).lower()
    # Buffer and database untouched: nothing committed, nothing buffered.
    assert store.pending == 1
    assert last_txnid(store) == txnid
    assert store.get(b"other") is None
    assert store.get(b"committed") == 0
    assert store.get(b"buffered") == 1


def test_out_of_range_key_via_str_encoding(make_store):
    store = make_store(key_encoding="utf-8")
    with pytest.raises(ValueError):
        store.put("", 1)
    # 256 two-byte characters encode to 512 bytes.
    with pytest.raises(ValueError):
        store.put("é" * 256, 1)
    store.put("é" * 255 + "x", 1)  # 511 bytes
    assert store.pending == 1


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["empty", "512", "4096"])
@pytest.mark.parametrize("autoflush", [True, False])
def test_out_of_range_key_reads_find_nothing(make_store, bad, autoflush):
    store = make_store(autoflush_on_read=autoflush)
    store.put(b"a", 1)
    store.flush()
    store.put(b"b", 2)
    assert store.get(bad) is None
    assert store.get(bad, "dflt") == "dflt"
    with pytest.raises(KeyError):
        store[bad]
    assert (bad in store) is False
    assert store.exists(bad) is False
    assert store.exists(bad, flush=True) is False
    assert store.exists(bad, flush=False) is False
    found, not_found = store.get_many([b"a", bad, b"b"])
    assert found == {b"a": 1, b"b": 2}
    assert not_found == [bad]


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["empty", "512", "4096"])
def test_del_of_out_of_range_key_is_key_error(store, bad):
    store.put(b"a", 1)
    with pytest.raises(KeyError):
        del store[bad]
    assert store.pending == 1


@pytest.mark.parametrize("bad", BAD_KEYS, ids=["empty", "512", "4096"])
def test_delete_of_out_of_range_key_never_poisons_the_buffer(store, bad):
    """delete() of an impossible key may raise ValueError or do nothing, but a
    later flush must still succeed and write the other entries."""
    store.put(b"a", 1)
    try:
        store.delete(bad)
    except ValueError:
        assert store.pending == 1
    store.put(b"b", 2)
    store.flush()
    assert store.pending == 0
    assert store.get(b"a") == 1
    assert store.get(b"b") == 2


# --------------------------------------------------------------------------
# KeyError messages
# --------------------------------------------------------------------------


def _key_error_message(store, key):
    with pytest.raises(KeyError) as exc_info:
        store[key]
    assert len(exc_info.value.args) == 1
    return exc_info.value.args[0]


def test_key_error_message_printable_key(store):
    assert _key_error_message(store, b"abc") == "Key not found: 'abc'"


def test_key_error_message_printable_utf8_key(store):
    assert _key_error_message(store, "café".encode()) == "Key not found: 'café'"


def test_key_error_message_str_key(make_store):
    store = make_store(key_encoding="utf-8")
    assert _key_error_message(store, "abc") == "Key not found: 'abc'"


def test_key_error_message_binary_key_is_hex(store):
    assert _key_error_message(store, b"\x00\xff\x10") == "Key not found: 0x00ff10"


def test_key_error_message_invalid_utf8_is_hex(store):
    assert _key_error_message(store, b"\xc3") == "Key not found: 0xc3"


def test_key_error_message_long_keys_are_cut(store):
    for key in (b"a" * 500, bytes(range(256)) + bytes(range(200))):
        msg = _key_error_message(store, key)
        assert msg.startswith("Key not found: ")
        assert len(msg) < 150


def test_key_error_on_del_has_same_message(store):
    with pytest.raises(KeyError) as exc_info:
        del store[b"abc"]
    assert exc_info.value.args[0] == "Key not found: 'abc'"
    with pytest.raises(KeyError) as exc_info:
        del store[b"\x01\x02"]
    assert exc_info.value.args[0] == "Key not found: 0x0102"


def test_key_error_is_raised_for_tombstoned_key(store):
    store.put(b"abc", 1)
    store.flush()
    store.delete(b"abc")
    with pytest.raises(KeyError) as exc_info:
        store[b"abc"]
    assert exc_info.value.args[0] == "Key not found: 'abc'"


# --------------------------------------------------------------------------
# get_many
# --------------------------------------------------------------------------


def test_get_many_found_and_not_found_in_caller_order(store):
    store.put_many({b"a": 1, b"c": 3})
    found, not_found = store.get_many([b"z", b"a", b"y", b"c", b"x"])
    assert found == {b"a": 1, b"c": 3}
    assert not_found == [b"z", b"y", b"x"]


def test_get_many_found_keeps_the_callers_order(make_store):
    # The database is read in key order; the dict is still in the caller's.
    store = make_store(autoflush_on_read=False)
    store.put_many({b"%03d" % i: i for i in range(200)})
    store.put(b"150", "buffered")
    wanted = [b"%03d" % i for i in random.Random(5).sample(range(200), 200)]
    found, not_found = store.get_many(wanted + wanted[:20])
    assert list(found) == wanted
    assert found[b"150"] == "buffered"
    assert all(found[k] == int(k) for k in wanted if k != b"150")
    assert not_found == []


def test_get_many_repeated_db_keys_each_get_the_value(store):
    store.put_many({b"a": [1], b"b": [2]})
    found, not_found = store.get_many([b"b", b"a", b"b", b"zz", b"b", b"zz"])
    assert found == {b"b": [2], b"a": [1]}
    assert list(found) == [b"b", b"a"]
    assert not_found == [b"zz", b"zz"]


def test_get_many_pauses_the_garbage_collector_while_it_loads(store, hooked):
    seen = []
    hooked.hook = lambda obj: seen.append(gc.isenabled())
    store.put_many({b"a": hooked("a"), b"b": hooked("b")})
    store.put(b"c", hooked("c"))  # buffered: unpickled under the pause too
    assert gc.isenabled()
    found, _ = store.get_many([b"a", b"b", b"c"])
    assert seen == [False, False, False]
    assert gc.isenabled()  # resumed


def test_get_many_leaves_a_disabled_collector_disabled(store, hooked):
    store.put_many({b"a": hooked("a"), b"b": hooked("b")})
    gc.disable()
    try:
        store.get_many([b"a", b"b"])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_get_many_resumes_the_collector_after_an_error(store, hooked):
    def boom(obj):
        raise RuntimeError("no")

    hooked.hook = boom
    store.put_many({b"a": hooked("a"), b"b": hooked("b")})
    with pytest.raises(RuntimeError):
        store.get_many([b"a", b"b"])
    assert gc.isenabled()


def test_get_many_keeps_duplicates_in_not_found(store):
    store.put(b"a", 1)
    found, not_found = store.get_many([b"m", b"a", b"m", b"a", b"n", b"m"])
    assert found == {b"a": 1}
    assert not_found == [b"m", b"m", b"n", b"m"]


def test_get_many_not_found_keeps_callers_key_objects(store):
    ba = bytearray(b"q")
    found, not_found = store.get_many([ba, b"r"])
    assert found == {}
    assert not_found == [bytearray(b"q"), b"r"]
    assert type(not_found[0]) is bytearray
    assert type(not_found[1]) is bytes


def test_get_many_empty(store):
    assert store.get_many([]) == ({}, [])


def test_get_many_accepts_any_iterable(store):
    store.put(b"a", 1)
    found, not_found = store.get_many(k for k in (b"a", b"b"))
    assert found == {b"a": 1}
    assert not_found == [b"b"]


def test_get_many_merges_buffer_and_db(make_store):
    store = make_store(autoflush_on_read=False)
    store.put_many({b"db_only": 1, b"shadowed": 2, b"deleted": 3})
    store.put(b"buf_only", 4)
    store.put(b"shadowed", 20)
    store.delete(b"deleted")
    found, not_found = store.get_many([b"db_only", b"shadowed", b"deleted", b"buf_only", b"none"])
    assert found == {b"db_only": 1, b"shadowed": 20, b"buf_only": 4}
    assert not_found == [b"deleted", b"none"]


def test_get_many_decode_keys(make_store):
    store = make_store(key_encoding="utf-8")
    store.put_many({"ä": 1, "b": 2})
    found, not_found = store.get_many(["ä", b"b", "zz", "ä".encode(), b"yy"], decode_keys=True)
    assert found == {"ä": 1, "b": 2}
    assert all(type(k) is str for k in found)
    # decode_not_found follows decode_keys: bytes keys come back decoded.
    assert not_found == ["zz", "yy"]
    assert all(type(k) is str for k in not_found)


def test_get_many_without_decode_returns_bytes_keys(make_store):
    store = make_store(key_encoding="utf-8")
    store.put("ä", 1)
    found, not_found = store.get_many(["ä", "zz", b"yy"])
    assert found == {"ä".encode(): 1}
    assert not_found == ["zz", b"yy"]


def test_get_many_decode_not_found_independent(make_store):
    store = make_store(key_encoding="utf-8")
    store.put(b"a", 1)
    found, not_found = store.get_many([b"a", b"x"], decode_keys=True, decode_not_found=False)
    assert found == {"a": 1}
    assert not_found == [b"x"]
    found, not_found = store.get_many([b"a", b"x"], decode_keys=False, decode_not_found=True)
    assert found == {b"a": 1}
    assert not_found == ["x"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"decode_keys": True},
        {"decode_not_found": True},
        {"decode_keys": True, "decode_not_found": False},
    ],
)
def test_get_many_decode_without_key_encoding_is_value_error(store, kwargs):
    store.put(b"a", 1)
    with pytest.raises(ValueError):
        store.get_many([b"a"], **kwargs)
    assert store.pending == 1


def test_get_many_no_decode_without_key_encoding_is_fine(store):
    store.put(b"a", 1)
    assert store.get_many([b"a"], decode_keys=False, decode_not_found=False) == ({b"a": 1}, [])


def test_get_many_bad_key_type_is_type_error(store):
    with pytest.raises(TypeError) as exc_info:
        store.get_many([b"a", None])
    assert str(exc_info.value) == "Key cannot be None."
    with pytest.raises(TypeError, match="Key must be bytes-like"):
        store.get_many([b"a", 5])
