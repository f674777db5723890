"""A store opened with writemap in several processes never has its data file
cut below what another process maps (docs/processes.md "Several processes with
writemap"), and opens that race another process's growth adopt it instead of
failing (docs/semantics.md "Map growth").

The process that could die (the writer) is always a child; it reports what
it saw as JSON on stdout.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmdb_object_store
from helpers import MiB, run_python, soak_rounds
from lmdb_object_store import LmdbObjectStore

# The byte of the data file that processes of this package lock while they
# open it with writemap or resize such a map (docs/processes.md).
GROWTH_LOCK_BYTE = 2**63 - 2


def child_env() -> dict:
    pkg_parent = str(Path(lmdb_object_store.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    return env


def value(i: int) -> bytes:
    return bytes([i % 251]) * 1000


SECOND_OPENER = """
import json, os, subprocess, sys
from lmdb_object_store import LmdbObjectStore

path, second_map = sys.argv[1], sys.argv[2]
data = os.path.join(path, "data.mdb")
value = lambda i: bytes([i % 251]) * 1000
store = LmdbObjectStore(path, writemap=True, map_size=2**20, batch_size=1_000_000)
store.put_many({b"a%06d" % i: value(i) for i in range(3000)})
report = {"grown": os.path.getsize(data), "map": store.info()["map_size"]}
# Another process opens the same store with writemap, reads, closes.
opts = "" if second_map == "default" else ", map_size=2**20"
other = (
    "import sys; from lmdb_object_store import LmdbObjectStore as S;"
    f"s = S(sys.argv[1], writemap=True{opts}); print(len(s), s.info()['map_size']); s.close()"
)
out = subprocess.run([sys.executable, "-c", other, path], check=True, timeout=60,
                     capture_output=True, text=True).stdout.split()
report["other_len"], report["other_map"] = int(out[0]), int(out[1])
report["after_other"] = os.path.getsize(data)
# This process writes far past what the other one asked to map.
store.put_many({b"b%06d" % i: value(i) for i in range(30000)})
report["close"] = store.close() is None
print(json.dumps(report))
"""


@pytest.mark.parametrize("second_map", ["default", "smaller"])
def test_a_second_writemap_process_never_cuts_the_data_file(tmp_path, second_map):
    path = str(tmp_path / "db")
    out = run_python(SECOND_OPENER, path, second_map, timeout=120)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["grown"] == report["map"] > 10 * MiB
    assert report["other_len"] == 3000
    # The other process mapped the whole file, and left it whole.
    assert report["other_map"] >= report["grown"]
    assert report["after_other"] == report["grown"]
    assert report["close"] is True
    with LmdbObjectStore(path, readonly=True) as store:
        assert len(store) == 33000
        found, missing = store.get_many([b"a%06d" % i for i in range(3000)])
        assert missing == [] and all(v == value(int(k[1:])) for k, v in found.items())
        found, missing = store.get_many([b"b%06d" % i for i in range(30000)])
        assert missing == [] and all(v == value(int(k[1:])) for k, v in found.items())


def _ofd_lock(fd: int, kind: int) -> None:
    # struct flock: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid.
    flock = struct.pack("hhqqi4x", kind, os.SEEK_SET, GROWTH_LOCK_BYTE, 1, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, flock)


WAITING_OPENER = """
import sys
from lmdb_object_store import LmdbObjectStore
print("ready", flush=True)
s = LmdbObjectStore(sys.argv[1], writemap=True)
print(s.info()["map_size"], flush=True)
s.close()
"""


def test_a_writemap_open_waits_for_a_growth_under_way(tmp_path):
    """The growth lock: a process that opens with writemap while another
    grows the file maps the grown size, never the size it saw before."""
    path = str(tmp_path / "db")
    with LmdbObjectStore(path, writemap=True, map_size=2 * MiB) as store:
        store[b"a"] = 1
    data = os.path.join(path, "data.mdb")
    assert os.path.getsize(data) == 2 * MiB
    fd = os.open(data, os.O_RDWR)
    try:
        _ofd_lock(fd, fcntl.F_WRLCK)  # as a growth in another process does
        proc = subprocess.Popen(
            [sys.executable, "-c", WAITING_OPENER, path],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.5)  # let it reach the lock; a slow start only weakens the test
            os.ftruncate(fd, 40 * MiB)  # the growth
            _ofd_lock(fd, fcntl.F_UNLCK)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert int(out.split()[0]) >= 40 * MiB
        assert os.path.getsize(data) == 40 * MiB
    finally:
        os.close(fd)


GROWING_WRITER = """
import os, sys, time
from lmdb_object_store import LmdbObjectStore
path, stop = sys.argv[1], sys.argv[2]
store = LmdbObjectStore(path, map_size=2**20, sync=False)
i = 0
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline:
    store.put_many({b"k%08d" % (i * 20 + j): b"x" * 100 for j in range(20)})
    if i == 0:
        print("ready", flush=True)
    i += 1
store.close()
print(i, flush=True)
"""


@pytest.mark.parametrize("readonly", [True, False], ids=["ro", "rw"])
def test_opens_racing_a_growing_writer_adopt_its_growth(tmp_path, rearm_watchdog, readonly):
    """Each commit of the writer extends the data past the map of an open
    that has just read the header (map_size=4096 maps only what is there):
    the open's first transaction meets MDB_MAP_RESIZED, and must adopt."""
    for round_ in range(soak_rounds(1)):
        rearm_watchdog()
        _race_opens_against_a_growing_writer(tmp_path / f"round{round_}", readonly)


def _race_opens_against_a_growing_writer(where: Path, readonly: bool) -> None:
    where.mkdir()
    path = str(where / "db")
    LmdbObjectStore(path).close()
    stop = str(where / "stop")
    writer = subprocess.Popen(
        [sys.executable, "-c", GROWING_WRITER, path, stop],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    failures = []
    try:
        assert writer.stdout.readline().strip() == "ready"
        for _ in range(1500):
            try:
                store = LmdbObjectStore(path, readonly=readonly, map_size=4096)
                len(store)
                store.close()
            except Exception as exc:  # collected, judged below
                failures.append(exc)
    finally:
        Path(stop).touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert int(out.split()[-1]) > 1
    assert failures == []
