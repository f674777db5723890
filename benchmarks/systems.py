"""One adapter per benchmarked system: how to open, write, commit, read and close it.

Every adapter offers the same small surface so that ``worker.py`` runs exactly the
same workload against each system. Adapters import their library lazily, in
``open()``: the worker process imports only the system it measures, which is
what lets this package and ``lmdb-object-store`` 0.1.0 (same import name) be
measured in one run.

An operation a system does not offer raises :class:`Unsupported`; it is shown as
"n/a" in the report, never as a failure.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Same fixed map for every LMDB-based store, large enough for the biggest run
# (100,000 small entries or 64 x 4 MiB values), so that no store pays for map
# growth inside a timed section. LMDB only reserves address space for it.
MAP_SIZE = 2 << 30


class Unsupported(Exception):
    """The system has no such operation (reported as n/a, not as a failure)."""


class Adapter:
    """The benchmark's view of one system.

    ``put`` calls come between ``begin()`` and ``commit()``; ``get`` calls may
    come inside ``reading()``. Both default to doing nothing, for stores that
    need no explicit transaction.
    """

    #: Identifier used on the command line and in the JSON output.
    name: str = ""
    #: Name shown in tables and the chart.
    label: str = ""
    #: What ``pip install`` gets for it in the benchmark environment; None for
    #: the standard library, the floor and this package (built from the tree).
    requirement: str | None = None
    #: Distribution whose version is recorded (None: the Python version).
    dist: str | None = None
    #: The library takes only bytes, so the adapter pickles values itself.
    pickled_by_hand: bool = False
    #: ``open(sync=False)`` means something (LMDB's MDB_NOSYNC).
    has_sync_option: bool = False
    #: Safe for reader threads and a writer thread on one handle.
    thread_safe: bool = True
    #: Short text for the report: what "commit" is, how values are encoded, ...
    note: str = ""

    #: Facts known only once open (a backend's name), set by ``open()``.
    detail: str = ""

    def open(self, path: str, *, sync: bool = True) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        """Start a group of puts."""

    def put(self, key: bytes, value: Any) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        """Make the puts since ``begin()`` durable and visible."""

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Wrap a single-threaded run of gets (py-lmdb shares one transaction)."""
        yield

    def get(self, key: bytes) -> Any:
        raise NotImplementedError

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        raise Unsupported("no batch write")

    def get_many(self, keys: list[bytes]) -> Any:
        """Return a dict keyed by key, or a list in the order of ``keys``."""
        raise Unsupported("no batch read")

    def items(self) -> Iterable[tuple[Any, Any]]:
        raise Unsupported("no iteration over items")

    def close(self) -> None:
        pass


class ObjectStore(Adapter):
    """This package: the Rust ``LmdbObjectStore``."""

    name = "this"
    label = "lmdb_object_store (this)"
    dist = "lmdb-object-store"
    has_sync_option = True
    note = "commit = `flush()`; default `batch_size=1000`"

    def open(self, path: str, *, sync: bool = True) -> None:
        from lmdb_object_store import LmdbObjectStore

        self.store = LmdbObjectStore(path, map_size=MAP_SIZE, sync=sync)

    def put(self, key: bytes, value: Any) -> None:
        self.store[key] = value

    def commit(self) -> None:
        self.store.flush()

    def get(self, key: bytes) -> Any:
        return self.store[key]

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        self.store.put_many(items)

    def get_many(self, keys: list[bytes]) -> Any:
        found, _not_found = self.store.get_many(keys)
        return found

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.store.items()

    def close(self) -> None:
        self.store.close()


class ObjectStoreReference(ObjectStore):
    """``lmdb-object-store`` 0.1.0, the pure-Python package with the same API.

    Same import name as this package: ``run.py`` installs it into a directory of
    its own and puts that directory first on the worker's ``PYTHONPATH``.
    """

    name = "ref"
    label = "lmdb-object-store 0.1.0"
    requirement = "lmdb-object-store==0.1.0"
    note = "pure Python on py-lmdb; commit = `flush()`; no `items()`"

    def items(self) -> Iterable[tuple[Any, Any]]:
        raise Unsupported("0.1.0 has no items()")


