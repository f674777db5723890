"""The command line (``lmdb-object-store``, ``python -m lmdb_object_store``): its parser,
its commands, the key text form, the dump format and the readers of other stores' files.

Every command is a function ``(args, out) -> exit status``; anything that goes wrong is
raised as ``CliError`` (or one of the store's own errors) and turned into one line on
stderr by ``main``, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import contextlib
import dbm
import itertools
import json
import os
import pickle
import sqlite3
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from lmdb_object_store import DecodeError, Error, LmdbObjectStore, __version__, tables

PROG = "lmdb-object-store"

#: LMDB's key length limits, in bytes.
MIN_KEY_BYTES = 1
MAX_KEY_BYTES = 511

#: The dump format: its first line, its version, and the pickle protocol of its values.
#: Protocol 5 is read by every Python the package supports, and is fixed so that a dump
#: does not change with the Python that wrote it.
DUMP_FORMAT = "lmdb-object-store dump"
DUMP_VERSION = 1
DUMP_PICKLE_PROTOCOL = 5

#: get_many batch of ``verify``: large enough to amortise the call, small enough that a
#: batch with a bad value is cheap to read again key by key.
VERIFY_BATCH = 1000

IMPORT_KINDS = ("sqlitedict", "shelve", "dbm", "diskcache")

# Escapes of the key text form, both ways.
_ESCAPE_CHARS = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_SHOWN_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# Bytes that did not decode travel as lone surrogates U+DC80..U+DCFF, the way Python's
# surrogateescape handler (and so sys.argv) carries them.
_SURROGATE_BYTES = range(0xDC80, 0xDD00)


class CliError(Exception):
    """A failure the command line reports as one line on stderr, with exit status 1."""


# Keys on the command line


class KeyText:
    """How keys are written on the command line and printed: text in ``encoding`` with
    backslash escapes (``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\xHH`` for one raw byte),
    or, with ``hex_keys``, hexadecimal digits. What ``show`` prints, ``parse`` reads back
    to the same bytes."""

    def __init__(self, encoding: str = "utf-8", hex_keys: bool = False) -> None:
        try:
            info = codecs.lookup(encoding)
        except LookupError:
            raise CliError(f"--key-encoding: unknown encoding {encoding!r}") from None
        if not getattr(info, "_is_text_encoding", True):
            raise CliError(f"--key-encoding: {encoding!r} is not a text encoding")
        self.encoding = info.name
        self.hex_keys = hex_keys

    def parse(self, text: str, what: str = "key") -> bytes:
        """The bytes of a key (or prefix) given on the command line."""
        if self.hex_keys:
            try:
                return bytes.fromhex(text)
            except ValueError:
                raise CliError(
                    f"{what} {text!r} is not hexadecimal (--hex takes keys as hex digits)"
                ) from None
        out = bytearray()
        run: list[str] = []

        def end_run() -> None:
            if run:
                chunk = "".join(run)
                run.clear()
                try:
                    out.extend(chunk.encode(self.encoding))
                except UnicodeEncodeError as exc:
                    raise CliError(
                        f"{what} {text!r} does not encode to {self.encoding}: {exc.reason}"
                        " (write other bytes as \\xHH, or use --key-encoding)"
                    ) from None

        index = 0
        while index < len(text):
            char = text[index]
            if ord(char) in _SURROGATE_BYTES:
                end_run()
                out.append(ord(char) - 0xDC00)
                index += 1
            elif char != "\\":
                run.append(char)
                index += 1
            elif text[index + 1 : index + 2] in _ESCAPE_CHARS:
                run.append(_ESCAPE_CHARS[text[index + 1]])
                index += 2
            elif text[index + 1 : index + 2] == "x" and _is_hex_pair(text[index + 2 : index + 4]):
                end_run()
                out.append(int(text[index + 2 : index + 4], 16))
                index += 4
            else:
                bad = (
                    text[index : index + 4]
                    if text[index + 1 : index + 2] == "x"
                    else text[index : index + 2]
                )
                raise CliError(
                    f"{what} {text!r}: unknown escape {bad!r} at position {index}"
                    " (escapes are \\\\, \\n, \\r, \\t and \\xHH; a backslash is \\\\)"
                )
        end_run()
        return bytes(out)

    def show(self, key: bytes, stream_encoding: str | None = None) -> str:
        """``key`` as text that ``parse`` turns back into ``key``, printable on a stream
        of ``stream_encoding``."""
        if self.hex_keys:
            return key.hex()
        try:
            text: str | None = key.decode(self.encoding)
        except UnicodeDecodeError:
            text = None
        if (
            text is not None
            and text.isprintable()
            and "\\" not in text
            and text.encode(self.encoding) == key
        ):
            shown = text
        else:
            shown = self._escaped(key, ascii_only=False)
        if stream_encoding is not None:
            try:
                shown.encode(stream_encoding)
            except UnicodeEncodeError:
                shown = self._escaped(key, ascii_only=True)
        return shown

    def _escaped(self, key: bytes, ascii_only: bool) -> str:
        every_byte = "".join(f"\\x{byte:02x}" for byte in key)
        try:
            text = key.decode(self.encoding, "surrogateescape")
            parts = []
            for char in text:
                code = ord(char)
                if code in _SURROGATE_BYTES:
                    parts.append(f"\\x{code - 0xDC00:02x}")
                elif char in _SHOWN_ESCAPES:
                    parts.append(_SHOWN_ESCAPES[char])
                elif char.isprintable() and (code < 128 or not ascii_only):
                    parts.append(char)
                else:
                    parts.extend(f"\\x{byte:02x}" for byte in char.encode(self.encoding))
            shown = "".join(parts)
            # Codecs with state (a byte order mark, shifts) do not encode piecewise:
            # where the pieces do not add up, every byte is written as an escape.
            if self.parse(shown) == key:
                return shown
        except (UnicodeError, CliError):
            pass
        return every_byte


def _exists(path: str) -> bool:
    """Whether anything is at ``path``, also when a trailing slash follows a file's name."""
    return os.path.lexists(path) or os.path.lexists(path.rstrip(os.sep) or path)


