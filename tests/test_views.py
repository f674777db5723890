"""The views (keys(), values(), items()) and the store's ``==``: native classes
registered with collections.abc that answer as the collections.abc mixins do.

The oracle for every answer is the pure-Python mixin itself over a dict with
the store's contents: ``collections.abc.KeysView(model)`` and so on.
"""

from __future__ import annotations

import collections
import collections.abc as abc
import copy
import gc
import importlib
import operator
import pickle
import types
import weakref

import pytest

from lmdb_object_store import ClosedError, LmdbObjectStore

NEVER = 1 << 30  # a batch_size no test reaches: writes stay buffered

MODEL = {b"a": 1, b"ab": 2, b"b": (3, "three"), b"c": "four", b"d": 5}

# Ranges as keys(), values() and items() take them.
RANGES = [
    {},
    {"prefix": b"a"},
    {"start": b"ab", "stop": b"d"},
    {"reverse": True},
    {"prefix": b"a", "reverse": True},
]


class Model(dict):
    """A dict whose membership is the store's: a key the store cannot hold
    (an unhashable one here) is not in it, rather than a TypeError."""

    def __contains__(self, key):
        try:
            return dict.__contains__(self, key)
        except TypeError:
            return False

    def __getitem__(self, key):
        try:
            return dict.__getitem__(self, key)
        except TypeError:
            raise KeyError(key) from None


class ModelItemsView(abc.ItemsView):
    """The mixin, except that anything that is not a pair is not in it (the
    mixin's `key, value = item` would raise)."""

    def __contains__(self, item):
        try:
            key, value = item
        except (TypeError, ValueError):
            return False
        return super().__contains__((key, value))


MIXINS = {"keys": abc.KeysView, "values": abc.ValuesView, "items": ModelItemsView}


def in_range(key: bytes, prefix=None, start=None, stop=None, reverse=False) -> bool:
    return (
        (prefix is None or key.startswith(prefix))
        and (start is None or key >= start)
        and (stop is None or key < stop)
    )


def oracle(model: dict, kind: str, **bounds):
    """The mixin view over the part of `model` within the bounds, in order."""
    ordered = sorted(model, reverse=bounds.get("reverse", False))
    return MIXINS[kind](Model((k, model[k]) for k in ordered if in_range(k, **bounds)))


def outcome(call):
    """What a call gives, comparable across implementations: the result (a
    set as its type and contents) or the type of the exception it raised."""
    try:
        result = call()
    except Exception as e:  # noqa: BLE001 - the type is the answer
        return ("raises", type(e))
    if isinstance(result, (set, frozenset)):
        return (type(result), set(result))
    return ("returns", result)


@pytest.fixture(params=["buffered", "committed"])
def filled(request, make_store):
    """A store holding MODEL, its writes buffered or committed."""
    store = make_store(batch_size=NEVER, autoflush_on_read=False)
    store.update(MODEL)
    if request.param == "committed":
        store.flush()
    return store


@pytest.fixture
def other_store(make_store, tmp_path):
    other = make_store(str(tmp_path / "other"))
    other.update({b"a": 1, b"b": 99, b"z": 26})
    return other


def others(other_store):
    """Right-hand operands of every kind the mixins treat differently: sets,
    dict views, other stores' views, plain iterables (consumed once, so
    each is made fresh), iterables of things no store can hold, and
    things that are not iterable at all."""
    return [
        ("empty set", lambda: set()),
        ("set of keys", lambda: {b"a", b"zz"}),
        ("frozenset", lambda: frozenset({b"ab", b"c", b"y"})),
        ("set of pairs", lambda: {(b"a", 1), (b"c", "four"), (b"x", 0)}),
        ("list of keys", lambda: [b"a", b"a", b"q"]),
        ("tuple", lambda: (b"d",)),
        ("list of pairs", lambda: [(b"a", 1), (b"ab", 99), (b"e", 5)]),
        ("generator", lambda: (k for k in [b"b", b"nope"])),
        ("str", lambda: "ab"),
        ("bytes", lambda: b"ab"),
        ("odd items", lambda: [5, "a", (1, 2, 3), [b"a", 1], None]),
        ("dict keys", lambda: {b"a": 0, b"x": 1}.keys()),
        ("dict items", lambda: {b"a": 1, b"b": 0}.items()),
        ("dict values", lambda: {b"a": 1}.values()),
        ("store keys", lambda: other_store.keys()),
        ("store items", lambda: other_store.items()),
        ("store keys in range", lambda: other_store.keys(stop=b"b")),
        ("int", lambda: 5),
        ("None", lambda: None),
    ]


