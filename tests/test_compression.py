"""compression= and compression_threshold=: round trips with every serializer,
the threshold, stores that mix plain and compressed values, raw values that look
like a frame, corrupt and oversized frames, bad options, and the bytes on disk
(docs/usage.md "Compression")."""

import os
import pickle
import random
import struct

import numpy as np
import pytest

from helpers import run_python
from lmdb_object_store import DecodeError, LmdbObjectStore, UnpickleError

MAGIC = b"\xc1LOS"
STORED, ZSTD, LZ4 = 0, 1, 2
METHODS = ["zstd", "lz4"]
SERIALIZERS = ["pickle", "safe", "raw", "json", "msgpack", "custom"]


def frame(method: int, declared: int, payload: bytes) -> bytes:
    return MAGIC + bytes([method]) + struct.pack("<Q", declared) + payload


class Reversed:
    """A custom serializer whose bytes are pickle's, reversed."""

    def dumps(self, obj):
        return pickle.dumps(obj)[::-1]

    def loads(self, data):
        return pickle.loads(bytes(data)[::-1])


def serializer_arg(name):
    return Reversed() if name == "custom" else name


def sample_values(name):
    """A value far above the default threshold and one far below, per serializer."""
    if name == "raw":
        return {"big": b"record;" * 2000, "small": b"tiny"}
    big = [{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(300)]
    return {"big": big, "small": {"id": 1}}


def raw_db(read_raw, path):
    return read_raw(path)


@pytest.mark.parametrize("compression", [None, *METHODS])
@pytest.mark.parametrize("name", SERIALIZERS)
def test_round_trip_every_serializer(tmp_path, read_raw, name, compression):
    path = str(tmp_path / "db")
    values = sample_values(name)
    store = LmdbObjectStore(
        path,
        serializer=serializer_arg(name),
        compression=compression,
        key_encoding="utf-8",
        batch_size=10**6,
    )
    store.update(values)
    # Buffered reads decode the same framed bytes a commit writes.
    assert {k: store[k] for k in values} == values
    store.flush()
    assert {k: store[k] for k in values} == values
    assert dict(store.items()) == values
    assert store.get_many(list(values), decode_keys=True)[0] == values
    with store.snapshot() as snap:
        assert {k: snap[k] for k in values} == values
    store.close()
    on_disk = raw_db(read_raw, path)
    assert on_disk[b"big"].startswith(MAGIC) == (compression is not None)
    assert not on_disk[b"small"].startswith(MAGIC)
    reopened = LmdbObjectStore(
        path,
        serializer=serializer_arg(name),
        compression=compression,
        key_encoding="utf-8",
    )
    try:
        assert reopened.popitem() == ("big", values["big"])
        assert reopened.popitem() == ("small", values["small"])
    finally:
        reopened.close()


@pytest.mark.parametrize("compression", METHODS)
def test_compressed_values_are_smaller_on_disk(tmp_path, read_raw, compression):
    value = [{"id": i, "name": f"user{i}"} for i in range(2000)]
    plain_path, packed_path = str(tmp_path / "plain"), str(tmp_path / "packed")
    for path, comp in ((plain_path, None), (packed_path, compression)):
        with LmdbObjectStore(path, compression=comp) as store:
            store[b"k"] = value
    plain, packed = read_raw(plain_path)[b"k"], read_raw(packed_path)[b"k"]
    assert plain == pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert packed[4] == {"zstd": ZSTD, "lz4": LZ4}[compression]
    assert struct.unpack("<Q", packed[5:13])[0] == len(plain)
    assert len(packed) < len(plain) // 3


@pytest.mark.parametrize("compression", METHODS)
def test_threshold_edges(tmp_path, read_raw, compression):
    path = str(tmp_path / "db")
    values = {b"below": b"a" * 99, b"at": b"a" * 100, b"above": b"a" * 101}
    with LmdbObjectStore(
        path, serializer="raw", compression=compression, compression_threshold=100
    ) as store:
        assert store.compression == compression
        assert store.compression_threshold == 100
        store.update(values)
    on_disk = read_raw(path)
    assert on_disk[b"below"] == values[b"below"]
    assert on_disk[b"at"].startswith(MAGIC)
    assert on_disk[b"above"].startswith(MAGIC)
    with LmdbObjectStore(path, serializer="raw", compression=compression) as store:
        assert dict(store.items()) == values


def test_threshold_zero_compresses_whatever_shrinks(tmp_path, read_raw):
    path = str(tmp_path / "db")
    with LmdbObjectStore(
        path, serializer="raw", compression="zstd", compression_threshold=0
    ) as store:
        store[b"empty"] = b""
        store[b"short"] = b"ab"
        store[b"repeats"] = b"ab" * 40
    on_disk = read_raw(path)
    # A frame that would not be smaller is never written.
    assert on_disk[b"empty"] == b""
    assert on_disk[b"short"] == b"ab"
    assert on_disk[b"repeats"].startswith(MAGIC)


def test_the_default_threshold_is_1_kib(tmp_path, read_raw):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, serializer="raw", compression="lz4") as store:
        assert store.compression_threshold == 1024
        store[b"1023"] = b"z" * 1023
        store[b"1024"] = b"z" * 1024
    on_disk = read_raw(path)
    assert on_disk[b"1023"] == b"z" * 1023
    assert on_disk[b"1024"].startswith(MAGIC)


