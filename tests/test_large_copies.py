"""Large values copied into new objects come back byte for byte.

Values of 256 KiB and more are copied into memory whose fresh pages are made
resident in one call first (docs/architecture.md, "Large copies"); these
check every path that does so, at sizes on both sides of that threshold and
not a multiple of a page, with the objects kept (fresh memory each time) and
dropped (memory used again).
"""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from lmdb_object_store import _native

THRESHOLD = 256 << 10
SIZES = [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, (1 << 20) + 4093, (3 << 20) + 17]


def payloads() -> list[bytes]:
    rng = random.Random(7)
    return [rng.randbytes(n) for n in SIZES]


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "dropped"])
def test_the_codec_writes_and_reads_large_bytes_exactly(keep):
    kept = []
    for data in payloads():
        text = data.hex()[: len(data)]
        values = (data, bytearray(data), text, text[:-1] + "é", [data, b"x", data], {"a": text})
        for value in values:
            for protocol in (2, 4, 5):
                pickled = _native._dumps(value, protocol)
                assert pickled == pickle.dumps(value, protocol)
                back = _native._loads(pickled)
                assert back == value and type(back) is type(value)
                if keep:
                    kept.append((pickled, back))


@pytest.mark.parametrize("serializer", ["pickle", "raw"])
def test_large_values_read_back_exactly_through_get_and_get_many(make_store, serializer):
    store = make_store(serializer=serializer)
    values = {b"v%d" % n: data for n, data in zip(SIZES, payloads(), strict=True)}
    store.put_many(values)
    store.flush()
    kept = [store[k] for k in values]  # each read kept: fresh memory
    assert kept == list(values.values())
    for k, v in values.items():  # each read dropped: memory used again
        assert store[k] == v
    found, missing = store.get_many(list(values))
    assert found == values and missing == []


def test_large_arrays_read_back_exactly(store):
    rng = np.random.default_rng(3)
    arrays = {b"a%d" % i: rng.random(n // 8 + 1) for i, n in enumerate(SIZES)}
    for k, a in arrays.items():
        store.put_array(k, a)
    kept = [store.get_array(k) for k in arrays]
    for got, want in zip(kept, arrays.values(), strict=True):
        assert np.array_equal(got, want)
    same = [b"s%d" % i for i in range(4)]
    for i, k in enumerate(same):
        store.put_array(k, rng.random(THRESHOLD // 8) + i)
    batch = store.get_arrays(same)
    out = np.empty_like(batch)
    assert store.get_arrays(same, out=out) is out
    for i, k in enumerate(same):
        assert np.array_equal(batch[i], store.get_array(k))
        assert np.array_equal(out[i], batch[i])


def test_large_values_read_back_exactly_through_value_files(make_store):
    store = make_store(serializer="raw")
    data = payloads()
    for n, d in zip(SIZES, data, strict=True):
        store[b"f%d" % n] = d
    store.flush()
    kept = []
    for n, d in zip(SIZES, data, strict=True):
        with store.open(b"f%d" % n) as f:
            head = f.read(THRESHOLD + 5)
            rest = f.read()
        kept.append(head + rest)
        assert head + rest == d
    assert kept == data
