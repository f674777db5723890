"""The store as a complete MutableMapping, with ordered, bounded scans
(docs/usage.md "Mapping and scans", docs/semantics.md "Iteration").

Everything here is checked against a plain ``dict`` holding the same items, with
bytes keys and with ``key_encoding="utf-8"`` (str keys back), with data that is
buffered, flushed, or a mix of both with tombstones.
"""

from __future__ import annotations

import collections
import collections.abc
import itertools
import pickle
import re
import types

import pytest

from helpers import MiB, last_txnid, run_threads
from lmdb_object_store import ClosedError, LmdbObjectStore, ReadonlyError

# A batch size no test reaches, so writes stay in the buffer until flushed.
NEVER = 1_000_000


class Mode:
    """Bytes keys (no key_encoding) or str keys (key_encoding="utf-8")."""

    def __init__(self, name: str):
        self.name = name
        self.encoding = "utf-8" if name == "str" else None

    def k(self, text: str):
        """The key ``text`` as this mode hands keys back."""
        return text if self.encoding else text.encode("utf-8")

    def __repr__(self):
        return self.name


def enc(key) -> bytes:
    """The bytes LMDB orders a key (or bound) by."""
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def expected_range(model, *, prefix=None, start=None, stop=None, reverse=False):
    """(key, value) pairs of ``model`` in the bounds, in LMDB order."""
    out = []
    for key in sorted(model, key=enc):
        raw = enc(key)
        if prefix is not None and not raw.startswith(enc(prefix)):
            continue
        if start is not None and raw < enc(start):
            continue
        if stop is not None and raw >= enc(stop):
            continue
        out.append((key, model[key]))
    if reverse:
        out.reverse()
    return out


def assert_matches(store, model):
    """Every read-only mapping operation agrees with the dict ``model``."""
    ordered = expected_range(model)
    keys = [k for k, _ in ordered]
    values = [v for _, v in ordered]

    assert len(store) == len(model)
    assert list(store) == keys
    assert list(store.keys()) == keys
    assert list(store.values()) == values
    assert list(store.items()) == ordered
    assert list(store.scan()) == ordered
    assert list(reversed(store.keys())) == keys[::-1]
    assert list(store.keys(reverse=True)) == keys[::-1]
    assert list(store.items(reverse=True)) == ordered[::-1]
    assert list(store.values(reverse=True)) == values[::-1]

    assert len(store.keys()) == len(store.values()) == len(store.items()) == len(model)
    for key, value in ordered:
        assert key in store
        assert key in store.keys()
        assert (key, value) in store.items()
        assert value in store.values()
        assert store[key] == value
        assert store.get(key, "absent") == value
    assert store == model
    assert not (store != model)
    assert dict(store) == model
    assert dict(store.items()) == model


@pytest.fixture(params=["bytes", "str"])
def mode(request):
    return Mode(request.param)


@pytest.fixture
def open_store(make_store, mode):
    """``open_store(**kwargs)``: a store whose keys follow ``mode``."""

    def factory(path=None, **kwargs):
        kwargs.setdefault("key_encoding", mode.encoding)
        return make_store(path, **kwargs)

    return factory


def populate(store, mode, state, n=40):
    """Write ``n`` items in ``state`` (buffered, flushed or mixed); return the model."""
    model = {}
    items = [(mode.k(f"k{i:03d}"), i) for i in range(n)]
    if state == "flushed":
        for k, v in items:
            store[k] = v
            model[k] = v
        store.flush()
        assert store.pending == 0
    elif state == "buffered":
        for k, v in items:
            store[k] = v
            model[k] = v
        assert store.pending == n
    else:  # mixed: committed data overlaid by buffered puts and tombstones
        for k, v in items:
            store[k] = v
            model[k] = v
        store.flush()
        for i in range(0, n, 5):  # tombstones over committed keys
            store.delete(mode.k(f"k{i:03d}"))
            del model[mode.k(f"k{i:03d}")]
        for i in range(1, n, 7):  # buffered overwrites of committed keys
            store[mode.k(f"k{i:03d}")] = ("new", i)
            model[mode.k(f"k{i:03d}")] = ("new", i)
        for i in range(3):  # buffered keys not in the database, between others
            store[mode.k(f"k{i:03d}x")] = ("added", i)
            model[mode.k(f"k{i:03d}x")] = ("added", i)
        store.delete(mode.k("never-written"))  # tombstone of a missing key
        store[mode.k("k999")] = "short-lived"  # buffered put, then tombstone
        store.delete(mode.k("k999"))
        assert store.pending > 0
    return model


STATES = ["buffered", "flushed", "mixed"]


# --------------------------------------------------------------------------
# registration and the basic views
# --------------------------------------------------------------------------


def test_registered_as_mutable_mapping(store):
    assert isinstance(store, collections.abc.MutableMapping)
    assert isinstance(store, collections.abc.Mapping)
    assert issubclass(LmdbObjectStore, collections.abc.MutableMapping)
    assert isinstance(store, collections.abc.Sized)
    assert isinstance(store, collections.abc.Iterable)
    assert isinstance(store, collections.abc.Container)


