"""NumPy arrays stored in NumPy's ``.npy`` format: put_array, get_array, get_arrays,
arrays read back through ``store[key]`` and iteration, and the store without numpy.
Checks docs/usage.md, "NumPy arrays"."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest

from helpers import raw_items, run_python, run_threads
from lmdb_object_store import LmdbObjectStore, ReadonlyError

NEVER = 1 << 30  # a batch_size no test reaches: writes stay buffered

DTYPES = [
    "<f4",
    ">f8",
    "<f2",
    "<i2",
    ">u4",
    "<i8",
    "|b1",
    "<c8",
    ">c16",
    "<M8[ns]",
    ">m8[s]",
    "<U5",
    ">U3",
    "|S4",
    "|V6",
    [("x", "<i4"), ("y", ">f8"), ("name", "<U3")],
    [("pos", "<f4", (3,)), ("inner", [("a", "|u1"), ("b", "<i2")])],
    np.dtype({"names": ["a", "b"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24}),
]


def sample(dtype, shape=(3, 4)) -> np.ndarray:
    """An array of ``dtype`` whose bytes are not all alike."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = (np.arange(n * dtype.itemsize, dtype=np.uint32) * 7 % 251).astype(np.uint8)
    arr = raw.view(dtype) if dtype.itemsize else np.empty(n, dtype)
    if dtype.kind == "b":
        arr = raw[:n] % 2 == 1
    elif dtype.kind == "U":
        arr = np.array([f"s{i % 97}" for i in range(n)], dtype=dtype)
    elif dtype.kind in "fc":
        arr = np.arange(n).astype(dtype) / 3
    return arr.reshape(shape)


def assert_same_array(got, want):
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.dtype.str == want.dtype.str  # byte order kept
    assert got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def store_reopened(store):
    return LmdbObjectStore(store.path)


def stored_bytes(store, raw_env, key) -> bytes:
    store.close()
    return raw_items(raw_env(store.path, readonly=True))[key]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_and_numpy_load_reads_the_stored_bytes(make_store, raw_env, dtype):
    store = make_store()
    arr = sample(dtype)
    store.put_array(b"k", arr)
    assert_same_array(store.get_array(b"k"), arr)  # from the buffer
    store.flush()
    got = store.get_array(b"k")
    assert_same_array(got, arr)
    assert got.flags.writeable and got.flags.owndata
    assert_same_array(store[b"k"], arr)
    raw = stored_bytes(store, raw_env, b"k")
    assert_same_array(np.load(io.BytesIO(raw), allow_pickle=False), arr)


@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (3, 0, 2), (7,), (2, 3, 4, 5, 1)], ids=str)
def test_shapes_zero_d_and_empty_round_trip(store, shape):
    arr = sample("<i4", shape)
    store.put_array(b"k", arr)
    store.flush()
    assert_same_array(store.get_array(b"k"), arr)
    assert_same_array(store[b"k"], arr)


def test_fortran_order_is_kept_and_other_layouts_are_stored_in_c_order(store, raw_env):
    base = sample("<f8", (4, 6))
    fortran = np.asfortranarray(base)
    strided = base[::2, ::3]
    store.put_array(b"f", fortran)
    store.put_array(b"s", strided)
    store.put_array(b"c", base)
    store.flush()
    got = store.get_array(b"f")
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    np.testing.assert_array_equal(got, base)
    got = store.get_array(b"s")
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, strided)
    raw = stored_bytes(store, raw_env, b"f")
    loaded = np.load(io.BytesIO(raw))
    assert loaded.flags.f_contiguous
    np.testing.assert_array_equal(loaded, base)


def numpy_save(arr) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "stored in format 2.0 / 3.0"
        np.save(out, arr, allow_pickle=False)
    return out.getvalue()


@pytest.mark.parametrize(
    "arr, version",
    [
        (sample("<f4", (5, 512)), (1, 0)),
        (np.asfortranarray(sample(">i8", (3, 2))), (1, 0)),
        (np.float64(2.5), (1, 0)),
        # Field names outside latin-1 need UTF-8: version 3.0.
        (np.zeros(2, dtype=[("\u00e9t\u00e9", "<i4"), ("\u65e5", "<f8")]), (3, 0)),
        # A header past 65535 bytes needs a 32-bit length: version 2.0.
        (np.zeros(1, dtype=[(f"field_{i:05d}", "<i4") for i in range(4000)]), (2, 0)),
    ],
    ids=["c", "fortran", "0-d", "utf8-names", "big-header"],
)
def test_the_stored_bytes_are_what_numpy_save_writes(store, raw_env, arr, version):
    store.put_array(b"k", arr)
    store.flush()
    raw = stored_bytes(store, raw_env, b"k")
    assert np.lib.format.read_magic(io.BytesIO(raw)) == version
    assert raw == numpy_save(arr)
    loaded = np.load(io.BytesIO(raw), max_header_size=1 << 20)
    assert_same_array(loaded, np.asarray(arr))
    assert_same_array(store_reopened(store).get_array(b"k"), np.asarray(arr))


