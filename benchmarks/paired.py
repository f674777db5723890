"""This store against pickle alone, measured in pairs in one process.

The rounds of ``run.py`` run the floor and each store in processes of their
own, seconds apart. On a shared machine the speed of the same loop can change
twofold from one second to the next (a loop of ``pickle.dumps`` measured 1.39M
values/s and then 0.70M/s in the same process, a few seconds later), and a ratio of two
medians taken at different moments carries that swing. Here each operation of
the store is timed right next to the floor's loop for it, in the same process,
in alternating order; each pair gives one ratio, and the figure is the median
of the ratios.

The loops are those of ``worker.py``: the workload's N values and keys, reads
in its shuffled order; the store is used directly (``store[k] = v``,
``store[k]``, ``store.get_many(keys)``, ``store.items()``). Floors:

- put: ``pickle.dumps`` over the values;
- get: ``pickle.loads`` over the pickles, in the order they were made (the
  floor of ``run.py``), and, as a second figure, in the shuffled order in which
  the store's loop reads its keys;
- get_many: ``pickle.loads`` over the pickles in the shuffled order, into one
  dict that keeps every value;
- iterate: ``pickle.loads`` over the pickles in key order.

    python benchmarks/paired.py [--n 100000] [--pairs 15] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from systems import MAP_SIZE, PROTOCOL  # noqa: E402
from worker import make_keys, make_values, read_order, timed  # noqa: E402

#: Each row: (operation, floor), in the order they are measured and reported.
ROWS = [
    ("put", "pickle.dumps"),
    ("get", "pickle.loads, values in the order made"),
    ("get", "pickle.loads, values in the read order"),
    ("get_many", "pickle.loads into one dict, read order"),
    ("iterate", "pickle.loads, key order"),
]


def measure(n: int, pairs: int, seed: int, collector: bool) -> list[dict[str, Any]]:
    from lmdb_object_store import LmdbObjectStore

    keys, values = make_keys(n), make_values(n)
    pickles = [pickle.dumps(v, PROTOCOL) for v in values]
    order = read_order(n, seed)
    shuffled = [keys[i] for i in order]
    shuffled_pickles = [pickles[i] for i in order]
    by_key = [(keys[i], pickles[i]) for i in order]
    dumps, loads = pickle.dumps, pickle.loads

    with tempfile.TemporaryDirectory(prefix="paired-") as tmp:
        store = LmdbObjectStore(os.path.join(tmp, "db"), map_size=MAP_SIZE)
        try:

            def put() -> None:
                for k, v in zip(keys, values, strict=True):
                    store[k] = v
                store.flush()

            def get() -> None:
                for k in shuffled:
                    store[k]

            def get_many() -> None:
                store.get_many(shuffled)

            def iterate() -> None:
                for _ in store.items():
                    pass

            def floor_put() -> None:
                for v in values:
                    dumps(v, PROTOCOL)

            def floor_get_made() -> None:
                for p in pickles:
                    loads(p)

            def floor_get_read() -> None:
                for p in shuffled_pickles:
                    loads(p)

            def floor_many() -> None:
                kept: dict[bytes, Any] = {}
                kept.update((k, loads(p)) for k, p in by_key)

            loops = [
                (put, floor_put),
                (get, floor_get_made),
                (get, floor_get_read),
                (get_many, floor_many),
                (iterate, floor_get_made),
            ]
            put()  # the store holds the values for the reads from here on
            ratios: list[list[float]] = [[] for _ in loops]
            rates: list[tuple[list[float], list[float]]] = [([], []) for _ in loops]
            for p in range(pairs):
                for i, (mine, floor) in enumerate(loops):
                    # Alternate which side goes first, so neither always
                    # meets the caches the other left.
                    if p % 2:
                        t_floor, t_mine = timed(floor, collector), timed(mine, collector)
                    else:
                        t_mine, t_floor = timed(mine, collector), timed(floor, collector)
                    ratios[i].append(t_floor / t_mine)
                    rates[i][0].append(n / t_floor)
                    rates[i][1].append(n / t_mine)
        finally:
            store.close()

    out = []
    for i, (op, floor_name) in enumerate(ROWS):
        r = sorted(ratios[i])
        out.append(
            {
                "operation": op,
                "floor": floor_name,
                "collector": "running" if collector else "paused",
                "floor_rate": statistics.median(rates[i][0]),
                "rate": statistics.median(rates[i][1]),
                "ratio": statistics.median(r),
                "ratio_low": r[len(r) // 4],
                "ratio_high": r[(3 * len(r)) // 4],
                "pairs": pairs,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for collector in (False, True):
        rows += measure(args.n, args.pairs, args.seed, collector)
    for r in rows:
        print(
            f"{r['operation']:9s} {r['collector']:8s} {r['ratio']:.2f} "
            f"({r['ratio_low']:.2f}-{r['ratio_high']:.2f})  "
            f"{r['rate'] / 1e3:.0f}k/s vs {r['floor_rate'] / 1e3:.0f}k/s  {r['floor']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