@pytest.mark.parametrize("compression", METHODS)
def test_incompressible_values_stay_as_they_are(tmp_path, read_raw, compression):
    path = str(tmp_path / "db")
    noise = random.Random(1).randbytes(100_000)
    with LmdbObjectStore(path, serializer="raw", compression=compression) as store:
        store[b"noise"] = noise
        assert store[b"noise"] == noise
    assert read_raw(path)[b"noise"] == noise


@pytest.mark.parametrize("compression", METHODS)
@pytest.mark.parametrize(
    "size", [1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17], ids=["1MiB", "1MiB+1", "3MiB+17"]
)
def test_large_values_across_lz4_blocks(make_store, compression, size):
    store = make_store(serializer="raw", compression=compression, map_size=64 << 20)
    text = (b"The quick brown fox %d jumps. " * (size // 20))[:size]
    zeros = bytes(size)
    store[b"text"] = text
    store[b"zeros"] = zeros
    store.flush()
    assert store[b"text"] == text
    assert store[b"zeros"] == zeros


def test_plain_store_bytes_are_unchanged(tmp_path, read_raw):
    """compression=None writes exactly what the store wrote before it existed."""
    values = {
        b"small": {"id": 1},
        b"big": ["x" * 10] * 1000,
        b"looks like a frame": MAGIC + b"\x01" + bytes(20),
    }
    path = str(tmp_path / "db")
    with LmdbObjectStore(path) as store:
        assert store.compression is None
        store.update(values)
    assert read_raw(path) == {
        k: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for k, v in values.items()
    }
    raw_path = str(tmp_path / "raw")
    raw_values = {b"frame-like": frame(ZSTD, 5, b"junk"), b"big": b"r" * 5000}
    with LmdbObjectStore(raw_path, serializer="raw") as store:
        store.update(raw_values)
        assert dict(store.items()) == raw_values
    assert read_raw(raw_path) == raw_values


@pytest.mark.parametrize("compression", METHODS)
def test_a_value_below_the_threshold_is_written_as_without_compression(
    tmp_path, read_raw, compression
):
    value = {"id": 1, "tags": ["a"]}
    for name in ("plain", "packed"):
        path = str(tmp_path / name)
        with LmdbObjectStore(path, compression=None if name == "plain" else compression) as s:
            s[b"k"] = value
    assert read_raw(str(tmp_path / "plain")) == read_raw(str(tmp_path / "packed"))


@pytest.mark.parametrize("compression", METHODS)
def test_raw_values_that_look_like_a_frame_read_back(tmp_path, read_raw, compression):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, serializer="raw", compression="zstd") as store:
        store[b"real"] = b"compress me " * 500
    real_frame = read_raw(path)[b"real"]
    assert real_frame.startswith(MAGIC)
    lookalikes = {
        b"magic only": MAGIC,
        b"short frame": frame(ZSTD, 3, b"abc"),
        b"stored frame": frame(STORED, 3, b"abc"),
        b"unknown method": frame(9, 0, b""),
        b"a real frame": real_frame,
        b"big real frame": real_frame * 20,
        b"big noise": MAGIC + random.Random(2).randbytes(50_000),
        b"first byte only": b"\xc1" + b"x" * 2000,
    }
    path2 = str(tmp_path / "db2")
    with LmdbObjectStore(path2, serializer="raw", compression=compression) as store:
        store.update(lookalikes)
        assert {k: store[k] for k in lookalikes} == lookalikes
        store.flush()
        assert dict(store.items()) == lookalikes
    on_disk = read_raw(path2)
    assert on_disk[b"first byte only"].startswith(MAGIC)  # compressed, not escaped
    assert on_disk[b"magic only"] == frame(STORED, 4, MAGIC)
    with LmdbObjectStore(path2, serializer="raw", compression=compression) as store:
        with store.snapshot() as snap:
            assert {k: snap[k] for k in lookalikes} == lookalikes


def test_mixed_store_old_and_new(tmp_path, raw_env):
    """A compressed store reads what py-lmdb + pickle, a plain store and the other
    method wrote; values keep reading as the store changes method."""
    path = str(tmp_path / "db")
    old = {b"py-lmdb": list(range(1000)), b"py-lmdb small": "s"}
    env = raw_env(path)
    with env.begin(write=True) as txn:
        for k, v in old.items():
            txn.put(k, pickle.dumps(v, protocol=2))
    env.close()
    expected = dict(old)
    for i, compression in enumerate([None, "zstd", "lz4", None]):
        with LmdbObjectStore(path, compression=compression) as store:
            if compression is None and i:
                # A plain store meets compressed values: a clear error, no change.
                with pytest.raises(DecodeError, match="compressed with"):
                    store[b"zstd"]
                continue
            assert dict(store.items()) == expected
            value = [f"{compression}-{j}" for j in range(500)]
            store[str(compression).encode()] = value
            expected[str(compression).encode()] = value
    with LmdbObjectStore(path, compression="lz4") as store:
        assert dict(store.items()) == expected


def test_a_plain_store_names_the_compressed_key(tmp_path):
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, compression="lz4") as store:
        store[b"packed"] = "x" * 5000
        store[b"plain"] = 1
    with LmdbObjectStore(path) as store:
        with pytest.raises(DecodeError) as info:
            store[b"packed"]
        message = str(info.value)
        assert "'packed'" in message and "lz4" in message and "compression=" in message
        assert isinstance(info.value.__cause__, UnpickleError)
        with pytest.raises(DecodeError, match="'packed'"):
            list(store.values())
        assert store[b"plain"] == 1
        store[b"new"] = 2
        assert store[b"new"] == 2
    # A raw store without compression gives the stored bytes as they are.
    with LmdbObjectStore(path, serializer="raw") as store:
        assert store[b"packed"].startswith(MAGIC + bytes([LZ4]))


