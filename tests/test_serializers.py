"""serializer= and allowed=: each serializer's round trip, reading what another
serializer wrote, the safe serializer against hostile stored values, encode and
decode failures (docs/usage.md "Serializers")."""

import datetime
import decimal
import json
import pickle
import uuid

import msgpack
import pytest

from helpers import last_txnid, run_python
from lmdb_object_store import (
    DecodeError,
    Error,
    LmdbObjectStore,
    UnpickleError,
    UnsafeValueError,
)

PLAIN = {
    "none": None,
    "int": -(2**63),
    "float": 1.5,
    "str": "héllo",
    "list": [1, "two", [3.0]],
    "dict": {"a": {"b": [True, False, None]}},
}


def reads(store):
    """Every way the store reads values, committed or buffered."""
    keys = sorted(PLAIN)
    return {
        "get": {k: store.get(k) for k in keys},
        "getitem": {k: store[k] for k in keys},
        "get_many": store.get_many(keys, decode_keys=True)[0],
        "values": dict(zip(store.keys(), store.values(), strict=True)),
        "items": dict(store.items()),
    }


@pytest.mark.parametrize("name", ["pickle", "safe", "json", "msgpack"])
@pytest.mark.parametrize("committed", [True, False], ids=["committed", "buffered"])
def test_round_trip_plain_values(make_store, name, committed):
    store = make_store(serializer=name, key_encoding="utf-8", batch_size=10**6)
    assert store.serializer == name
    store.put_many(PLAIN)
    if committed:
        store.flush()
    for how, got in reads(store).items():
        assert got == PLAIN, how


def test_pickle_and_safe_keep_the_python_types(make_store, tmp_path):
    values = {
        "tuple": (1, 2),
        "set": {1, 2},
        "frozenset": frozenset({3}),
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"ab"),
        "complex": 1 + 2j,
        "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "date": datetime.date(2024, 1, 2),
        "decimal": decimal.Decimal("1.25"),
        "uuid": uuid.UUID(int=7),
        "int keys": {1: "a"},
    }
    for name in ("pickle", "safe"):
        store = make_store(str(tmp_path / name), serializer=name, key_encoding="utf-8")
        store.update(values)
        store.flush()
        for k, v in values.items():
            got = store[k]
            assert got == v and type(got) is type(v), (name, k)
        store.close()


def test_safe_writes_the_bytes_pickle_writes(make_store, tmp_path, raw_env):
    for name in ("pickle", "safe"):
        with LmdbObjectStore(str(tmp_path / name), serializer=name) as store:
            store[b"k"] = PLAIN
    stored = []
    for name in ("pickle", "safe"):
        env = raw_env(tmp_path / name)
        with env.begin() as txn:
            stored.append(txn.get(b"k"))
    assert stored[0] == stored[1] == pickle.dumps(PLAIN, protocol=5)


def test_json_and_msgpack_use_the_usual_mapping(make_store, tmp_path, raw_env):
    value = {"t": (1, 2), "n": 1.0, "s": "é"}
    with LmdbObjectStore(str(tmp_path / "j"), serializer="json") as store:
        store[b"k"] = value
        store[b"ints"] = {1: 2}
        assert store[b"k"] == {"t": [1, 2], "n": 1.0, "s": "é"}
        assert store[b"ints"] == {"1": 2}
    with LmdbObjectStore(str(tmp_path / "m"), serializer="msgpack") as store:
        store[b"k"] = value
        store[b"ints"] = {1: 2}
        store[b"bin"] = b"\x00"
        assert store[b"k"] == {"t": [1, 2], "n": 1.0, "s": "é"}
        assert store[b"ints"] == {1: 2}
        assert store[b"bin"] == b"\x00"
    # What other languages read: compact UTF-8 JSON, standard MessagePack.
    with raw_env(tmp_path / "j").begin() as txn:
        assert txn.get(b"k") == '{"t":[1,2],"n":1.0,"s":"é"}'.encode()
    with raw_env(tmp_path / "m").begin() as txn:
        assert msgpack.unpackb(txn.get(b"k")) == {"t": [1, 2], "n": 1.0, "s": "é"}


