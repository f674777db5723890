"""The command line (lmdb_object_store._cli, `python -m lmdb_object_store`): every
command, the key text form, dump and load, import from sqlitedict, shelve/dbm and
diskcache files, and the promise that read commands never change a store
(docs/usage.md "Command line" and its subsections)."""

from __future__ import annotations

import base64
import dbm.dumb
import decimal
import json
import os
import pickle
import re
import shelve
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import diskcache
import pytest
import sqlitedict
from hypothesis import given, settings
from hypothesis import strategies as st

import lmdb_object_store
from lmdb_object_store import LmdbObjectStore
from lmdb_object_store._cli import CliError, KeyText, main

REPO = Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(Path(lmdb_object_store.__file__).resolve().parent.parent)

COMMANDS = ["stat", "tables", "keys", "get", "count", "verify", "dump", "load", "import"]

ENTRIES: dict[bytes, object] = {
    b"user:ada": {"name": "Ada", "langs": ["python", "rust"]},
    b"user:grace": ("Grace", 1906),
    b"\x00\xff": b"raw\x00bytes",
    b"tab\there": "é",
    b"back\\slash": 3,
    "日本".encode(): None,
    b"line\nbreak": {1, 2},
    b"k" * 511: decimal.Decimal("1.5"),
    b"\xe9t\xe9": 2**100,
    b"\xe2\x80\x8bzero-width": [1.5, float("inf")],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def run_cli(*args, input: bytes | None = None, cwd=None, timeout: float = 60.0):
    """``python -m lmdb_object_store ARGS`` in a child; its CompletedProcess (bytes).
    Whatever the outcome, it never prints a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "lmdb_object_store", *map(os.fsencode, args)],
        input=input,
        capture_output=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


def cli(capsys, *args) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: (exit status, stdout, stderr)."""
    status = main([os.fspath(arg) for arg in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


def make_store(path, entries=ENTRIES, **kwargs) -> str:
    with LmdbObjectStore(str(path), **kwargs) as store:
        store.put_many(entries)
    return str(path)


def contents(path, **kwargs) -> dict[bytes, object]:
    with LmdbObjectStore(str(path), readonly=True, **kwargs) as store:
        return dict(store.items())


def last_txnid(path) -> int:
    with LmdbObjectStore(str(path), readonly=True) as store:
        return store.info()["last_txnid"]


def file_state(directory) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and mtime."""
    state = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            state[os.path.relpath(path, directory)] = (
                Path(path).read_bytes(),
                os.stat(path).st_mtime_ns,
            )
    return state


def age(*paths) -> None:
    """Set the mtime of ``paths`` an hour back, so that any write shows."""
    past = time.time() - 3600
    for path in paths:
        os.utime(path, (past, past))


@pytest.fixture
def demo(tmp_path) -> str:
    return make_store(tmp_path / "demo.lmdb")


# Help, usage, version


def test_help_lists_every_command(capsys):
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    assert out.startswith("usage: lmdb-object-store")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(capsys, command):
    status, out, _ = cli(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: lmdb-object-store {command}")
    assert "STORE" in out


def test_python_dash_m_names_itself_and_shows_the_version():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(b"usage: python -m lmdb_object_store")
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().split() == [
        "python",
        "-m",
        "lmdb_object_store",
        lmdb_object_store.__version__,
    ]


@pytest.mark.parametrize(
    "args, named",
    [
        ([], "COMMAND"),
        (["nope"], "nope"),
        (["keys"], "STORE"),
        (["keys", "x", "--limit", "-1"], "--limit"),
        (["keys", "x", "--limit", "many"], "--limit"),
        (["import", "a", "b"], "--from"),
        (["import", "--from", "redis", "a", "b"], "--from"),
    ],
)
def test_usage_errors_exit_2_naming_what_is_wrong(capsys, args, named):
    status, out, err = cli(capsys, *args)
    assert status == 2
    assert out == ""
    assert err.startswith("usage: ")
    assert named in err.splitlines()[-1]


def test_the_console_script_is_declared():
    pyproject = (REPO / "pyproject.toml").read_text()
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", pyproject, re.M | re.S)
    assert scripts, "no [project.scripts] table"
    assert re.search(
        r'^lmdb-object-store\s*=\s*"lmdb_object_store\._cli:main"\s*$', scripts.group(1), re.M
    )
    test_extra = re.search(r"^test\s*=\s*\[(.*?)\]", pyproject, re.M | re.S)
    assert test_extra
    for dependency in ("sqlitedict", "diskcache"):
        assert f'"{dependency}' in test_extra.group(1), dependency


# stat, keys, get, count


def test_stat(capsys, demo, tmp_path):
    status, out, _ = cli(capsys, "stat", demo)
    assert status == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["entries"].strip() == str(len(ENTRIES))
    assert fields["layout"].strip() == "directory"
    status, out, _ = cli(capsys, "stat", demo, "--json")
    assert status == 0
    stat = json.loads(out)
    assert stat["entries"] == len(ENTRIES)
    assert stat["data_file"] == os.path.join(demo, "data.mdb")
    assert stat["data_file_bytes"] == os.path.getsize(stat["data_file"])
    assert {"map_size", "page_size", "depth", "last_txnid", "max_readers"} <= set(stat)

    single = make_store(tmp_path / "single.mdb", {b"a": 1}, subdir=False)
    status, out, _ = cli(capsys, "stat", single, "--json")
    assert status == 0
    assert json.loads(out)["layout"] == "file"
    assert json.loads(out)["entries"] == 1


def test_keys_are_printed_in_order_one_a_line(capsys, demo):
    status, out, _ = cli(capsys, "keys", demo)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == len(ENTRIES)
    text = KeyText()
    assert [text.parse(line) for line in lines] == sorted(ENTRIES)
    assert "user:ada" in lines
    assert "tab\\there" in lines
    assert "back\\\\slash" in lines
    assert "line\\nbreak" in lines
    assert "\\x00\\xff" in lines
    assert "\\xe9t\\xe9" in lines
    assert "\\xe2\\x80\\x8bzero-width" in lines  # not printable: its bytes
    assert "日本" in lines


def test_keys_with_prefix_and_limit(capsys, demo):
    assert cli(capsys, "keys", demo, "--prefix", "user:")[1] == "user:ada\nuser:grace\n"
    assert cli(capsys, "keys", demo, "--prefix", "user:", "--limit", "1")[1] == "user:ada\n"
    assert cli(capsys, "keys", demo, "--limit", "0")[1] == ""
    assert cli(capsys, "keys", demo, "--prefix", "\\x00")[1] == "\\x00\\xff\n"
    assert cli(capsys, "keys", demo, "--prefix", "zzz") == (0, "", "")


def test_every_printed_key_gets_its_value(capsys, demo):
    for hex_option in ([], ["--hex"]):
        _, out, _ = cli(capsys, "keys", demo, *hex_option)
        for line in out.splitlines():
            status, value, err = cli(capsys, "get", demo, *hex_option, "--", line)
            assert status == 0, err
            key = bytes.fromhex(line) if hex_option else KeyText().parse(line)
            assert value == repr(ENTRIES[key]) + "\n"


def test_hex_keys(capsys, demo):
    status, out, _ = cli(capsys, "keys", demo, "--hex", "--prefix", "7573")
    assert (status, out) == (0, b"user:ada".hex() + "\n" + b"user:grace".hex() + "\n")
    assert cli(capsys, "get", demo, "--hex", "00ff")[1] == repr(b"raw\x00bytes") + "\n"
    status, _, err = cli(capsys, "get", demo, "--hex", "0xyz")
    assert status == 1
    assert "'0xyz' is not hexadecimal" in err


def test_key_encoding(capsys, tmp_path):
    path = make_store(tmp_path / "latin", {"é".encode("latin-1"): 1, "é".encode(): 2})
    status, out, _ = cli(capsys, "keys", path, "--key-encoding", "latin-1")
    assert status == 0
    assert out.splitlines() == ["Ã©", "é"]  # the UTF-8 key (first) read as Latin-1
    assert cli(capsys, "get", path, "--key-encoding", "latin-1", "é")[1] == "1\n"
    assert cli(capsys, "get", path, "é")[1] == "2\n"
    status, _, err = cli(capsys, "keys", path, "--key-encoding", "klingon")
    assert status == 1
    assert "--key-encoding: unknown encoding 'klingon'" in err
    status, _, err = cli(capsys, "keys", path, "--key-encoding", "base64")
    assert status == 1
    assert "not a text encoding" in err
    status, _, err = cli(capsys, "get", path, "--key-encoding", "ascii", "é")
    assert status == 1
    assert "key 'é' does not encode to ascii" in err


def test_key_escapes():
    text = KeyText()
    assert text.parse("a\\x00b") == b"a\x00b"
    assert text.parse("\\\\") == b"\\"
    assert text.parse("\\n\\r\\t") == b"\n\r\t"
    assert text.parse("\\xC3\\xa9") == "é".encode()
    assert text.parse("é\udcff") == "é".encode() + b"\xff"  # argv's surrogateescape
    for bad, escape in [("a\\q", "\\q"), ("\\x4", "\\x4"), ("\\xzz", "\\xzz"), ("end\\", "\\")]:
        with pytest.raises(CliError) as info:
            text.parse(bad, "--prefix")
        assert str(info.value).startswith(f"--prefix {bad!r}: unknown escape {escape!r}")


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=1, max_size=40)
    | st.text(min_size=1, max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
    encoding=st.sampled_from(["utf-8", "latin-1", "ascii", "utf-16", "cp1252", "shift_jis"]),
    stream=st.sampled_from([None, "utf-8", "ascii", "latin-1"]),
)
def test_every_key_prints_as_one_line_that_reads_back(key, encoding, stream):
    text = KeyText(encoding)
    shown = text.show(key, stream)
    assert text.parse(shown) == key
    assert shown.isprintable()
    if stream is not None:
        shown.encode(stream)


def test_a_key_given_as_raw_bytes_on_the_command_line(demo):
    proc = run_cli("get", demo, b"\xe9t\xe9")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == repr(2**100).encode() + b"\n"


def test_get_raw_writes_the_value_bytes_as_they_are(demo):
    proc = run_cli("get", demo, "--raw", "\\x00\\xff")
    assert (proc.returncode, proc.stdout) == (0, b"raw\x00bytes")
    proc = run_cli("get", demo, "--raw", "tab\\there")
    assert (proc.returncode, proc.stdout) == (0, "é".encode())
    proc = run_cli("get", demo, "--raw", "user:ada")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"key 'user:ada' is a dict: --raw writes only bytes and str values" in proc.stderr


def test_get_a_missing_key_or_an_undecodable_value(capsys, demo, tmp_path, raw_env):
    status, out, err = cli(capsys, "get", demo, "nope")
    assert (status, out) == (1, "")
    assert err == f"lmdb-object-store: error: no key 'nope' in {demo}\n"
    bad = make_store(tmp_path / "bad", {b"a": 1})
    env = raw_env(bad)
    with env.begin(write=True) as txn:
        txn.put(b"junk", b"not a pickle")
    env.close()
    proc = run_cli("get", bad, "junk")
    assert proc.returncode == 1
    assert b"the value of key 'junk' in" in proc.stderr
    assert b"does not decode: UnpicklingError" in proc.stderr


def test_count(capsys, demo):
    assert cli(capsys, "count", demo) == (0, f"{len(ENTRIES)}\n", "")
    assert cli(capsys, "count", demo, "--prefix", "user:") == (0, "2\n", "")
    assert cli(capsys, "count", demo, "--prefix", "x") == (0, "0\n", "")


# Read commands never change a store


def _read_commands(store, tmp_path):
    return [
        ["stat", store],
        ["stat", store, "--json"],
        ["keys", store],
        ["keys", store, "--prefix", "user:", "--limit", "1"],
        ["get", store, "user:ada"],
        ["get", store, "--raw", "\\x00\\xff"],
        ["count", store],
        ["count", store, "--prefix", "user:"],
        ["verify", store],
        ["dump", store],
        ["dump", store, str(tmp_path / "out.dump")],
    ]


@pytest.mark.parametrize("layout", ["directory", "file", "data.mdb of a directory"])
def test_read_commands_never_change_the_store(tmp_path, layout):
    """The data file keeps its bytes and its mtime; no file appears or goes (the lock
    file, there before, takes a reader slot: that is LMDB's reader table at work)."""
    if layout == "file":
        (tmp_path / "folder").mkdir()
        store = make_store(tmp_path / "folder" / "single.mdb", subdir=False)
        data_file, folder = store, tmp_path / "folder"
    else:
        store = make_store(tmp_path / "store")
        data_file, folder = os.path.join(store, "data.mdb"), store
        if layout != "directory":
            store = data_file  # opened as the directory store it belongs to
    age(data_file)
    before = os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()
    names = sorted(os.listdir(folder))
    for args in _read_commands(store, tmp_path / "elsewhere"):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        proc = run_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert (os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()) == before, args
        assert sorted(os.listdir(folder)) == names, args


@pytest.mark.parametrize("command", ["stat", "keys", "get", "count", "verify", "dump"])
def test_read_commands_on_what_is_not_a_store(capsys, tmp_path, command):
    """A missing path is an error, not a new store; so are a directory without a data
    file, a file that is not LMDB, and an empty data file (which a writable open would
    turn into a new store)."""
    extra = ["key"] if command == "get" else []
    missing = tmp_path / "missing"
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    not_lmdb = tmp_path / "notes.txt"
    not_lmdb.write_text("hello\n" * 1000)
    empty_data = tmp_path / "empty-data"
    empty_data.mkdir()
    (empty_data / "data.mdb").write_bytes(b"")
    before = file_state(tmp_path)
    cases = [
        (missing, "no store at {}: it does not exist"),
        (empty_dir, "{} is a directory without a data.mdb: not a store"),
        (not_lmdb, "File is not an LMDB file"),
        (empty_data, "its data file {}/data.mdb is empty (0 bytes)"),
    ]
    for path, message in cases:
        status, out, err = cli(capsys, command, path, *extra)
        assert (status, out) == (1, ""), path
        assert err.startswith("lmdb-object-store: error: ")
        assert err.count("\n") == 1, err
        assert message.format(path) in err
        assert str(path) in err
    assert not missing.exists()
    assert file_state(tmp_path) == before


# verify


def test_verify_a_sound_store(capsys, demo):
    assert cli(capsys, "verify", demo) == (0, f"{len(ENTRIES)} entries checked, 0 failed\n", "")


def test_verify_reports_every_value_that_does_not_decode(tmp_path, raw_env):
    """Two bad values among 2,500 good ones (three get_many batches): both are
    reported with why, nothing else is, the exit status is 1, nothing changes."""
    good = {b"good:%05d" % i: {"n": i} for i in range(2500)}
    store = make_store(tmp_path / "store", good)
    env = raw_env(store)
    with env.begin(write=True) as txn:
        txn.put(b"good:01000x", b"not a pickle")
        # A pickle of a class that no longer exists.
        txn.put(b"\xffgone", b"cno_such_module_\nC\n.")
    env.close()
    data_file = os.path.join(store, "data.mdb")
    before = Path(data_file).read_bytes()
    proc = run_cli("verify", store)
    assert proc.returncode == 1
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("good:01000x: UnpicklingError: ")
    assert lines[1] == "\\xffgone: ModuleNotFoundError: No module named 'no_such_module_'"
    assert lines[2] == "2502 entries checked, 2 failed"
    assert proc.stderr == b""
    assert Path(data_file).read_bytes() == before


# dump and load


def _dump_lines(path) -> list[bytes]:
    return Path(path).read_bytes().splitlines(keepends=True)


def test_dump_format(demo, tmp_path):
    out = tmp_path / "demo.dump"
    proc = run_cli("dump", demo, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr == f"dumped {len(ENTRIES)} entries to {out}\n".encode()
    lines = _dump_lines(out)
    assert all(line.endswith(b"\n") for line in lines)
    records = [json.loads(line) for line in lines]
    assert records[0] == {"format": "lmdb-object-store dump", "version": 1}
    assert records[-1] == {"end": True, "entries": len(ENTRIES)}
    keys = []
    for record in records[1:-1]:
        assert set(record) in ({"key", "pickle"}, {"key_hex", "pickle"})
        key = record["key"].encode() if "key" in record else bytes.fromhex(record["key_hex"])
        data = base64.b64decode(record["pickle"], validate=True)
        assert data[:2] == b"\x80\x05"  # protocol 5, whatever Python wrote it
        assert pickle.loads(data) == ENTRIES[key]
        keys.append(key)
    assert keys == sorted(ENTRIES)
    assert {"key": "日本", "pickle": base64.b64encode(pickle.dumps(None, 5)).decode()} in records
    assert {
        "key_hex": "e974e9",
        "pickle": base64.b64encode(pickle.dumps(2**100, 5)).decode(),
    } in records
    assert "日本".encode() in Path(out).read_bytes()  # readable, not \u-escaped
    # To stdout: the same bytes.
    assert run_cli("dump", demo).stdout == Path(out).read_bytes()


def test_a_dump_loaded_into_a_new_store_gives_identical_keys_and_values(demo, tmp_path):
    dump = tmp_path / "demo.dump"
    assert run_cli("dump", demo, dump).returncode == 0
    proc = run_cli("load", dump, tmp_path / "copy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"loaded {len(ENTRIES)} entries into {tmp_path / 'copy'}\n".encode()
    copy = contents(tmp_path / "copy")
    assert copy == ENTRIES
    assert list(copy) == sorted(ENTRIES)
    for key, value in copy.items():
        assert type(value) is type(ENTRIES[key])
    # Through a pipe, into a single-file store.
    piped = run_cli("dump", demo).stdout
    single = tmp_path / "single.mdb"
    make_store(single, {b"other": 1}, subdir=False)
    assert run_cli("load", "-", single, input=piped).returncode == 0
    assert contents(single, subdir=False) == {**ENTRIES, b"other": 1}


def test_load_writes_in_one_transaction_over_what_is_there(capsys, demo, tmp_path):
    dump = tmp_path / "demo.dump"
    assert run_cli("dump", demo, dump).returncode == 0
    target = make_store(tmp_path / "target", {b"user:ada": "old", b"zzz": "kept"})
    before = last_txnid(target)
    status, _, err = cli(capsys, "load", dump, target)
    assert status == 0, err
    assert last_txnid(target) == before + 1
    assert contents(target) == {**ENTRIES, b"zzz": "kept"}


def _entry(key: bytes, value: object) -> bytes:
    record = {"key_hex": key.hex(), "pickle": base64.b64encode(pickle.dumps(value)).decode()}
    return json.dumps(record).encode() + b"\n"


DAMAGES = {
    # name: (change to the dump's lines, the line reported, words of the message)
    "not JSON": (lambda ls: ls[:2] + [b'{"key": "a", \n'] + ls[3:], 3, "not a JSON record"),
    "not UTF-8": (
        lambda ls: ls[:1] + [b'{"key": "\xff", "pickle": ""}\n'] + ls[2:],
        2,
        "not UTF-8",
    ),
    "a list": (lambda ls: ls[:4] + [b"[1, 2]\n"] + ls[5:], 5, "a JSON list, not a record"),
    "bad base64": (
        lambda ls: ls[:2] + [b'{"key": "a", "pickle": "!!!"}\n'] + ls[3:],
        3,
        "the pickle of key 'a' is not base64",
    ),
    "not a pickle": (
        lambda ls: ls[:2] + [b'{"key": "a", "pickle": "bm90IGEgcGlja2xl"}\n'] + ls[3:],
        3,
        "the value of key 'a' does not unpickle",
    ),
    "missing pickle": (lambda ls: ls[:3] + [b'{"key": "a"}\n'] + ls[4:], 4, "this one has ['key']"),
    "extra field": (
        lambda ls: ls[:3] + [ls[3][:-2] + b', "x": 1}\n'] + ls[4:],
        4,
        "this one has ['key', 'pickle', 'x']",
    ),
    "key too long": (lambda ls: ls[:2] + [_entry(b"k" * 512, 1)] + ls[3:], 3, "is 512 bytes"),
    "empty key": (
        lambda ls: ls[:2] + [b'{"key": "", "pickle": "gAVLAS4="}\n'] + ls[3:],
        3,
        "is 0 bytes",
    ),
    "no header": (lambda ls: ls[1:], 1, "not the header of a dump"),
    "newer version": (
        lambda ls: [b'{"format": "lmdb-object-store dump", "version": 2}\n'] + ls[1:],
        1,
        "format version 2",
    ),
    "cut at a line end": (
        lambda ls: ls[:-1],
        None,
        "without its end record: the dump is incomplete",
    ),
    "cut inside a line": (lambda ls: ls[:5] + [ls[5][:20]], 6, "not a JSON record"),
    "a line lost": (
        lambda ls: ls[:3] + ls[4:],
        -1,
        "the end record says 10 entries, the dump holds 9",
    ),
    "a line after the end": (lambda ls: ls + [ls[2]], -1, "a line after the end record"),
    "empty": (lambda ls: [], None, "is empty: not a dump"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("target", ["new", "existing"])
def test_a_damaged_dump_is_reported_by_line_and_nothing_is_written(
    capsys, demo, tmp_path, damage, target
):
    dump = tmp_path / "demo.dump"
    assert cli(capsys, "dump", demo, dump)[0] == 0
    change, line, words = DAMAGES[damage]
    lines = change(_dump_lines(dump))
    dump.write_bytes(b"".join(lines))
    destination = tmp_path / "target"
    if target == "existing":
        make_store(destination, {b"user:ada": "old"})
    before = file_state(tmp_path)
    status, _, err = cli(capsys, "load", dump, destination)
    assert status == 1
    assert err.count("\n") == 1, err
    if line is not None:
        number = line if line > 0 else len(lines)
        assert f"{dump}, line {number}: " in err, err
    assert words in err, err
    if target == "new":
        assert not destination.exists()
    else:
        assert contents(destination) == {b"user:ada": "old"}
    changed = {name for name, state in file_state(tmp_path).items() if before.get(name) != state}
    assert changed <= {"target/lock.mdb"}, changed


def test_a_dump_that_fails_leaves_no_file(tmp_path, raw_env):
    store = make_store(tmp_path / "store", {b"a": 1, b"c": 3})
    env = raw_env(store)
    with env.begin(write=True) as txn:
        txn.put(b"b", b"not a pickle")
    env.close()
    out = tmp_path / "out.dump"
    proc = run_cli("dump", store, out)
    assert proc.returncode == 1
    assert b"Failed to unpickle DB key 'b'" in proc.stderr
    assert b"verify lists every such value" in proc.stderr
    assert not out.exists()
    out.write_bytes(b"an older dump\n")
    assert run_cli("dump", store, out).returncode == 1
    assert out.read_bytes() == b"an older dump\n"
    assert sorted(os.listdir(tmp_path)) == ["out.dump", "store"]
    proc = run_cli("dump", store, os.path.join(store, "data.mdb"))
    assert proc.returncode == 1
    assert b"is a file of the store" in proc.stderr


def test_write_commands_refuse_a_directory_that_is_not_a_store(capsys, demo, tmp_path):
    dump = tmp_path / "demo.dump"
    assert run_cli("dump", demo, dump).returncode == 0
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    status, _, err = cli(capsys, "load", dump, folder)
    assert status == 1
    assert f"{folder} is a directory that holds other files and no data.mdb" in err
    assert os.listdir(folder) == ["notes.txt"]
    # An empty directory becomes the store.
    (tmp_path / "empty").mkdir()
    assert cli(capsys, "load", dump, tmp_path / "empty")[0] == 0
    assert contents(tmp_path / "empty") == ENTRIES


# import


VALUES: dict[str, object] = {
    "user:ada": {"name": "Ada"},
    "list": [1, 2, 3],
    "bytes": b"\x00\x01",
    "text": "naïve",
    "number": 42,
    "set": {1, 2},
}


def _encoded(values: dict[str, object]) -> dict[bytes, object]:
    return {key.encode(): value for key, value in values.items()}


def test_import_sqlitedict(capsys, tmp_path):
    source = tmp_path / "cache.sqlite"
    with sqlitedict.SqliteDict(str(source), autocommit=True) as data:
        data.update(VALUES)
    with sqlitedict.SqliteDict(str(source), tablename='other "one"', autocommit=True) as data:
        data["x"] = ("other", 1)
    before = file_state(tmp_path)
    status, _, err = cli(capsys, "import", "--from", "sqlitedict", source, tmp_path / "new")
    assert status == 0, err
    assert err == f"imported {len(VALUES)} entries from {source} into {tmp_path / 'new'}\n"
    assert contents(tmp_path / "new") == _encoded(VALUES)
    before_txn = last_txnid(tmp_path / "new")
    argv = ["import", "--from", "sqlitedict", "--table", 'other "one"', source, tmp_path / "new"]
    assert cli(capsys, *argv)[0] == 0
    assert last_txnid(tmp_path / "new") == before_txn + 1
    assert contents(tmp_path / "new") == {**_encoded(VALUES), b"x": ("other", 1)}
    after = file_state(tmp_path)
    assert {name: after[name] for name in before} == before  # the source as it was


def test_import_shelve_and_dbm(capsys, tmp_path):
    # shelve.open picks this Python's default dbm; a dbm.dumb shelf is the same to import.
    with shelve.open(str(tmp_path / "default")) as shelf:
        shelf.update(VALUES)
    with shelve.Shelf(dbm.dumb.open(str(tmp_path / "dumb"), "c")) as shelf:
        shelf.update(VALUES)
    with dbm.dumb.open(str(tmp_path / "plain"), "c") as plain:
        plain[b"a"] = b"\x00raw"
        plain["é"] = "text"
    before = file_state(tmp_path)
    for name in ("default", "dumb"):
        argv = ["import", "--from", "shelve", tmp_path / name, tmp_path / f"{name}.lmdb"]
        status, _, err = cli(capsys, *argv)
        assert status == 0, err
        assert contents(tmp_path / f"{name}.lmdb") == _encoded(VALUES)
    argv = ["import", "--from", "dbm", tmp_path / "plain", tmp_path / "plain.lmdb"]
    assert cli(capsys, *argv)[0] == 0
    assert contents(tmp_path / "plain.lmdb") == {b"a": b"\x00raw", "é".encode(): b"text"}
    after = file_state(tmp_path)
    assert {name: after[name] for name in before} == before


def test_import_diskcache(capsys, tmp_path):
    big_bytes, big_text, big_list = b"\x01" * 100_000, "t" * 100_000, list(range(50_000))
    _diskcache_dir(tmp_path / "cache")
    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        cache["pi"] = 3.25
        cache[b"bytes key"] = "bytes keys stay bytes"
        cache["big bytes"] = big_bytes  # each of these three in a file of its own
        cache["big text"] = big_text
        cache["big list"] = big_list
        cache.set("expired", 1, expire=0.001)
    with diskcache.FanoutCache(str(tmp_path / "fanout"), shards=3) as fanout:
        for i in range(20):
            fanout[f"k{i}"] = i
    time.sleep(0.01)
    before = file_state(tmp_path)
    names = sorted(os.listdir(tmp_path / "cache"))
    argv = ["import", "--from", "diskcache", tmp_path / "cache", tmp_path / "cache.lmdb"]
    status, _, err = cli(capsys, *argv)
    assert status == 0, err
    assert contents(tmp_path / "cache.lmdb") == {
        **_encoded(VALUES),
        b"pi": 3.25,
        b"bytes key": "bytes keys stay bytes",
        b"big bytes": big_bytes,
        b"big text": big_text,
        b"big list": big_list,
    }
    argv = ["import", "--from", "diskcache", tmp_path / "fanout", tmp_path / "fanout.lmdb"]
    assert cli(capsys, *argv)[0] == 0
    assert contents(tmp_path / "fanout.lmdb") == {f"k{i}".encode(): i for i in range(20)}
    after = file_state(tmp_path)
    assert {name: after[name] for name in before} == before
    assert sorted(os.listdir(tmp_path / "cache")) == names  # no -wal or -shm left behind


def test_import_str_keys_use_the_key_encoding(capsys, tmp_path):
    with shelve.Shelf(dbm.dumb.open(str(tmp_path / "shelf"), "c")) as shelf:
        shelf["x"] = 1
    with sqlitedict.SqliteDict(str(tmp_path / "d.sqlite"), autocommit=True) as data:
        data["é"] = 1
    argv = ["--key-encoding", "latin-1", "--from", "sqlitedict", tmp_path / "d.sqlite"]
    assert cli(capsys, "import", *argv, tmp_path / "latin")[0] == 0
    assert contents(tmp_path / "latin") == {b"\xe9": 1}
    argv = ["--key-encoding", "ascii", "--from", "sqlitedict", tmp_path / "d.sqlite"]
    status, _, err = cli(capsys, "import", *argv, tmp_path / "ascii")
    assert status == 1
    assert "key 'é' does not encode to ascii" in err
    assert not (tmp_path / "ascii").exists()


def _sqlitedict_file(path):
    with sqlitedict.SqliteDict(str(path), autocommit=True) as data:
        data.update(VALUES)
    return path


def _shelve_file(path):
    with shelve.Shelf(dbm.dumb.open(str(path), "c")) as shelf:
        shelf.update(VALUES)
    return path


def _diskcache_dir(path):
    with diskcache.Cache(str(path)) as cache:
        for key, value in VALUES.items():
            cache[key] = value
    return path


def _text_file(path):
    path.write_text("just text\n" * 100)
    return path


def _directory(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


WRONG_SOURCES = [
    # (--from, what the source is, words of the message)
    ("sqlitedict", _text_file, "is not an SQLite database, so not a sqlitedict file"),
    ("sqlitedict", lambda p: _shelve_file(p).with_suffix(".dat"), "is not an SQLite database"),
    ("sqlitedict", _directory, "is not a file: a sqlitedict file is an SQLite file"),
    ("sqlitedict", lambda p: p, "does not exist"),
    ("sqlitedict", lambda p: _diskcache_dir(p) / "cache.db", "has no table 'unnamed'"),
    ("shelve", _text_file, "is not a shelve of a kind this Python knows"),
    ("shelve", _sqlitedict_file, "is not a shelve of a kind this Python knows"),
    ("shelve", lambda p: p, "does not exist (nor"),
    ("dbm", _directory, "cannot be read as a dbm file"),
    ("diskcache", _text_file, "is not a directory: a diskcache is a directory with a cache.db"),
    ("diskcache", _directory, "has no cache.db: not a diskcache directory"),
    ("diskcache", lambda p: p, "does not exist"),
]


@pytest.mark.parametrize("kind, make, words", WRONG_SOURCES)
def test_import_of_a_missing_or_wrong_kind_source_writes_nothing(
    capsys, tmp_path, kind, make, words
):
    source = make(tmp_path / "source")
    before = file_state(tmp_path)
    status, _, err = cli(capsys, "import", "--from", kind, source, tmp_path / "new")
    assert status == 1
    assert err.count("\n") == 1, err
    assert words in err, err
    assert str(source) in err
    assert not (tmp_path / "new").exists()
    assert file_state(tmp_path) == before


def _damage_sqlitedict(path):
    _sqlitedict_file(path)
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO unnamed VALUES ('broken', x'00112233')")
    connection.close()
    return "the value of key 'broken' does not unpickle"


def _damage_shelve(path):
    _shelve_file(path)
    with dbm.dumb.open(str(path), "w") as database:
        database[b"broken"] = b"\x80\x05not a pickle"
    return "the value of key b'broken' does not unpickle"


def _damage_diskcache(path):
    _diskcache_dir(path)
    with diskcache.Cache(str(path)) as cache:
        cache["lost"] = b"x" * 100_000
    with sqlite3.connect(path / "cache.db") as connection:
        query = "SELECT filename FROM Cache WHERE key = 'lost'"
        (filename,) = connection.execute(query).fetchone()
    connection.close()
    os.remove(path / filename)
    return "the value of key 'lost' is kept in"


def _diskcache_with_an_int_key(path):
    _diskcache_dir(path)
    with diskcache.Cache(str(path)) as cache:
        cache[7] = "seven"
    return "key 7 is a int; only str and bytes keys can be imported"


def _shelve_with_a_long_key(path):
    _shelve_file(path)
    with shelve.Shelf(dbm.dumb.open(str(path), "w")) as shelf:
        shelf["k" * 600] = 1
    return "is 600 bytes; LMDB keys are 1 to 511 bytes"


DAMAGED_SOURCES = {
    "sqlitedict": ("sqlitedict", _damage_sqlitedict),
    "shelve": ("shelve", _damage_shelve),
    "diskcache": ("diskcache", _damage_diskcache),
    "diskcache int key": ("diskcache", _diskcache_with_an_int_key),
    "shelve long key": ("shelve", _shelve_with_a_long_key),
}


@pytest.mark.parametrize("damage", list(DAMAGED_SOURCES))
@pytest.mark.parametrize("target", ["new", "existing"])
def test_import_of_a_damaged_source_reports_the_key_and_writes_nothing(
    capsys, tmp_path, damage, target
):
    kind, make = DAMAGED_SOURCES[damage]
    source = tmp_path / "source"
    words = make(source)
    destination = tmp_path / "target"
    if target == "existing":
        make_store(destination, {b"user:ada": "old"})
    status, _, err = cli(capsys, "import", "--from", kind, source, destination)
    assert status == 1
    assert err.count("\n") == 1, err
    assert words in err, err
    if target == "new":
        assert not destination.exists()
    else:
        assert contents(destination) == {b"user:ada": "old"}


def test_table_is_an_option_of_sqlitedict_only(capsys, tmp_path):
    source = _shelve_file(tmp_path / "shelf")
    status, _, err = cli(
        capsys, "import", "--from", "shelve", "--table", "t", source, tmp_path / "x"
    )
    assert status == 1
    assert "--table is an option of --from sqlitedict, not of --from shelve" in err
    assert not (tmp_path / "x").exists()


# copy


def test_help_of_copy(capsys):
    status, out, _ = cli(capsys, "--help")
    assert status == 0 and re.search(r"^\s+copy\s+\S", out, re.MULTILINE)
    status, out, _ = cli(capsys, "copy", "--help")
    assert status == 0
    assert out.startswith("usage: lmdb-object-store copy [-h] [--compact | --no-compact]")
    assert "STORE DEST" in out and "read-only" in out


@pytest.mark.parametrize("compact", [[], ["--compact"], ["--no-compact"]], ids=str)
@pytest.mark.parametrize("layout", ["directory", "file"])
def test_copy_writes_a_store_with_the_same_entries(capsys, tmp_path, layout, compact):
    subdir = layout == "directory"
    store = make_store(tmp_path / "src", subdir=subdir)
    dest = tmp_path / "backup"
    status, out, err = cli(capsys, "copy", *compact, store, dest)
    assert (status, out) == (0, "")
    data_file = dest / "data.mdb" if subdir else dest
    how = "as it is" if compact == ["--no-compact"] else "compacted"
    assert err == (
        f"copied {store} to {dest} ({how}, a {layout} of {data_file.stat().st_size} bytes)\n"
    )
    assert dest.is_dir() == subdir
    assert contents(dest, subdir=subdir) == ENTRIES


def test_copy_compacts_by_default(capsys, tmp_path):
    store = make_store(tmp_path / "src", {b"k%05d" % i: b"v" * 4000 for i in range(2000)})
    with LmdbObjectStore(store) as writable:
        for i in range(1900):
            del writable[b"k%05d" % i]
    assert cli(capsys, "copy", store, tmp_path / "compacted")[0] == 0
    assert cli(capsys, "copy", "--no-compact", store, tmp_path / "plain")[0] == 0
    compacted = (tmp_path / "compacted" / "data.mdb").stat().st_size
    plain = (tmp_path / "plain" / "data.mdb").stat().st_size
    assert compacted * 5 < plain
    assert contents(tmp_path / "compacted") == contents(tmp_path / "plain")
    assert len(contents(tmp_path / "plain")) == 100


@pytest.mark.parametrize("layout", ["directory", "file"])
def test_copy_never_changes_the_source(tmp_path, layout):
    folder = tmp_path / "folder"
    folder.mkdir()
    if layout == "file":
        store = make_store(folder / "single.mdb", subdir=False)
        data_file = store
    else:
        store = make_store(folder / "store")
        data_file = os.path.join(store, "data.mdb")
    age(data_file)
    before = os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()
    names = sorted(os.listdir(folder))
    proc = run_cli("copy", store, tmp_path / "backup")
    assert proc.returncode == 0, proc.stderr
    assert (os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()) == before
    assert sorted(os.listdir(folder)) == names


def test_copy_to_a_path_that_exists_writes_nothing(capsys, demo, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    before = file_state(tmp_path)
    for dest in (taken, empty, Path(demo), taken / "mine.txt"):
        status, out, err = cli(capsys, "copy", demo, dest)
        assert (status, out) == (1, "")
        assert err == (
            f"lmdb-object-store: error: {dest} already exists: copy never replaces anything;"
            " name a new path\n"
        )
    assert file_state(tmp_path) == before


def test_copy_failures_are_one_line_naming_the_path(capsys, tmp_path):
    missing = tmp_path / "missing"
    status, out, err = cli(capsys, "copy", missing, tmp_path / "backup")
    assert (status, out) == (1, "")
    assert err == f"lmdb-object-store: error: no store at {missing}: it does not exist\n"
    demo = make_store(tmp_path / "demo")
    no_parent = tmp_path / "no" / "backup"
    status, out, err = cli(capsys, "copy", demo, no_parent)
    assert (status, out) == (1, "")
    assert err == (
        f"lmdb-object-store: error: cannot copy {demo} to {no_parent}: No such file or directory\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["demo"]


# Errors and output


def test_a_store_error_is_one_line(capsys, tmp_path):
    not_lmdb = tmp_path / "notes.txt"
    not_lmdb.write_text("hello\n" * 1000)
    dump = tmp_path / "d.dump"
    dump.write_bytes(
        b'{"format": "lmdb-object-store dump", "version": 1}\n{"end": true, "entries": 0}\n'
    )
    status, out, err = cli(capsys, "load", dump, not_lmdb)
    assert (status, out) == (1, "")
    assert err.startswith("lmdb-object-store: error: Error: ")
    assert str(not_lmdb) in err
    assert "File is not an LMDB file" in err
    assert not_lmdb.read_text() == "hello\n" * 1000


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    store = make_store(tmp_path / "store", {b"key:%06d" % i: i for i in range(30_000)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmdb_object_store", "keys", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout.readline() == b"key:000000\n"
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert err == b"", err.decode()
    assert proc.returncode == 1


# The documentation's examples


def _doc_blocks() -> list[tuple[str, str]]:
    text = (REPO / "docs" / "usage.md").read_text()
    section = re.search(r"^## Command line\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "no 'Command line' section in docs/usage.md"
    return re.findall(r"^```(\w*)\n(.*?)^```", section.group(1), re.M | re.S)


def test_the_command_line_examples_of_usage_md_run_as_written(tmp_path):
    """Every block of the section runs, in order, in one directory: python blocks as
    scripts, console blocks as commands whose output (stdout and stderr) must be the
    lines that follow them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "lmdb-object-store"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'import sys; from lmdb_object_store._cli import main; sys.exit(main())' \"$@\"\n"
    )
    script.chmod(0o755)
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    blocks = _doc_blocks()
    assert [kind for kind, _ in blocks].count("console") >= 2
    for kind, body in blocks:
        if kind == "python":
            subprocess.run([sys.executable, "-c", body], cwd=work, env=env, check=True, timeout=60)
            continue
        assert kind == "console", kind
        commands = re.split(r"^\$ ", body, flags=re.M)[1:]
        assert commands, body
        for chunk in commands:
            command, _, expected = chunk.partition("\n")
            proc = subprocess.run(
                ["bash", "-c", command + " 2>&1"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.stdout == expected, command


# Named tables: the tables command and --table


@pytest.fixture
def tabled(tmp_path) -> str:
    """A store whose file holds two named tables (and so no main-store entries)."""
    path = str(tmp_path / "tabled")
    make_store(path, {b"k": "in users", b"user:ada": 1}, table="users")
    make_store(path, {b"k": "in orders"}, table="orders")
    return path


def test_tables_lists_the_named_tables(capsys, tabled, demo, tmp_path):
    assert cli(capsys, "tables", tabled) == (0, "orders\nusers\n", "")
    assert cli(capsys, "tables", demo) == (0, "", "")
    status, _, err = cli(capsys, "tables", tmp_path / "missing")
    assert status == 1 and "does not exist" in err
    assert not (tmp_path / "missing").exists()


def test_table_option_of_the_read_commands(capsys, tabled, tmp_path):
    assert cli(capsys, "keys", tabled, "--table", "users") == (0, "k\nuser:ada\n", "")
    assert cli(capsys, "get", tabled, "k", "--table", "orders") == (0, "'in orders'\n", "")
    assert cli(capsys, "count", tabled, "--table", "users") == (0, "2\n", "")
    assert cli(capsys, "count", tabled, "--table", "users", "--prefix", "user:")[1] == "1\n"
    status, out, _ = cli(capsys, "stat", tabled, "--table", "users", "--json")
    assert status == 0
    stat = json.loads(out)
    assert (stat["table"], stat["entries"]) == ("users", 2)
    status, _, _ = cli(capsys, "verify", tabled, "--table", "orders")
    assert status == 0
    dump = tmp_path / "users.dump"
    assert cli(capsys, "dump", tabled, str(dump), "--table", "users")[0] == 0
    target = str(tmp_path / "target")
    assert cli(capsys, "load", str(dump), target, "--table", "copied")[0] == 0
    assert lmdb_object_store.tables(target) == ["copied"]
    assert contents(target, table="copied") == {b"k": "in users", b"user:ada": 1}


def test_commands_on_a_file_of_tables_without_table_name_them(capsys, tabled):
    for command in (["keys", tabled], ["count", tabled], ["stat", tabled]):
        status, out, err = cli(capsys, *command)
        assert status == 1 and out == ""
        assert "--table" in err and "orders, users" in err, err


def test_a_missing_table_is_an_error_and_is_not_created(capsys, tabled):
    status, _, err = cli(capsys, "keys", tabled, "--table", "nope")
    assert status == 1 and "has no table 'nope'" in err
    assert lmdb_object_store.tables(tabled) == ["orders", "users"]


def test_copy_of_a_file_of_tables_copies_every_table(capsys, tabled, tmp_path):
    dest = tmp_path / "copy"
    status, _, _ = cli(capsys, "copy", tabled, dest)
    assert status == 0
    assert lmdb_object_store.tables(dest) == ["orders", "users"]
    assert contents(dest, table="orders") == {b"k": "in orders"}


def test_table_commands_never_change_the_store(tabled, tmp_path):
    data_file = os.path.join(tabled, "data.mdb")
    age(data_file)
    before = os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()
    names = sorted(os.listdir(tabled))
    (tmp_path / "elsewhere").mkdir()
    for args in [
        ["tables", tabled],
        ["stat", tabled, "--table", "users"],
        ["keys", tabled, "--table", "users"],
        ["get", tabled, "k", "--table", "users"],
        ["count", tabled, "--table", "orders"],
        ["verify", tabled, "--table", "users"],
        ["dump", tabled, str(tmp_path / "elsewhere" / "d"), "--table", "users"],
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert (os.stat(data_file).st_mtime_ns, Path(data_file).read_bytes()) == before, args
        assert sorted(os.listdir(tabled)) == names, args


# --------------------------------------------------------------------------
# Serializers and compression
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_read_commands_read_compressed_values(tmp_path, compression):
    big = {"text": "a line that repeats\n" * 2000}
    path = make_store(tmp_path / "db", {b"big": big, b"small": 1}, compression=compression)
    proc = run_cli("get", path, "big")
    assert proc.returncode == 0 and eval(proc.stdout) == big  # noqa: S307 (our own repr)
    proc = run_cli("verify", path)
    assert proc.returncode == 0, proc.stdout
    dumped = run_cli("dump", path)
    assert dumped.returncode == 0
    target = str(tmp_path / "copy")
    assert run_cli("load", "-", target, input=dumped.stdout).returncode == 0
    assert contents(target) == {b"big": big, b"small": 1}


def test_serializer_option_of_the_commands_that_decode(tmp_path):
    values = {b"a": {"x": [1, 2]}, b"b": "text"}
    path = make_store(tmp_path / "db", values, serializer="json")
    proc = run_cli("verify", path)  # read as pickles: every value fails
    assert proc.returncode == 1 and b"2 failed" in proc.stdout
    proc = run_cli("verify", path, "--serializer", "json")
    assert proc.returncode == 0 and b"2 entries checked, 0 failed" in proc.stdout
    proc = run_cli("get", path, "a", "--serializer", "json")
    assert proc.returncode == 0 and proc.stdout.strip() == repr(values[b"a"]).encode()
    dumped = run_cli("dump", path, "--serializer", "json")
    assert dumped.returncode == 0
    target = str(tmp_path / "copy")
    assert run_cli("load", "-", target, input=dumped.stdout).returncode == 0
    assert contents(target) == values
    bad = run_cli("get", path, "a", "--serializer", "yaml")
    assert bad.returncode == 2 and b"--serializer" in bad.stderr


def test_verify_with_the_safe_serializer_reports_instead_of_running(tmp_path, raw_env):
    path = make_store(tmp_path / "db", {b"ok": [1, 2]})
    marker = tmp_path / "ran"
    env = raw_env(path)
    with env.begin(write=True) as txn:
        payload = (os.system, (f"touch {marker}",))

        class Boom:
            def __reduce__(self):
                return payload

        txn.put(b"evil", pickle.dumps(Boom()))
    env.close()
    proc = run_cli("verify", path, "--serializer", "safe")
    assert proc.returncode == 1
    assert b"evil" in proc.stdout and b"UnsafeValueError" in proc.stdout
    assert b"1 failed" in proc.stdout
    assert not marker.exists()