class PyLmdb(Adapter):
    """py-lmdb used directly: the engine with no store logic around it."""

    name = "lmdb"
    label = "py-lmdb (raw)"
    requirement = "lmdb"
    dist = "lmdb"
    pickled_by_hand = True
    has_sync_option = True
    note = (
        "one write transaction for all puts, one read transaction for all gets "
        "(one per get in `threads`); `putmulti`/`getmulti`"
    )

    def open(self, path: str, *, sync: bool = True) -> None:
        import lmdb

        self.env = lmdb.open(path, map_size=MAP_SIZE, sync=sync)
        self.txn = None
        self.read_txn = None

    def begin(self) -> None:
        self.txn = self.env.begin(write=True)

    def put(self, key: bytes, value: Any) -> None:
        self.txn.put(key, pickle.dumps(value, PROTOCOL))

    def commit(self) -> None:
        self.txn.commit()
        self.txn = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self.env.begin(buffers=True) as txn:
            self.read_txn = txn
            try:
                yield
            finally:
                self.read_txn = None

    def get(self, key: bytes) -> Any:
        if self.read_txn is not None:
            return pickle.loads(self.read_txn.get(key))
        # Reader threads: a transaction per get, as a store would do.
        with self.env.begin(buffers=True) as txn:
            return pickle.loads(txn.get(key))

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti((k, pickle.dumps(v, PROTOCOL)) for k, v in items)

    def get_many(self, keys: list[bytes]) -> Any:
        with self.env.begin(buffers=True) as txn:
            return [pickle.loads(v) for _k, v in txn.cursor().getmulti(keys)]

    def items(self) -> Iterable[tuple[Any, Any]]:
        with self.env.begin(buffers=True) as txn:
            for k, v in txn.cursor():
                yield bytes(k), pickle.loads(v)

    def close(self) -> None:
        self.env.close()


class RocksDict(Adapter):
    name = "rocksdict"
    label = "rocksdict"
    requirement = "rocksdict"
    dist = "rocksdict"
    note = "commit = `flush()`; `WriteBatch`; multi-get `get([...])`"

    def open(self, path: str, *, sync: bool = True) -> None:
        from rocksdict import Rdict

        self.db = Rdict(path)

    def put(self, key: bytes, value: Any) -> None:
        self.db[key] = value

    def commit(self) -> None:
        self.db.flush()

    def get(self, key: bytes) -> Any:
        return self.db[key]

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch()
        for k, v in items:
            batch.put(k, v)
        self.db.write(batch)

    def get_many(self, keys: list[bytes]) -> Any:
        return self.db.get(keys)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.db.items()

    def close(self) -> None:
        self.db.close()


class SqliteDictAdapter(Adapter):
    name = "sqlitedict"
    label = "sqlitedict"
    requirement = "sqlitedict"
    dist = "sqlitedict"
    note = "`autocommit=False`; commit = `commit()`"

    def open(self, path: str, *, sync: bool = True) -> None:
        from sqlitedict import SqliteDict

        os.makedirs(path, exist_ok=True)
        self.db = SqliteDict(os.path.join(path, "db.sqlite"), autocommit=False)

    def put(self, key: bytes, value: Any) -> None:
        self.db[key] = value

    def commit(self) -> None:
        self.db.commit()

    def get(self, key: bytes) -> Any:
        return self.db[key]

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.db.items()

    def close(self) -> None:
        self.db.close()


class DiskCache(Adapter):
    name = "diskcache"
    label = "diskcache"
    requirement = "diskcache"
    dist = "diskcache"
    note = "puts inside `transact()`; iterate = keys then a get per key"

    def open(self, path: str, *, sync: bool = True) -> None:
        from diskcache import Cache

        self.cache = Cache(path)
        self.tx = None

    def begin(self) -> None:
        self.tx = self.cache.transact()
        self.tx.__enter__()

    def put(self, key: bytes, value: Any) -> None:
        self.cache[key] = value

    def commit(self) -> None:
        self.tx.__exit__(None, None, None)
        self.tx = None

    def get(self, key: bytes) -> Any:
        return self.cache[key]

    def items(self) -> Iterable[tuple[Any, Any]]:
        cache = self.cache
        for key in cache:
            yield key, cache[key]

    def close(self) -> None:
        self.cache.close()