def test_empty_store_views(store):
    assert len(store) == 0
    assert list(store) == []
    assert list(store.keys()) == []
    assert list(store.values()) == []
    assert list(store.items()) == []
    assert list(store.scan()) == []
    assert len(store.keys()) == 0
    assert store == {}
    assert store != {b"a": 1}


@pytest.mark.parametrize("autoflush", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_views_match_dict(open_store, mode, state, autoflush):
    store = open_store(batch_size=NEVER, autoflush_on_read=autoflush)
    model = populate(store, mode, state)
    assert_matches(store, model)
    missing = mode.k("k000") if state == "mixed" else mode.k("zzz")
    assert missing not in store
    assert missing not in store.keys()
    assert store.get(missing) is None
    assert store.get(missing, "dflt") == "dflt"
    assert ("k", -1) not in store.values()
    # Still the same after everything is committed and after a reopen.
    store.flush()
    assert_matches(store, model)
    path = store.path
    store.close()
    assert_matches(open_store(path), model)


@pytest.mark.parametrize("state", STATES)
def test_many_keys_across_chunks(open_store, mode, state):
    """Enough keys that iteration needs many chunks, with the buffer overlaid."""
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = {mode.k(f"key{i:05d}"): i for i in range(3000)}
    if state == "buffered":
        for k, v in model.items():
            store[k] = v
    else:
        store.put_many(model)
    if state == "mixed":
        for i in range(0, 3000, 7):
            store.delete(mode.k(f"key{i:05d}"))
            del model[mode.k(f"key{i:05d}")]
        for i in range(0, 3000, 11):
            store[mode.k(f"key{i:05d}+")] = -i
            model[mode.k(f"key{i:05d}+")] = -i
    ordered = expected_range(model)
    assert len(store) == len(model)
    assert list(store.items()) == ordered
    assert list(store.keys(reverse=True)) == [k for k, _ in reversed(ordered)]
    assert list(reversed(store.keys())) == [k for k, _ in reversed(ordered)]
    assert list(store.values()) == [v for _, v in ordered]


def test_keys_come_back_as_bytes_without_key_encoding(make_store):
    store = make_store()
    store[bytearray(b"ba")] = 1
    store[memoryview(b"mv")] = 2
    store[b"b"] = 3
    keys = list(store)
    assert keys == [b"b", b"ba", b"mv"]
    assert all(type(k) is bytes for k in keys)
    assert all(type(k) is bytes for k in store.keys())
    assert all(type(k) is bytes for k, _ in store.items())
    assert all(type(k) is bytes for k, _ in store.scan())


def test_keys_come_back_as_str_with_key_encoding(make_store):
    store = make_store(key_encoding="utf-8")
    store["é"] = 1
    store[b"plain"] = 2  # bytes keys are still accepted
    store["\u4e2d"] = 3
    keys = list(store)
    assert keys == ["plain", "é", "\u4e2d"]
    assert all(type(k) is str for k in keys)
    assert all(type(k) is str for k, _ in store.items())
    assert all(type(k) is str for k, _ in store.scan())
    assert store == {"plain": 2, "é": 1, "\u4e2d": 3}
    # Keys compare as the store hands them back: str, not bytes.
    assert store != {b"plain": 2, "é".encode(): 1, "\u4e2d".encode(): 3}


def test_keys_decoded_with_key_errors(make_store, tmp_path):
    path = str(tmp_path / "errs")
    store = make_store(path, key_encoding="utf-8", key_errors="surrogateescape")
    store[b"ok"] = 1
    store[b"bad\xff"] = 2
    assert list(store) == ["bad\udcff", "ok"]
    assert store["bad\udcff"] == 2
    assert "bad\udcff" in store.keys()
    assert dict(store.items()) == {"bad\udcff": 2, "ok": 1}
    store.close()

    strict = make_store(path, key_encoding="utf-8")
    assert strict[b"bad\xff"] == 2
    with pytest.raises(UnicodeDecodeError):
        list(strict.keys())


def test_order_is_ascending_key_bytes(make_store):
    keys = [b"b", b"\xff", b"a\x00", b"ab", b"\x00", b"a", b"\xff\xff", b"\x7f", b"\x80"]
    store = make_store(batch_size=3)
    for i, k in enumerate(keys):
        store[k] = i
    assert list(store) == sorted(keys)
    assert list(store.keys(reverse=True)) == sorted(keys, reverse=True)
    store.flush()
    assert list(store) == sorted(keys)


def test_reversed_gives_keys_in_descending_order(make_store):
    store = make_store(batch_size=1000, key_encoding="utf-8")
    store.put_many({"b": 1, "d": 2})  # committed
    store["a"] = 3  # buffered
    store["c"] = 4
    del store["d"]
    assert list(reversed(store)) == ["c", "b", "a"]
    assert list(reversed(store)) == list(reversed(list(store)))


def test_str_order_follows_utf8_bytes(make_store):
    keys = ["z", "é", "\u4e2d", "\U0001f600", "a\x00", "a", "\x7f"]
    store = make_store(key_encoding="utf-8")
    for k in keys:
        store[k] = k
    expected = sorted(keys, key=enc)
    assert list(store) == expected
    assert list(store.values()) == expected


# --------------------------------------------------------------------------
# bounds: prefix, start, stop, reverse
# --------------------------------------------------------------------------

BOUND_KEYS = ["a", "aa", "ab", "abc", "abd", "ac", "b", "ba", "bb", "c", "é", "éa"]
PREFIXES = [None, "", "a", "ab", "abc", "abcd", "b", "é", "z"]
STARTS = [None, "", "a", "ab", "abz", "b", "bz", "é"]
STOPS = [None, "", "ab", "abd", "b", "ba", "c", "é", "zz"]


@pytest.mark.parametrize("state", STATES)
def test_bounds_match_model(open_store, mode, state):
    store = open_store(batch_size=NEVER, autoflush_on_read=False, sync=False)
    model = {}
    committed = BOUND_KEYS[::2] if state == "mixed" else BOUND_KEYS
    for i, name in enumerate(committed):
        store[mode.k(name)] = i
        model[mode.k(name)] = i
    if state != "buffered":
        store.flush()
    if state == "mixed":
        for i, name in enumerate(BOUND_KEYS[1::2]):
            store[mode.k(name)] = -i
            model[mode.k(name)] = -i
        store.delete(mode.k("ab"))
        model.pop(mode.k("ab"), None)
        store.delete(mode.k("abc"))
        model.pop(mode.k("abc"), None)

    first = next(iter(model))
    for prefix, start, stop, reverse in itertools.product(PREFIXES, STARTS, STOPS, [False, True]):
        # Keep something in the buffer at every check: a rewrite of an
        # existing key with its own value and a tombstone of a missing key.
        store[first] = model[first]
        store.delete(mode.k("missing"))
        bounds = {
            "prefix": None if prefix is None else mode.k(prefix),
            "start": None if start is None else mode.k(start),
            "stop": None if stop is None else mode.k(stop),
            "reverse": reverse,
        }
        want = expected_range(model, **bounds)
        where = f"bounds={bounds}"
        assert list(store.items(**bounds)) == want, where
        assert list(store.scan(**bounds)) == want, where
        assert list(store.keys(**bounds)) == [k for k, _ in want], where
        assert list(store.values(**bounds)) == [v for _, v in want], where
        assert len(store.keys(**bounds)) == len(want), where
        assert len(store.items(**bounds)) == len(want), where
        assert len(store.values(**bounds)) == len(want), where


def test_bounded_view_membership_follows_bounds(store):
    for k in [b"a1", b"a2", b"b1", b"b2"]:
        store[k] = k
    view = store.keys(prefix=b"a")
    assert b"a1" in view
    assert b"b1" not in view  # stored, but outside the bounds
    assert b"zz" not in view
    ranged = store.items(start=b"a2", stop=b"b2")
    assert (b"a2", b"a2") in ranged
    assert (b"b1", b"b1") in ranged
    assert (b"a1", b"a1") not in ranged
    assert (b"b2", b"b2") not in ranged
    assert len(ranged) == 2


def test_prefix_of_high_bytes(make_store):
    keys = [b"\xfe", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff", b"\x00"]
    store = make_store()
    for k in keys:
        store[k] = k
    assert list(store.keys(prefix=b"\xff")) == [b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff"]
    assert list(store.keys(prefix=b"\xff\xff")) == [b"\xff\xff", b"\xff\xff\xff"]
    assert list(store.keys(prefix=b"\xff\xff", reverse=True)) == [b"\xff\xff\xff", b"\xff\xff"]
    assert list(store.keys(prefix=b"\xfe")) == [b"\xfe", b"\xfe\xff"]
    assert list(store.keys(prefix=b"\x00")) == [b"\x00"]
    assert list(store.keys(start=b"\xff\xff")) == [b"\xff\xff", b"\xff\xff\xff"]
    assert list(store.keys(stop=b"\x00\x00")) == [b"\x00"]


def test_empty_prefix_and_empty_start_mean_everything(store):
    for k in [b"a", b"b", b"c"]:
        store[k] = 1
    assert list(store.keys(prefix=b"")) == [b"a", b"b", b"c"]
    assert list(store.keys(start=b"")) == [b"a", b"b", b"c"]
    assert list(store.keys(stop=b"")) == []
    assert len(store.keys(prefix=b"")) == 3


def test_start_after_stop_is_empty(store):
    for k in [b"a", b"b", b"c", b"d"]:
        store[k] = 1
    for reverse in (False, True):
        assert list(store.keys(start=b"c", stop=b"b", reverse=reverse)) == []
        assert list(store.items(start=b"d", stop=b"a", reverse=reverse)) == []
        assert list(store.scan(start=b"zz", stop=b"a", reverse=reverse)) == []
        assert list(store.keys(start=b"b", stop=b"b", reverse=reverse)) == []
    assert len(store.keys(start=b"c", stop=b"b")) == 0
    assert list(store.keys(start=b"b", stop=b"c")) == [b"b"]


def test_start_inclusive_stop_exclusive_in_both_directions(store):
    for k in [b"a", b"b", b"c", b"d"]:
        store[k] = k
    assert list(store.keys(start=b"b", stop=b"d")) == [b"b", b"c"]
    assert list(store.keys(start=b"b", stop=b"d", reverse=True)) == [b"c", b"b"]
    assert list(store.keys(start=b"bb", stop=b"cc")) == [b"c"]
    assert list(store.values(start=b"c")) == [b"c", b"d"]
    assert list(store.values(stop=b"c", reverse=True)) == [b"b", b"a"]


def test_prefix_intersects_start_and_stop(store):
    for k in [b"a", b"b1", b"b2", b"b3", b"b4", b"c"]:
        store[k] = k
    assert list(store.keys(prefix=b"b", start=b"b2")) == [b"b2", b"b3", b"b4"]
    assert list(store.keys(prefix=b"b", stop=b"b3")) == [b"b1", b"b2"]
    assert list(store.keys(prefix=b"b", start=b"a", stop=b"z")) == [b"b1", b"b2", b"b3", b"b4"]
    assert list(store.keys(prefix=b"b", start=b"b2", stop=b"b4", reverse=True)) == [b"b3", b"b2"]
    assert list(store.keys(prefix=b"b", start=b"c")) == []
    assert list(store.keys(prefix=b"b", stop=b"a")) == []


def test_bounds_accept_bytes_like(store):
    for k in [b"aa", b"ab", b"b"]:
        store[k] = k
    assert list(store.keys(prefix=bytearray(b"a"))) == [b"aa", b"ab"]
    assert list(store.keys(prefix=memoryview(b"a"))) == [b"aa", b"ab"]
    assert list(store.keys(start=bytearray(b"ab"), stop=memoryview(b"b"))) == [b"ab"]


def test_str_bounds_are_normalised_and_encoded(make_store):
    store = make_store(key_encoding="utf-8", str_normalize="NFC")
    store["\u00e9t\u00e9"] = 1  # NFC "été"
    store["\u00e9cole"] = 2
    store["ete"] = 3
    nfd_e = "e\u0301"  # "é" in NFD: normalised to NFC before encoding
    assert list(store.keys(prefix=nfd_e)) == ["\u00e9cole", "\u00e9t\u00e9"]
    assert list(store.keys(prefix=nfd_e + "t")) == ["\u00e9t\u00e9"]
    assert list(store.keys(start=nfd_e + "t")) == ["\u00e9t\u00e9"]
    assert list(store.keys(stop=nfd_e + "t")) == ["ete", "\u00e9cole"]
    # bytes bounds still work with key_encoding set
    assert list(store.keys(prefix="é".encode())) == ["\u00e9cole", "\u00e9t\u00e9"]


def test_str_bound_without_key_encoding_is_type_error(store):
    store[b"a"] = 1
    for name in ("prefix", "start", "stop"):
        with pytest.raises(TypeError):
            list(store.keys(**{name: "a"}))


@pytest.mark.parametrize("method", ["keys", "values", "items", "scan"])
@pytest.mark.parametrize("name", ["prefix", "start", "stop"])
@pytest.mark.parametrize("bad", [5, 1.5, [b"a"], object()], ids=["int", "float", "list", "object"])
def test_bound_of_wrong_type_names_it(store, method, name, bad):
    store[b"a"] = 1
    with pytest.raises(TypeError, match=name):
        list(getattr(store, method)(**{name: bad}))


@pytest.mark.parametrize("method", ["keys", "values", "items", "scan"])
def test_bounds_are_keyword_only(store, method):
    store[b"a"] = 1
    with pytest.raises(TypeError):
        list(getattr(store, method)(b"a"))


def test_none_bounds_mean_unbounded(store):
    for k in [b"a", b"b"]:
        store[k] = 1
    assert list(store.keys(prefix=None, start=None, stop=None, reverse=False)) == [b"a", b"b"]
    assert list(store.scan(prefix=None, start=None, stop=None, reverse=True)) == [
        (b"b", 1),
        (b"a", 1),
    ]


def test_scan_returns_an_iterator_of_pairs(store):
    store[b"a"] = 1
    store[b"b"] = 2
    it = store.scan()
    assert iter(it) is it
    assert next(it) == (b"a", 1)
    assert next(it) == (b"b", 2)
    with pytest.raises(StopIteration):
        next(it)


# --------------------------------------------------------------------------
# views: live, reversible, set operations
# --------------------------------------------------------------------------


def test_views_are_live(store):
    keys, values, items = store.keys(), store.values(), store.items()
    bounded = store.keys(prefix=b"a")
    store[b"a1"] = 1
    store[b"b1"] = 2
    assert list(keys) == [b"a1", b"b1"]
    assert list(values) == [1, 2]
    assert list(items) == [(b"a1", 1), (b"b1", 2)]
    assert len(keys) == 2
    assert len(bounded) == 1
    store.flush()
    store[b"a2"] = 3
    del store[b"b1"]
    assert list(keys) == [b"a1", b"a2"]
    assert b"b1" not in keys
    assert b"a2" in keys
    assert len(items) == 2
    assert list(bounded) == [b"a1", b"a2"]
    assert len(bounded) == 2
    store.clear()
    assert list(keys) == []
    assert len(values) == 0
    assert len(bounded) == 0


def test_views_can_be_iterated_again(store):
    for k in [b"a", b"b", b"c"]:
        store[k] = k
    keys = store.keys()
    assert list(keys) == list(keys) == [b"a", b"b", b"c"]
    it1, it2 = iter(keys), iter(keys)
    assert next(it1) == b"a"
    assert next(it1) == b"b"
    assert next(it2) == b"a"
    assert list(it1) == [b"c"]
    assert list(it2) == [b"b", b"c"]


def test_reversed_keys_view(open_store, mode):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, "mixed")
    want = [k for k, _ in expected_range(model)]
    assert list(reversed(store.keys())) == want[::-1]
    assert list(reversed(store.keys(prefix=mode.k("k00")))) == [
        k for k in want[::-1] if enc(k).startswith(b"k00")
    ]


def test_keys_view_set_operations(open_store, mode):
    store = open_store()
    a, b, c, d = (mode.k(x) for x in "abcd")
    store[a] = 1
    store[b] = 2
    store[c] = 3
    keys = store.keys()
    other = {b, c, d}
    assert keys & other == {b, c}
    assert keys | other == {a, b, c, d}
    assert keys - other == {a}
    assert keys ^ other == {a, d}
    assert other & keys == {b, c}
    assert other | keys == {a, b, c, d}
    assert other - keys == {d}
    assert isinstance(keys & other, set)
    assert isinstance(keys | other, set)
    assert keys.isdisjoint({d})
    assert not keys.isdisjoint(other)
    # Same answers as a dict's keys view.
    plain = {a: 1, b: 2, c: 3}.keys()
    assert (keys & other, keys | other, keys - other, keys ^ other) == (
        plain & other,
        plain | other,
        plain - other,
        plain ^ other,
    )


def test_items_view_set_operations(store):
    store[b"a"] = 1
    store[b"b"] = 2
    items = store.items()
    other = {(b"a", 1), (b"b", 99), (b"c", 3)}
    assert items & other == {(b"a", 1)}
    assert items | other == {(b"a", 1), (b"b", 2), (b"b", 99), (b"c", 3)}
    assert items - other == {(b"b", 2)}
    assert items ^ other == {(b"b", 2), (b"b", 99), (b"c", 3)}
    assert isinstance(items & other, set)


def test_view_lengths_and_bool(store):
    assert not store.keys()
    assert not store.items()
    store[b"a"] = 1
    assert store.keys()
    assert len(store.values()) == 1


# --------------------------------------------------------------------------
# len
# --------------------------------------------------------------------------


def test_len_counts_the_buffer_exactly(make_store):
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    assert len(store) == 0
    for i in range(5):
        store[b"k%d" % i] = i
    assert len(store) == 5  # all buffered
    store.flush()
    assert len(store) == 5

    store[b"k0"] = "again"  # buffered put of an existing key
    store.put(b"k1", "again")
    store[b"k0"] = "and again"
    assert len(store) == 5
    store.delete(b"missing")  # tombstones of keys that were never stored
    store.delete(b"missing-too")
    assert len(store) == 5
    store.delete(b"k2")  # tombstone of a stored key
    assert len(store) == 4
    store.delete(b"k2")  # twice is still one
    assert len(store) == 4
    store[b"k2"] = "back"  # put over the tombstone
    assert len(store) == 5
    store[b"new"] = 1
    store[b"new"] = 2
    assert len(store) == 6
    store.delete(b"new")  # buffered put replaced by a tombstone
    assert len(store) == 5
    del store[b"k3"]
    assert len(store) == 4
    assert store.pending > 0

    expected = {b"k0": "and again", b"k1": "again", b"k2": "back", b"k4": 4}
    assert len(store.keys()) == len(store.items()) == len(store.values()) == 4
    assert dict(store.items()) == expected
    store.flush()
    assert len(store) == 4
    assert store.stat()["entries"] == 4


def test_len_with_small_batches(make_store):
    store = make_store(batch_size=3)
    model = {}
    for i in range(50):
        k = b"k%d" % (i % 13)
        if i % 4 == 3:
            store.delete(k)
            model.pop(k, None)
        else:
            store[k] = i
            model[k] = i
        assert len(store) == len(model)


# --------------------------------------------------------------------------
# get / pop / popitem / setdefault
# --------------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_pop_like_dict(open_store, mode, state):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, state)
    twin = dict(model)
    for key in list(model)[::3]:
        assert store.pop(key) == twin.pop(key)
        assert key not in store
    gone = next(k for k in (mode.k(f"k{i:03d}") for i in range(40)) if k not in twin)
    assert store.pop(gone, "dflt") == twin.pop(gone, "dflt") == "dflt"
    assert store.pop(gone, None) is None
    with pytest.raises(KeyError):
        store.pop(gone)
    with pytest.raises(KeyError):
        store.pop(mode.k("never"))
    present = next(iter(twin))
    assert store.pop(present, "dflt") == twin.pop(present)
    assert_matches(store, twin)
    path = store.path
    store.close()
    assert_matches(open_store(path), twin)


def test_popitem_removes_the_smallest_key(store):
    for k in [b"c", b"a", b"b"]:
        store[k] = k.decode()
    store.flush()
    assert store.popitem() == (b"a", "a")
    assert list(store) == [b"b", b"c"]
    assert store.popitem() == (b"b", "b")
    assert store.popitem() == (b"c", "c")
    assert len(store) == 0
    with pytest.raises(KeyError):
        store.popitem()


def test_popitem_empty_store_raises_key_error(store):
    with pytest.raises(KeyError):
        store.popitem()
    store[b"a"] = 1
    store.delete(b"a")
    with pytest.raises(KeyError):
        store.popitem()
    store.flush()
    with pytest.raises(KeyError):
        store.popitem()


def test_popitem_sees_the_buffer(make_store):
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    store[b"b"] = "b"
    store[b"c"] = "c"
    store.flush()
    store[b"a"] = "buffered"  # a buffered key smaller than every committed one
    assert store.popitem() == (b"a", "buffered")
    store.delete(b"b")  # tombstone over the smallest committed key
    store[b"c"] = "rewritten"
    assert store.popitem() == (b"c", "rewritten")
    with pytest.raises(KeyError):
        store.popitem()
    assert len(store) == 0


def test_popitem_str_keys(make_store):
    store = make_store(key_encoding="utf-8")
    store["é"] = 1
    store["z"] = 2
    assert store.popitem() == ("z", 2)
    assert store.popitem() == ("é", 1)


def test_popitem_is_one_write_transaction(make_store, db_path, read_raw):
    store = make_store()
    for i in range(10):
        store[b"k%d" % i] = i
    store.flush()
    before = last_txnid(store)
    assert store.popitem() == (b"k0", 0)
    assert last_txnid(store) == before + 1
    assert b"k0" not in store
    store.close()
    raw = read_raw(db_path)
    assert b"k0" not in raw
    assert raw == {
        b"k%d" % i: pickle.dumps(i, protocol=pickle.HIGHEST_PROTOCOL) for i in range(1, 10)
    }


def test_concurrent_popitem_never_returns_one_item_twice(make_store, db_path, read_raw):
    store = make_store(sync=False)
    model = {b"k%04d" % i: i for i in range(400)}
    store.put_many(model)

    def drain():
        got = []
        while True:
            try:
                got.append(store.popitem())
            except KeyError:
                return got

    results, errors = run_threads([drain] * 4)
    assert errors == [None] * 4
    popped = [pair for got in results for pair in got]
    assert len(popped) == len(model)
    assert dict(popped) == model
    for got in results:  # each thread saw ascending keys
        assert [k for k, _ in got] == sorted(k for k, _ in got)
    assert len(store) == 0
    store.close()
    assert read_raw(db_path) == {}


def test_setdefault_like_dict(open_store, mode):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, "mixed")
    twin = dict(model)
    present = next(iter(twin))
    assert store.setdefault(present, "ignored") == twin.setdefault(present, "ignored")
    assert store[present] == twin[present]
    deleted = mode.k("k000")  # tombstoned by populate
    assert deleted not in twin
    assert store.setdefault(deleted, [1, 2]) == [1, 2]
    twin.setdefault(deleted, [1, 2])
    assert store[deleted] == [1, 2]
    fresh = mode.k("fresh")
    assert store.setdefault(fresh) is None
    twin.setdefault(fresh)
    assert fresh in store
    assert store[fresh] is None
    assert store.setdefault(fresh, "other") is None
    assert_matches(store, twin)


def test_get_like_dict(open_store, mode):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, "mixed")
    for i in range(45):
        k = mode.k(f"k{i:03d}")
        assert store.get(k) == model.get(k)
        assert store.get(k, "dflt") == model.get(k, "dflt")