def test_raw_stores_bytes_like_values_as_they_are(make_store, tmp_path, raw_env):
    path = str(tmp_path / "raw")
    store = make_store(path, serializer="raw")
    mutable = bytearray(b"ba")
    store.put_many({b"b": b"\x80not a pickle", b"ba": mutable, b"mv": memoryview(b"xyz")[1:]})
    mutable[:] = b"!!"  # the store kept a copy
    assert store[b"ba"] == b"ba" and type(store[b"ba"]) is bytes
    store.flush()
    found = {b"b": b"\x80not a pickle", b"ba": b"ba", b"mv": b"yz"}
    assert store.get_many([b"b", b"ba", b"mv"]) == (found, [])
    assert dict(store.items()) == {b"b": b"\x80not a pickle", b"ba": b"ba", b"mv": b"yz"}
    assert store.pop(b"b") == b"\x80not a pickle"
    store.close()
    with raw_env(path).begin() as txn:
        assert txn.get(b"ba") == b"ba" and txn.get(b"mv") == b"yz"


class Rot13:
    """A custom serializer: text, rotated."""

    def __init__(self):
        self.seen = []

    def dumps(self, obj):
        return json.dumps(obj).encode()[::-1]

    def loads(self, buffer):
        self.seen.append(type(buffer))
        return json.loads(bytes(buffer)[::-1])


def test_custom_serializer(make_store, tmp_path, raw_env):
    ser = Rot13()
    path = str(tmp_path / "custom")
    store = make_store(path, serializer=ser)
    assert store.serializer is ser
    store[b"k"] = {"a": [1]}
    assert store[b"k"] == {"a": [1]}  # buffered
    store.flush()
    assert store[b"k"] == {"a": [1]}
    assert set(ser.seen) == {bytes}
    store.close()
    with raw_env(path).begin() as txn:
        assert txn.get(b"k") == b'{"a": [1]}'[::-1]


def test_a_store_pickles_with_its_serializer(make_store):
    store = make_store(serializer="safe", allowed=["collections.OrderedDict"])
    kwargs = store.__reduce__()[1][2]
    assert kwargs["serializer"] == "safe"
    assert kwargs["allowed"] == ["collections.OrderedDict"]
    store.close()
    with pickle.loads(pickle.dumps(store)) as again:
        assert again.serializer == "safe"


class Opaque:
    pass


ENCODE_FAILURES = {
    "safe": (Opaque(), UnsafeValueError),
    "raw": ("text is not bytes", TypeError),
    "json": ({"x": {1, 2}}, TypeError),
    "msgpack": (Opaque(), TypeError),
}


@pytest.mark.parametrize("name", list(ENCODE_FAILURES))
@pytest.mark.parametrize("how", ["put", "setitem", "put_many", "update", "setdefault"])
def test_a_value_that_does_not_encode_fails_at_the_call(make_store, name, how):
    value, exc_type = ENCODE_FAILURES[name]
    # Without autoflush, so that setdefault's read leaves the buffer as it is.
    store = make_store(serializer=name, key_encoding="utf-8", autoflush_on_read=False)
    good = b"ok" if name == "raw" else "ok"
    store["committed"] = good
    store.flush()
    store["old"] = good
    txnid = last_txnid(store)
    with pytest.raises(exc_type) as info:
        if how == "put":
            store.put("bad", value)
        elif how == "setitem":
            store["bad"] = value
        elif how == "put_many":
            store.put_many([("x", good), ("bad", value)])
        elif how == "update":
            store.update({"x": good, "bad": value})
        else:
            store.setdefault("bad", value)
    exc = info.value
    text = str(exc) + "\n".join(getattr(exc, "__notes__", []))
    assert "'bad'" in text
    if name == "safe":
        assert exc.key == "bad"
    else:
        assert f"serializer='{name}'" in text
    assert store.pending == 1
    assert last_txnid(store) == txnid
    assert store.get("x") is None and store.get("bad") is None
    assert store["old"] == good and store["committed"] == good