class Shelve(Adapter):
    name = "shelve"
    label = "shelve"
    note = "str keys (bytes decoded as Latin-1); commit = `sync()`; not thread-safe"
    thread_safe = False

    def open(self, path: str, *, sync: bool = True) -> None:
        import shelve

        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "shelf")
        self.db = shelve.open(os.path.join(path, "shelf"), protocol=PROTOCOL)
        # Which dbm module shelve picks depends on how Python was built.
        self.detail = f"backend {type(self.db.dict).__module__}"

    def put(self, key: bytes, value: Any) -> None:
        self.db[key.decode("latin-1")] = value

    def commit(self) -> None:
        self.db.sync()

    def get(self, key: bytes) -> Any:
        return self.db[key.decode("latin-1")]

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.db.items()

    def close(self) -> None:
        self.db.close()


class KohakuVault(Adapter):
    name = "kohakuvault"
    label = "kohakuvault"
    requirement = "kohakuvault"
    dist = "kohakuvault"
    note = "values packed by kohakuvault itself (MessagePack for dicts); write-back cache on"

    def open(self, path: str, *, sync: bool = True) -> None:
        from kohakuvault import KVault

        os.makedirs(path, exist_ok=True)
        self.kv = KVault(os.path.join(path, "kv.db"))
        # The write-back cache is its way to batch writes, as our write buffer.
        self.kv.enable_cache()

    def put(self, key: bytes, value: Any) -> None:
        self.kv.put(key, value)

    def commit(self) -> None:
        self.kv.flush_cache()

    def get(self, key: bytes) -> Any:
        return self.kv[key]

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        self.kv.put_many(items)

    def get_many(self, keys: list[bytes]) -> Any:
        return self.kv.get_many(keys)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.kv.items()

    def close(self) -> None:
        self.kv.close()


class SimdRDrive(Adapter):
    name = "simd-r-drive"
    label = "simd-r-drive-py"
    requirement = "simd-r-drive-py"
    dist = "simd-r-drive-py"
    pickled_by_hand = True
    note = "append-only file; no commit call; reads through `read_entry()` (zero copy)"

    def open(self, path: str, *, sync: bool = True) -> None:
        from simd_r_drive import DataStore

        os.makedirs(path, exist_ok=True)
        self.ds = DataStore(os.path.join(path, "store.bin"))

    def put(self, key: bytes, value: Any) -> None:
        self.ds.write(key, pickle.dumps(value, PROTOCOL))

    def get(self, key: bytes) -> Any:
        return pickle.loads(self.ds.read_entry(key).as_memoryview())

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        self.ds.batch_write([(k, pickle.dumps(v, PROTOCOL)) for k, v in items])

    def close(self) -> None:
        # The store has no close(); dropping the last reference unmaps it.
        del self.ds


class LightningDiskKV(Adapter):
    name = "lightning-disk-kv"
    label = "lightning-disk-kv"
    requirement = "lightning-disk-kv"
    dist = "lightning-disk-kv"
    note = (
        "str keys (bytes decoded as Latin-1); 5 LMDB shards; pickles in Rust threads; "
        "put = `store_data` of one item; commit = `sync()`"
    )

    def open(self, path: str, *, sync: bool = True) -> None:
        from lightning_disk_kv import LDKV

        self.db = LDKV(path, 5, MAP_SIZE)

    def put(self, key: bytes, value: Any) -> None:
        self.db.store_data([value], [key.decode("latin-1")])

    def commit(self) -> None:
        self.db.sync()

    def get(self, key: bytes) -> Any:
        return self.db.get_data([key.decode("latin-1")])[0]

    def put_many(self, items: list[tuple[bytes, Any]]) -> None:
        self.db.store_data([v for _, v in items], [k.decode("latin-1") for k, _ in items])

    def get_many(self, keys: list[bytes]) -> Any:
        return self.db.get_data([k.decode("latin-1") for k in keys])

    def items(self) -> Iterable[tuple[Any, Any]]:
        # Its only scan is a key range; this one covers every Latin-1 key.
        return self.db.items_in_range("\x00", "\U0010ffff", "")

    def close(self) -> None:
        self.db.close()


class Floor(Adapter):
    """Not a store: marks the system whose figures are pickle alone (see worker)."""

    name = "floor"
    label = "floor (pickle only)"
    note = (
        "`pickle.dumps` over the values (writes), `pickle.loads` over their pickles (reads;"
        " for get_many, into one dict that keeps them)"
    )


#: Every system, in the order the report lists them.
SYSTEMS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (
        Floor,
        ObjectStore,
        ObjectStoreReference,
        PyLmdb,
        RocksDict,
        SqliteDictAdapter,
        DiskCache,
        Shelve,
        KohakuVault,
        SimdRDrive,
        LightningDiskKV,
    )
}