# --------------------------------------------------------------------------
# update / clear
# --------------------------------------------------------------------------


class DuckMapping:
    """Has keys() and __getitem__, like the objects dict.update accepts."""

    def __init__(self, data):
        self._data = data

    def keys(self):
        return list(self._data)

    def __getitem__(self, key):
        return self._data[key]


class PlainMapping(collections.abc.Mapping):
    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


@pytest.mark.parametrize(
    "kind", ["dict", "pairs-list", "pairs-generator", "duck", "mapping", "proxy", "store"]
)
def test_update_like_dict(open_store, mode, kind, tmp_path):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, "mixed", n=10)
    data = {mode.k("k001"): "over", mode.k("k005"): "resurrected", mode.k("zz"): [1]}
    if kind == "dict":
        arg = dict(data)
    elif kind == "pairs-list":
        arg = list(data.items())
    elif kind == "pairs-generator":
        arg = ((k, v) for k, v in data.items())
    elif kind == "duck":
        arg = DuckMapping(data)
    elif kind == "mapping":
        arg = PlainMapping(data)
    elif kind == "proxy":
        arg = types.MappingProxyType(dict(data))
    else:
        arg = open_store(str(tmp_path / "other"))
        for k, v in data.items():
            arg[k] = v
    store.update(arg)
    model.update(data)
    assert_matches(store, model)