@pytest.mark.parametrize("compression", METHODS)
def test_get_into_and_views_give_the_stored_bytes(tmp_path, read_raw, compression):
    path = str(tmp_path / "db")
    value = ["abc"] * 3000
    with LmdbObjectStore(path, compression=compression) as store:
        store[b"k"] = value
        store.flush()
        buf = bytearray(1 << 20)
        n = store.get_into(b"k", buf)
        with store.snapshot() as snap:
            viewed = bytes(snap.view(b"k"))
    stored = read_raw(path)[b"k"]
    assert bytes(buf[:n]) == stored == viewed
    assert stored.startswith(MAGIC)


@pytest.mark.parametrize("compression", METHODS)
def test_put_array_stores_npy_uncompressed(tmp_path, read_raw, compression):
    path = str(tmp_path / "db")
    arr = np.zeros((100, 100), dtype=np.float32)
    with LmdbObjectStore(path, compression=compression) as store:
        store.put_array(b"a", arr)
        store[b"pickled"] = arr
        store.flush()
        assert np.array_equal(store.get_array(b"a"), arr)
        assert np.array_equal(store[b"a"], arr)
        assert np.array_equal(store[b"pickled"], arr)
        assert np.array_equal(store.get_arrays([b"a", b"a"])[1], arr)
    on_disk = read_raw(path)
    assert on_disk[b"a"].startswith(b"\x93NUMPY")
    assert on_disk[b"pickled"].startswith(MAGIC)


