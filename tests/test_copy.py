"""store.copy(dest, *, compact=True): what a copy holds, its layout, a destination that
exists, failures that leave nothing behind, the GIL released and writers going on during
a copy, and compaction (docs/usage.md "Backup and compaction").

Whatever may block on another process, or meets a full or read-only file system or a
file size limit, runs in a child interpreter with a timeout; the child reports what it
saw as JSON on its last stdout line.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from helpers import MiB, join_or_fail, run_python, start_thread
from lmdb_object_store import ClosedError, LmdbObjectStore

# Code shared by the child scripts: run a call, describe how it ended.
OUTCOME = """
import json, os, resource, signal, sys, threading, time
from lmdb_object_store import Error, LmdbObjectStore

def outcome(call):
    try:
        call()
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc),
                "errno": getattr(exc, "errno", None),
                "filename": getattr(exc, "filename", None)}
    return {"raised": None}
"""


def run_child(code: str, *args: str, timeout: float = 60.0) -> dict:
    out = run_python(OUTCOME + code, *args, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def committed(path, **options) -> dict:
    """What the data file holds, read by py-lmdb (the buffer of a store left out)."""
    env = lmdb.open(str(path), readonly=True, lock=False, **options)
    try:
        with env.begin() as txn:
            return {bytes(k): pickle.loads(v) for k, v in txn.cursor()}
    finally:
        env.close()


def contents(path, **options) -> dict:
    with LmdbObjectStore(str(path), readonly=True, **options) as store:
        return dict(store.items())


def tree(directory) -> dict[str, bytes | str]:
    """Every file under ``directory`` and its bytes (a symbolic link: its target)."""
    found: dict[str, bytes | str] = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = (
                os.readlink(path) if os.path.islink(path) else Path(path).read_bytes()
            )
    return found


@contextlib.contextmanager
def mounted_tmpfs(directory, options: str):
    """A tmpfs mounted on ``directory`` with ``options`` (the tests run as root)."""
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield str(directory)
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True, timeout=30)


ITEMS = {b"k%04d" % i: {"n": i, "blob": bytes([i % 251]) * 300} for i in range(2000)}


# --------------------------------------------------------------------------
# What a copy holds, and its layout
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_a_copy_holds_the_committed_and_the_buffered_writes(tmp_path, compact):
    """The buffer is committed first (as flush()): every write acknowledged before the
    call is in the copy. The copy of a directory store is a directory with data.mdb."""
    src, dest = tmp_path / "src", tmp_path / "backup"
    with LmdbObjectStore(str(src), batch_size=1_000_000) as store:
        store.put_many(ITEMS)
        store[b"buffered"] = "acknowledged"
        del store[b"k0000"]
        assert store.pending == 2
        store.copy(dest, compact=compact)
        assert store.pending == 0
        assert committed(src)[b"buffered"] == "acknowledged"
        store[b"after"] = 1
    assert sorted(os.listdir(dest)) == ["data.mdb"]
    expected = {k: v for k, v in ITEMS.items() if k != b"k0000"}
    expected[b"buffered"] = "acknowledged"
    assert contents(dest) == expected
    assert contents(src) == {**expected, b"after": 1}


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_a_single_file_store_copies_to_a_single_file(tmp_path, compact):
    src, dest = tmp_path / "src.mdb", tmp_path / "backup.mdb"
    with LmdbObjectStore(str(src), subdir=False) as store:
        store.put_many(ITEMS)
        store.copy(str(dest), compact=compact)
    assert dest.is_file()
    assert not (tmp_path / "backup.mdb-lock").exists()
    assert sorted(os.listdir(tmp_path)) == ["backup.mdb", "src.mdb", "src.mdb-lock"]
    assert contents(dest, subdir=False) == ITEMS


@pytest.mark.parametrize(
    "options",
    [{"writemap": True}, {"lock": False}, {"sync": False, "map_size": 1 << 20}, {"mode": 0o640}],
    ids=["writemap", "nolock", "nosync", "mode"],
)
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_the_copy_opens_with_the_options_of_the_store(tmp_path, options, compact):
    src, dest = tmp_path / "src", tmp_path / "backup"
    with LmdbObjectStore(str(src), **options) as store:
        store.put_many(ITEMS)
        store.copy(dest, compact=compact)
    if "mode" in options:
        assert (dest / "data.mdb").stat().st_mode & 0o777 == 0o640 & ~current_umask()
    with LmdbObjectStore(str(dest), **options) as copy:
        assert dict(copy.items()) == ITEMS
        copy[b"new"] = 1
        copy.flush()
    assert contents(dest)[b"new"] == 1


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_read_only_store_can_be_copied(tmp_path):
    src = tmp_path / "src"
    with LmdbObjectStore(str(src)) as store:
        store.put_many(ITEMS)
    data = src / "data.mdb"
    before = data.read_bytes(), data.stat().st_mtime_ns
    with LmdbObjectStore(str(src), readonly=True) as store:
        store.copy(tmp_path / "compact")
        store.copy(tmp_path / "plain", compact=False)
    assert (data.read_bytes(), data.stat().st_mtime_ns) == before
    assert contents(tmp_path / "compact") == contents(tmp_path / "plain") == ITEMS


def test_dest_may_be_str_bytes_or_pathlike(tmp_path):
    with LmdbObjectStore(str(tmp_path / "src")) as store:
        store[b"a"] = 1
        store.copy(str(tmp_path / "as-str"))
        store.copy(os.fsencode(tmp_path / "as-bytes"))
        store.copy(tmp_path / "as-path")
    for name in ("as-str", "as-bytes", "as-path"):
        assert contents(tmp_path / name) == {b"a": 1}


def test_a_copy_of_a_copy_and_a_relative_dest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LmdbObjectStore("src") as store:
        store.put_many(ITEMS)
        store.copy("first")
    with LmdbObjectStore("first") as first:
        first.copy("second", compact=False)
    assert contents("second") == ITEMS


# --------------------------------------------------------------------------
# Bad input: nothing written, the buffer as it was
# --------------------------------------------------------------------------


def _existing(tmp_path, kind):
    dest = tmp_path / "dest"
    if kind == "directory":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    elif kind == "empty directory":
        dest.mkdir()
    elif kind == "file":
        dest.write_text("mine")
    elif kind == "dangling symlink":
        os.symlink(tmp_path / "nowhere", dest)
    else:
        return tmp_path / "src"
    return dest


@pytest.mark.parametrize(
    "kind", ["directory", "empty directory", "file", "dangling symlink", "the store itself"]
)
@pytest.mark.parametrize("subdir", [True, False], ids=["dir", "file"])
def test_a_dest_that_exists_is_file_exists_error_and_nothing_is_written(tmp_path, kind, subdir):
    store = LmdbObjectStore(str(tmp_path / "src"), subdir=subdir, batch_size=1_000_000)
    with store:
        store.put_many(ITEMS)
        store[b"buffered"] = 1
        dest = _existing(tmp_path, kind)
        before = sorted(os.listdir(tmp_path)), tree(tmp_path)
        with pytest.raises(FileExistsError) as info:
            store.copy(dest)
        assert info.value.filename == str(dest)
        assert f"to {dest}: it already exists" in str(info.value)
        assert (sorted(os.listdir(tmp_path)), tree(tmp_path)) == before
        assert store.pending == 1, "the buffer was not committed"
        assert b"buffered" not in committed(tmp_path / "src", subdir=subdir)
        assert store[b"buffered"] == 1


@pytest.mark.parametrize(
    ("dest", "error", "named"),
    [
        (17, TypeError, "dest must be str, bytes or os.PathLike, got int"),
        (None, TypeError, "dest must be str, bytes or os.PathLike, got NoneType"),
        ("", ValueError, "dest is an empty path"),
        ("a\0b", ValueError, "dest contains a NUL byte"),
    ],
)
def test_a_dest_that_is_not_a_path(tmp_path, dest, error, named):
    with LmdbObjectStore(str(tmp_path / "src"), batch_size=1_000_000) as store:
        store[b"buffered"] = 1
        with pytest.raises(error, match=named):
            store.copy(dest)
        with pytest.raises(TypeError):
            store.copy(tmp_path / "x", compact="yes")
        with pytest.raises(TypeError):
            store.copy(tmp_path / "x", True)
        assert store.pending == 1
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_a_missing_parent_is_file_not_found_error_naming_dest(tmp_path):
    dest = tmp_path / "missing" / "backup"
    with LmdbObjectStore(str(tmp_path / "src")) as store:
        store[b"a"] = 1
        with pytest.raises(FileNotFoundError) as info:
            store.copy(dest)
    assert info.value.filename == str(dest)
    assert str(dest) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_a_closed_store_is_not_copied(tmp_path):
    store = LmdbObjectStore(str(tmp_path / "src"))
    store.close()
    with pytest.raises(ClosedError):
        store.copy(tmp_path / "backup")
    assert not (tmp_path / "backup").exists()


# --------------------------------------------------------------------------
# Failures leave nothing at dest, and name it
# --------------------------------------------------------------------------

FAILED_COPY = """
src, dest, subdir, compact = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
limit = int(sys.argv[5])
store = LmdbObjectStore(src, subdir=subdir)
store.put_many({b"k%05d" % i: os.urandom(2000) for i in range(2500)})
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
report = {"copy": outcome(lambda: store.copy(dest, compact=compact))}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
report["left"] = sorted(os.listdir(os.path.dirname(dest)))
# The store goes on as before.
store[b"after"] = 1
store.flush()
report["len"] = len(store)
store.close()
print(json.dumps(report))
"""


def _assert_failed_copy(report, dest, errno, words):
    failed = report["copy"]
    assert failed["raised"] is not None and failed["errno"] == errno, failed
    assert failed["filename"] == dest, failed
    assert f"to {dest}: " in failed["message"] and words in failed["message"], failed
    assert report["len"] == 2501


@pytest.mark.parametrize("subdir", [True, False], ids=["dir", "file"])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_a_full_disk_leaves_no_partial_copy(tmp_path, subdir, compact):
    """The store holds about 5 MiB; the file system of the copy has 1 MiB."""
    with mounted_tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        dest = os.path.join(mnt, "backup")
        args = (str(tmp_path / "src"), dest, "1" if subdir else "0", "1" if compact else "0")
        report = run_child(FAILED_COPY, *args, "0")
        assert os.listdir(mnt) == []
    _assert_failed_copy(report, dest, 28, "No space left on device; the disk or the quota is full")
    assert report["left"] == []


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_a_file_size_limit_leaves_no_partial_copy(tmp_path, compact):
    dest = str(tmp_path / "out" / "backup")
    os.mkdir(tmp_path / "out")
    args = (str(tmp_path / "src"), dest, "1", "1" if compact else "0")
    report = run_child(FAILED_COPY, *args, str(MiB))
    _assert_failed_copy(report, dest, 27, "RLIMIT_FSIZE")
    assert report["left"] == []


def test_a_read_only_file_system_is_an_oserror_naming_dest(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as mnt:
        dest = os.path.join(mnt, "backup")
        report = run_child(FAILED_COPY, str(tmp_path / "src"), dest, "1", "1", "0")
        assert os.listdir(mnt) == []
    _assert_failed_copy(report, dest, 30, "Read-only file system")


# --------------------------------------------------------------------------
# The GIL, and writers during a copy
# --------------------------------------------------------------------------

# A plain copy snapshots the meta pages under LMDB's writer lock, so it cannot end while
# another process holds a write transaction open. The main thread runs Python code in
# that time and only then lets the other process go on: a copy that kept the GIL while it
# waited would deadlock here (and the child's timeout fail the test).
GIL_DURING_COPY = """
import subprocess
src, dest = sys.argv[1], sys.argv[2]
store = LmdbObjectStore(src)
store.put_many({b"k%04d" % i: i for i in range(1000)})
holder = subprocess.Popen(
    [sys.executable, "-c",
     "import lmdb, sys\\n"
     "env = lmdb.open(sys.argv[1])\\n"
     "txn = env.begin(write=True)\\n"
     "txn.put(b'held', b'x')\\n"
     "print('ready', flush=True)\\n"
     "sys.stdin.readline()\\n"
     "txn.abort()\\n",
     src],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline() == "ready\\n"
done = threading.Event()
result = {}
def copy():
    result["copy"] = outcome(lambda: store.copy(dest, compact=False))
    done.set()
thread = threading.Thread(target=copy, daemon=True)
thread.start()
time.sleep(0.5)
# Python code, run while the copy waits for the other process's writer lock.
ran_during_copy = [not done.is_set() for _ in range(1000)]
holder.stdin.write("go\\n")
holder.stdin.flush()
holder.wait(timeout=20)
thread.join(timeout=20)
report = {"ran_during_copy": all(ran_during_copy), "copy": result.get("copy"),
          "alive": thread.is_alive()}
with LmdbObjectStore(dest, readonly=True) as copy:
    report["len"] = len(copy)
print(json.dumps(report))
"""


def test_the_gil_is_released_while_a_copy_waits(tmp_path):
    report = run_child(GIL_DURING_COPY, str(tmp_path / "src"), str(tmp_path / "dest"), timeout=40)
    assert report == {
        "ran_during_copy": True,
        "copy": {"raised": None},
        "alive": False,
        "len": 1000,
    }


# Writes generation g to every key of a family in one transaction (put_many), so a
# consistent state holds one generation per family.
FAMILY = 40


def _generation(prefix: bytes, g: int) -> dict:
    return {prefix + b"%03d" % i: (g, b"x" * 3000) for i in range(FAMILY)}


WRITER_PROCESS = """
import os, sys
from lmdb_object_store import LmdbObjectStore
path, stop, family = sys.argv[1], sys.argv[2], int(sys.argv[3])

def _generation(prefix, g):
    return {prefix + b"%03d" % i: (g, b"x" * 3000) for i in range(family)}

with LmdbObjectStore(path, map_size=1 << 20) as store:
    g = 0
    while not os.path.exists(stop) and g < 100_000:
        store.put_many(_generation(b"proc", g))
        if g == 0:
            open(stop + ".ready", "w").close()
        g += 1
print(g)
"""


def _assert_consistent(copy_path):
    items = contents(copy_path)
    assert sum(k.startswith(b"ballast") for k in items) == 1500
    for prefix in (b"thread", b"proc"):
        generations = {v[0] for k, v in items.items() if k.startswith(prefix)}
        assert len(generations) == 1, (prefix, sorted(generations)[:5])
        assert sum(k.startswith(prefix) for k in items) == FAMILY
    return items


def test_writers_in_threads_and_another_process_go_on_during_copies(tmp_path):
    """Each copy holds one consistent state: one generation of each family. The map
    starts at 1 MiB, so both writers grow it while copies run."""
    src = str(tmp_path / "src")
    stop = str(tmp_path / "stop")
    store = LmdbObjectStore(src, map_size=1 << 20, sync=False)
    # Ballast, so that each copy takes long enough for writes to land during it.
    store.put_many({b"ballast%05d" % i: os.urandom(8192) for i in range(1500)})
    store.put_many(_generation(b"thread", 0))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER_PROCESS, src, stop, str(FAMILY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(stop + ".ready"):
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline, "the writer process did not start"
            time.sleep(0.01)
        halt = []

        def write_generations():
            g = 1
            while not halt:
                store.put_many(_generation(b"thread", g))
                g += 1
            return g

        thread, outcome = start_thread(write_generations)
        copies = []
        for n in range(6):
            dest = tmp_path / f"copy{n}"
            store.copy(dest, compact=n % 2 == 0)
            copies.append(dest)
        halt.append(True)
        join_or_fail(thread, timeout=30)
        assert "error" not in outcome, outcome
        open(stop, "w").close()
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    for dest in copies:
        _assert_consistent(dest)
    final = _assert_consistent_store(store)
    store.close()
    assert final[b"thread000"][0] == outcome["result"] - 1
    assert final[b"proc000"][0] == int(out) - 1


def _assert_consistent_store(store):
    items = dict(store.items())
    for prefix in (b"thread", b"proc"):
        assert len({v[0] for k, v in items.items() if k.startswith(prefix)}) == 1
    return items


GROWN_ELSEWHERE = """
path = sys.argv[1]
with LmdbObjectStore(path, map_size=1 << 20) as store:
    store.put_many({b"big%03d" % i: os.urandom(100_000) for i in range(60)})
    print(json.dumps(store.info()["map_size"]))
"""


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "plain"])
def test_a_map_grown_by_another_process_is_adopted_by_the_copy(tmp_path, compact):
    """The copy's own read meets the larger map (MDB_MAP_RESIZED): the store adopts it
    and copies again from the start."""
    src = str(tmp_path / "src")
    with LmdbObjectStore(src, map_size=1 << 20) as store:
        store[b"mine"] = 1
        store.flush()
        grown = json.loads(run_python(OUTCOME + GROWN_ELSEWHERE, src))
        assert grown > 1 << 20
        store.copy(tmp_path / "backup", compact=compact)
        assert store.info()["map_size"] == grown
    copied = contents(tmp_path / "backup")
    assert len(copied) == 61 and copied[b"mine"] == 1


# --------------------------------------------------------------------------
# Compaction
# --------------------------------------------------------------------------


def test_a_compacted_copy_of_a_store_nine_tenths_deleted_is_small(tmp_path):
    """100 MiB written, 90% deleted: the data file stays at its size; a compacted copy
    is under 15 MiB and holds every remaining entry."""
    src = tmp_path / "src"
    value_size, count = 64 * 1024, 1600
    with LmdbObjectStore(str(src), sync=False, batch_size=200) as store:
        for start in range(0, count, 200):
            store.put_many(
                {b"k%05d" % i: os.urandom(value_size) for i in range(start, start + 200)}
            )
        kept = {b"k%05d" % i: store[b"k%05d" % i] for i in range(0, count, 10)}
        for i in range(count):
            if i % 10:
                del store[b"k%05d" % i]
        store.flush()
        assert len(store) == len(kept) == 160
        assert (src / "data.mdb").stat().st_size >= 100 * MiB
        store.copy(tmp_path / "compacted")
    size = (tmp_path / "compacted" / "data.mdb").stat().st_size
    assert size < 15 * MiB, size
    assert contents(tmp_path / "compacted") == kept
