"""The batch read of a data loader: float32 vectors read by get_arrays against
the same arrays pickled, in one process, the ways interleaved round by round.

    python benchmarks/arrays.py               # 65,536 vectors of 512, batches of 256
    python benchmarks/arrays.py --n 8192 --rounds 3

Needs this package built in release mode (``maturin develop --release``) and
numpy. Each way reads every vector once per round, in batches of shuffled keys;
the figure is the median over the rounds, in vectors per second:

- ``get_arrays``: ``store.get_arrays(batch)``, a new array per batch;
- ``get_arrays(out=)``: the same into one array reused for every batch;
- ``pickle get_many``: the arrays stored with ``put`` (pickled), read with
  ``get_many`` and stacked with ``numpy.stack``, what a loader did before;
- ``pickle floor``: ``pickle.loads`` of the same pickles held in memory, and
  ``numpy.stack``: no store at all.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lmdb_object_store import LmdbObjectStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=65_536, help="vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    vectors = rng.random((args.n, args.dim), dtype=np.float32)
    keys = [f"vec:{i:08d}".encode() for i in range(args.n)]
    order = list(range(args.n))
    random.Random(args.seed).shuffle(order)
    batches = [[keys[i] for i in order[s : s + args.batch]] for s in range(0, args.n, args.batch)]
    index = {k: i for i, k in enumerate(keys)}

    with tempfile.TemporaryDirectory() as tmp:
        npy = LmdbObjectStore(str(Path(tmp) / "npy"), batch_size=10_000)
        pickled = LmdbObjectStore(str(Path(tmp) / "pickle"), batch_size=10_000)
        for k, v in zip(keys, vectors, strict=True):
            npy.put_array(k, v)
            pickled[k] = v
        npy.flush()
        pickled.flush()
        pickles = {k: pickle.dumps(v, 5) for k, v in zip(keys, vectors, strict=True)}
        out = np.empty((args.batch, args.dim), np.float32)

        def new_arrays() -> np.ndarray:
            for b in batches:
                got = npy.get_arrays(b)
            return got

        def into_out() -> np.ndarray:
            for b in batches:
                got = npy.get_arrays(b, out=out if len(b) == args.batch else None)
            return got

        def pickle_get_many() -> np.ndarray:
            for b in batches:
                found, _ = pickled.get_many(b)
                got = np.stack([found[k] for k in b])
            return got

        def pickle_floor() -> np.ndarray:
            for b in batches:
                got = np.stack([pickle.loads(pickles[k]) for k in b])
            return got

        ways = {
            "get_arrays": new_arrays,
            "get_arrays(out=)": into_out,
            "pickle get_many": pickle_get_many,
            "pickle floor": pickle_floor,
        }
        last = batches[-1]
        want = vectors[[index[k] for k in last]]
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            names = list(ways)
            random.shuffle(names)
            for name in names:
                start = time.perf_counter()
                got = ways[name]()
                times[name].append(time.perf_counter() - start)
                assert np.array_equal(got, want), name
        npy.close()
        pickled.close()

    print(
        f"{args.n} float32 vectors of {args.dim}, batches of {args.batch}, "
        f"median of {args.rounds} rounds"
    )
    base = args.n / statistics.median(times["pickle get_many"])
    print("| way | vectors/s | vs pickle get_many |\n| --- | ---: | ---: |")
    for name, ts in times.items():
        rate = args.n / statistics.median(ts)
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