def test_json_refuses_nan_and_lone_surrogates(make_store):
    store = make_store(serializer="json")
    with pytest.raises(ValueError):
        store[b"k"] = float("nan")
    with pytest.raises(UnicodeEncodeError):
        store[b"k"] = "\ud800"
    assert store.pending == 0


def test_a_custom_dumps_must_return_bytes(make_store):
    class Bad:
        def dumps(self, obj):
            return "text"

        def loads(self, buffer):
            return buffer

    store = make_store(serializer=Bad())
    with pytest.raises(TypeError, match="bytes from dumps"):
        store[b"k"] = 1
    assert store.pending == 0


# Values each serializer writes, and whether each other serializer refuses them.
WRITTEN = {
    "pickle": {"a": 1},
    "json": {"a": 1},
    "msgpack": {"a": 1},
    "raw": b"\xc1\xff\x00 neither",
}
# (writer, reader) -> the error type the reader raises; absent: it decodes.
REFUSED = {
    ("pickle", "json"): DecodeError,
    ("pickle", "msgpack"): DecodeError,
    ("json", "pickle"): UnpickleError,
    ("json", "safe"): UnpickleError,
    ("json", "msgpack"): DecodeError,
    ("msgpack", "pickle"): UnpickleError,
    ("msgpack", "safe"): UnpickleError,
    ("msgpack", "json"): DecodeError,
    ("raw", "pickle"): UnpickleError,
    ("raw", "safe"): UnpickleError,
    ("raw", "json"): DecodeError,
    ("raw", "msgpack"): DecodeError,
}


@pytest.mark.parametrize("writer,reader", list(REFUSED))
def test_reading_what_another_serializer_wrote(tmp_path, raw_env, writer, reader):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, serializer=writer) as store:
        store.put_many({b"k": WRITTEN[writer], b"z": WRITTEN[writer]})
    with LmdbObjectStore(path, serializer=reader) as store:
        exc_type = REFUSED[(writer, reader)]
        assert issubclass(exc_type, DecodeError) and issubclass(exc_type, Error)
        for read in (
            lambda: store[b"k"],
            lambda: store.get(b"k"),
            lambda: store.get_many([b"k"]),
            lambda: list(store.values()),
            lambda: list(store.items()),
            lambda: store.pop(b"k"),
            lambda: store.popitem(),
        ):
            with pytest.raises(exc_type) as info:
                read()
            assert "key 'k'" in str(info.value)
            if exc_type is DecodeError:
                assert f"serializer='{reader}'" in str(info.value)
            assert info.value.__cause__ is not None
        assert len(store) == 2
    with raw_env(path).begin() as txn:
        stored = dict(txn.cursor())
    assert set(stored) == {b"k", b"z"}


def test_raw_reads_anything_as_its_bytes(tmp_path):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path) as store:
        store[b"k"] = {"a": 1}
    with LmdbObjectStore(path, serializer="raw") as store:
        assert store[b"k"] == pickle.dumps({"a": 1}, protocol=5)


def test_a_buffered_value_that_does_not_decode_names_the_key(make_store):
    class Flaky:
        def dumps(self, obj):
            return b"x"

        def loads(self, buffer):
            raise ValueError("no")

    store = make_store(serializer=Flaky())
    store[b"k"] = 1
    with pytest.raises(DecodeError, match="buffered key 'k'"):
        store[b"k"]
    assert store.pending == 1


def test_iteration_raises_with_the_key_and_the_store_stays_usable(tmp_path):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, serializer="raw") as store:
        store.put_many({b"a": b"1", b"b": b"\xff", b"c": b"3"})
    with LmdbObjectStore(path, serializer="json") as store:
        got = []
        with pytest.raises(DecodeError, match="key 'b'"):
            for v in store.values():
                got.append(v)
        assert got == [1]
        assert store[b"c"] == 3


