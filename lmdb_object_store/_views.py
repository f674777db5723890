"""Live mapping views over an LmdbObjectStore, with optional key bounds.

The views only hold the store and the bounds as given; every operation goes
back to the store, so they reflect later writes as ``dict`` views do. The
set operations of keys and items views come from ``collections.abc``.
"""

from __future__ import annotations

from collections.abc import ItemsView as _ItemsView
from collections.abc import KeysView as _KeysView
from collections.abc import Mapping
from collections.abc import ValuesView as _ValuesView

_MISSING = object()


class _BoundedView:
    __slots__ = ()
    _kind = ""

    def __init__(self, store, *, prefix=None, start=None, stop=None, reverse=False):
        self._mapping = store
        self._bounds = {"prefix": prefix, "start": start, "stop": stop}
        self._reverse = reverse

    def __len__(self):
        return self._mapping._count(**self._bounds)

    def __iter__(self):
        return self._mapping._iter(self._kind, reverse=self._reverse, **self._bounds)

    def __reversed__(self):
        return self._mapping._iter(self._kind, reverse=not self._reverse, **self._bounds)

    def __repr__(self):
        shown = {k: v for k, v in self._bounds.items() if v is not None}
        if self._reverse:
            shown["reverse"] = True
        args = "".join(f", {k}={v!r}" for k, v in shown.items())
        return f"{type(self).__name__}({self._mapping!r}{args})"


class KeysView(_BoundedView, _KeysView):
    __slots__ = ("_bounds", "_reverse")
    _kind = "keys"

    def __contains__(self, key):
        return self._mapping._contains_in(key, **self._bounds)


class ValuesView(_BoundedView, _ValuesView):
    __slots__ = ("_bounds", "_reverse")
    _kind = "values"

    def __contains__(self, value):
        return any(v is value or v == value for v in self)


class ItemsView(_BoundedView, _ItemsView):
    __slots__ = ("_bounds", "_reverse")
    _kind = "items"

    def __contains__(self, item):
        try:
            key, value = item
        except (TypeError, ValueError):
            return False
        if not self._mapping._contains_in(key, **self._bounds):
            return False
        found = self._mapping.get(key, _MISSING)
        return found is not _MISSING and (found is value or found == value)


def mapping_eq(store, other):
    """``store == other`` for any mapping, as ``dict`` compares."""
    if not isinstance(other, Mapping):
        return NotImplemented
    if len(store) != len(other):
        return False
    for key, value in store.items():
        found = other.get(key, _MISSING)
        if found is _MISSING or not (found is value or found == value):
            return False
    return True