def test_a_store_pickles_with_its_compression(make_store):
    store = make_store(compression="lz4", compression_threshold=10)
    store[b"k"] = "v" * 100
    store.close()
    clone = pickle.loads(pickle.dumps(store))
    try:
        assert clone.compression == "lz4"
        assert clone.compression_threshold == 10
        assert clone[b"k"] == "v" * 100
    finally:
        clone.close()


THRESHOLD = "compression_threshold"
BAD_OPTIONS = [
    ({"compression": "gzip"}, ValueError, "compression='gzip': must be one of None, 'zstd', 'lz4'"),
    ({"compression": "ZSTD"}, ValueError, "must be one of None, 'zstd', 'lz4'"),
    ({"compression": 1}, ValueError, "compression=1: must be one of"),
    ({"compression": True}, ValueError, "compression=True"),
    ({THRESHOLD: 10}, ValueError, "compression_threshold= is only for"),
    ({"compression": "zstd", THRESHOLD: -1}, ValueError, f"{THRESHOLD} must be >= 0"),
    ({"compression": "zstd", THRESHOLD: "1k"}, TypeError, f"{THRESHOLD} must be an int, got str"),
    ({"compression": "lz4", THRESHOLD: 1.5}, TypeError, f"{THRESHOLD} must be an int, got float"),
    ({"compression": "lz4", THRESHOLD: True}, TypeError, f"{THRESHOLD} must be an int, got bool"),
    ({"compression": "lz4", THRESHOLD: 2**70}, ValueError, f"{THRESHOLD} is too large"),
]


@pytest.mark.parametrize(("kwargs", "exc_type", "words"), BAD_OPTIONS)
def test_bad_options(db_path, kwargs, exc_type, words):
    with pytest.raises(exc_type) as info:
        LmdbObjectStore(db_path, **kwargs)
    assert words in str(info.value)
    assert not os.path.exists(db_path), "a refused open creates nothing"


def test_none_is_the_default_and_explicit(make_store, tmp_path):
    assert make_store().compression is None
    store = make_store(str(tmp_path / "b"), compression=None, compression_threshold=None)
    assert store.compression is None