def test_numpy_save_output_written_by_another_program_reads_as_an_array(
    db_path, raw_env, make_store
):
    arr = sample(">c16", (2, 2))
    env = raw_env(db_path, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"k", numpy_save(arr))
        txn.put(b"f", numpy_save(np.asfortranarray(sample("<f4", (3, 5)))))
    env.close()
    store = make_store()
    assert_same_array(store[b"k"], arr)
    assert_same_array(store.get_array(b"k"), arr)
    np.testing.assert_array_equal(store.get_arrays([b"f"])[0], sample("<f4", (3, 5)))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_arrays_come_back_through_every_read_path(make_store, protocol):
    store = make_store(batch_size=NEVER, pickle_protocol=protocol)
    arrays = {b"a": sample("<f4", (2,)), b"b": sample("<U5", (3,)), b"c": sample(">i2", ())}
    for k, v in arrays.items():
        store.put_array(k, v)
    store.put(b"p", {"plain": 1})
    for flushed in (False, True):
        assert_same_array(store.get(b"a"), arrays[b"a"])
        found, missing = store.get_many([b"a", b"b", b"zz"])
        assert missing == [b"zz"]
        assert_same_array(found[b"b"], arrays[b"b"])
        items = dict(store.items())
        assert items[b"p"] == {"plain": 1}
        for k, v in arrays.items():
            assert_same_array(items[k], v)
        assert_same_array(dict(store.scan(prefix=b"c"))[b"c"], arrays[b"c"])
        assert_same_array(store.pop(b"c"), arrays[b"c"])
        store.put_array(b"c", arrays[b"c"])
        if not flushed:
            store.flush()


def test_values_that_only_look_like_the_magic_stay_what_they_were(store):
    # A pickled value never starts with the magic (pickle opens with PROTO, or
    # with an opcode that is not STACK_GLOBAL on an empty stack).
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert not pickle.dumps(b"\x93NUMPY", protocol).startswith(b"\x93NUMPY")
    store[b"b"] = b"\x93NUMPY\x01\x00"
    store[b"arr"] = np.arange(3)  # a pickled array, through put
    store.flush()
    assert store[b"b"] == b"\x93NUMPY\x01\x00"
    np.testing.assert_array_equal(store[b"arr"], np.arange(3))


def test_object_dtypes_are_refused_naming_the_key_and_nothing_is_buffered(make_store):
    store = make_store(batch_size=NEVER, key_encoding="utf-8")
    store.put_array("ok", np.arange(2))
    before = store.pending
    for bad in (
        np.array([1, None], dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("o", "O")]),
        [1, "two", None],
    ):
        with pytest.raises(TypeError, match=r"'obj:1'.*holds Python objects"):
            store.put_array("obj:1", bad)
    assert store.pending == before
    assert "obj:1" not in store
    store.flush()
    assert "obj:1" not in store


def test_array_likes_are_stored_as_arrays(store):
    store.put_array(b"k", [[1, 2], [3, 4]])
    np.testing.assert_array_equal(store.get_array(b"k"), np.array([[1, 2], [3, 4]]))


def test_get_array_of_a_missing_key_or_a_pickled_value(store):
    store[b"pickled"] = np.arange(3)
    with pytest.raises(KeyError, match="nope"):
        store.get_array(b"nope")
    with pytest.raises(TypeError, match=r"'pickled'.*not an array stored by put_array"):
        store.get_array(b"pickled")
    store.flush()
    with pytest.raises(TypeError, match="'pickled'"):
        store.get_array(b"pickled")
    store.put_array(b"gone", np.arange(2))
    store.delete(b"gone")
    with pytest.raises(KeyError, match="gone"):
        store.get_array(b"gone")


def test_put_array_on_a_readonly_store(make_store, db_path):
    make_store().close()
    ro = make_store(db_path, readonly=True)
    with pytest.raises(ReadonlyError, match="put_array"):
        ro.put_array(b"k", np.arange(2))


def test_large_arrays_round_trip(store):
    big = np.random.default_rng(1).random((1024, 300))  # 2.4 MB: copied without the GIL
    store.put_array(b"big", big)
    store.flush()
    assert_same_array(store.get_array(b"big"), big)
    assert_same_array(store.get_arrays([b"big", b"big"])[1], big)


# get_arrays