def _is_hex_pair(text: str) -> bool:
    return len(text) == 2 and all(char in _HEX_DIGITS for char in text)


def _key_text(args: argparse.Namespace) -> KeyText:
    return KeyText(args.key_encoding, hex_keys=getattr(args, "hex", False))


# Locating and opening stores


@dataclass(frozen=True)
class Location:
    """Where a store's files are: a directory with data.mdb and lock.mdb (``subdir``),
    or a data file with ``<file>-lock`` beside it."""

    path: str
    subdir: bool

    @property
    def data_file(self) -> str:
        return os.path.join(self.path, "data.mdb") if self.subdir else self.path

    @property
    def lock_file(self) -> str:
        return os.path.join(self.path, "lock.mdb") if self.subdir else self.path + "-lock"


def locate_store(path: str) -> Location:
    """The store at ``path``, which must exist: a missing path is an error, never a new
    store."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise CliError(f"{path} is a directory without a data.mdb: not a store")
        return Location(path, subdir=True)
    if _exists(path):
        # The data file of a directory store, named on its own: opened as a single file
        # it would get a lock file of its own, and its readers would be invisible to the
        # writers, who use the directory's lock.mdb.
        if os.path.basename(path) == "data.mdb" and not _exists(path + "-lock"):
            return Location(os.path.dirname(path) or ".", subdir=True)
        return Location(path, subdir=False)
    raise CliError(f"no store at {path}: it does not exist")


SERIALIZERS = ("pickle", "safe", "raw", "json", "msgpack")


def open_readonly(
    path: str,
    table: str | None = None,
    *,
    any_table: bool = False,
    serializer: str = "pickle",
) -> tuple[LmdbObjectStore, Location]:
    """The store at ``path`` (its table ``table``; ``None``: the main one) opened
    read-only: LMDB then never writes its data file. With ``any_table``, a file of
    named tables opens through its first table (for the commands that are file-wide).
    Values decode with ``serializer``; compressed values are read too, except on a raw
    store (whose values may start with anything, a frame's bytes included)."""
    location = locate_store(path)
    options: dict[str, Any] = {"serializer": serializer}
    if serializer != "raw":
        options["compression"] = "zstd"  # reads plain values and frames of either method
    try:
        store = LmdbObjectStore(
            location.path, readonly=True, subdir=location.subdir, table=table, **options
        )
    except Error:
        names = tables(location.path, subdir=location.subdir) if table is None else []
        if not names:
            raise
        if any_table:
            table = names[0]
            store = LmdbObjectStore(
                location.path, readonly=True, subdir=location.subdir, table=table, **options
            )
            return store, location
        raise CliError(
            f"{path} holds named tables ({', '.join(names)}): name one with --table NAME"
        ) from None
    return store, location


@contextlib.contextmanager
def open_for_writing(path: str, table: str | None = None) -> Iterator[LmdbObjectStore]:
    """The store at ``path`` (its table ``table``; ``None``: the main one) opened for
    writing, created (a directory) if it is missing.
    A store created here is removed again if the block raises, so that a failed write
    command leaves the path as it found it."""
    if _exists(path):
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "data.mdb")):
            if os.listdir(path):
                raise CliError(
                    f"{path} is a directory that holds other files and no data.mdb: not a"
                    " store; name a new path or an empty directory"
                )
            location, made_dir = Location(path, subdir=True), False
            created = True
        else:
            location, made_dir, created = locate_store(path), False, False
    else:
        location, made_dir, created = Location(path, subdir=True), True, True
    store = LmdbObjectStore(location.path, subdir=location.subdir, table=table)
    try:
        with store:
            yield store
    except BaseException:
        if created:
            _remove_new_store(location, made_dir)
        raise


