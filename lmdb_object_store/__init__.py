"""A persistent, thread-safe, dict-like store of Python objects on LMDB.

>>> from lmdb_object_store import LmdbObjectStore
>>> with LmdbObjectStore("/tmp/example-db") as store:  # doctest: +SKIP
...     store[b"answer"] = {"value": 42}
...     store[b"answer"]
{'value': 42}
"""

from collections.abc import MutableMapping as _MutableMapping

from ._native import (
    ClosedError,
    Error,
    LmdbObjectStore,
    MapFullError,
    ReadonlyError,
    UnpickleError,
    __version__,
    lmdb_version,
)

_MutableMapping.register(LmdbObjectStore)

__all__ = [
    "ClosedError",
    "Error",
    "LmdbObjectStore",
    "MapFullError",
    "ReadonlyError",
    "UnpickleError",
    "__version__",
    "lmdb_version",
]