def test_update_pairs_last_write_wins(store):
    store.update([(b"a", 1), (b"b", 2), (b"a", 3)])
    assert dict(store.items()) == {b"a": 3, b"b": 2}


def test_update_without_arguments_changes_nothing(store):
    store[b"a"] = 1
    store.update()
    store.update({})
    store.update([])
    assert dict(store.items()) == {b"a": 1}


def test_update_keywords_with_key_encoding(make_store):
    store = make_store(key_encoding="utf-8")
    store.update(alpha=1, beta=2)
    assert dict(store.items()) == {"alpha": 1, "beta": 2}
    store.update({"alpha": 10, "gamma": 3}, beta=20, gamma=30)
    model = {"alpha": 1, "beta": 2}
    model.update({"alpha": 10, "gamma": 3}, beta=20, gamma=30)
    assert store == model
    store.update([("delta", 4)], epsilon=5)
    model.update([("delta", 4)], epsilon=5)
    assert dict(store.items()) == model


def test_update_keywords_without_key_encoding_is_type_error(store):
    store[b"a"] = 1
    with pytest.raises(TypeError):
        store.update(alpha=1)
    assert dict(store.items()) == {b"a": 1}
    assert b"alpha" not in store


def test_update_with_bad_argument_is_type_error(store):
    with pytest.raises(TypeError):
        store.update(5)
    with pytest.raises((TypeError, ValueError)):
        store.update([b"abc"])  # an item that is not a pair
    assert len(store) == 0