def _remove_new_store(location: Location, made_dir: bool) -> None:
    for file in (location.data_file, location.lock_file):
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)
    if made_dir:
        with contextlib.suppress(OSError):
            os.rmdir(location.path)


# Output


def _emit(out: IO[str], text: str) -> None:
    """Write a line, with characters the stream cannot encode as backslash escapes."""
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    out.write(text + "\n")


def _stream_encoding(out: IO[str]) -> str:
    return getattr(out, "encoding", None) or "utf-8"


def _binary(out: IO[str]) -> IO[bytes]:
    out.flush()
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        raise CliError("standard output takes no bytes here")
    return buffer  # type: ignore[no-any-return]


# Read commands


def cmd_stat(args: argparse.Namespace, out: IO[str]) -> int:
    store, location = open_readonly(args.store, args.table)
    with store:
        stat, info = store.stat(), store.info()
    fields: dict[str, Any] = {
        "path": args.store,
        **({"table": args.table} if args.table is not None else {}),
        "layout": "directory" if location.subdir else "file",
        "data_file": location.data_file,
        "data_file_bytes": os.path.getsize(location.data_file),
        "entries": stat["entries"],
        "map_size": info["map_size"],
        "page_size": stat["psize"],
        "depth": stat["depth"],
        "branch_pages": stat["branch_pages"],
        "leaf_pages": stat["leaf_pages"],
        "overflow_pages": stat["overflow_pages"],
        "last_txnid": info["last_txnid"],
        "max_readers": info["max_readers"],
        "num_readers": info["num_readers"],
    }
    if args.json:
        _emit(out, json.dumps(fields))
    else:
        width = max(map(len, fields))
        for name, value in fields.items():
            _emit(out, f"{name + ':':<{width + 1}} {value}")
    return 0


def cmd_tables(args: argparse.Namespace, out: IO[str]) -> int:
    location = locate_store(args.store)
    for name in tables(location.path, subdir=location.subdir):
        _emit(out, name)
    return 0


def cmd_keys(args: argparse.Namespace, out: IO[str]) -> int:
    key_text = _key_text(args)
    prefix = key_text.parse(args.prefix, "--prefix") if args.prefix is not None else None
    encoding = _stream_encoding(out)
    store, _ = open_readonly(args.store, args.table)
    with store:
        keys: Iterable[bytes] = store.keys(prefix=prefix)
        if args.limit is not None:
            keys = itertools.islice(keys, args.limit)
        for key in keys:
            _emit(out, key_text.show(key, encoding))
    return 0


def cmd_count(args: argparse.Namespace, out: IO[str]) -> int:
    key_text = _key_text(args)
    prefix = key_text.parse(args.prefix, "--prefix") if args.prefix is not None else None
    store, _ = open_readonly(args.store, args.table)
    with store:
        count = len(store.keys(prefix=prefix)) if prefix else len(store)
    _emit(out, str(count))
    return 0


_MISSING = object()


def cmd_get(args: argparse.Namespace, out: IO[str]) -> int:
    key_text = _key_text(args)
    key = key_text.parse(args.key)
    shown = f"'{key_text.show(key)}'"
    store, _ = open_readonly(args.store, args.table, serializer=args.serializer)
    with store:
        try:
            value = store.get(key, _MISSING)
        except (DecodeError, Error) as exc:
            raise CliError(
                f"the value of key {shown} in {args.store} does not decode:"
                f" {_describe(exc.__cause__ or exc)}"
            ) from None
    if value is _MISSING:
        raise CliError(f"no key {shown} in {args.store}")
    if not args.raw:
        _emit(out, repr(value))
        return 0
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise CliError(
            f"the value of key {shown} is a {type(value).__name__}: --raw writes only bytes"
            " and str values (leave out --raw for its repr)"
        )
    stream = _binary(out)
    stream.write(data)
    stream.flush()
    return 0


def cmd_verify(args: argparse.Namespace, out: IO[str]) -> int:
    key_text = _key_text(args)
    encoding = _stream_encoding(out)
    store, _ = open_readonly(args.store, args.table, serializer=args.serializer)
    checked = failed = 0
    with store:
        keys = iter(store.keys())
        while True:
            try:
                batch = list(itertools.islice(keys, VERIFY_BATCH))
            except Exception as exc:
                _emit(out, f"reading the keys failed after {_entries(checked)}: {_describe(exc)}")
                failed += 1
                break
            if not batch:
                break
            checked += len(batch)
            try:
                store.get_many(batch)
                continue
            except Exception:
                pass
            # Some value in the batch does not decode: find which, one key at a time.
            for key in batch:
                try:
                    store.get(key)
                except Exception as exc:
                    failed += 1
                    cause = exc.__cause__ if isinstance(exc, DecodeError) else exc
                    _emit(out, f"{key_text.show(key, encoding)}: {_describe(cause or exc)}")
    _emit(out, f"{_entries(checked)} checked, {failed} failed")
    return 1 if failed else 0


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# copy