HOSTILE_STORE = r"""
import json, os, pickle, sys
import lmdb
from lmdb_object_store import LmdbObjectStore, UnsafeValueError

path, marker = sys.argv[1], sys.argv[2]

class Payload:
    def __reduce__(self):
        return (os.mkdir, (marker,))

env = lmdb.open(path)
with env.begin(write=True) as txn:
    txn.put(b"evil", pickle.dumps({"inner": [Payload()]}, protocol=2))
    txn.put(b"fine", pickle.dumps([1, 2]))
env.close()
out = {}
with LmdbObjectStore(path, serializer="safe") as store:
    for name, read in [
        ("get", lambda: store.get(b"evil")),
        ("getitem", lambda: store[b"evil"]),
        ("get_many", lambda: store.get_many([b"fine", b"evil"])),
        ("values", lambda: list(store.values())),
        ("items", lambda: list(store.items())),
        ("pop", lambda: store.pop(b"evil")),
    ]:
        try:
            read()
            out[name] = "read"
        except UnsafeValueError as e:
            out[name] = [e.global_name, e.key.decode(), str(e)]
    out["fine"] = store[b"fine"]
    out["len"] = len(store)
out["ran"] = os.path.exists(marker)
print(json.dumps(out))
"""


def test_safe_refuses_a_hostile_stored_value_and_never_runs_it(tmp_path):
    marker = tmp_path / "marker"
    out = json.loads(run_python(HOSTILE_STORE, str(tmp_path / "db"), str(marker)))
    assert out.pop("ran") is False
    assert out.pop("fine") == [1, 2]
    assert out.pop("len") == 2
    for name, got in out.items():
        assert got[0] == "posix.mkdir", name
        assert got[1] == "evil", name
        assert "key 'evil'" in got[2], name


def test_allowed_widens_the_safe_set(make_store, tmp_path):
    import collections

    path = str(tmp_path / "db")
    with LmdbObjectStore(path) as store:
        store[b"k"] = collections.OrderedDict(a=1)
    with LmdbObjectStore(path, serializer="safe") as store:
        with pytest.raises(UnsafeValueError) as info:
            store[b"k"]
        assert info.value.global_name == "collections.OrderedDict"
        assert info.value.key == b"k"
    with LmdbObjectStore(path, serializer="safe", allowed={"collections.OrderedDict"}) as store:
        assert store[b"k"] == collections.OrderedDict(a=1)
        store[b"k2"] = collections.OrderedDict(b=2)
        assert store[b"k2"] == collections.OrderedDict(b=2)


@pytest.mark.parametrize(
    "kwargs,exc_type,words",
    [
        (
            {"serializer": "yaml"},
            ValueError,
            ["'yaml'", "'pickle'", "'safe'", "'raw'", "'json'", "'msgpack'"],
        ),
        ({"serializer": 3}, TypeError, ["serializer=", "dumps"]),
        ({"serializer": object()}, TypeError, ["serializer=", "dumps"]),
        ({"serializer": "json", "allowed": ["a.b"]}, ValueError, ["allowed=", "'json'"]),
        ({"allowed": ["a.b"]}, ValueError, ["allowed=", "'pickle'"]),
        ({"serializer": "safe", "allowed": "a.b"}, TypeError, ["allowed="]),
        ({"serializer": "safe", "allowed": ["nodot"]}, ValueError, ["allowed="]),
    ],
)
def test_bad_serializer_options(db_path, kwargs, exc_type, words):
    with pytest.raises(exc_type) as info:
        LmdbObjectStore(db_path, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_msgpack_missing_names_the_extra(tmp_path):
    out = run_python(
        """
        import sys
        sys.modules["msgpack"] = None
        from lmdb_object_store import LmdbObjectStore
        try:
            LmdbObjectStore(sys.argv[1], serializer="msgpack")
        except ImportError as e:
            print(e)
        """,
        str(tmp_path / "db"),
    )
    assert "lmdb-object-store[msgpack]" in out


def test_the_default_is_pickle_and_the_property_outlives_close(make_store, tmp_path):
    assert make_store().serializer == "pickle"
    store = make_store(str(tmp_path / "j"), serializer="json")
    store.close()
    assert store.serializer == "json"
