"""A persistent, thread-safe, dict-like store of Python objects on LMDB.

>>> from lmdb_object_store import LmdbObjectStore
>>> with LmdbObjectStore("/tmp/example-db") as store:  # doctest: +SKIP
...     store[b"answer"] = {"value": 42}
...     store[b"answer"]
{'value': 42}
"""

import atexit as _atexit
import logging as _logging
import os as _os
from collections import abc as _abc

from . import _native
from ._native import (
    ClosedError,
    DecodeError,
    Error,
    LmdbObjectStore,
    MapFullError,
    ReadonlyError,
    Snapshot,
    Transaction,
    TransactionConflictError,
    UnpickleError,
    UnsafeValueError,
    ValueFile,
    __version__,
    _after_fork_child,
    _after_fork_parent,
    _before_fork,
    _flush_all,
    lmdb_version,
    tables,
)

_abc.MutableMapping.register(LmdbObjectStore)
# The views register as dict's views are classed (keys and items views are
# Sets); they inherit no mixin method: the native classes define every one.
_abc.KeysView.register(_native.KeysView)
_abc.ValuesView.register(_native.ValuesView)
_abc.ItemsView.register(_native.ItemsView)

# A library's logger stays quiet unless the application configures logging.
# Errors that mean lost writes are written to stderr as well. Imported here,
# not on first use: importing logging inside the before-fork hook would
# register logging's own fork hooks while the interpreter runs them.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

# Before a fork every open store commits its buffer, and writes wait until the
# fork is done; in the child, each store opens a fresh environment on first use
# and leaves the parent's alone. At exit, once no other thread is inside a store
# call, stores that were never closed commit their buffers too.
_os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_parent,
    after_in_child=_after_fork_child,
)
_atexit.register(_flush_all, exiting=True)


def _reopen(cls, path, kwargs):
    """Unpickle a store: open the same path with the same options."""
    return cls(path, **kwargs)


__all__ = [
    "ClosedError",
    "DecodeError",
    "Error",
    "LmdbObjectStore",
    "MapFullError",
    "ReadonlyError",
    "Snapshot",
    "Transaction",
    "TransactionConflictError",
    "UnpickleError",
    "UnsafeValueError",
    "ValueFile",
    "__version__",
    "lmdb_version",
    "tables",
]