BINARY = [
    ("&", operator.and_),
    ("|", operator.or_),
    ("-", operator.sub),
    ("^", operator.xor),
    ("<", operator.lt),
    ("<=", operator.le),
    ("==", operator.eq),
    ("!=", operator.ne),
    (">", operator.gt),
    (">=", operator.ge),
]


@pytest.mark.parametrize("bounds", RANGES, ids=repr)
@pytest.mark.parametrize("kind", ["keys", "values", "items"])
def test_operators_answer_as_the_mixins_do(filled, other_store, kind, bounds):
    """Each operator and its reflected form, and isdisjoint, against every
    kind of operand: the same result (a `set` where the mixin gives one) or
    the same exception type as the collections.abc mixin over a dict."""
    view = getattr(filled, kind)(**bounds)
    mixin = oracle(MODEL, kind, **bounds)
    for other_name, make_other in others(other_store):
        for op_name, op in BINARY:
            got = outcome(lambda: op(view, make_other()))  # noqa: B023 - called at once
            want = outcome(lambda: op(mixin, make_other()))  # noqa: B023
            assert got == want, f"view {op_name} {other_name}"
            got = outcome(lambda: op(make_other(), view))  # noqa: B023
            want = outcome(lambda: op(make_other(), mixin))  # noqa: B023
            assert got == want, f"{other_name} {op_name} view"
        got = outcome(lambda: view.isdisjoint(make_other()))  # noqa: B023
        want = outcome(lambda: mixin.isdisjoint(make_other()))  # noqa: B023
        assert got == want, f"isdisjoint, other = {other_name}"


@pytest.mark.parametrize("kind", ["keys", "items"])
def test_set_operations_return_plain_sets(filled, kind):
    view = getattr(filled, kind)()
    for other in [set(), frozenset(), [], {}.keys(), view]:
        for result in [view & other, view | other, view - other, view ^ other]:
            assert type(result) is set
        for result in [other & view, other | view, other - view, other ^ view]:
            assert type(result) is set
    keys = filled.keys()
    assert keys & [b"a", b"zz"] == {b"a"}
    assert [b"a", b"zz"] | keys == set(MODEL) | {b"zz"}
    assert [b"a", b"zz"] - keys == {b"zz"}
    assert (b"a", b"zz") ^ keys == (set(MODEL) - {b"a"}) | {b"zz"}
    assert keys - keys == set()
    assert filled.items() - filled.items(prefix=b"a") == {
        (b"b", (3, "three")),
        (b"c", "four"),
        (b"d", 5),
    }


def test_comparisons_with_sets_and_dict_views(filled):
    keys, items = filled.keys(), filled.items()
    assert keys == set(MODEL) == keys
    assert keys == MODEL.keys() and MODEL.keys() == keys
    assert items == MODEL.items() and MODEL.items() == items
    assert not keys != MODEL.keys()
    assert keys != set(MODEL) - {b"a"}
    assert keys <= set(MODEL) and keys >= set(MODEL)
    assert not keys < set(MODEL) and not keys > set(MODEL)
    assert keys < set(MODEL) | {b"z"} and set(MODEL) | {b"z"} > keys
    assert keys > {b"a"} and {b"a"} < keys
    assert filled.keys(prefix=b"a") < keys
    assert items >= {(b"a", 1)} and not items >= {(b"a", 2)}
    assert keys != list(MODEL) and not keys == list(MODEL)
    with pytest.raises(TypeError):
        keys < list(MODEL)  # noqa: B015 - the comparison is the test
    with pytest.raises(TypeError):
        items >= 5  # noqa: B015
    # Values views compare by identity, as dict's do.
    values = filled.values()
    assert values == values and values != filled.values()


