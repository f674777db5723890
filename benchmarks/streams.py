"""Streamed large values: put_file and open() against plain Python file I/O
and against put/get of the whole value as bytes, in MB/s and peak RSS.

    python benchmarks/streams.py                 # 1 GiB, 3 rounds
    python benchmarks/streams.py --mib 256 --rounds 1

Needs this package built in release mode (``maturin develop --release``).
Each measurement runs in a fresh child process, which reports its time and
its peak RSS above its own baseline (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, ``VmRSS`` before). The ways are interleaved round
by round; the figure is the median over the rounds.

Writes (the source file is in the page cache; every way makes the value
durable with one fsync or one commit):

- ``put_file``, ``put_file writemap``: ``store.put_file(key, path)``;
- ``put(bytes)``: ``store[key] = f.read()`` and ``flush()``, the way before;
- ``python copy``: ``shutil.copyfileobj`` of the file in 1 MiB pieces into a
  new file, then ``os.fsync``: the floor of plain Python I/O.

Reads (the value in the page cache):

- ``open().readinto``, ``open().read``: ``store.open(key)`` read in 1 MiB
  pieces into one ``bytearray`` or as new ``bytes`` each time;
- ``get(bytes)``: ``store[key]``, the whole value as one ``bytes``;
- ``python read``: the source file read the same way with ``readinto``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 1 << 20

CHILD = r"""
import json, os, shutil, sys, time
from lmdb_object_store import LmdbObjectStore

MiB = 1 << 20
way, src, work = sys.argv[1], sys.argv[2], sys.argv[3]
size = os.path.getsize(src)


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def measure(run):
    base = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    t = time.perf_counter()
    run()
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "peak": status("VmHWM") - base}))


db = os.path.join(work, "db")
buf = bytearray(MiB)
if way in ("put_file", "put_file writemap", "put(bytes)"):
    store = LmdbObjectStore(db, writemap=way.endswith("writemap"), map_size=64 * MiB)
    store[b"warm"] = b"x"
    store.flush()

    def run():
        if way == "put(bytes)":
            with open(src, "rb") as f:
                store[b"v"] = f.read()
            store.flush()
        else:
            store.put_file(b"v", src)

    measure(run)
    store.close()
elif way == "python copy":
    def run():
        with open(src, "rb") as f, open(os.path.join(work, "copy"), "wb") as out:
            shutil.copyfileobj(f, out, MiB)
            out.flush()
            os.fsync(out.fileno())

    measure(run)
else:
    if way != "python read":
        store = LmdbObjectStore(db)

    def run():
        if way == "get(bytes)":
            assert len(store[b"v"]) == size
            return
        n = 0
        if way == "open().read":
            with store.open(b"v") as f:
                while chunk := f.read(MiB):
                    n += len(chunk)
        else:
            opened = open(src, "rb", buffering=0) if way == "python read" else store.open(b"v")
            with opened as f:
                while got := f.readinto(buf):
                    n += got
        assert n == size, n

    measure(run)
"""

WRITES = ["put_file", "put_file writemap", "put(bytes)", "python copy"]
READS = ["open().readinto", "open().read", "get(bytes)", "python read"]


def child(way: str, src: Path, work: Path) -> dict:
    # Run in the work directory: `python -c` puts its working directory first on
    # sys.path, and a source checkout there would shadow the installed package.
    out = subprocess.run(
        [sys.executable, "-c", CHILD, way, str(src), str(work)],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="value size in MiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    size = args.mib * MiB
    root = Path(tempfile.mkdtemp(prefix="streams-bench-", dir=args.dir))
    try:
        src = root / "src"
        piece = os.urandom(MiB)
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(piece)
        os.sync()
        # The reads share one store holding the value.
        readable = root / "read"
        readable.mkdir()
        child("put_file", src, readable)
        results: dict[str, list[dict]] = {w: [] for w in WRITES + READS}
        for _ in range(args.rounds):
            for way in WRITES:
                work = root / "write"
                work.mkdir()
                results[way].append(child(way, src, work))
                shutil.rmtree(work)
            for way in READS:
                results[way].append(child(way, src, readable))
        print(f"{args.mib} MiB value, median of {args.rounds} rounds")
        print(f"{'way':<20} {'MB/s':>8} {'peak RSS MiB':>13}")
        rows = []
        for way in WRITES + READS:
            runs = results[way]
            mbps = statistics.median(size / r["seconds"] / 1e6 for r in runs)
            peak = max(r["peak"] for r in runs) / MiB
            print(f"{way:<20} {mbps:>8.0f} {peak:>13.0f}")
            rows.append({"way": way, "mbps": mbps, "peak_mib": peak})
        if args.json:
            out = {"mib": args.mib, "rounds": args.rounds, "rows": rows}
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
