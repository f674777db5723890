"""Real faults: a data file that may not grow (a file size limit, RLIMIT_FSIZE;
docs/semantics.md "A failed commit") and paths that cannot be opened (missing,
of the wrong kind, not writable; docs/usage.md "Opening a store").

The write faults run in a child process, because the limit applies to the whole
process; the child reports what it saw as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from lmdb_object_store import Error, LmdbObjectStore
from proc_workers import (
    FSIZE_BASE,
    FSIZE_COUNT,
    fork_child,
    fsize_base_key,
    fsize_items,
    wait_child,
    wait_readable,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PAGE = 4096

# --------------------------------------------------------------------------
# A data file that may not grow
# --------------------------------------------------------------------------


def _run_limited_writer(db_path: str, headroom: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    script = "import sys, proc_workers; proc_workers.fsize_limited_writer(*sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", script, db_path, str(headroom)],
        capture_output=True,
        env=env,
        timeout=45,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def _assert_write_failure(outcome: dict, db_path: str, cause: str) -> None:
    """The package's ``Error`` (not MapFullError) naming the path, the cause and the fix."""
    assert outcome["raised"] == "Error", outcome
    assert outcome["is_error"] and not outcome["is_map_full"], outcome
    message = outcome["message"]
    assert message.startswith(f"commit in {db_path}: {cause}"), message
    assert "RLIMIT_FSIZE" in message, message


# With no headroom, LMDB's first write of a new page starts at the limit and
# fails with EFBIG. With some, the write that crosses the limit comes back
# short, which LMDB reports as EIO.
@pytest.mark.parametrize(
    ("headroom", "cause"),
    [(0, "File too large"), (PAGE, "Input/output error"), (16 * PAGE, "Input/output error")],
)
def test_a_data_file_that_cannot_grow_fails_the_commit_and_keeps_everything(
    make_store, db_path, headroom, cause
):
    base = {fsize_base_key(i): i for i in range(FSIZE_BASE)}
    store = make_store(db_path)
    store.put_many(base)
    store.close()

    report = _run_limited_writer(db_path, headroom)

    # The limit left the store openable, and the writes really needed to grow
    # the file past it.
    assert report["limit"] == report["data_file_size"] + headroom
    assert report["file_size_after_failures"] <= report["limit"]

    # put_many: all or nothing.
    _assert_write_failure(report["put_many"], db_path, cause)
    assert report["entries_after_put_many"] == report["entries_before"] == FSIZE_BASE
    assert report["put_many_keys_visible"] == 0
    assert report["pending_after_put_many"] == 0

    # flush: raises, and the buffer is intact and readable.
    assert report["pending_before_flush"] == FSIZE_COUNT
    _assert_write_failure(report["flush"], db_path, cause)
    assert report["pending_after_flush"] == FSIZE_COUNT
    assert report["buffered_readable"] == FSIZE_COUNT
    _assert_write_failure(report["flush_again"], db_path, cause)
    assert report["pending_after_flush_again"] == FSIZE_COUNT
    # A read whose autoflush fails still answers (docs/semantics.md "Reads while
    # the buffer cannot be committed").
    assert report["autoflush_get"] == {"raised": None}
    assert report["autoflush_get_value"] == 0
    assert report["pending_after_autoflush_get"] == FSIZE_COUNT
    assert report["entries_after_flush"] == FSIZE_BASE

    # The store stayed usable: committed data is intact.
    assert report["base_present"] == FSIZE_BASE
    assert report["base_readable"] == FSIZE_BASE

    # Limit lifted: the same calls succeed.
    assert report["flush_lifted"] == {"raised": None}
    assert report["pending_after_lift"] == 0
    assert report["put_many_lifted"] == {"raised": None}
    assert report["entries_after_lift"] == FSIZE_BASE + 2 * FSIZE_COUNT
    assert report["close"] == {"raised": None}

    # Reopened (in another process than the writer): every key is there.
    expected = dict(base)
    expected.update(fsize_items(b"buf"))
    expected.update(fsize_items(b"many"))
    reopened = make_store(db_path)
    assert len(reopened) == len(expected)
    found, not_found = reopened.get_many(list(expected))
    assert not_found == []
    assert found == expected