@pytest.mark.parametrize("state", STATES)
def test_clear_like_dict(open_store, mode, state, read_raw):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    populate(store, mode, state)
    path = store.path
    store.clear()
    assert store.pending == 0
    assert_matches(store, {})
    assert store.stat()["entries"] == 0
    # The store is usable afterwards.
    store[mode.k("after")] = 1
    assert_matches(store, {mode.k("after"): 1})
    store.clear()
    store.clear()  # clearing an empty store is fine
    assert len(store) == 0
    store.close()
    assert read_raw(path) == {}


def test_clear_is_one_write_transaction(make_store, db_path, read_raw):
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    store.put_many({b"k%d" % i: i for i in range(100)})
    before = last_txnid(store)
    store.clear()
    assert last_txnid(store) == before + 1
    assert len(store) == 0

    store.put_many({b"k%d" % i: i for i in range(100)})
    store[b"buffered"] = 1
    store.delete(b"k5")
    before = last_txnid(store)
    store.clear()
    assert last_txnid(store) - before <= 1
    assert store.pending == 0
    assert list(store) == []
    store.close()
    assert read_raw(db_path) == {}


def test_clear_fifty_thousand_entries(make_store, db_path, read_raw):
    store = make_store(map_size=64 * MiB)
    store.put_many((b"key-%06d" % i, i) for i in range(50_000))
    assert store.stat()["entries"] == 50_000
    assert len(store) == 50_000
    store.clear()
    assert store.stat()["entries"] == 0
    assert len(store) == 0
    assert list(store.keys()) == []
    store[b"again"] = 1
    assert dict(store.items()) == {b"again": 1}
    store.close()
    assert read_raw(db_path) == {b"again": pickle.dumps(1, protocol=pickle.HIGHEST_PROTOCOL)}