def vectors(store, n, dim=8, dtype="<f4", prefix="v"):
    arrays = {}
    for i in range(n):
        arrays[f"{prefix}{i:03d}".encode()] = (np.arange(dim) + 100 * i).astype(dtype)
        store.put_array(f"{prefix}{i:03d}".encode(), arrays[f"{prefix}{i:03d}".encode()])
    return arrays


def test_get_arrays_fills_a_new_array_in_the_callers_order(store):
    arrays = vectors(store, 20)
    store.flush()
    keys = list(reversed(arrays)) + [b"v005", b"v005"]
    got = store.get_arrays(keys)
    assert got.shape == (22, 8) and got.dtype == np.float32
    assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata
    np.testing.assert_array_equal(got, np.stack([arrays[k] for k in keys]))


def test_get_arrays_into_out(store):
    arrays = vectors(store, 4, dim=3, dtype=">i8")
    store.flush()
    out = np.full((4, 3), -1, dtype=">i8")
    assert store.get_arrays(list(arrays), out=out) is out
    np.testing.assert_array_equal(out, np.stack(list(arrays.values())))
    assert store.get_arrays(list(arrays), out=None).shape == (4, 3)


class Tagged(np.ndarray):
    """An ndarray subclass whose array interface points elsewhere."""

    @property
    def __array_interface__(self):
        return {"data": (0, False), "shape": (), "typestr": "|u1", "version": 3}


def test_get_arrays_into_an_ndarray_subclass_uses_its_real_memory(store):
    arrays = vectors(store, 3, dim=4)
    out = np.zeros((3, 4), "<f4").view(Tagged)
    assert store.get_arrays(list(arrays), out=out) is out
    np.testing.assert_array_equal(out.view(np.ndarray), np.stack(list(arrays.values())))


def test_get_arrays_reads_buffered_values_and_the_database_together(make_store):
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    old = vectors(store, 3)
    store.flush()
    new = vectors(store, 2, prefix="w")
    store.put_array(b"v001", np.full(8, 7, dtype="<f4"))  # buffered over the stored one
    got = store.get_arrays([b"v000", b"w001", b"v001", b"w000"])
    want = [old[b"v000"], new[b"w001"], np.full(8, 7, "<f4"), new[b"w000"]]
    np.testing.assert_array_equal(got, np.stack(want))
    store.delete(b"v002")
    with pytest.raises(KeyError, match="v002"):
        store.get_arrays([b"v000", b"v002"])


def test_get_arrays_mixes_fortran_and_c_order_values(store):
    base = sample("<f8", (3, 4))
    store.put_array(b"c", base)
    store.put_array(b"f", np.asfortranarray(base * 2))
    store.put_array(b"t", np.ascontiguousarray((base * 3).T).T)  # Fortran, made another way
    store.flush()
    got = store.get_arrays([b"f", b"c", b"t"])
    np.testing.assert_array_equal(got, np.stack([base * 2, base, base * 3]))


def test_get_arrays_names_the_first_key_that_differs(store):
    store.put_array(b"a", np.zeros(4, "<f4"))
    store.put_array(b"b", np.ones(4, "<f4"))
    store.put_array(b"shape", np.zeros(5, "<f4"))
    store.put_array(b"dtype", np.zeros(4, "<f8"))
    store.put_array(b"order", np.zeros(4, ">f4"))
    store.flush()
    for bad in (b"shape", b"dtype", b"order"):
        with pytest.raises(ValueError, match=rf"key '{bad.decode()}' holds"):
            store.get_arrays([b"a", b"b", bad, b"shape", b"dtype"])


def test_get_arrays_names_the_first_missing_key(store):
    vectors(store, 2)
    with pytest.raises(KeyError, match="missing1"):
        store.get_arrays([b"v000", b"missing1", b"v001", b"missing2"])
    store[b"pickled"] = np.zeros(8, "<f4")
    with pytest.raises(TypeError, match="'pickled'"):
        store.get_arrays([b"v000", b"pickled"])


@pytest.mark.parametrize(
    "make_out, error, words",
    [
        (lambda: [[0.0] * 8] * 2, TypeError, "must be a numpy.ndarray, not list"),
        (lambda: np.zeros((2, 8), "<f8"), ValueError, "float64 array of shape"),
        (lambda: np.zeros((3, 8), "<f4"), ValueError, r"shape \(3, 8\)"),
        (lambda: np.zeros((2, 4), "<f4"), ValueError, r"shape \(2, 4\)"),
        (lambda: np.zeros((2, 8), "<f4", order="F"), ValueError, "C-contiguous"),
        (lambda: np.zeros((2, 16), "<f4")[:, ::2], ValueError, "C-contiguous"),
        (lambda: np.zeros((2, 8), "<f4").setflags(write=False), None, None),
    ],
    ids=["list", "dtype", "rows", "item-shape", "fortran", "strided", "readonly"],
)
def test_get_arrays_refuses_an_out_it_cannot_fill_and_leaves_it_alone(
    store, make_out, error, words
):
    vectors(store, 2)
    out = make_out()
    if error is None:  # setflags returns None: make a read-only one here
        out = np.full((2, 8), 5, "<f4")
        out.setflags(write=False)
        error, words = ValueError, "must be writable"
    before = np.array(out, copy=True)
    with pytest.raises(error, match=words):
        store.get_arrays([b"v000", b"v001"], out=out)
    np.testing.assert_array_equal(np.asarray(out), before)