# --------------------------------------------------------------------------
# Paths that cannot be opened
# --------------------------------------------------------------------------


def _open_error(path, **kwargs) -> BaseException:
    try:
        store = LmdbObjectStore(path, **kwargs)
    except BaseException as exc:  # returned to the test
        return exc
    store.close()
    raise AssertionError(f"LmdbObjectStore({path!r}, **{kwargs}) opened")


def _assert_names_path(exc: BaseException, path) -> None:
    path = os.fspath(path)
    assert path in str(exc), str(exc)
    if isinstance(exc, OSError):
        assert exc.filename == path, exc.filename


@pytest.mark.parametrize("subdir", [True, False])
def test_a_missing_parent_directory_is_file_not_found(tmp_path, subdir):
    path = tmp_path / "missing" / "db"
    exc = _open_error(path, subdir=subdir)
    assert isinstance(exc, FileNotFoundError), repr(exc)
    _assert_names_path(exc, path)
    assert not (tmp_path / "missing").exists()


def test_a_regular_file_where_a_directory_is_wanted(tmp_path):
    path = tmp_path / "db"
    path.write_bytes(b"not a directory")
    exc = _open_error(path)
    assert isinstance(exc, NotADirectoryError), repr(exc)
    _assert_names_path(exc, path)
    assert "subdir=False" in str(exc)  # what to do next
    assert path.read_bytes() == b"not a directory"


@pytest.mark.parametrize("readonly", [False, True])
def test_the_data_file_of_a_directory_store_is_not_opened_as_a_single_file(tmp_path, readonly):
    """subdir=False on a directory store's data.mdb would make data.mdb-lock, a
    second lock file whose readers the store's writers never see."""
    path = tmp_path / "db"
    with LmdbObjectStore(str(path)) as store:
        store[b"k"] = 1
    before = sorted(os.listdir(path))
    with pytest.raises(Error) as caught:
        LmdbObjectStore(str(path / "data.mdb"), subdir=False, readonly=readonly)
    message = str(caught.value)
    assert "subdir=False" in message and str(path) in message, message
    assert "lock.mdb" in message, message
    assert sorted(os.listdir(path)) == before  # no data.mdb-lock
    with LmdbObjectStore(str(path), readonly=True) as store:
        assert store[b"k"] == 1


def test_a_single_file_store_named_data_mdb_still_opens(tmp_path):
    path = tmp_path / "data.mdb"
    with LmdbObjectStore(str(path), subdir=False) as store:
        store[b"k"] = 1
    # Its own lock file exists now: reopening it is the same store, even if
    # a lock.mdb appears beside it later.
    (tmp_path / "lock.mdb").write_bytes(b"")
    with LmdbObjectStore(str(path), subdir=False) as store:
        assert store[b"k"] == 1


@pytest.mark.parametrize("readonly", [False, True])
def test_a_single_file_store_is_not_opened_as_a_directory_store(tmp_path, readonly):
    """The other direction: a directory whose data.mdb is a single-file store
    (data.mdb-lock beside it) opened as a directory store would make lock.mdb."""
    path = tmp_path / "db"
    path.mkdir()
    with LmdbObjectStore(str(path / "data.mdb"), subdir=False) as store:
        store[b"k"] = 1
    before = sorted(os.listdir(path))
    with pytest.raises(Error) as caught:
        LmdbObjectStore(str(path), readonly=readonly)
    message = str(caught.value)
    assert "subdir=False" in message and str(path / "data.mdb") in message, message
    assert "data.mdb-lock" in message, message
    assert sorted(os.listdir(path)) == before  # no lock.mdb
    with LmdbObjectStore(str(path / "data.mdb"), subdir=False, readonly=True) as store:
        assert store[b"k"] == 1


def test_a_directory_where_a_file_is_wanted(tmp_path):
    path = tmp_path / "db"
    path.mkdir()
    exc = _open_error(path, subdir=False)
    assert isinstance(exc, IsADirectoryError), repr(exc)
    _assert_names_path(exc, path)
    assert list(path.iterdir()) == []