def test_clear_then_reopen(make_store, db_path):
    store = make_store()
    store.put_many({b"a": 1, b"b": 2})
    store.clear()
    store.close()
    again = make_store()
    assert len(again) == 0
    assert list(again) == []


# --------------------------------------------------------------------------
# equality and repr
# --------------------------------------------------------------------------


def test_equality_against_mappings(open_store, mode):
    store = open_store(batch_size=NEVER, autoflush_on_read=False)
    model = populate(store, mode, "mixed", n=10)
    assert store == model
    assert model == store
    assert store == types.MappingProxyType(model)
    assert store == PlainMapping(model)
    assert store == collections.OrderedDict(reversed(list(model.items())))
    assert store == collections.ChainMap(model)

    changed_value = dict(model)
    changed_value[next(iter(model))] = "different"
    assert store != changed_value
    assert not (store == changed_value)
    extra = dict(model, **{"extra": 1}) if mode.encoding else {**model, b"extra": 1}
    assert store != extra
    missing = dict(model)
    missing.popitem()
    assert store != missing
    assert store != {}


def test_equality_against_non_mappings_is_false(store):
    store[b"a"] = 1
    for other in ([(b"a", 1)], None, 1, "a", {b"a"}, ((b"a", 1),)):
        assert (store == other) is False
        assert (store != other) is True


