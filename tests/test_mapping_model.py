"""Random sequences of mapping operations against a plain ``dict`` model
(docs/usage.md "Mapping and scans").

Batch size, ``autoflush_on_read`` and ``key_encoding`` are drawn at random, so
the same sequence runs against data that is buffered, committed, or both. After
every step all views, ``len``, ``==`` and a scan with random bounds are compared
with the model.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lmdb_object_store import LmdbObjectStore

# A small alphabet so that keys collide and prefixes share keys. In bytes mode
# a name maps to its latin-1 bytes (so "\xff" is the byte 0xff); in str mode it
# is the key itself (so "\xff" is two UTF-8 bytes).
NAMES = st.text(alphabet="\x00ab\xff", min_size=1, max_size=3)
BOUND_NAMES = st.none() | st.text(alphabet="\x00ab\xff", min_size=0, max_size=3)
VALUES = st.integers(-3, 3) | st.text(max_size=3) | st.tuples(st.integers(), st.none())
BOUNDS = st.fixed_dictionaries(
    {"prefix": BOUND_NAMES, "start": BOUND_NAMES, "stop": BOUND_NAMES, "reverse": st.booleans()}
)
MISSING = object()


class MappingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="los-mapping-")
        self.path = self.dir + "/db"
        self.store = None
        self.model: dict = {}
        self.bounds = None

    @initialize(
        batch=st.sampled_from([1, 2, 3, 5, 1000]),
        autoflush=st.booleans(),
        str_keys=st.booleans(),
    )
    def open(self, batch, autoflush, str_keys):
        self.options = {
            "batch_size": batch,
            "autoflush_on_read": autoflush,
            "key_encoding": "utf-8" if str_keys else None,
            "sync": False,
        }
        self.str_keys = str_keys
        self.store = LmdbObjectStore(self.path, **self.options)

    def teardown(self):
        try:
            if self.store is not None:
                self.store.close()
                with LmdbObjectStore(self.path, readonly=True, **self._key_options()) as ro:
                    assert dict(ro.items()) == self.model
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------

    def _key_options(self):
        return {"key_encoding": self.options["key_encoding"]}

    def key(self, name):
        """A key as the store hands it back."""
        if name is None:
            return None
        return name if self.str_keys else name.encode("latin-1")

    @staticmethod
    def raw(key) -> bytes:
        return key.encode("utf-8") if isinstance(key, str) else key

    def expected(self, prefix=None, start=None, stop=None, reverse=False):
        pairs = sorted(self.model.items(), key=lambda kv: self.raw(kv[0]))
        if prefix is not None:
            pairs = [kv for kv in pairs if self.raw(kv[0]).startswith(self.raw(prefix))]
        if start is not None:
            pairs = [kv for kv in pairs if self.raw(kv[0]) >= self.raw(start)]
        if stop is not None:
            pairs = [kv for kv in pairs if self.raw(kv[0]) < self.raw(stop)]
        return pairs[::-1] if reverse else pairs

    def _note(self, bounds):
        self.bounds = bounds

    # -- writes ------------------------------------------------------------

    @rule(name=NAMES, value=VALUES, bounds=BOUNDS)
    def put(self, name, value, bounds):
        k = self.key(name)
        self.store[k] = value
        self.model[k] = value
        self._note(bounds)

    @rule(name=NAMES, bounds=BOUNDS)
    def delete(self, name, bounds):
        k = self.key(name)
        self.store.delete(k)
        self.model.pop(k, None)
        self._note(bounds)

    @rule(name=NAMES, bounds=BOUNDS)
    def delitem(self, name, bounds):
        k = self.key(name)
        if k in self.model:
            del self.store[k]
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                del self.store[k]
        self._note(bounds)

    @rule(name=NAMES, default=st.just(MISSING) | VALUES, bounds=BOUNDS)
    def pop(self, name, default, bounds):
        k = self.key(name)
        if default is MISSING:
            if k in self.model:
                assert self.store.pop(k) == self.model.pop(k)
            else:
                with pytest.raises(KeyError):
                    self.store.pop(k)
        else:
            assert self.store.pop(k, default) == self.model.pop(k, default)
        self._note(bounds)

    @rule(bounds=BOUNDS)
    def popitem(self, bounds):
        if not self.model:
            with pytest.raises(KeyError):
                self.store.popitem()
        else:
            smallest = min(self.model, key=self.raw)
            assert self.store.popitem() == (smallest, self.model.pop(smallest))
        self._note(bounds)

    @rule(name=NAMES, default=st.just(MISSING) | VALUES, bounds=BOUNDS)
    def setdefault(self, name, default, bounds):
        k = self.key(name)
        if default is MISSING:
            assert self.store.setdefault(k) == self.model.setdefault(k)
        else:
            assert self.store.setdefault(k, default) == self.model.setdefault(k, default)
        self._note(bounds)

    @rule(
        pairs=st.lists(st.tuples(NAMES, VALUES), max_size=4),
        how=st.sampled_from(["mapping", "pairs", "keywords"]),
        bounds=BOUNDS,
    )
    def update(self, pairs, how, bounds):
        items = [(self.key(n), v) for n, v in pairs]
        if how == "mapping":
            self.store.update(dict(items))
            self.model.update(dict(items))
        elif how == "pairs":
            self.store.update(items)
            self.model.update(items)
        elif self.str_keys:
            self.store.update(**dict(items))
            self.model.update(**dict(items))
        elif items:
            with pytest.raises(TypeError):
                self.store.update(**{n: v for n, v in pairs})
        self._note(bounds)

    @rule(bounds=BOUNDS)
    def clear(self, bounds):
        self.store.clear()
        self.model.clear()
        assert self.store.pending == 0
        self._note(bounds)

    @rule(bounds=BOUNDS)
    def flush(self, bounds):
        self.store.flush()
        assert self.store.pending == 0
        self._note(bounds)

    @rule(bounds=BOUNDS)
    def close_and_reopen(self, bounds):
        self.store.close()
        self.store = LmdbObjectStore(self.path, **self.options)
        assert self.store.pending == 0
        self._note(bounds)

    # -- reads -------------------------------------------------------------

    @rule(name=NAMES, bounds=BOUNDS)
    def lookups(self, name, bounds):
        k = self.key(name)
        assert (k in self.store) is (k in self.model)
        if k in self.model:
            assert self.store[k] == self.model[k]
            assert self.store.get(k) == self.model[k]
        else:
            assert self.store.get(k, MISSING) is MISSING
            with pytest.raises(KeyError):
                self.store[k]
        self._note(bounds)

    @rule(bounds=BOUNDS)
    def scan_partly(self, bounds):
        """Take a few items of a scan, then drop the iterator."""
        want = self.expected(**self._bounds(bounds))
        it = self.store.scan(**self._bounds(bounds))
        got = [next(it) for _ in range(min(2, len(want)))]
        assert got == want[: len(got)]
        self._note(bounds)

    def _bounds(self, bounds):
        return {
            "prefix": self.key(bounds["prefix"]),
            "start": self.key(bounds["start"]),
            "stop": self.key(bounds["stop"]),
            "reverse": bounds["reverse"],
        }

    # -- after every step --------------------------------------------------

    @invariant()
    def views_match(self):
        if self.store is None:
            return
        store, model = self.store, self.model
        ordered = self.expected()
        keys = [k for k, _ in ordered]
        assert len(store) == len(model)
        assert list(store) == keys
        assert list(store.keys()) == keys
        assert list(store.values()) == [v for _, v in ordered]
        assert list(store.items()) == ordered
        assert list(reversed(store.keys())) == keys[::-1]
        assert list(store.items(reverse=True)) == ordered[::-1]
        assert len(store.keys()) == len(store.items()) == len(store.values()) == len(model)
        assert store == model
        for k, v in ordered:
            assert k in store.keys()
            assert (k, v) in store.items()

    @invariant()
    def bounded_scan_matches(self):
        if self.store is None or self.bounds is None:
            return
        b = self._bounds(self.bounds)
        want = self.expected(**b)
        assert list(self.store.scan(**b)) == want
        assert list(self.store.items(**b)) == want
        assert list(self.store.keys(**b)) == [k for k, _ in want]
        assert list(self.store.values(**b)) == [v for _, v in want]
        assert len(self.store.keys(**b)) == len(want)


TestMappingModel = MappingModel.TestCase
TestMappingModel.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