def test_registered_with_collections_abc(filled):
    keys, values, items = filled.keys(), filled.values(), filled.items()
    for view in (keys, values, items):
        for base in (abc.MappingView, abc.Sized, abc.Iterable, abc.Container):
            assert isinstance(view, base)
        assert isinstance(view, abc.Collection)
        assert isinstance(view, abc.Reversible)
    assert isinstance(keys, abc.KeysView) and isinstance(keys, abc.Set)
    assert isinstance(items, abc.ItemsView) and isinstance(items, abc.Set)
    assert isinstance(values, abc.ValuesView) and not isinstance(values, abc.Set)
    assert not isinstance(keys, abc.ItemsView) and not isinstance(items, abc.KeysView)
    assert not isinstance(keys, abc.MutableSet) and not isinstance(keys, abc.Sequence)
    # Sets are unhashable (they define ==); values views hash by identity.
    assert not isinstance(keys, abc.Hashable) and not isinstance(items, abc.Hashable)
    with pytest.raises(TypeError):
        hash(keys)
    with pytest.raises(TypeError):
        hash(items)
    assert hash(values) == hash(values)
    # Subscriptable as the collections.abc classes are, for annotations.
    alias = type(keys)[bytes]
    assert isinstance(alias, types.GenericAlias) and alias.__origin__ is type(keys)