def test_equality_between_stores(make_store, tmp_path):
    a = make_store(str(tmp_path / "a"))
    b = make_store(str(tmp_path / "b"), batch_size=NEVER, autoflush_on_read=False)
    for k in [b"x", b"y"]:
        a[k] = k
        b[k] = k
    assert a == b
    b[b"y"] = "other"
    assert a != b


def test_empty_store_equals_empty_mapping(store):
    assert store == {}
    assert store == types.MappingProxyType({})
    store[b"a"] = 1
    del store[b"a"]
    assert store == {}


def _without_path(text: str, path: str) -> str:
    assert path in text
    return text.replace(path, "")


def test_repr_shows_path_count_and_state_never_contents(make_store, db_path):
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    path = store.path
    store[b"hidden-key-q7"] = "SECRET-VALUE-7c1e"
    for i in range(6):
        store[b"k%d" % i] = i
    text = repr(store)
    rest = _without_path(text, path)
    assert "SECRET-VALUE-7c1e" not in text
    assert "hidden-key-q7" not in text
    assert re.search(r"\b7\b", rest), text  # buffered entries counted
    assert "closed" not in rest
    assert "readonly" not in rest

    store.flush()
    text = repr(store)
    assert "SECRET-VALUE-7c1e" not in text
    assert re.search(r"\b7\b", _without_path(text, path)), text
    del store[b"k0"]
    assert re.search(r"\b6\b", _without_path(repr(store), path)), repr(store)

    store.close()
    text = repr(store)
    assert "closed" in _without_path(text, path)
    assert "SECRET-VALUE-7c1e" not in text

    ro = make_store(readonly=True)
    text = repr(ro)
    rest = _without_path(text, ro.path)
    assert "readonly" in rest
    assert "closed" not in rest
    assert re.search(r"\b6\b", rest), text
    assert "SECRET-VALUE-7c1e" not in text


