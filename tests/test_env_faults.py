"""Faults of the environment itself: a map growth that fails (memory and file
size limits), a data file that is truncated, empty or damaged, a full disk, and
failed opens that must leave nothing behind (docs/semantics.md "When growth
fails", "writemap", "Damaged, truncated and empty files", "The lock file on a
full disk", "A failed open leaves nothing behind").

Whatever could end a process with a signal runs in a child interpreter, which
reports what it saw as JSON on stdout; the test judges the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import struct
import subprocess

import lmdb
import pytest

from helpers import MiB, run_python
from lmdb_object_store import Error, LmdbObjectStore

PAGE = 4096

# Code shared by the child scripts: run a call, describe how it ended.
OUTCOME = """
import json, os, resource, signal, sys
from lmdb_object_store import Error, LmdbObjectStore

def outcome(call):
    try:
        call()
    except Exception as exc:
        return {"raised": type(exc).__name__, "is_error": isinstance(exc, Error),
                "message": str(exc), "errno": getattr(exc, "errno", None)}
    return {"raised": None}

def vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
"""


def run_child(code: str, *args: str, timeout: float = 60.0) -> dict:
    """Run OUTCOME + ``code`` in a child; its last stdout line is JSON."""
    out = run_python(OUTCOME + code, *args, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def big_items(prefix: bytes, count: int, size: int = 4096) -> dict:
    return {prefix + b"%06d" % i: bytes([i % 251]) * size for i in range(count)}


# --------------------------------------------------------------------------
# A map growth that fails
# --------------------------------------------------------------------------

FAILED_GROWTH = """
path, limit_kind, writemap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
items = lambda p, n: {p + b"%06d" % i: bytes([i % 251]) * 4096 for i in range(n)}
store = LmdbObjectStore(path, map_size=1 << 20, writemap=writemap, batch_size=1_000_000)
base = {b"base%04d" % i: i for i in range(100)}
store.put_many(base)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
fsoft, fhard = resource.getrlimit(resource.RLIMIT_FSIZE)

def limit():
    if limit_kind == "as":
        # Room for a few MiB of Python, never for a 65 MiB map.
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 40 * 2**20, hard))
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, fhard))

def lift():
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fhard, fhard))

report = {}
# Made before the limit: only the store's growth should meet it.
many = items(b"many", 1000)
buffered = items(b"buf", 500)
limit()
report["put_many"] = outcome(lambda: store.put_many(many))
# The next calls used to touch a map that was gone (SIGSEGV).
report["len"] = len(store)
report["base"] = sum(store.get(k) == v for k, v in base.items())
report["many_visible"] = sum(store.exists(k, flush=False) for k in list(many)[:50])
for k, v in buffered.items():
    store.put(k, v)
report["flush"] = outcome(store.flush)
report["pending"] = store.pending
report["buffered"] = sum(store.get(k) == v for k, v in list(buffered.items())[:50])
report["stat_entries"] = store.stat()["entries"]
report["map_size"] = store.info()["map_size"]
lift()
report["flush_lifted"] = outcome(store.flush)
report["put_many_lifted"] = outcome(lambda: store.put_many(many))
report["len_lifted"] = len(store)
report["close"] = outcome(store.close)
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    ("limit", "writemap", "cause"),
    [
        ("as", False, "Cannot allocate memory (code 12)"),
        ("as", True, "Cannot allocate memory (code 12)"),
        ("fsize", True, "File too large (code 27)"),
    ],
    ids=["memory", "memory-writemap", "file-size-writemap"],
)
def test_a_failed_growth_leaves_the_store_usable(tmp_path, limit, writemap, cause):
    path = str(tmp_path / "db")
    report = run_child(FAILED_GROWTH, path, limit, "1" if writemap else "0")

    failed = report["put_many"]
    assert failed["raised"] == "Error" and failed["is_error"], failed
    assert failed["message"].startswith(f"grow the map in {path}: {cause}"), failed
    # Nothing of the failed write, everything from before, still readable.
    assert report["len"] == 100
    assert report["base"] == 100
    assert report["many_visible"] == 0
    assert report["flush"]["raised"] == "Error", report["flush"]
    assert cause in report["flush"]["message"]
    assert report["pending"] == 500
    assert report["buffered"] == 50
    assert report["stat_entries"] == 100
    assert report["map_size"] == 1 << 20
    # Limit lifted: the very same calls succeed.
    assert report["flush_lifted"] == {"raised": None}
    assert report["put_many_lifted"] == {"raised": None}
    assert report["len_lifted"] == 100 + 500 + 1000
    assert report["close"] == {"raised": None}

    with LmdbObjectStore(path) as store:
        assert len(store) == 1600
        assert store[b"buf000499"] == bytes([499 % 251]) * 4096
        assert store[b"many000999"] == bytes([999 % 251]) * 4096
        assert store[b"base0099"] == 99


