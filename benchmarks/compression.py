"""What compression= costs and saves: size on disk and put/get speed for None,
"zstd" and "lz4", in one process, the settings interleaved round by round.

    python benchmarks/compression.py                  # N = 100,000, 3 rounds
    python benchmarks/compression.py --n 10000 --rounds 1

Needs this package built in release mode (``maturin develop --release``). Three
workloads, each written to a fresh store per setting and round:

- ``records``: the benchmark's standard values (worker.py's keys and records,
  pickled, about 80 bytes each): ``put`` (``store[k] = v`` then ``flush()``),
  ``get`` (shuffled order) and ``get_many``, in operations per second. They are
  far below the default threshold, so they are also run with
  ``compression_threshold=0``, where every value goes through the compressor.
- ``json 4 MiB``: 16 distinct JSON texts of 4 MiB (``json.dumps`` of a list of
  records) stored with ``serializer="raw"``: put + flush, then get, in MiB/s of
  plain bytes.
- ``random 4 MiB``: the benchmark's ``large`` values (incompressible), as above.

Sizes are the bytes stored for the values (``get_into`` of each key), against
the plain encoded size. Figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from worker import make_keys, make_large_values, make_values, read_order

from lmdb_object_store import LmdbObjectStore

MIB = 1 << 20
SETTINGS: list[tuple[str, dict]] = [
    ("None", {}),
    ("zstd", {"compression": "zstd"}),
    ("lz4", {"compression": "lz4"}),
]
THRESHOLD_ZERO: list[tuple[str, dict]] = [
    ("zstd, threshold=0", {"compression": "zstd", "compression_threshold": 0}),
    ("lz4, threshold=0", {"compression": "lz4", "compression_threshold": 0}),
]


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def json_blobs(count: int, size: int) -> list[bytes]:
    """Distinct JSON texts of ``size`` bytes: a list of records, cut to size
    and closed so that each still parses."""
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        records, text = [], b""
        while len(text) < size:
            records.extend(
                {
                    "id": rng.randrange(10**9),
                    "user": f"user{rng.randrange(10**6)}",
                    "email": f"u{rng.randrange(10**6)}@example.com",
                    "active": rng.random() < 0.5,
                    "score": round(rng.random() * 100, 3),
                    "tags": rng.sample(["red", "green", "blue", "admin", "beta", "new"], 2),
                }
                for _ in range(2000)
            )
            text = json.dumps(records).encode()
        cut = text.rfind(b"}, {", 0, size - 1) + 1
        blob = text[:cut] + b"]"
        json.loads(blob)
        out.append(blob)
    return out


def stored_bytes(store: LmdbObjectStore, keys: list[bytes], largest: int) -> int:
    buf = bytearray(largest + 64)
    return sum(store.get_into(k, buf) for k in keys)


def run_records(workdir: Path, name: str, kwargs: dict, n: int, seed: int) -> dict[str, float]:
    keys, values = make_keys(n), make_values(n)
    order = [keys[i] for i in read_order(n, seed)]
    store = LmdbObjectStore(str(workdir / "records"), batch_size=n + 1, map_size=1 << 30, **kwargs)
    try:

        def put() -> None:
            for k, v in zip(keys, values, strict=True):
                store[k] = v
            store.flush()

        t_put = timed(put)
        t_get = timed(lambda: [store[k] for k in order])
        t_many = timed(lambda: store.get_many(order))
        assert store[keys[n // 2]] == values[n // 2]
        size = stored_bytes(store, keys, 1 << 16)
    finally:
        store.close()
    return {"put": n / t_put, "get": n / t_get, "get_many": n / t_many, "size": size}


def run_blobs(workdir: Path, kwargs: dict, blobs: list[bytes], what: str) -> dict[str, float]:
    keys = [f"blob:{i:04d}".encode() for i in range(len(blobs))]
    total = sum(map(len, blobs))
    store = LmdbObjectStore(
        str(workdir / what), serializer="raw", map_size=4 * total + (64 << 20), **kwargs
    )
    try:

        def put() -> None:
            for k, v in zip(keys, blobs, strict=True):
                store[k] = v
            store.flush()

        t_put = timed(put)
        got: list[bytes] = []
        t_get = timed(lambda: got.extend(store[k] for k in keys))
        assert got == blobs
        size = stored_bytes(store, keys, max(map(len, blobs)))
    finally:
        store.close()
    return {"put": total / MIB / t_put, "get": total / MIB / t_get, "size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    json_values = json_blobs(16, 4 * MIB)
    random_values = make_large_values(16, 4 * MIB, args.seed)
    plain = {
        "records": None,
        "json 4 MiB": sum(map(len, json_values)),
        "random 4 MiB": sum(map(len, random_values)),
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name, kwargs in SETTINGS + THRESHOLD_ZERO:
            with tempfile.TemporaryDirectory() as tmp:
                results.setdefault(("records", name), []).append(
                    run_records(Path(tmp), name, kwargs, args.n, args.seed)
                )
            if (name, kwargs) in THRESHOLD_ZERO:
                continue
            for what, blobs in (("json 4 MiB", json_values), ("random 4 MiB", random_values)):
                with tempfile.TemporaryDirectory() as tmp:
                    results.setdefault((what, name), []).append(
                        run_blobs(Path(tmp), kwargs, blobs, what.split()[0])
                    )
    if plain["records"] is None:
        plain["records"] = statistics.median(r["size"] for r in results[("records", "None")])

    print(f"N = {args.n:,} records; 16 values of 4 MiB; median of {args.rounds} round(s)\n")
    print("| workload | compression | stored MiB | of plain | put | get | get_many |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (what, name), runs in results.items():
        med = {op: statistics.median(r[op] for r in runs) for op in runs[0]}
        unit = "/s" if what == "records" else " MiB/s"
        many = f"{med['get_many']:,.0f}/s" if "get_many" in med else "-"
        print(
            f"| {what} | {name} | {med['size'] / MIB:,.2f} | "
            f"{med['size'] / plain[what]:.1%} | {med['put']:,.0f}{unit} | "
            f"{med['get']:,.0f}{unit} | {many} |"
        )


if __name__ == "__main__":
    main()