def test_repr_of_str_keyed_store_hides_keys(make_store):
    store = make_store(key_encoding="utf-8")
    store["a-very-private-key"] = "a-very-private-value"
    text = repr(store)
    assert "a-very-private-key" not in text
    assert "a-very-private-value" not in text
    assert re.search(r"\b1\b", _without_path(text, store.path))


# --------------------------------------------------------------------------
# writes inside a loop over the store
# --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, NEVER])
def test_put_inside_for_loop(make_store, batch_size):
    store = make_store(batch_size=batch_size, sync=False)
    originals = {b"a%03d" % i: i for i in range(300)}
    store.put_many(originals)
    seen = []
    for k in store:
        seen.append(k)
        store[k] = store[k] + 1000  # rewrite the key under the cursor
        store[b"0" + k] = -1  # a new key before the cursor: never seen
    assert seen == sorted(originals)
    expected = {k: v + 1000 for k, v in originals.items()}
    expected.update({b"0" + k: -1 for k in originals})
    assert dict(store.items()) == expected
    assert len(store) == 600


def test_put_after_cursor_inside_loop_is_seen_at_most_once(make_store):
    store = make_store(batch_size=5, sync=False)
    originals = [b"k%03d" % i for i in range(200)]
    store.put_many((k, 0) for k in originals)
    seen = []
    for k in store.keys():
        seen.append(k)
        if not k.endswith(b"+"):
            store[k + b"+"] = 1  # sorts right after k: may or may not be seen
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(originals) <= set(seen) <= set(originals) | {k + b"+" for k in originals}
    assert len(store) == 400


def test_delete_inside_for_loop(make_store):
    store = make_store(batch_size=3, sync=False)
    keys = [b"k%03d" % i for i in range(150)]
    store.put_many((k, 1) for k in keys)
    seen = []
    for k, _ in store.items():
        seen.append(k)
        store.delete(k)
        store.delete(k[:-1] + b"9")  # maybe a key still ahead of the cursor
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(seen) <= set(keys)
    assert len(store) == 0
    assert list(store) == []


def test_put_inside_for_loop_grows_the_map(make_store):
    store = make_store(map_size=1 << 20, batch_size=1, sync=False)
    originals = {b"k%02d" % i: i for i in range(30)}
    store.put_many(originals)
    big = bytes(range(256)) * 800  # ~200 KiB, 30 of them: far over 1 MiB
    seen = []
    for k, v in store.items():
        seen.append(k)
        assert v == originals[k]
        store[b"0" + k] = big
    assert seen == sorted(originals)
    assert store.info()["map_size"] > 1 << 20
    assert len(store) == 60
    assert store[b"0k29"] == big
    assert dict(store.items(prefix=b"k")) == originals


# --------------------------------------------------------------------------
# close and readonly
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["iter", "keys", "values", "items", "scan", "reversed"])
@pytest.mark.parametrize("n", [5, 5000])
def test_close_during_iteration_raises_closed_error(make_store, method, n):
    store = make_store()
    store.put_many((b"k%05d" % i, i) for i in range(n))
    it = {
        "iter": lambda: iter(store),
        "keys": lambda: iter(store.keys()),
        "values": lambda: iter(store.values()),
        "items": lambda: iter(store.items()),
        "scan": lambda: store.scan(),
        "reversed": lambda: reversed(store.keys()),
    }[method]()
    next(it)
    next(it)
    store.close()
    with pytest.raises(ClosedError):
        next(it)
    with pytest.raises(ClosedError):
        next(it)


def test_every_mapping_call_after_close_raises_closed_error(store):
    store[b"a"] = 1
    keys = store.keys()
    store.close()
    calls = [
        lambda: len(store),
        lambda: list(store),
        lambda: list(store.keys()),
        lambda: list(store.values()),
        lambda: list(store.items()),
        lambda: list(store.scan()),
        lambda: list(keys),
        lambda: len(keys),
        lambda: store.pop(b"a"),
        lambda: store.pop(b"a", None),
        lambda: store.popitem(),
        lambda: store.setdefault(b"a", 2),
        lambda: store.update({b"b": 2}),
        lambda: store.clear(),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()


def test_readonly_store_reads_but_refuses_writes(make_store, db_path):
    store = make_store()
    store.put_many({b"a": 1, b"b": 2})
    store.close()
    ro = make_store(readonly=True)
    assert dict(ro.items()) == {b"a": 1, b"b": 2}
    assert list(ro.keys(prefix=b"b")) == [b"b"]
    assert len(ro) == 2
    for call in [
        lambda: ro.pop(b"a"),
        lambda: ro.popitem(),
        lambda: ro.clear(),
        lambda: ro.update({b"c": 3}),
        lambda: ro.setdefault(b"c", 3),
    ]:
        with pytest.raises(ReadonlyError):
            call()
    assert ro == {b"a": 1, b"b": 2}