ADOPT_UNDER_LIMIT = """
path = sys.argv[1]
store = LmdbObjectStore(path, map_size=1 << 20)
report = {"len_before": len(store)}
# Another process grows the map past what this one may map.
grower = (
    "import sys; from lmdb_object_store import LmdbObjectStore as S;"
    "s = S(sys.argv[1], map_size=1 << 20);"
    "s.put_many({b'g%06d' % i: b'x' * 4096 for i in range(5000)}); s.close()"
)
import subprocess
subprocess.run([sys.executable, "-c", grower, path], check=True, timeout=60)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 40 * 2**20, hard))
report["get"] = outcome(lambda: store[b"g000001"])
report["len"] = outcome(lambda: len(store))
# Needs a growth this process may not map either.
report["put_many"] = outcome(lambda: store.put_many({b"mine": 1}))
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
report["len_lifted"] = len(store)
report["get_lifted"] = store[b"g000001"] == b"x" * 4096
store.put_many({b"mine": 1})
report["close"] = outcome(store.close)
print(json.dumps(report))
"""


def test_adopting_another_process_growth_that_cannot_be_mapped(tmp_path):
    path = str(tmp_path / "db")
    LmdbObjectStore(path, map_size=1 << 20).close()
    report = run_child(ADOPT_UNDER_LIMIT, path)
    assert report["len_before"] == 0
    # The size the other process recorded cannot be mapped: the read fails,
    # and the environment is opened again over the data the file holds.
    for call in ("get", "put_many"):
        failed = report[call]
        assert failed["raised"] == "Error", (call, failed)
        assert path in failed["message"] and "Cannot allocate memory" in failed["message"]
    assert report["len"] == {"raised": None}
    assert report["len_lifted"] == 5000
    assert report["get_lifted"] is True
    assert report["close"] == {"raised": None}


# --------------------------------------------------------------------------
# Truncated, empty and damaged data files
# --------------------------------------------------------------------------


def _make_store(path: str, count: int = 3000) -> dict:
    items = {b"k%06d" % i: b"v" * 1000 for i in range(count)}
    with LmdbObjectStore(path) as store:
        store.put_many(items)
    return items


TRUNCATED = """
path, readonly, writemap = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
data = os.path.join(path, "data.mdb")
size_before = os.path.getsize(data)
report = {"open": outcome(lambda: LmdbObjectStore(path, readonly=readonly, writemap=writemap))}
report["size_after"] = os.path.getsize(data)
report["size_before"] = size_before
# The failed open left nothing registered: once the file is whole again,
# the same process opens it.
os.rename(sys.argv[4], data)
with LmdbObjectStore(path, readonly=readonly, writemap=writemap) as store:
    report["len"] = len(store)
    report["last"] = store[b"k002999"] == b"v" * 1000
print(json.dumps(report))
"""


@pytest.mark.parametrize("cut", ["8k", "12k", "half", "minus_page", "5000"])
@pytest.mark.parametrize(
    ("readonly", "writemap"), [(False, False), (True, False), (False, True)], ids=["rw", "ro", "wm"]
)
def test_a_truncated_data_file_is_an_error_at_open(tmp_path, cut, readonly, writemap):
    path = str(tmp_path / "db")
    _make_store(path)
    data = os.path.join(path, "data.mdb")
    whole = str(tmp_path / "whole.mdb")
    shutil.copyfile(data, whole)
    size = os.path.getsize(data)
    new_size = {
        "8k": 2 * PAGE,
        "12k": 3 * PAGE,
        "half": size // 2,
        "minus_page": size - PAGE,
        "5000": 5000,
    }[cut]
    os.truncate(data, new_size)

    report = run_child(TRUNCATED, path, "1" if readonly else "0", "1" if writemap else "0", whole)

    failed = report["open"]
    assert failed["raised"] == "Error", failed
    assert failed["message"] == (
        f"cannot open {path}: the data file {data} is {new_size} bytes but its header says it "
        f"holds {size}: truncated or damaged (restore it from a copy)"
    )
    # Not extended (writemap would have grown it to the map size).
    assert report["size_after"] == report["size_before"] == new_size
    assert report["len"] == 3000 and report["last"] is True