def test_a_regular_file_that_is_not_lmdb(tmp_path):
    path = tmp_path / "db"
    junk = b"junk" * 4096
    path.write_bytes(junk)
    exc = _open_error(path, subdir=False)
    assert type(exc) is Error, repr(exc)
    _assert_names_path(exc, path)
    assert "not an LMDB file" in str(exc)
    assert path.read_bytes() == junk


def _writes_are_refused(directory) -> bool:
    """Whether this process is really kept out of ``directory`` by its mode."""
    probe = os.path.join(directory, ".probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except PermissionError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


def _open_in_read_only_dirs(parent: str, store_dir: str) -> dict:
    """Open where nothing may be created; describe each failure."""
    cases = {
        "new_dir": (os.path.join(parent, "db"), {}),
        "new_file": (os.path.join(parent, "db.mdb"), {"subdir": False}),
        "empty_dir": (store_dir, {}),
    }
    report: dict = {
        "refused": _writes_are_refused(parent) and _writes_are_refused(store_dir),
        # Traversal works, so a failure is about writing, not reaching, the path.
        "listable": os.listdir(parent) == [] and os.listdir(store_dir) == [],
    }
    for name, (path, kwargs) in cases.items():
        exc = _open_error(path, **kwargs)
        report[name] = {
            "path": path,
            "type": type(exc).__name__,
            "is_permission_error": isinstance(exc, PermissionError),
            "message": str(exc),
            "filename": getattr(exc, "filename", None),
        }
    report["left_behind"] = os.listdir(parent) + os.listdir(store_dir)
    return report


def _open_as_nobody(parent: str, store_dir: str) -> dict:
    """``_open_in_read_only_dirs`` in a child that has dropped root's privileges."""
    read_fd, write_fd = os.pipe()

    def child():
        os.close(read_fd)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        data = json.dumps(_open_in_read_only_dirs(parent, store_dir)).encode()
        os.write(write_fd, b"%08d" % len(data) + data)

    pid = fork_child(child)
    os.close(write_fd)
    try:
        header = wait_readable(read_fd, 8, timeout=30)
        assert len(header) == 8, "the child reported nothing"
        body = wait_readable(read_fd, int(header), timeout=30)
    finally:
        os.close(read_fd)
        code = wait_child(pid, timeout=30)
    assert code == 0, f"child exited with {code}"
    return json.loads(body)


def _writes_are_refused_after_chmod(tmp_path) -> bool:
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    os.chmod(probe_dir, 0o555)
    try:
        return _writes_are_refused(probe_dir)
    finally:
        os.chmod(probe_dir, 0o755)


def test_read_only_directories_raise_permission_error_naming_the_path(tmp_path):
    if not _writes_are_refused_after_chmod(tmp_path):
        # Root (or CAP_DAC_OVERRIDE) ignores the mode: run the check as
        # nobody, on root-owned 0o755 directories nobody can reach (pytest's
        # tmp_path lives under a 0o700 directory, so use the system temp dir).
        base = tempfile.mkdtemp(prefix="lmdb-object-store-ro-")
        try:
            os.chmod(base, 0o755)
            parent, store_dir = os.path.join(base, "parent"), os.path.join(base, "store")
            os.mkdir(parent, 0o755)
            os.mkdir(store_dir, 0o755)
            report = _open_as_nobody(parent, store_dir)
        finally:
            shutil.rmtree(base)
    else:
        parent, store_dir = str(tmp_path / "parent"), str(tmp_path / "store")
        os.mkdir(parent)
        os.mkdir(store_dir)
        os.chmod(parent, 0o555)
        os.chmod(store_dir, 0o555)
        try:
            report = _open_in_read_only_dirs(parent, store_dir)
        finally:
            os.chmod(parent, 0o755)
            os.chmod(store_dir, 0o755)

    assert report["refused"], "the directories were writable: the check would prove nothing"
    assert report["listable"]
    for name in ("new_dir", "new_file", "empty_dir"):
        case = report[name]
        assert case["is_permission_error"], case
        assert case["path"] in case["message"], case
        assert case["filename"] == case["path"], case
    assert report["left_behind"] == []
