"""Type stubs for ``lmdb_object_store._native``, the Rust extension module.

``lmdb_object_store`` re-exports the store, the exceptions, ``lmdb_version`` and
``__version__``; import them from there.
"""

import os
from collections import abc
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from types import GenericAlias
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar, final

from typing_extensions import Self, disjoint_base

__version__: str
__all__ = [
    "LmdbObjectStore",
    "StoreIterator",
    "KeysView",
    "ValuesView",
    "ItemsView",
    "Snapshot",
    "Transaction",
    "Error",
    "MapFullError",
    "ReadonlyError",
    "ClosedError",
    "DecodeError",
    "TransactionConflictError",
    "UnpickleError",
    "UnsafeValueError",
    "ValueFile",
    "lmdb_version",
    "tables",
    "_flush_all",
    "_before_fork",
    "_after_fork_parent",
    "_after_fork_child",
    "_codec_dumps",
    "_codec_loads",
    "_codec_dumps_safe",
    "_codec_loads_safe",
    "_dumps",
    "_loads",
    "__version__",
]

#: What a key may be: bytes-like, or ``str`` when the store has a ``key_encoding``.
_Key: TypeAlias = bytes | bytearray | memoryview | str
#: A range bound of ``keys()``, ``values()``, ``items()`` and ``scan()``.
_Bound: TypeAlias = bytes | bytearray | memoryview | str | None
_Path: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# A serializer's name, or an object with dumps(obj) -> bytes and loads(buffer) -> obj.
_Serializer: TypeAlias = Literal["pickle", "safe", "raw", "json", "msgpack"] | Any
_T = TypeVar("_T")

class Error(Exception):
    """Base class of every error raised by lmdb_object_store itself."""

class MapFullError(Error):
    """The map is full and may not grow: it is at ``max_map_size``. Nothing was written."""

class ReadonlyError(Error):
    """A write, flush or delete on a store opened with ``readonly=True``."""

class ClosedError(Error):
    """The store is closed (or closing): open a new one to go on."""

class TransactionConflictError(Error):
    """A transaction was undone (the map had to grow) and another writer changed what it
    had read meanwhile: nothing of it was written; run it again."""

class DecodeError(Error):
    """A stored or buffered value does not decode with the store's serializer; the
    original error is ``__cause__``."""

class UnpickleError(DecodeError, RuntimeError):
    """A stored or buffered value does not unpickle; the original error is ``__cause__``."""

class UnsafeValueError(Error):
    """A value needs a global or an opcode that the safe serializer does not allow.

    ``global_name`` is the refused global as ``"module.qualname"`` (``None`` when an
    opcode or a helper's arguments were refused); ``key`` is the key of the value
    when the store knows it, else ``None``.
    """

    global_name: str | None
    key: bytes | str | None