def test_a_data_file_shorter_than_its_free_pages_is_sound(tmp_path):
    """LMDB does not write a page that one transaction allocated and freed,
    so a sound file may end before the last page its header counts: such a
    file opens, reads and writes."""
    path = str(tmp_path / "db")
    env = lmdb.open(path, map_size=1 << 30)
    for round_ in range(5):
        with env.begin(write=True) as txn:
            for i in range(200):
                txn.put(b"a%06d" % i, pickle.dumps(round_ * 1000 + i))
    with env.begin(write=True) as txn:
        txn.put(b"a000001", pickle.dumps("new"))
        txn.put(b"big", b"x" * MiB)
        txn.delete(b"big")
    info, psize = env.info(), env.stat()["psize"]
    env.close()
    data = os.path.join(path, "data.mdb")
    assert os.path.getsize(data) < (info["last_pgno"] + 1) * psize, "the case did not arise"

    for readonly in (True, False):
        with LmdbObjectStore(path, readonly=readonly) as store:
            assert len(store) == 200
            assert store[b"a000001"] == "new"
            assert store[b"a000199"] == 4199
    with LmdbObjectStore(path) as store:
        store.put_many({b"b%06d" % i: i for i in range(2000)})
    with LmdbObjectStore(path, readonly=True) as store:
        assert len(store) == 2200


def test_a_zero_length_data_file(tmp_path):
    """Writable: LMDB makes it a new, empty store (as for a missing file).
    Read-only: an Error naming the file, not LMDB's 'Bad file descriptor'."""
    path = tmp_path / "db"
    path.mkdir()
    data = path / "data.mdb"
    data.write_bytes(b"")
    with pytest.raises(Error) as info:
        LmdbObjectStore(str(path), readonly=True)
    assert str(info.value) == (
        f"cannot open {path} read-only: its data file {data} is empty (0 bytes), not an LMDB "
        "environment; a writable open makes it a new, empty store"
    )
    assert data.stat().st_size == 0
    assert sorted(os.listdir(path)) == ["data.mdb"]

    single = tmp_path / "single.mdb"
    single.write_bytes(b"")
    for kwargs in ({"db_path": str(path)}, {"db_path": str(single), "subdir": False}):
        with LmdbObjectStore(**kwargs) as store:
            assert len(store) == 0
            store[b"a"] = 1
        with LmdbObjectStore(**kwargs, readonly=True) as store:
            assert store[b"a"] == 1


DAMAGED = """
path = sys.argv[1]
report = {"open": outcome(lambda: LmdbObjectStore(path, readonly=sys.argv[2] == "1"))}
print(json.dumps(report))
"""


@pytest.mark.parametrize(
    "damage", ["garbage_page0", "garbage_page1", "last_pgno", "page_size", "short_4096"]
)
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_a_damaged_header_is_a_clear_error(tmp_path, damage, readonly):
    path = str(tmp_path / "db")
    _make_store(path, count=10)
    data = os.path.join(path, "data.mdb")
    with open(data, "r+b") as f:
        head = bytearray(f.read(2 * PAGE))
        # Meta pages (64-bit LMDB 0.9): magic at 16, page size at 40, last
        # page number at 136, txnid at 144.
        txnids = [struct.unpack_from("<Q", head, at + 144)[0] for at in (0, PAGE)]
        newest = 0 if txnids[0] > txnids[1] else PAGE
        if damage == "garbage_page0":
            head[0:PAGE] = os.urandom(PAGE)
        elif damage == "garbage_page1":
            head[PAGE : 2 * PAGE] = os.urandom(PAGE)
        elif damage == "last_pgno":
            struct.pack_into("<Q", head, newest + 136, 1 << 40)
        elif damage == "page_size":
            struct.pack_into("<I", head, 40, 3)
        f.seek(0)
        f.write(head)
        if damage == "short_4096":
            f.truncate(PAGE)
    report = run_child(DAMAGED, path, "1" if readonly else "0")
    failed = report["open"]
    assert failed["raised"] == "Error", failed
    assert path in failed["message"], failed
    expected = {
        "garbage_page0": "not an LMDB file",
        "garbage_page1": "not an LMDB file",
        "last_pgno": "truncated or damaged",
        "page_size": "page size of 3 bytes",
        "short_4096": f"is {PAGE} bytes but its header says it holds",
    }[damage]
    assert expected in failed["message"], failed