def corrupt_frames(good_zstd: bytes, good_lz4: bytes) -> dict[bytes, tuple[bytes, str]]:
    """Broken frames and what the error must say about each."""
    z_payload, l_payload = good_zstd[13:], good_lz4[13:]
    z_len = struct.unpack("<Q", good_zstd[5:13])[0]
    l_len = struct.unpack("<Q", good_lz4[5:13])[0]
    flipped = bytearray(z_payload)
    for i in range(10, len(flipped), 7):
        flipped[i] ^= 0x5A
    lz_flipped = bytearray(l_payload)
    for i in range(8, len(lz_flipped), 5):
        lz_flipped[i] ^= 0xA5
    return {
        b"short header": (MAGIC + b"\x01\x00", "shorter than its 13-byte header"),
        b"unknown method": (frame(7, 3, b"abc"), "method 7"),
        b"stored too long": (frame(STORED, 10, b"abc"), "more than it can hold"),
        b"stored too short": (frame(STORED, 1, b"abc"), "declares 1 bytes and holds 3"),
        b"zstd cut": (good_zstd[: len(good_zstd) // 2], "zstd"),
        b"zstd flipped": (frame(ZSTD, z_len, bytes(flipped)), "zstd"),
        b"zstd declares less": (frame(ZSTD, z_len - 1, z_payload), "zstd"),
        b"zstd declares more": (frame(ZSTD, z_len + 1, z_payload), "zstd"),
        b"zstd empty": (frame(ZSTD, 100, b""), "more than it can hold"),
        b"zstd garbage": (frame(ZSTD, 1000, b"\x00" * 50), "zstd"),
        b"lz4 cut": (good_lz4[: len(good_lz4) // 2], "lz4"),
        b"lz4 flipped": (frame(LZ4, l_len, bytes(lz_flipped)), "lz4"),
        b"lz4 declares less": (frame(LZ4, l_len - 1, l_payload), "lz4"),
        b"lz4 declares more": (frame(LZ4, l_len + 1, l_payload), "lz4"),
        b"lz4 trailing": (good_lz4 + b"xx", "follow the frame"),
        b"lz4 bad block length": (frame(LZ4, 1000, b"\xff\xff\xff\x7f" + b"a" * 40), "lz4"),
        b"huge zstd": (frame(ZSTD, 2**63, b"abc"), "more than it can hold"),
        b"huge lz4": (frame(LZ4, 2**40, b"abc"), "more than it can hold"),
        b"max declared": (frame(ZSTD, 2**64 - 1, z_payload), "more than it can hold"),
    }


def test_corrupt_frames_raise_decode_error_naming_the_key(tmp_path, read_raw):
    """Each broken frame is a DecodeError naming its key, read in a child so that a
    crash in a decompressor fails the test instead of ending pytest."""
    path = str(tmp_path / "db")
    for comp in METHODS:
        with LmdbObjectStore(path, serializer="raw", compression=comp) as store:
            store[comp.encode()] = b"all work and no play " * 400
    good = read_raw(path)
    cases = corrupt_frames(good[b"zstd"], good[b"lz4"])
    out = run_python(
        """
        import pickle, sys
        import lmdb
        from lmdb_object_store import DecodeError, LmdbObjectStore
        path, cases = sys.argv[1], pickle.loads(bytes.fromhex(sys.argv[2]))
        env = lmdb.open(path)
        with env.begin(write=True) as txn:
            for key, (data, _) in cases.items():
                txn.put(key, data)
        env.close()
        for serializer in ("raw", "pickle", "json"):
            store = LmdbObjectStore(path, serializer=serializer, compression="lz4")
            for key, (_, words) in cases.items():
                try:
                    store[key]
                except DecodeError as e:
                    text = str(e)
                    assert key.decode() in text and words in text, (key, text)
                    assert "Failed to decompress DB key" in text, text
                else:
                    raise AssertionError(f"{key!r} read")
            # Iteration names the key it met; the store stays usable.
            try:
                list(store.values())
            except DecodeError as e:
                assert "Failed to decompress DB key" in str(e)
            else:
                raise AssertionError("iteration read a corrupt frame")
            after = b"still works" if serializer == "raw" else ["still works"]
            store[b"after"] = after
            assert store[b"after"] == after
            del store[b"after"]
            store.close()
        print("ok", len(cases))
        """,
        path + "x",
        pickle.dumps(cases).hex(),
    )
    assert out.split() == ["ok", str(len(cases))]


def test_huge_declared_sizes_never_allocate_them(tmp_path, read_raw):
    """Frames whose declared size is within what the payload's length allows, but
    whose payload is garbage, fail before the memory they declare is reserved: the
    child's address space is limited far below the declared sizes."""
    out = run_python(
        """
        import resource, struct, sys
        import lmdb
        from lmdb_object_store import DecodeError, LmdbObjectStore
        path = sys.argv[1]
        def frame(method, declared, payload):
            return b"\\xc1LOS" + bytes([method]) + struct.pack("<Q", declared) + payload
        cases = {
            # 32768 x 200 KiB and 255 x 12 MiB are both about 6 GiB.
            b"zstd 6 GiB": frame(1, 6 << 30, bytes(200 << 10)),
            b"lz4 3 GiB": frame(2, 3 << 30, struct.pack("<I", 1000) + bytes(12 << 20)),
            b"lz4 blocks": frame(2, 3 << 30, (struct.pack("<I", 8) + bytes(8)) * (2 << 20)),
        }
        env = lmdb.open(path, map_size=256 << 20)
        with env.begin(write=True) as txn:
            for key, data in cases.items():
                txn.put(key, data)
        env.close()
        store = LmdbObjectStore(path, compression="zstd", serializer="raw",
                                map_size=256 << 20)
        limit = 1 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for key in cases:
            try:
                store[key]
            except DecodeError as e:
                assert key.decode() in str(e), str(e)
            else:
                raise AssertionError(key)
        store.close()
        print("ok")
        """,
        str(tmp_path / "db"),
        timeout=120,
    )
    assert out.strip() == "ok"