@disjoint_base
class LmdbObjectStore(MutableMapping[Any, Any]):
    """A persistent, thread-safe, dict-like store of Python objects on LMDB.

    Values are pickled; keys are bytes (or ``str`` with ``key_encoding``), kept in
    ascending byte order. Writes are buffered and committed in single transactions.

    >>> with LmdbObjectStore("/tmp/db", key_encoding="utf-8") as store:
    ...     store["k"] = {"v": 1}
    ...     store["k"]
    {'v': 1}
    """

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...
    def __init__(
        self,
        db_path: _Path,
        batch_size: int = 1000,
        *,
        autoflush_on_read: bool = True,
        key_encoding: str | None = None,
        key_errors: str = "strict",
        str_normalize: Literal["NFC", "NFD", "NFKC", "NFKD"] | None = None,
        max_map_size: int | None = None,
        max_buffer_bytes: int = 67108864,
        pickle_protocol: int | None = None,
        serializer: _Serializer = "pickle",
        allowed: Iterable[str] | None = None,
        compression: Literal["zstd", "lz4"] | None = None,
        compression_threshold: int | None = None,
        table: str | None = None,
        map_size: int = 10485760,
        subdir: bool = True,
        readonly: bool = False,
        metasync: bool = True,
        sync: bool = True,
        map_async: bool = False,
        mode: int = 0o755,
        create: bool = True,
        readahead: bool = True,
        writemap: bool = False,
        meminit: bool = True,
        max_readers: int = 1024,
        lock: bool = True,
    ) -> None:
        """Open (or create) the store at ``db_path``.

        ``table`` names a table of the file (created if missing); ``None`` is the
        main one. The keywords after ``table`` are those of py-lmdb's ``lmdb.open()``.
        ``pickle_protocol=None`` means ``pickle.HIGHEST_PROTOCOL``. ``serializer`` is
        ``"pickle"``, ``"safe"``, ``"raw"``, ``"json"``, ``"msgpack"`` or an object with
        ``dumps(obj) -> bytes`` and ``loads(buffer) -> obj``; ``allowed`` (safe only)
        names the extra ``"module.qualname"`` globals a safe read may use.
        ``compression`` (``"zstd"`` or ``"lz4"``) compresses each encoded value of at
        least ``compression_threshold`` bytes (default 1024) when that makes it smaller.
        """

    # Writes

    def put(self, key: _Key, obj: object) -> None:
        """Store ``obj`` (pickled now) under ``key``; buffered until the next commit."""

    def __setitem__(self, key: _Key, value: Any, /) -> None: ...
    def delete(self, key: _Key) -> None:
        """Buffer a deletion of ``key``, with no check that it exists."""

    def __delitem__(self, key: _Key, /) -> None:
        """Buffer a deletion of ``key``; ``KeyError`` if it is neither buffered nor stored."""

    def put_many(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        """Commit the buffer, then write every pair in one transaction: all or nothing."""

    # NumPy arrays (numpy is an optional dependency)

    def put_array(self, key: _Key, arr: Any) -> None:
        """Store an array in NumPy's ``.npy`` format (no pickle); buffered as ``put``."""

    def get_array(self, key: _Key) -> Any:
        """The array stored under ``key`` by ``put_array``, as a new array."""

    def get_arrays(self, keys: Iterable[_Key], out: Any = None) -> Any:
        """The arrays of ``keys`` in one ``(n, *shape)`` array (``out`` or a new one)."""

    def flush(self) -> None:
        """Commit the buffer in one write transaction."""

    # Reads

    def get(self, key: _Key, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""

    def __getitem__(self, key: _Key, /) -> Any:
        """The value stored under ``key``; ``KeyError`` if there is none."""

    def exists(self, key: _Key, *, flush: bool | None = None) -> bool:
        """Whether ``key`` has a value; ``flush=None`` follows ``autoflush_on_read``."""

    def __contains__(self, key: object, /) -> bool:
        """Whether ``key`` has a value; never commits the buffer."""

    def get_many(
        self,
        keys: Iterable[_Key],
        *,
        decode_keys: bool = False,
        decode_not_found: bool | None = None,
    ) -> tuple[dict[Any, Any], list[Any]]:
        """``(found, not_found)`` for many keys, read in one transaction.

        >>> found, not_found = store.get_many([b"a", b"missing"])
        """

    def get_into(self, key: _Key, buffer: Any) -> int:
        """Copy the stored (encoded) bytes of ``key`` into ``buffer``; return their length.

        ``buffer`` is a writable, C-contiguous bytes-like object (a ``bytearray``,
        a ``memoryview`` of one, a NumPy array). A buffered value is copied from
        the buffer. Too small a buffer raises ``ValueError`` and writes nothing;
        a missing key raises ``KeyError``.

        >>> n = store.get_into(b"k", buf)
        """

    def put_file(
        self, key: _Key, file_or_path: str | os.PathLike[str] | Any, size: int | None = None
    ) -> None:
        """Store the bytes of a file under ``key`` without a ``bytes`` of them in memory.

        ``file_or_path`` is a path or a binary file object (read from its current
        position). Committed at once, after the buffer; ``size``, if given, must be
        what the source holds. On a pickle store the value reads back as ``bytes``.
        """

    def open(self, key: _Key) -> ValueFile:
        """A read-only binary file over the value of ``key`` as it is now.

        >>> with store.open(b"video") as f:
        ...     head = f.read(1024)
        """

    def transaction(self) -> Transaction:
        """A read-write transaction: every write of its ``with`` block commits at the
        end, or none if the block raises.

        >>> with store.transaction() as t:
        ...     t[b"n"] = t.get(b"n", 0) + 1
        """

    def snapshot(self) -> Snapshot:
        """A read-only mapping over the database as it is now (the buffer committed first).

        >>> with store.snapshot() as snap:
        ...     total = sum(snap.values(prefix=b"order:"))
        """

    # Mapping and scans

    def __len__(self) -> int:
        """Number of keys, buffer included (no scan)."""

    def __iter__(self) -> StoreIterator:
        """The keys in ascending order (commits the buffer first)."""

    def __reversed__(self) -> StoreIterator:
        """The keys in descending order, as ``reversed(dict)`` gives them."""

    def keys(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> KeysView:
        """A live view of the keys in key order, within optional bounds."""

    def values(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> ValuesView:
        """A live view of the values in key order, within optional bounds."""

    def items(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> ItemsView:
        """A live view of the ``(key, value)`` pairs in key order, within optional bounds."""

    def scan(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> StoreIterator:
        """An iterator of ``(key, value)`` pairs in key order, within the bounds.

        >>> for key, value in store.scan(prefix=b"user:"): ...
        """

    def pop(self, key: _Key, *default: Any) -> Any:
        """Remove ``key`` and return its value (or ``default``, else ``KeyError``)."""

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the pair with the smallest key; ``KeyError`` if empty."""

    def setdefault(self, key: _Key, default: Any = None) -> Any:
        """The value of ``key``; if it is missing, store ``default`` and return it."""

    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        """As ``dict.update``; everything is pickled before anything is buffered."""

    def clear(self) -> None:
        """Delete every entry, buffer included, in one write transaction."""

    def drop_table(self) -> None:
        """Remove this store's table and its entries (buffered ones included) in one
        write transaction, then close the store; other stores of the table raise
        ``Error`` from then on. ``Error`` for a store opened without ``table=``."""

    def __eq__(self, value: object, /) -> bool: ...

    # Lifecycle and maintenance

    def close(self, *, strict: bool = False) -> None:
        """Commit the buffer, wait for reads in flight, sync and close. Idempotent."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        _exc: BaseException | None = None,
        _tb: object = None,
    ) -> bool:
        """Close the store; never suppresses the exception.

        If the final commit fails and no exception is propagating, its error
        (``MapFullError``, ...) is raised with a note naming the path and the
        writes not saved; otherwise the failure is reported on stderr.
        """

    def sync(self, force: bool = True) -> None:
        """fsync the data file."""

    def copy(
        self, dest: str | bytes | os.PathLike[str] | os.PathLike[bytes], *, compact: bool = True
    ) -> None:
        """Commit the buffer, then write a consistent copy of the store to ``dest``,
        which must not exist (``FileExistsError``); ``compact`` leaves out free pages.

        >>> store.copy("backup.lmdb")
        """

    def info(self) -> dict[str, int]:
        """``map_addr``, ``map_size``, ``last_pgno``, ``last_txnid``, ``max_readers``,
        ``num_readers``, as py-lmdb's ``Environment.info()``."""

    def stat(self) -> dict[str, int]:
        """``psize``, ``depth``, ``branch_pages``, ``leaf_pages``, ``overflow_pages``,
        ``entries``, as py-lmdb's ``Environment.stat()`` (committed data only)."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as path and options, never contents; unpickling reopens the store."""

    # Properties

    @property
    def path(self) -> str:
        """The path the store was opened with."""

    @property
    def readonly(self) -> bool:
        """Whether the store was opened with ``readonly=True``."""

    @property
    def table(self) -> str | None:
        """The table the store uses (``table=``); ``None`` for the main one."""

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has begun."""

    @property
    def pending(self) -> int:
        """Buffered entries not yet committed."""

    @property
    def batch_size(self) -> int:
        """Entries at which the buffer commits by itself."""

    @property
    def autoflush_on_read(self) -> bool:
        """Whether reads that reach the database commit the buffer first."""

    @property
    def max_map_size(self) -> int | None:
        """Cap for automatic map growth, or ``None``."""

    @property
    def max_buffer_bytes(self) -> int:
        """Bytes beyond which the buffer commits by itself."""

    @property
    def pickle_protocol(self) -> int:
        """The pickle protocol values are stored with."""

    @property
    def serializer(self) -> _Serializer:
        """The serializer's name, or the object given as ``serializer=``."""

    @property
    def key_encoding(self) -> str | None:
        """The codec of ``str`` keys, or ``None`` when only bytes-like keys are allowed."""

    @property
    def compression(self) -> Literal["zstd", "lz4"] | None:
        """``"zstd"``, ``"lz4"``, or ``None`` (values are written as they are)."""

    @property
    def compression_threshold(self) -> int:
        """Values at least this many bytes (encoded) are compressed."""

@final
class Snapshot:
    """A read-only mapping over one consistent state of a store.

    It holds one LMDB read transaction until its ``with`` block ends (or
    ``close()``): writes made after ``store.snapshot()`` returned are invisible
    to it. Used by the thread that opened it; after the block every method
    raises ``Error``.
    """

    def get(self, key: _Key, default: Any = None) -> Any:
        """The value of ``key`` in the snapshot, or ``default``."""

    def __getitem__(self, key: _Key, /) -> Any: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def keys(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[Any]:
        """The keys within the bounds, in key order."""

    def values(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[Any]:
        """The values within the bounds, in key order."""

    def items(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[tuple[Any, Any]]:
        """The ``(key, value)`` pairs within the bounds, in key order."""

    def get_many(
        self,
        keys: Iterable[_Key],
        *,
        decode_keys: bool = False,
        decode_not_found: bool | None = None,
    ) -> tuple[dict[Any, Any], list[Any]]:
        """``(found, not_found)`` for many keys, as ``LmdbObjectStore.get_many`` gives them."""

    def view(self, key: _Key) -> memoryview:
        """A read-only memoryview of the stored bytes of ``key``, valid until the snapshot ends."""

    def close(self) -> None:
        """End the snapshot (the ``with`` block does it on exit)."""

    @property
    def closed(self) -> bool:
        """Whether the snapshot has ended."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: object = None, _exc: object = None, _tb: object = None
    ) -> bool: ...

@final
class ValueFile:
    """A read-only binary file over one stored value, as ``store.open(key)`` saw it.

    It holds a snapshot until ``close()`` (or the end of its ``with`` block):
    writes made after ``open()`` are invisible to it. After ``close()`` every
    method but ``close`` raises ``ValueError``.
    """

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the rest when negative or None); ``b""`` at the end."""

    def readall(self) -> bytes:
        """The rest of the value."""

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next newline."""

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` (writable, contiguous); return how many bytes were read."""

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to ``offset`` from the start, the position or the end; return the position."""

    def tell(self) -> int: ...
    def readable(self) -> bool: ...
    def seekable(self) -> bool: ...
    def writable(self) -> bool: ...
    def isatty(self) -> bool: ...
    def flush(self) -> None: ...
    def close(self) -> None:
        """End the snapshot the file reads from."""

    @property
    def size(self) -> int:
        """The value's length in bytes."""

    @property
    def closed(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self, _exc_type: object = None, _exc: object = None, _tb: object = None
    ) -> bool: ...

@final
class Transaction:
    """A read-write mapping over one LMDB write transaction of a store.

    It begins when its ``with`` block starts (after committing the store's
    buffer) and commits at the block's end, or rolls back if the block raises.
    Its reads see one state plus its own writes; no other writer, thread or
    process, commits in between. Used by the thread that began it; after the
    block every method raises ``Error``.
    """

    def table(self, name: str) -> Transaction:
        """Another table of the file, in this same transaction (it must have been open
        in this process when the transaction began)."""

    def get(self, key: _Key, default: Any = None) -> Any:
        """The value of ``key`` (this transaction's writes included), or ``default``."""

    def __getitem__(self, key: _Key, /) -> Any: ...
    def __setitem__(self, key: _Key, value: Any, /) -> None: ...
    def __delitem__(self, key: _Key, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def pop(self, key: _Key, *default: Any) -> Any:
        """Remove ``key`` and return its value (or ``default``, else ``KeyError``)."""

    def setdefault(self, key: _Key, default: Any = None) -> Any:
        """The value of ``key``; if missing, store ``default`` and return it."""

    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        """Like ``dict.update``; every key and value is checked before anything is written."""

    def get_many(self, keys: Iterable[_Key]) -> tuple[dict[Any, Any], list[Any]]:
        """``(found, not_found)`` for many keys."""

    def keys(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[Any]:
        """The keys within the bounds, in key order."""

    def values(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[Any]:
        """The values within the bounds, in key order."""

    def items(
        self,
        *,
        prefix: _Bound = None,
        start: _Bound = None,
        stop: _Bound = None,
        reverse: bool = False,
    ) -> list[tuple[Any, Any]]:
        """The ``(key, value)`` pairs within the bounds, in key order."""

    @property
    def closed(self) -> bool:
        """Whether the transaction has ended (committed, rolled back or failed)."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: object = None, _exc: object = None, _tb: object = None
    ) -> bool: ...

@final
class StoreIterator(Iterator[Any]):
    """Iterator over a store's keys, values or items, in key order, read in chunks."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...

# The views are registered with the collections.abc classes they derive from
# here, and define every method of those classes themselves.

@final
class KeysView(abc.KeysView[Any]):
    """A live view of a store's keys within a range, in key order.

    Set operations take any iterable and give a ``set``; comparisons take any
    ``collections.abc.Set``.

    >>> store.keys(prefix=b"user:") & {b"user:1", b"user:9"}
    """

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __len__(self) -> int: ...
    def __iter__(self) -> StoreIterator: ...
    def __reversed__(self) -> StoreIterator: ...
    def __contains__(self, key: object, /) -> bool:
        """Whether ``key`` is within the range and in the store; ``False`` for a key
        the store cannot hold."""

    def __and__(self, other: Iterable[Any], /) -> set[Any]: ...
    def __rand__(self, other: Iterable[_T], /) -> set[_T]: ...
    def __or__(self, other: Iterable[_T], /) -> set[Any | _T]: ...
    def __ror__(self, other: Iterable[_T], /) -> set[Any | _T]: ...
    def __sub__(self, other: Iterable[Any], /) -> set[Any]: ...
    def __rsub__(self, other: Iterable[_T], /) -> set[_T]: ...
    def __xor__(self, other: Iterable[_T], /) -> set[Any | _T]: ...
    def __rxor__(self, other: Iterable[_T], /) -> set[Any | _T]: ...
    def isdisjoint(self, other: Iterable[Any]) -> bool: ...
    def __lt__(self, other: abc.Set[Any], /) -> bool: ...
    def __le__(self, other: abc.Set[Any], /) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __gt__(self, other: abc.Set[Any], /) -> bool: ...
    def __ge__(self, other: abc.Set[Any], /) -> bool: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    @classmethod
    def __class_getitem__(cls, item: Any) -> GenericAlias: ...

@final
class ValuesView(abc.ValuesView[Any]):
    """A live view of a store's values within a range, in key order."""

    def __len__(self) -> int: ...
    def __iter__(self) -> StoreIterator: ...
    def __reversed__(self) -> StoreIterator: ...
    def __contains__(self, value: object, /) -> bool:
        """Whether a value in the range is ``value`` or equals it (a scan)."""

    def __reduce__(self) -> tuple[Any, ...]: ...
    @classmethod
    def __class_getitem__(cls, item: Any) -> GenericAlias: ...

@final
class ItemsView(abc.ItemsView[Any, Any]):
    """A live view of a store's ``(key, value)`` pairs within a range, in key order.

    Set operations take any iterable and give a ``set``; comparisons take any
    ``collections.abc.Set``.
    """

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __len__(self) -> int: ...
    def __iter__(self) -> StoreIterator: ...
    def __reversed__(self) -> StoreIterator: ...
    def __contains__(self, item: object, /) -> bool:
        """Whether ``item`` is a pair whose key is in the range and whose value is
        the stored one or equals it; ``False`` for anything that is not a pair."""

    def __and__(self, other: Iterable[Any], /) -> set[tuple[Any, Any]]: ...
    def __rand__(self, other: Iterable[_T], /) -> set[_T]: ...
    def __or__(self, other: Iterable[_T], /) -> set[tuple[Any, Any] | _T]: ...
    def __ror__(self, other: Iterable[_T], /) -> set[tuple[Any, Any] | _T]: ...
    def __sub__(self, other: Iterable[Any], /) -> set[tuple[Any, Any]]: ...
    def __rsub__(self, other: Iterable[_T], /) -> set[_T]: ...
    def __xor__(self, other: Iterable[_T], /) -> set[tuple[Any, Any] | _T]: ...
    def __rxor__(self, other: Iterable[_T], /) -> set[tuple[Any, Any] | _T]: ...
    def isdisjoint(self, other: Iterable[Any]) -> bool: ...
    def __lt__(self, other: abc.Set[Any], /) -> bool: ...
    def __le__(self, other: abc.Set[Any], /) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __gt__(self, other: abc.Set[Any], /) -> bool: ...
    def __ge__(self, other: abc.Set[Any], /) -> bool: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    @classmethod
    def __class_getitem__(cls, item: Any) -> GenericAlias: ...

def tables(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], **options: Any) -> list[str]:
    """The names of the named tables of the store at ``path``, sorted (the main
    table is not among them). ``options`` are the file's open options (``subdir``,
    ``lock``, ...). Read-only: creates nothing."""

def lmdb_version() -> tuple[int, int, int]:
    """The bundled LMDB's version as ``(major, minor, patch)``."""

def _flush_all(*, exiting: bool = False) -> None:
    """Commit the buffer of every open store; at exit (``exiting=True``), after
    every other thread left its store calls."""

def _before_fork() -> None:
    """Before ``fork()``: hold writes back and commit the buffer of every open store."""

def _after_fork_parent() -> None:
    """In the parent after ``fork()``: let writes in again."""

def _after_fork_child() -> None:
    """In the child after ``fork()``: hand every inherited store a fresh environment."""

def _codec_dumps(obj: Any, protocol: int) -> bytes | None:
    """The native pickle encoder alone; ``None`` where it hands the value to ``pickle``."""

def _codec_loads(data: bytes | bytearray | memoryview) -> tuple[bool, Any]:
    """The native pickle decoder alone: ``(True, value)``, or ``(False, None)`` where it
    hands the stream to ``pickle``."""

def _codec_loads_safe(
    data: bytes | bytearray | memoryview, allowed: Iterable[str] | None = None
) -> Any:
    """What the safe serializer reads from a pickle: the native decoder, else the
    unpickler restricted to the plain types and ``allowed``; ``UnsafeValueError``
    for anything else."""

def _codec_dumps_safe(obj: Any, protocol: int = 5, allowed: Iterable[str] | None = None) -> bytes:
    """What the safe serializer writes: the native encoder, else ``pickle.dumps``
    checked to read back under the same allow-list (``UnsafeValueError`` if not)."""

def _dumps(obj: Any, protocol: int) -> bytes:
    """What the store writes for a value: the native encoder, else ``pickle.dumps``."""

def _loads(data: bytes) -> Any:
    """What the store reads from a pickle: the native decoder, else ``pickle.loads``."""