# --------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(directory, size: str):
    """A tmpfs of ``size`` mounted on ``directory`` (the tests run as root)."""
    os.makedirs(directory, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        check=True,
        timeout=30,
    )
    try:
        yield str(directory)
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True, timeout=30)


def fill(directory: str, leave: int = 0) -> str:
    """Fill the file system of ``directory`` until ``leave`` bytes are free."""
    filler = os.path.join(directory, f"filler{len(os.listdir(directory))}")
    st = os.statvfs(directory)
    room = st.f_bavail * st.f_frsize - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        chunk = b"\xff" * (256 * 1024)
        while room > 0:
            try:
                room -= os.write(fd, chunk[: min(len(chunk), room)])
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


NEW_STORE_ON_FULL_DISK = """
path, subdir = sys.argv[1], sys.argv[2] == "1"
report = {"open": outcome(lambda: LmdbObjectStore(path, subdir=subdir))}
report["left"] = sorted(os.listdir(os.path.dirname(path)))
print(json.dumps(report))
"""


@pytest.mark.parametrize("subdir", [True, False])
def test_a_new_store_on_a_full_disk_is_an_oserror(tmp_path, subdir):
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        fill(mnt)
        path = os.path.join(mnt, "db")
        report = run_child(NEW_STORE_ON_FULL_DISK, path, "1" if subdir else "0")
    failed = report["open"]
    assert failed["raised"] == "OSError" and failed["errno"] == 28, failed
    assert path in failed["message"] and "lock file" in failed["message"], failed
    # Nothing of the failed open is left: no directory, no lock file.
    assert report["left"] == ["filler0"]


QUEUED_COMMITS_ON_A_FULL_DISK = """
path, mnt = sys.argv[1], sys.argv[2]
store = LmdbObjectStore(path, batch_size=256)
store.put(b"seed", 0)
store.flush()
st = os.statvfs(mnt)
filler = os.path.join(mnt, "filler")
with open(filler, "wb") as f:
    f.write(b"\\xff" * (st.f_bavail * st.f_frsize - 256 * 1024))
taken, refused = {}, []
for i in range(4000):
    key, value = b"k%05d" % i, bytes([i % 251]) * 700
    try:
        store.put(key, value)
        taken[key] = value
    except Exception as exc:
        refused.append([type(exc).__name__, isinstance(exc, Error), getattr(exc, "errno", None)])
report = {"refused": refused, "taken": len(taken)}
report["pending"] = store.pending
report["flush_full"] = outcome(store.flush)
os.remove(filler)
report["flush"] = outcome(store.flush)
report["pending_after"] = store.pending
store.close()
again = LmdbObjectStore(path)
report["all_there"] = len(again) == len(taken) + 1 and all(again[k] == v for k, v in taken.items())
print(json.dumps(report))
"""


def test_commits_queued_behind_one_that_fills_the_disk_lose_nothing(tmp_path):
    # Background commits (batch_size 256, writes never waiting for them)
    # run into a full disk while the writes go on: each failure is raised by
    # a later write, every write taken stays buffered, and once there is
    # room a flush() writes them all.
    with small_tmpfs(tmp_path / "mnt", "16m") as mnt:
        report = run_child(QUEUED_COMMITS_ON_A_FULL_DISK, os.path.join(mnt, "db"), mnt)
    assert report["refused"], report
    for name, is_error, errno in report["refused"]:
        assert is_error or (name == "OSError" and errno == 28), report["refused"]
    assert report["taken"] + len(report["refused"]) == 4000
    assert report["pending"] >= report["taken"] - 256 * 16, report
    assert report["flush_full"]["raised"] is not None, report
    assert report["flush"]["raised"] is None, report
    assert report["pending_after"] == 0
    assert report["all_there"], report


def test_the_lock_file_is_allocated_at_the_size_lmdb_gives_it(tmp_path):
    for readers in (1, 126, 1024, 5000):
        ours, theirs = tmp_path / f"ours{readers}", tmp_path / f"theirs{readers}"
        LmdbObjectStore(str(ours), max_readers=readers).close()
        lmdb.open(str(theirs), max_readers=readers).close()
        lock = os.stat(ours / "lock.mdb")
        assert lock.st_size == os.stat(theirs / "lock.mdb").st_size
        # Every byte has a block: nothing is left for a full disk to refuse.
        assert lock.st_blocks * 512 >= lock.st_size, (readers, lock)
        # LMDB reads max_readers back from a lock file big enough for the
        # number asked for.
        with LmdbObjectStore(str(ours), max_readers=1) as store:
            assert store.info()["max_readers"] == readers