def test_no_python_views_module(filled):
    """The views are the extension's own classes: no `_views` module, and
    the store no longer exposes the hooks that module called back into."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lmdb_object_store._views")
    for view in (filled.keys(), filled.values(), filled.items()):
        assert type(view).__module__ == "lmdb_object_store._native"
    for hook in ("_count", "_iter", "_contains_in"):
        assert not hasattr(filled, hook)


class Overridden(LmdbObjectStore):
    """Every method a view in Python would call back into, broken."""

    def _broken(self, *args, **kwargs):
        raise AssertionError("a view called back into Python")

    _count = _iter = _contains_in = get = __getitem__ = items = _broken

    def __len__(self):
        raise AssertionError("a view called back into Python")


def test_views_read_the_store_without_calling_its_python_methods(tmp_path):
    with Overridden(str(tmp_path / "db")) as store:
        LmdbObjectStore.update(store, MODEL)
        keys = LmdbObjectStore.keys(store)
        items = LmdbObjectStore.items(store, prefix=b"a")
        values = LmdbObjectStore.values(store, reverse=True)
        assert len(keys) == len(MODEL) and len(items) == 2
        assert list(keys) == sorted(MODEL)
        assert b"a" in keys and (b"ab", 2) in items and 5 in values
        assert list(values) == [MODEL[k] for k in sorted(MODEL, reverse=True)]
        assert keys & {b"a"} == {b"a"}
        assert LmdbObjectStore.__eq__(store, MODEL) is True


@pytest.mark.parametrize("bounds", RANGES, ids=repr)
@pytest.mark.parametrize("kind", ["keys", "values", "items"])
def test_iteration_and_reversed_within_bounds(filled, kind, bounds):
    view = getattr(filled, kind)(**bounds)
    want = list(oracle(MODEL, kind, **bounds))
    assert list(view) == want
    assert list(reversed(view)) == want[::-1]
    assert len(view) == len(want)
    assert bool(view) is bool(want)
    # Iterable again; each iterator independent.
    first, second = iter(view), iter(view)
    assert list(first) == want and list(second) == want


def test_membership(filled):
    keys, values, items = filled.keys(), filled.values(), filled.items()
    assert b"ab" in keys and bytearray(b"ab") in keys and memoryview(b"ab") in keys
    assert b"zz" not in keys
    # A key the store cannot hold is not in it, whatever its type.
    for odd in (5, None, "a", [b"a"], b"x" * 600):
        assert odd not in keys
    assert b"ab" not in filled.keys(prefix=b"b")
    assert (3, "three") in values and "four" in values and 99 not in values
    assert 2 not in filled.values(prefix=b"b")
    assert (b"ab", 2) in items and [b"ab", 2] in items and (b"ab", 3) not in items
    assert (b"ab", 2) not in filled.items(start=b"b")
    # Not a pair: not in the view, however it fails to unpack.
    for odd in (5, (b"a",), (b"a", 1, 1), "ab", b"ab", iter([b"a"]), None):
        assert odd not in items
    assert iter([b"a", 1]) in items  # any iterable of exactly two

    class Exploding:
        def __iter__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Exploding() in items  # noqa: B015 - only TypeError/ValueError mean "not a pair"

    class Unequal:
        def __eq__(self, other):
            raise ZeroDivisionError("no comparing")

    with pytest.raises(ZeroDivisionError):
        (b"a", Unequal()) in items  # noqa: B015
    with pytest.raises(ZeroDivisionError):
        Unequal() in values  # noqa: B015


def test_repr_shows_the_range_as_given(filled):
    store = repr(filled)
    assert repr(filled.keys()) == f"KeysView({store})"
    assert repr(filled.values(prefix=bytearray(b"a"))) == (
        f"ValuesView({store}, prefix=bytearray(b'a'))"
    )
    assert repr(filled.items(start=b"a", stop=b"", reverse=True)) == (
        f"ItemsView({store}, start=b'a', stop=b'', reverse=True)"
    )


def test_views_follow_later_writes(make_store):
    store = make_store(batch_size=NEVER)
    keys, items, values = store.keys(), store.items(), store.values()
    ranged = store.keys(start=b"b")
    assert keys == set() and items == set() and len(values) == 0
    store.update(MODEL)
    assert keys == MODEL.keys() and items == MODEL.items()
    assert keys & {b"a", b"q"} == {b"a"}
    assert ranged == {b"b", b"c", b"d"}
    store.flush()
    del store[b"a"]
    store[b"e"] = 6
    assert b"a" not in keys and (b"e", 6) in items and 6 in values
    assert ranged ^ {b"b"} == {b"c", b"d", b"e"}
    store.clear()
    assert not keys and not items and list(values) == []


def test_a_bound_changed_after_the_view_is_made_moves_the_range(store):
    store.update({b"a1": 1, b"b1": 2})
    prefix = bytearray(b"a")
    keys = store.keys(prefix=prefix)
    assert list(keys) == [b"a1"]
    prefix[0] = ord("b")
    assert list(keys) == [b"b1"] and len(keys) == 1 and b"a1" not in keys


def test_bad_bounds_fail_when_the_view_is_made(store):
    for kind in ("keys", "values", "items"):
        with pytest.raises(TypeError, match="prefix"):
            getattr(store, kind)(prefix=5)
        with pytest.raises(TypeError, match="stop"):
            getattr(store, kind)(stop="str without key_encoding")


CLOSED_CALLS = [
    ("len", lambda v, o: len(v)),
    ("bool", lambda v, o: bool(v)),
    ("iter", lambda v, o: list(v)),
    ("reversed", lambda v, o: list(reversed(v))),
    ("in", lambda v, o: o in v),
    ("&", lambda v, o: v & [o]),
    ("rand", lambda v, o: [o] & v),
    ("|", lambda v, o: v | set()),
    ("-", lambda v, o: v - set()),
    ("rsub", lambda v, o: [o] - v),
    ("^", lambda v, o: v ^ set()),
    ("isdisjoint", lambda v, o: v.isdisjoint([o])),
    ("==", lambda v, o: v == {o}),
    ("<=", lambda v, o: v <= {o}),
    (">", lambda v, o: v > set()),
]


@pytest.mark.parametrize("kind", ["keys", "items"])
@pytest.mark.parametrize("name,call", CLOSED_CALLS, ids=[c[0] for c in CLOSED_CALLS])
def test_views_of_a_closed_store_raise_its_closed_error(make_store, kind, name, call):
    store = make_store()
    store.update(MODEL)
    view = getattr(store, kind)(prefix=b"a")
    member = b"a" if kind == "keys" else (b"a", 1)
    store.close()
    with pytest.raises(ClosedError, match="closed"):
        call(view, member)
    assert repr(view).endswith("closed>, prefix=b'a')")


def test_values_view_and_the_store_after_close(make_store):
    store = make_store()
    store.update(MODEL)
    values = store.values()
    store.close()
    for call in (lambda: len(values), lambda: list(values), lambda: 1 in values):
        with pytest.raises(ClosedError):
            call()
    with pytest.raises(ClosedError):
        store == MODEL  # noqa: B015
    with pytest.raises(ClosedError):
        store.keys()


def test_views_pickle_and_copy_as_the_same_call(make_store, tmp_path):
    store = make_store(str(tmp_path / "db"))
    store.update(MODEL)
    store.flush()
    for view in (store.keys(prefix=b"a"), store.values(reverse=True), store.items(stop=b"c")):
        duplicate = copy.copy(view)
        assert type(duplicate) is type(view) and list(duplicate) == list(view)
        assert repr(duplicate) == repr(view)
        # Unpickling opens a second store on the same path; dropping the
        # view closes it.
        restored = pickle.loads(pickle.dumps(view))
        assert type(restored) is type(view) and list(restored) == list(view)
        assert repr(restored) == repr(view)
        del restored


class KeepsItsViews(LmdbObjectStore):
    pass


def test_a_view_kept_on_its_store_is_freed_with_it(tmp_path):
    """A store holding views of itself is a reference cycle: the garbage
    collector frees it (and the drop closes the store), as it would a
    Python object's."""
    store = KeepsItsViews(str(tmp_path / "db"))
    store[b"a"] = 1
    store.views = [store.keys(prefix=bytearray(b"a")), store.values(), store.items()]
    alive = weakref.ref(store)
    del store
    gc.collect()
    assert alive() is None
    with LmdbObjectStore(str(tmp_path / "db")) as reopened:
        assert reopened == {b"a": 1}


