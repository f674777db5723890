"""The json and msgpack serializers write exactly the bytes of `json`'s
`JSONEncoder.encode` and `msgpack.packb`, read back what `json` and `msgpack`
read, and raise their errors, however the calls into them are made."""

import json
import math
import threading

import msgpack
import pytest

from lmdb_object_store import DecodeError, LmdbObjectStore

# The store's JSON settings: compact, UTF-8, strict.
ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

VALUES = {
    b"workload": {"id": 7, "name": "user7", "tags": ["a", "b"], "score": 3.5},
    b"str": 'héllo "quoted" \\ \n\t\x01 ☃ 𝄞',
    b"int": -(2**63),
    b"floats": [0.1, -0.0, 1e16, 1e-7, 2.5e300, 123456789.125],
    b"none": None,
    b"bools": [True, False],
    b"nested": {"a": {"b": [[], {}, [1, [2, [3]]]]}, "": ""},
    b"tuple": (1, "two", (3.0,)),
    b"int keys": {1: "one", 2.5: "x", False: None, None: 0},
    b"unicode keys": {"ключ": "значение", "\u2028": "line separator"},
    b"empty": {},
}
JSON_ONLY = {b"huge int": -(2**70), b"str alone": "☃"}
MSGPACK_ONLY = {
    b"bytes": b"\x00\xff",
    b"big": {"blob": bytes(range(256)) * 8192},  # over 1 MiB packed
    b"ints": [0, 127, 128, 255, 256, 65535, 65536, -1, -32, -33, -129, 2**63, -(2**63)],
}


def stored(raw_env, path):
    with raw_env(path).begin() as txn:
        return {k: bytes(v) for k, v in txn.cursor()}


def test_json_bytes_on_disk_are_the_json_modules(tmp_path, raw_env):
    path = tmp_path / "j"
    values = {**VALUES, **JSON_ONLY}
    with LmdbObjectStore(str(path), serializer="json") as store:
        for k, v in values.items():
            store[k] = v
        store.flush()
        for k, v in values.items():
            assert store[k] == json.loads(ENCODER.encode(v)), k
    on_disk = stored(raw_env, path)
    assert on_disk == {k: ENCODER.encode(v).encode() for k, v in values.items()}


def test_msgpack_bytes_on_disk_are_packbs(tmp_path, raw_env):
    path = tmp_path / "m"
    values = {**VALUES, **MSGPACK_ONLY}
    with LmdbObjectStore(str(path), serializer="msgpack") as store:
        # Twice over, small after big: a reused packer must start empty.
        for _ in range(2):
            for k, v in values.items():
                store[k] = v
        store.flush()
        for k, v in values.items():
            want = msgpack.unpackb(msgpack.packb(v), strict_map_key=False)
            assert store[k] == want, k
    assert stored(raw_env, path) == {k: msgpack.packb(v) for k, v in values.items()}


class Unknown:
    pass


@pytest.mark.parametrize(
    "value, exc_type, words",
    [
        ({"x": Unknown()}, TypeError, "is not JSON serializable"),
        (math.inf, ValueError, "not JSON compliant"),
        ("\ud800", UnicodeEncodeError, "surrogates not allowed"),
    ],
)
def test_json_encode_errors_are_the_modules(make_store, value, exc_type, words):
    store = make_store(serializer="json")
    with pytest.raises(exc_type, match=words):
        store[b"k"] = value
    assert store.pending == 0


def test_json_cycle_is_still_detected_and_later_values_encode(make_store):
    store = make_store(serializer="json")
    cycle: list = []
    cycle.append(cycle)
    shared = [1]
    for _ in range(3):
        with pytest.raises(ValueError, match="Circular reference detected"):
            store[b"k"] = {"a": shared, "c": cycle}
    # The same list twice is no cycle: no state is left from the failures.
    store[b"k"] = {"a": shared, "b": shared}
    assert store[b"k"] == {"a": [1], "b": [1]}


def test_msgpack_encode_error_then_reuse(make_store):
    store = make_store(serializer="msgpack")
    with pytest.raises(TypeError, match="can not serialize"):
        store[b"k"] = {"a": [1, 2, {3}]}
    store[b"k"] = {"a": [1, 2]}
    store.flush()
    assert store[b"k"] == {"a": [1, 2]}


@pytest.mark.parametrize(
    "raw, want",
    [
        (b' {"a":1}\n', {"a": 1}),  # white space around the value
        (b'"text"', "text"),
        (b"NaN", None),  # the json module reads it; compared with isnan below
        (b"[1, 2 ,3]", [1, 2, 3]),
    ],
)
def test_json_reads_what_the_json_module_reads(tmp_path, raw_env, raw, want):
    path = tmp_path / "j"
    LmdbObjectStore(str(path), serializer="json").close()
    env = raw_env(path)
    with env.begin(write=True) as txn:
        txn.put(b"k", raw)
    env.close()
    with LmdbObjectStore(str(path), serializer="json") as store:
        got = store[b"k"]
    if raw == b"NaN":
        assert math.isnan(got)
    else:
        assert got == want == json.loads(raw)


@pytest.mark.parametrize(
    "raw, words",
    [(b'{"a":1} x', "Extra data"), (b"", "Expecting value"), (b'{"a":', "Expecting value")],
)
def test_json_decode_errors_are_the_modules(tmp_path, raw_env, raw, words):
    path = tmp_path / "j"
    LmdbObjectStore(str(path), serializer="json").close()
    env = raw_env(path)
    with env.begin(write=True) as txn:
        txn.put(b"k", raw)
    env.close()
    with LmdbObjectStore(str(path), serializer="json") as store:
        with pytest.raises(DecodeError, match=words) as info:
            store[b"k"]
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_threads_encoding_at_once_write_their_own_bytes(tmp_path, raw_env, name):
    path = tmp_path / name
    dumps = (lambda v: ENCODER.encode(v).encode()) if name == "json" else msgpack.packb
    errors = []

    def writer(t):
        try:
            for i in range(2000):
                store[f"{t}:{i}".encode()] = {"t": t, "i": i, "pad": [t] * (i % 50)}
        except BaseException as exc:
            errors.append(exc)

    store = LmdbObjectStore(str(path), serializer=name, batch_size=10**6)
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    store.close()
    assert not errors
    on_disk = stored(raw_env, path)
    assert len(on_disk) == 8000
    for t in range(4):
        for i in range(2000):
            want = dumps({"t": t, "i": i, "pad": [t] * (i % 50)})
            assert on_disk[f"{t}:{i}".encode()] == want