def cmd_copy(args: argparse.Namespace, out: IO[str]) -> int:
    if _exists(args.dest):
        raise CliError(f"{args.dest} already exists: copy never replaces anything; name a new path")
    store, location = open_readonly(args.store, any_table=True)
    with store:
        try:
            store.copy(args.dest, compact=args.compact)
        except OSError as exc:
            raise CliError(exc.strerror or str(exc)) from None
    layout = "directory" if location.subdir else "file"
    data_file = Location(args.dest, location.subdir).data_file
    how = "compacted" if args.compact else "as it is"
    print(
        f"copied {args.store} to {args.dest} ({how}, a {layout} of"
        f" {os.path.getsize(data_file)} bytes)",
        file=sys.stderr,
    )
    return 0


# dump and load


def _dump_record(key: bytes, value: object) -> bytes:
    record: dict[str, str]
    try:
        record = {"key": key.decode("utf-8")}
    except UnicodeDecodeError:
        record = {"key_hex": key.hex()}
    try:
        data = pickle.dumps(value, protocol=DUMP_PICKLE_PROTOCOL)
    except Exception as exc:
        raise CliError(
            f"the value of key '{KeyText().show(key)}' does not pickle: {_describe(exc)}"
        ) from None
    record["pickle"] = base64.b64encode(data).decode("ascii")
    return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


def write_dump(store: LmdbObjectStore, stream: IO[bytes]) -> int:
    """Write every entry of ``store`` to ``stream`` in the dump format; the count."""
    stream.write(json.dumps({"format": DUMP_FORMAT, "version": DUMP_VERSION}).encode() + b"\n")
    count = 0
    items = iter(store.items())
    while True:
        try:
            entry = next(items, None)
        except (DecodeError, Error) as exc:
            raise CliError(
                f"cannot dump {store.path}: {exc} (verify lists every such value)"
            ) from None
        if entry is None:
            break
        stream.write(_dump_record(*entry))
        count += 1
    stream.write(json.dumps({"end": True, "entries": count}).encode() + b"\n")
    return count


def cmd_dump(args: argparse.Namespace, out: IO[str]) -> int:
    store, location = open_readonly(args.store, args.table, serializer=args.serializer)
    with store:
        if args.output == "-":
            stream = _binary(out)
            write_dump(store, stream)
            stream.flush()
            return 0
        for own_file in (location.data_file, location.lock_file):
            if os.path.exists(args.output) and os.path.samefile(args.output, own_file):
                raise CliError(f"{args.output} is a file of the store {args.store} itself")
        # Written beside the output and renamed into place when complete: a dump that
        # fails leaves no partial file, and a file it replaces stays until it succeeds.
        directory = os.path.dirname(os.path.abspath(args.output))
        temporary = os.path.join(
            directory, f".{os.path.basename(args.output)}.{os.getpid()}.partial"
        )
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                count = write_dump(store, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, args.output)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise
    print(f"dumped {_entries(count)} to {args.output}", file=sys.stderr)
    return 0