def test_get_arrays_of_no_keys(store):
    out = np.zeros((0, 8), "<f4")
    assert store.get_arrays([], out=out) is out
    with pytest.raises(ValueError, match="out"):
        store.get_arrays([])


def test_threads_write_and_read_arrays_at_once(make_store):
    store = make_store(batch_size=16)
    keys = [f"t{i:03d}".encode() for i in range(64)]
    for k in keys:
        store.put_array(k, np.zeros(32, "<f4"))
    store.flush()

    def writer(seed):
        def run():
            for round_ in range(30):
                for k in keys[seed::2]:
                    store.put_array(k, np.full(32, round_, "<f4"))
            return True

        return run

    def reader():
        out = np.empty((len(keys), 32), "<f4")
        for _ in range(40):
            got = store.get_arrays(keys, out=out)
            # Each row is one whole version of its value, never a torn one.
            assert (got == got[:, :1]).all()
            assert store.get_array(keys[0]).shape == (32,)
        return True

    results, errors = run_threads([writer(0), writer(1), reader, reader], timeout=60)
    assert errors == [None] * 4
    assert results == [True] * 4
    store.flush()
    np.testing.assert_array_equal(store.get_arrays(keys), np.full((64, 32), 29, "<f4"))


# Damaged values: run in a child, so that a crash fails the test instead of pytest.

DAMAGED = r"""
import io, sys, lmdb, numpy as np
from lmdb_object_store import LmdbObjectStore, UnpickleError
path = sys.argv[1]
good = io.BytesIO(); np.save(good, np.arange(4, dtype="<i8")); good = good.getvalue()
header_end = good.index(b"\n") + 1
pointers = good.replace(b"'<i8'", b"'|O' ")  # an object dtype: its data would be pointers
bad = {
    b"objects": pointers,
    b"cut": good[:-3],
    b"long": good + b"xx",
    b"nohdr": b"\x93NUMPY",
    b"version": b"\x93NUMPY\x09\x00" + good[8:],
    b"garbage": good[:10] + b"{'descr': __import__('os')}".ljust(header_end - 11) + b"\n",
    b"shape": good.replace(b"(4,)", b"(-4,)"),
}
env = lmdb.open(path, map_size=1 << 24)
with env.begin(write=True) as txn:
    txn.put(b"good", good)
    for k, v in bad.items():
        txn.put(k, v)
env.close()
store = LmdbObjectStore(path)
for k in bad:
    for read in (lambda: store[k], lambda: store.get_array(k),
                 lambda: store.get_arrays([b"good", k])):
        try:
            read()
        except UnpickleError as e:
            assert repr(k.decode()) in str(e), (k, str(e))
        else:
            raise AssertionError(f"{k!r} was read")
assert list(store.get_array(b"good")) == [0, 1, 2, 3]
print("ok")
"""


def test_damaged_npy_values_raise_naming_the_key(db_path):
    assert run_python(DAMAGED, db_path, timeout=60).strip() == "ok"


NO_NUMPY = r"""
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ImportError(f"No module named {name!r} (hidden)")

sys.meta_path.insert(0, Blocker())
from lmdb_object_store import LmdbObjectStore, UnpickleError
store = LmdbObjectStore(sys.argv[1])
store[b"plain"] = {"a": [1, 2]}
store.flush()
assert store[b"plain"] == {"a": [1, 2]} and len(store) == 2
for call in (lambda: store.put_array(b"k", [1]), lambda: store.get_array(b"arr"),
             lambda: store.get_arrays([b"arr"])):
    try:
        call()
    except ImportError as e:
        assert "pip install lmdb-object-store[numpy]" in str(e), str(e)
    else:
        raise AssertionError("no ImportError")
try:
    store[b"arr"]
except UnpickleError as e:
    assert "pip install lmdb-object-store[numpy]" in str(e), str(e)
else:
    raise AssertionError("an array was read without numpy")
assert "numpy" not in sys.modules
print("ok")
"""


def test_without_numpy_the_array_methods_say_how_to_install_it(make_store, db_path):
    store = make_store()
    store.put_array(b"arr", np.arange(3))
    store.close()
    assert run_python(NO_NUMPY, db_path, timeout=60).strip() == "ok"