# --------------------------------------------------------------------------
# store == mapping
# --------------------------------------------------------------------------


class RecordingMapping(abc.Mapping):
    """A mapping that is not a dict: `==` must go through its `get`."""

    def __init__(self, data):
        self.data = dict(data)
        self.gets = 0

    def __getitem__(self, key):
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def get(self, key, default=None):
        self.gets += 1
        return self.data.get(key, default)


class GetOverridden(dict):
    def get(self, key, default=None):
        return "always this"


def test_store_equality_as_dict_compares(filled, other_store):
    assert filled == MODEL and MODEL == filled and not filled != MODEL
    assert filled == collections.OrderedDict(reversed(list(MODEL.items())))
    assert filled == types.MappingProxyType(MODEL)
    changed = dict(MODEL, d=6)
    assert filled != changed and filled != {**MODEL, b"d": 6}
    assert filled != dict(list(MODEL.items())[:-1])
    recording = RecordingMapping(MODEL)
    assert filled == recording and recording.gets == len(MODEL)
    shorter = RecordingMapping({b"a": 1})
    assert filled != shorter and shorter.gets == 0  # lengths differ: no lookups
    # A dict subclass's own `get` is the one asked.
    assert filled != GetOverridden(MODEL)
    # Not a mapping: not equal, whatever it holds.
    assert filled != list(MODEL.items()) and filled != set(MODEL) and filled != 5
    assert filled != other_store
    other_store.clear()
    other_store.update(MODEL)
    assert filled == other_store
    assert (filled == {**MODEL, b"zz": 0}) is False

    class Unequal:
        def __eq__(self, other):
            raise ZeroDivisionError("no comparing")

    with pytest.raises(ZeroDivisionError):
        filled == {**MODEL, b"a": Unequal()}  # noqa: B015