def read_dump(lines: Iterable[bytes], name: str) -> Iterator[tuple[bytes, object]]:
    """The ``(key, value)`` pairs of a dump; ``CliError`` naming the line at the first
    thing wrong, including a dump cut short (no end record)."""
    count = 0
    line_number = 0
    ended = False
    for line_number, line in enumerate(lines, start=1):
        where = f"{name}, line {line_number}"
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise CliError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except ValueError as exc:
            raise CliError(f"{where}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise CliError(f"{where}: a JSON {type(record).__name__}, not a record")
        if ended:
            raise CliError(f"{where}: a line after the end record")
        if line_number == 1:
            _check_dump_header(record, where)
        elif "end" in record:
            if record != {"end": True, "entries": count}:
                raise CliError(
                    f"{where}: the end record says {record.get('entries')!r} entries,"
                    f" the dump holds {count}"
                )
            ended = True
        else:
            yield _dump_entry(record, where)
            count += 1
    if line_number == 0:
        raise CliError(f"{name} is empty: not a dump")
    if not ended:
        raise CliError(
            f"{name} ends at line {line_number} without its end record: the dump is incomplete"
        )


def _check_dump_header(record: dict[str, Any], where: str) -> None:
    if record.get("format") != DUMP_FORMAT:
        raise CliError(f"{where}: not the header of a dump of {PROG}")
    version = record.get("version")
    if version != DUMP_VERSION or set(record) != {"format", "version"}:
        raise CliError(
            f"{where}: a dump of format version {version!r}; this version of {PROG}"
            f" reads version {DUMP_VERSION}"
        )


def _dump_entry(record: dict[str, Any], where: str) -> tuple[bytes, object]:
    fields = set(record)
    if fields == {"key", "pickle"} and isinstance(record["key"], str):
        try:
            key = record["key"].encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"{where}: the key is not valid Unicode") from None
    elif fields == {"key_hex", "pickle"} and isinstance(record["key_hex"], str):
        try:
            key = bytes.fromhex(record["key_hex"])
        except ValueError:
            raise CliError(f"{where}: key_hex is not hexadecimal") from None
    else:
        raise CliError(
            f"{where}: an entry has the fields key (or key_hex) and pickle, both strings;"
            f" this one has {sorted(fields)}"
        )
    shown = f"'{KeyText().show(key)}'"
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise CliError(
            f"{where}: key {shown} is {len(key)} bytes; LMDB keys are"
            f" {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
        )
    if not isinstance(record["pickle"], str):
        raise CliError(f"{where}: the pickle of key {shown} is not a string")
    try:
        data = base64.b64decode(record["pickle"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CliError(f"{where}: the pickle of key {shown} is not base64 ({exc})") from None
    try:
        value = pickle.loads(data)
    except Exception as exc:
        raise CliError(
            f"{where}: the value of key {shown} does not unpickle: {_describe(exc)}"
        ) from None
    return key, value


def cmd_load(args: argparse.Namespace, out: IO[str]) -> int:
    counter = _Counter()
    with contextlib.ExitStack() as stack:
        if args.input == "-":
            source: IO[bytes] = sys.stdin.buffer
            name = "standard input"
        else:
            source = stack.enter_context(open(args.input, "rb"))
            name = args.input
        store = stack.enter_context(open_for_writing(args.store, args.table))
        # One transaction: put_many takes every pair (so reads the whole dump, up to
        # its end record) before it writes, and writes nothing if reading raises.
        store.put_many(counter.count(read_dump(source, name)))
    print(f"loaded {_entries(counter.value)} into {args.store}", file=sys.stderr)
    return 0


class _Counter:
    """Counts the pairs that pass through it on their way into ``put_many``."""

    def __init__(self) -> None:
        self.value = 0

    def count(self, items: Iterable[tuple[bytes, object]]) -> Iterator[tuple[bytes, object]]:
        for item in items:
            self.value += 1
            yield item


# import


def cmd_import(args: argparse.Namespace, out: IO[str]) -> int:
    key_text = _key_text(args)
    if args.table is not None and args.kind != "sqlitedict":
        raise CliError(f"--table is an option of --from sqlitedict, not of --from {args.kind}")
    counter = _Counter()
    with contextlib.ExitStack() as stack:
        # The source is opened and checked before the store is opened (or created): a
        # missing or wrong-kind source leaves no new store behind.
        if args.kind == "sqlitedict":
            pairs = read_sqlitedict(args.source, args.table or "unnamed", stack)
        elif args.kind == "diskcache":
            pairs = read_diskcache(args.source, stack)
        else:
            pairs = read_dbm(args.source, stack, unpickle=args.kind == "shelve")
        store = stack.enter_context(open_for_writing(args.store))
        store.put_many(counter.count(_import_keys(pairs, args.source, key_text)))
    print(
        f"imported {_entries(counter.value)} from {args.source} into {args.store}",
        file=sys.stderr,
    )
    return 0


def _import_keys(
    pairs: Iterable[tuple[object, object]], source: str, key_text: KeyText
) -> Iterator[tuple[bytes, object]]:
    for key, value in pairs:
        if isinstance(key, str):
            try:
                data = key.encode(key_text.encoding)
            except UnicodeEncodeError as exc:
                raise CliError(
                    f"{source}: key {key!r} does not encode to {key_text.encoding}:"
                    f" {exc.reason} (choose another --key-encoding)"
                ) from None
        elif isinstance(key, (bytes, bytearray, memoryview)):
            data = bytes(key)
        else:
            raise CliError(
                f"{source}: key {key!r} is a {type(key).__name__}; only str and bytes keys"
                " can be imported"
            )
        if not MIN_KEY_BYTES <= len(data) <= MAX_KEY_BYTES:
            raise CliError(
                f"{source}: key '{key_text.show(data)}' is {len(data)} bytes; LMDB keys are"
                f" {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
            )
        yield data, value


def _unpickle(data: object, source: str, what: str) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CliError(f"{source}: {what} is a {type(data).__name__}, not a pickle")
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise CliError(f"{source}: {what} does not unpickle: {_describe(exc)}") from None


def _connect_readonly(path: str, kind: str, stack: contextlib.ExitStack) -> sqlite3.Connection:
    if not os.path.isfile(path):
        what = "does not exist" if not _exists(path) else "is not a file"
        raise CliError(f"{path} {what}: a {kind} is an SQLite file")
    # Opened for writing where the file allows it (SQLite falls back to reading only),
    # and then refused every write: a connection that may write removes the -wal and
    # -shm files of a WAL database (diskcache's) when it closes, one that may not
    # leaves them behind.
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise CliError(f"cannot open {path}: {exc}") from None
    stack.callback(connection.close)
    try:
        connection.execute("PRAGMA query_only = 1")
        connection.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{path} is not an SQLite database, so not a {kind} ({exc})") from None
    return connection


def read_sqlitedict(
    path: str, table: str, stack: contextlib.ExitStack
) -> Iterator[tuple[object, object]]:
    """The ``(key, value)`` pairs of table ``table`` of a sqlitedict file, values unpickled
    as sqlitedict's default ``decode`` does. The file is checked before this returns."""
    connection = _connect_readonly(path, "sqlitedict file", stack)
    try:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        if table not in tables:
            listed = ", ".join(repr(name) for name in tables) or "none"
            raise CliError(
                f"{path} has no table {table!r} (its tables: {listed}); name one with --table"
            )
        quoted = '"' + table.replace('"', '""') + '"'
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({quoted})")}
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not {"key", "value"} <= columns:
        raise CliError(f"table {table!r} of {path} has no key and value columns: not sqlitedict's")
    return _sqlitedict_rows(connection, path, quoted)


def _sqlitedict_rows(
    connection: sqlite3.Connection, path: str, quoted_table: str
) -> Iterator[tuple[object, object]]:
    try:
        for key, value in connection.execute(
            f"SELECT key, value FROM {quoted_table} ORDER BY rowid"
        ):
            yield key, _unpickle(value, path, f"the value of key {key!r}")
    except sqlite3.Error as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def read_dbm(
    path: str, stack: contextlib.ExitStack, *, unpickle: bool
) -> Iterator[tuple[object, object]]:
    """The ``(key, value)`` pairs of a dbm file: values unpickled for a shelve (shelve
    pickles them into a dbm file), the stored bytes for a plain dbm file."""
    kind = "shelve" if unpickle else "dbm file"
    found = dbm.whichdb(path)
    if found is None:
        if not any(_exists(path + suffix) for suffix in ("", ".db", ".dat", ".dir")):
            raise CliError(f"{path} does not exist (nor {path}.db, {path}.dat or {path}.dir)")
        raise CliError(f"{path} cannot be read as a {kind}")
    if not found:
        raise CliError(f"{path} is not a {kind} of a kind this Python knows (dbm.whichdb)")
    try:
        database = dbm.open(path, "r")
    except ImportError:
        raise CliError(f"{path} is a {found} file, and this Python has no {found}") from None
    except Exception as exc:
        raise CliError(f"cannot open {path} as a {kind}: {_describe(exc)}") from None
    stack.callback(database.close)
    return _dbm_rows(database, path, unpickle)


def _dbm_rows(database: Any, path: str, unpickle: bool) -> Iterator[tuple[object, object]]:
    try:
        keys = list(database.keys())
    except Exception as exc:
        raise CliError(f"cannot read {path}: {_describe(exc)}") from None
    for key in keys:
        try:
            value = database[key]
        except Exception as exc:
            raise CliError(f"cannot read key {key!r} of {path}: {_describe(exc)}") from None
        yield key, _unpickle(value, path, f"the value of key {key!r}") if unpickle else value


# diskcache's Cache table: how a value is kept (diskcache.core.MODE_*).
_DISKCACHE_RAW, _DISKCACHE_BINARY, _DISKCACHE_TEXT, _DISKCACHE_PICKLE = 1, 2, 3, 4
_DISKCACHE_COLUMNS = {"rowid", "key", "raw", "expire_time", "mode", "filename", "value"}


def read_diskcache(path: str, stack: contextlib.ExitStack) -> Iterator[tuple[object, object]]:
    """The ``(key, value)`` pairs of a diskcache ``Cache`` (a directory with cache.db) or
    ``FanoutCache`` (a directory of such shards) that have not expired, decoded as
    diskcache's default ``Disk`` does."""
    if not os.path.isdir(path):
        what = "does not exist" if not _exists(path) else "is not a directory"
        raise CliError(f"{path} {what}: a diskcache is a directory with a cache.db")
    if os.path.isfile(os.path.join(path, "cache.db")):
        shards = [path]
    else:
        shards = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if os.path.isfile(os.path.join(path, name, "cache.db"))
        )
    if not shards:
        raise CliError(f"{path} has no cache.db: not a diskcache directory")
    connections = []
    for shard in shards:
        database = os.path.join(shard, "cache.db")
        connection = _connect_readonly(database, "diskcache database", stack)
        try:
            columns = {row[1] for row in connection.execute("PRAGMA table_info(Cache)")}
            columns.add("rowid")
        except sqlite3.Error as exc:
            raise CliError(f"cannot read {database}: {exc}") from None
        if not _DISKCACHE_COLUMNS <= columns:
            raise CliError(f"{database} has no Cache table of diskcache's: not a diskcache")
        connections.append((shard, connection))
    return _diskcache_rows(connections, path)


def _diskcache_rows(
    connections: list[tuple[str, sqlite3.Connection]], path: str
) -> Iterator[tuple[object, object]]:
    now = time.time()
    for shard, connection in connections:
        database = os.path.join(shard, "cache.db")
        try:
            rows = connection.execute(
                "SELECT rowid, key, raw, expire_time, mode, filename, value FROM Cache"
                " ORDER BY rowid"
            )
            for rowid, key, raw, expire_time, mode, filename, value in rows:
                if expire_time is not None and expire_time < now:
                    continue  # expired: diskcache would not return it either
                if not raw:
                    key = _unpickle(key, database, f"the key of row {rowid}")
                yield key, _diskcache_value(shard, key, mode, filename, value)
        except sqlite3.Error as exc:
            raise CliError(f"cannot read {database}: {exc}") from None


def _diskcache_value(
    shard: str, key: object, mode: object, filename: object, value: object
) -> object:
    what = f"the value of key {key!r}"
    if mode == _DISKCACHE_RAW:
        return value
    if mode == _DISKCACHE_PICKLE and value is not None:
        return _unpickle(value, shard, what)
    if mode not in (_DISKCACHE_BINARY, _DISKCACHE_TEXT, _DISKCACHE_PICKLE):
        raise CliError(f"{shard}: {what} has mode {mode!r}, which diskcache does not write")
    if not isinstance(filename, str):
        raise CliError(f"{shard}: {what} is kept in a file, and its row names none")
    root = os.path.realpath(shard)
    file = os.path.realpath(os.path.join(root, filename))
    if os.path.commonpath([root, file]) != root:
        raise CliError(f"{shard}: {what} names the file {filename!r}, outside the cache")
    try:
        with open(file, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise CliError(
            f"{shard}: {what} is kept in {file}, which cannot be read: {exc.strerror}"
        ) from None
    if mode == _DISKCACHE_BINARY:
        return data
    if mode == _DISKCACHE_TEXT:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(
                f"{shard}: {what}, a text file {file}, is not UTF-8: {exc.reason}"
            ) from None
    return _unpickle(data, shard, what)


# The parser


_KEY_HELP = """\
Keys are written as text in --key-encoding (UTF-8 by default), with backslash
escapes: \\\\ for a backslash, \\n, \\r, \\t, and \\xHH for one byte of any value
(so '\\x00\\xff' is the two bytes 0x00 0xff). Keys are printed the same way,
so a printed key can be given back as it is. With --hex, keys are given and
printed as hexadecimal digits instead. A key that begins with '-' goes after '--'."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Look inside lmdb_object_store stores, check them, dump and load them,"
        " and import other stores' files into them.",
        epilog=f"Run '{prog} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    encoding_option = argparse.ArgumentParser(add_help=False)
    encoding_option.add_argument(
        "--key-encoding",
        default="utf-8",
        metavar="ENCODING",
        help="the encoding of keys written as text (default: utf-8)",
    )
    key_options = argparse.ArgumentParser(add_help=False, parents=[encoding_option])
    key_options.add_argument(
        "--hex", action="store_true", help="give and print keys as hexadecimal digits"
    )

    def command(
        name: str,
        run: Callable[[argparse.Namespace, IO[str]], int],
        summary: str,
        description: str,
        keys: bool = False,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 79),
            epilog=_KEY_HELP if keys else None,
            parents=[key_options] if keys else [],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    def store_argument(sub: argparse.ArgumentParser, table: bool = True) -> None:
        sub.add_argument("store", metavar="STORE", help="the store: its directory, or its file")
        if table:
            sub.add_argument(
                "--table",
                metavar="NAME",
                help="a named table of the store (default: the main one; see 'tables')",
            )

    def serializer_argument(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--serializer",
            choices=SERIALIZERS,
            default="pickle",
            help="how the store's values were written (default: pickle)",
        )

    read_only = "Opens the store read-only: its data file is never changed."

    sub = command(
        "stat",
        cmd_stat,
        "sizes and counts of a store",
        "Print the entry count, the data file's size, the map size, the B-tree's pages"
        f" and the reader slots of a store. {read_only}",
    )
    store_argument(sub)
    sub.add_argument("--json", action="store_true", help="print one JSON object")

    sub = command(
        "tables",
        cmd_tables,
        "list the named tables",
        "Print the names of the named tables of a store, sorted, one a line (the main"
        f" table is not among them). {read_only}",
    )
    store_argument(sub, table=False)

    sub = command(
        "keys",
        cmd_keys,
        "list the keys",
        f"Print the keys of a store in key order, one a line. {read_only}",
        keys=True,
    )
    store_argument(sub)
    sub.add_argument("--prefix", metavar="P", help="only the keys that begin with P")
    sub.add_argument("--limit", metavar="N", type=_non_negative, help="print at most N keys")

    sub = command(
        "get",
        cmd_get,
        "print one value",
        f"Print the repr of the value stored under KEY. {read_only}",
        keys=True,
    )
    store_argument(sub)
    serializer_argument(sub)
    sub.add_argument("key", metavar="KEY", help="the key")
    sub.add_argument(
        "--raw",
        action="store_true",
        help="write a bytes value as it is (a str value in UTF-8), with nothing added",
    )

    sub = command(
        "count",
        cmd_count,
        "count the entries",
        f"Print the number of entries, or of keys with a prefix. {read_only}",
        keys=True,
    )
    store_argument(sub)
    sub.add_argument("--prefix", metavar="P", help="only the keys that begin with P")

    sub = command(
        "verify",
        cmd_verify,
        "check that every value decodes",
        "Read every entry and unpickle every value; print each key whose value fails, and"
        " why. Exit status 1 if any fails. Unpickling runs code named by the data: verify"
        f" only stores you trust (or use --serializer safe). {read_only}",
        keys=True,
    )
    store_argument(sub)
    serializer_argument(sub)

    sub = command(
        "dump",
        cmd_dump,
        "write every entry to a portable text file",
        "Write every entry in key order as JSON lines: a header line, one line per entry"
        " (its key and its value's pickle, in base64) and an end line with the count."
        " A file OUTPUT appears only once the dump is complete (it replaces a file of"
        f" that name). {read_only}",
    )
    store_argument(sub)
    serializer_argument(sub)
    sub.add_argument(
        "output", metavar="OUTPUT", nargs="?", default="-", help="the file (default: stdout)"
    )

    sub = command(
        "copy",
        cmd_copy,
        "copy a store, compacted, to a new path",
        "Write a consistent copy of STORE to DEST, which must not exist: a directory with"
        " data.mdb for a directory store, a file for a file store. The copy appears at DEST"
        " only once it is complete; a copy that fails leaves nothing there. Other processes"
        f" may go on writing STORE meanwhile. {read_only}",
    )
    store_argument(sub, table=False)
    sub.add_argument("dest", metavar="DEST", help="the new path")
    sub.add_argument(
        "--compact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave out the free pages, so that the copy holds only the live data"
        " (default); --no-compact copies the data file page for page",
    )

    sub = command(
        "load",
        cmd_load,
        "write the entries of a dump into a store",
        "Write every entry of a dump into STORE (created if missing) in one transaction."
        " A dump with a damaged line is reported with its line number, and nothing is"
        " written. Keys already in STORE get the dump's values; other keys stay.",
    )
    sub.add_argument("input", metavar="DUMP", help="the dump file, or - for stdin")
    store_argument(sub)

    sub = command(
        "import",
        cmd_import,
        "copy a sqlitedict, shelve, dbm or diskcache file into a store",
        "Copy every entry of SOURCE into STORE (created if missing) in one transaction."
        " A missing, damaged or wrong-kind source is reported and nothing is written."
        " str keys are encoded with --key-encoding; other keys than str and bytes are"
        " refused. Unpickling runs code named by the data: import only files you trust.",
    )
    sub.add_argument(
        "--from",
        dest="kind",
        required=True,
        choices=IMPORT_KINDS,
        help="what SOURCE is: a sqlitedict file; a shelve (values are pickles); a plain"
        " dbm file (values are stored as bytes); a diskcache directory",
    )
    sub.add_argument("--table", metavar="NAME", help="the sqlitedict table (default: unnamed)")
    sub.add_argument(
        "--key-encoding",
        default="utf-8",
        metavar="ENCODING",
        help="the encoding of str keys (default: utf-8)",
    )
    sub.add_argument("source", metavar="SOURCE", help="the file or directory to import")
    store_argument(sub, table=False)
    return parser


def _non_negative(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return number


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    out = sys.stdout
    try:
        status: int = args.run(args, out)
        out.flush()
        return status
    except CliError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        message = "interrupted"
    except BrokenPipeError:
        # The reader went away (`keys STORE | head`): nothing more to say to it.
        _drop_stdout()
        return 1
    except Exception as exc:
        message = _describe(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not
    fail again on the closed pipe."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