WRITEMAP_FULL_DISK = """
path, mnt = sys.argv[1], sys.argv[2]
items = lambda p, n, size: {p + b"%06d" % i: bytes([i % 251]) * size for i in range(n)}

def fill(leave):
    filler = os.path.join(mnt, "filler%d" % len(os.listdir(mnt)))
    st = os.statvfs(mnt)
    room = st.f_bavail * st.f_frsize - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while room > 0:
            try:
                room -= os.write(fd, b"\\xff" * min(room, 262144))
            except OSError:
                break
    finally:
        os.close(fd)
    return filler

store = LmdbObjectStore(path, writemap=True, map_size=2**20, batch_size=1_000_000)
report = {}
filler = fill(256 * 1024)
first = items(b"first", 100, 1000)
report["put_many"] = outcome(lambda: store.put_many(first))
store.update(first)
report["flush"] = outcome(store.flush)
report["pending"] = store.pending
report["len"] = len(store)
os.unlink(filler)
report["flush_freed"] = outcome(store.flush)
report["len_freed"] = len(store)
# After a growth, the new part of the map is sparse again.
filler = fill(2 * 2**20)
second = items(b"second", 1000, 4096)
report["put_many_grown"] = outcome(lambda: store.put_many(second))
report["map_size_grown"] = store.info()["map_size"]
report["len_grown"] = len(store)
os.unlink(filler)
report["put_many_freed"] = outcome(lambda: store.put_many(second))
report["close"] = outcome(store.close)
print(json.dumps(report))
"""


def test_a_writemap_store_filling_the_disk_raises_and_keeps_everything(tmp_path):
    with small_tmpfs(tmp_path / "mnt", "80m") as mnt:
        path = os.path.join(mnt, "db")
        report = run_child(WRITEMAP_FULL_DISK, path, mnt)
        with LmdbObjectStore(path) as store:
            assert len(store) == 1100
            assert store[b"second000999"] == bytes([999 % 251]) * 4096
            assert store[b"first000099"] == bytes([99]) * 1000

    for call in ("put_many", "flush", "put_many_grown"):
        failed = report[call]
        assert failed["raised"] == "Error", (call, failed)
        assert failed["message"].startswith(f"commit in {path} (writemap=True"), failed
        assert "No space left on device (code 28)" in failed["message"]
        assert "free space, then retry" in failed["message"]
    assert report["pending"] == 100
    assert report["len"] == 100  # the buffer, over an empty database
    assert report["flush_freed"] == {"raised": None}
    assert report["len_freed"] == 100
    assert report["map_size_grown"] > 2**20
    assert report["len_grown"] == 100
    assert report["put_many_freed"] == {"raised": None}
    assert report["close"] == {"raised": None}


# --------------------------------------------------------------------------
# Failed opens leave nothing behind
# --------------------------------------------------------------------------


def test_a_failed_open_removes_the_lock_file_it_created(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n" * 1000)
    with pytest.raises(Error, match="not an LMDB file"):
        LmdbObjectStore(str(notes), subdir=False)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.mdb").write_text("hello\n" * 1000)
    with pytest.raises(Error, match="not an LMDB file"):
        LmdbObjectStore(str(folder))
    assert sorted(os.listdir(folder)) == ["data.mdb"]


def test_a_failed_open_keeps_a_lock_file_that_was_there(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n" * 1000)
    lock = tmp_path / "notes.txt-lock"
    lock.write_bytes(b"")
    with pytest.raises(Error, match="not an LMDB file"):
        LmdbObjectStore(str(notes), subdir=False)
    assert lock.exists()


def test_a_failed_open_of_a_new_store_removes_what_it_created(tmp_path):
    """A map the process cannot have: the directory, data and lock files the
    open created are removed again."""
    path = tmp_path / "db"
    with pytest.raises(OSError, match=str(path)) as info:
        LmdbObjectStore(str(path), map_size=1 << 60)
    assert info.value.errno == 12
    assert os.listdir(tmp_path) == []
    single = tmp_path / "single.mdb"
    with pytest.raises(OSError, match=str(single)):
        LmdbObjectStore(str(single), subdir=False, map_size=1 << 60)
    assert os.listdir(tmp_path) == []
