"""Turn the JSON written by ``run.py`` into Markdown tables and a bar chart.

    python benchmarks/report.py page RESULTS.json OUT.md     (docs/performance.md)
    python benchmarks/report.py chart RESULTS.json OUT.png   (needs matplotlib)

``run.py`` renders the page itself and runs the chart command in the benchmark
environment, where matplotlib is; the Markdown side needs only the standard library.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

# operation -> (column heading, unit); in the order the tables show them.
OPERATIONS: dict[str, tuple[str, str]] = {
    "put": ("put", "ops/s"),
    "put_nosync": ("put, sync=False", "ops/s"),
    "get": ("get", "ops/s"),
    "put_many": ("put_many", "ops/s"),
    "get_many": ("get_many", "ops/s"),
    "iterate": ("iterate", "ops/s"),
    "large_put": ("large put", "MB/s"),
    "large_get": ("large get", "MB/s"),
    "large_peak_rss": ("peak RSS", "MiB"),
    "large_get_rss_rise": ("RSS rise per 4 MiB get", "MiB"),
    "threads_reads_alone": ("reads/s, no writer", "reads/s"),
    "threads_reads": ("reads/s, with writer", "reads/s"),
    "threads_read_ratio": ("with / without writer", "ratio"),
    "threads_writes": ("writes/s", "writes/s"),
}
# The codec alone: shape -> what it is.
CODEC_SHAPES = {
    "workload": "the workload's values, one at a time",
    "floats": "a list of 1,000 floats",
    "config": "a config dict of 50 keys (lists, str, floats, bools, None, small dicts)",
    "strings": "a list of 100 short str",
    "bytes": "1 MiB of bytes",
}
for _shape in CODEC_SHAPES:
    for _way in ("dumps", "loads"):
        for _gc, _when in (("", "collector paused"), ("_gc", "collector running")):
            OPERATIONS[f"codec_{_shape}_{_way}{_gc}"] = (f"{_shape} {_way}, {_when}", "values/s")

# This store's serializers: serializer -> what its rows store and what its floor is.
SERIALIZERS = {
    "pickle": ("the workload's values", "pickle"),
    "safe": ("the workload's values", "pickle"),
    "raw": ("their pickles, made beforehand, as `bytes`", "pickle"),
    "json": ("the workload's values", "json"),
    "msgpack": ("the workload's values", "msgpack"),
}
for _ser in SERIALIZERS:
    for _op in ("put", "get", "get_many"):
        OPERATIONS[f"ser_{_ser}_{_op}"] = (f"{_ser} {_op}", "ops/s")
# The data-loader row: operation -> how the vectors are read.
ARRAYS = {
    "arrays_get_arrays": "`get_arrays(keys)`: a new array per batch",
    "arrays_get_arrays_out": "`get_arrays(keys, out=)`: one array reused",
    "arrays_pickle_get_many": "the arrays pickled by `put`: `get_many` + `numpy.stack`",
    "arrays_ldkv": "lightning-disk-kv: `store_vectors` / `get_vectors_batch`",
    "arrays_pickle_floor": "floor: `pickle.loads` of pickles in memory + `numpy.stack`",
}
for _op in ARRAYS:
    OPERATIONS[_op] = (_op, "vectors/s")

ARRAY_SYSTEMS = {
    "this": ["arrays_get_arrays", "arrays_get_arrays_out", "arrays_pickle_get_many"],
    "floor": ["arrays_pickle_floor"],
    "lightning-disk-kv": ["arrays_ldkv"],
}
REF = "ref"  # the system every ratio in brackets is taken against
THIS = "this"  # this package
THROUGHPUT = ["put", "put_nosync", "get", "put_many", "get_many", "iterate"]

# Bars of the chart, with their labels: rates (higher is better) that 0.1.0 has too.
CHART = {
    "put": "put",
    "put_nosync": "put\nsync=False",
    "get": "get",
    "put_many": "put_many",
    "get_many": "get_many",
    "large_put": "large put",
    "large_get": "large get",
    "threads_reads": "threads:\nreads beside writer",
    "threads_writes": "threads:\nwrites",
}


# The speed this package aims at: (operation, least ratio to 0.1.0).
TARGETS = [
    ("put", 2.0),
    ("get", 2.2),
    ("put_many", 1.4),
    ("get_many", 2.0),
    ("large_put", 1.0),
    ("large_get", 1.0),
]
# Beside a writer, readers keep at least this share of their rate.
THREADS_TARGET = 0.7
# The peer this package must lead on every operation both have.
RIVAL = "rocksdict"


def index(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["system"], r["operation"]): r for r in data["results"]}


def human(value: float) -> str:
    """A figure with three significant digits and a k/M suffix."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit * 0.9995:  # 999.6k shows as 1M, not 1e+03k
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def times(ratio: float) -> str:
    """A ratio with two significant digits at most: 43×, 1.3×, 0.56×, 0.0069×."""
    if ratio >= 9.95:
        return f"{ratio:.0f}×"
    return f"{ratio:.1f}×" if ratio >= 0.995 else f"{ratio:.2g}×"


def why_not(row: dict[str, Any] | None) -> str | None:
    """The cell of a figure that does not exist: blank, n/a or failed."""
    if row is None:
        return ""
    if row["status"] == "unsupported":
        return "n/a"
    if row["status"] != "ok":
        return "failed"
    return None


def rate(row: dict[str, Any] | None) -> str:
    """A figure and, in brackets, its ratio to 0.1.0 (but not on 0.1.0's own row)."""
    missing = why_not(row)
    if missing is not None:
        return missing
    assert row is not None
    ratio = row.get("ratio_to_ref")
    if ratio is None or row["system"] == REF:
        return human(row["value"])
    return f"{human(row['value'])} ({times(ratio)})"


def plain(row: dict[str, Any] | None) -> str:
    missing = why_not(row)
    if missing is not None:
        return missing
    assert row is not None
    return f"{row['value']:.3g}"


def against_floor(row: dict[str, Any] | None) -> str:
    missing = why_not(row)
    if missing is not None:
        return missing
    assert row is not None
    return f"{row['ratio_to_floor']:.2f}" if row.get("ratio_to_floor") is not None else ""


def table(headings: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    """A Markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(headings))]
    lines = ["| " + " | ".join(headings) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_tables(data: dict[str, Any]) -> str:
    """The figures of one run as Markdown: tables, then what failed and why."""
    idx = index(data)
    systems = data["systems"]
    stores = [s for s in systems if s["name"] != data["floor_system"]]
    ref_label = next((s["label"] for s in systems if s["name"] == data["ref_system"]), None)
    against = f"; in brackets, the ratio to {ref_label}" if ref_label else ""
    large, threads = data["parameters"]["large"], data["parameters"]["threads"]
    out: list[str] = []

    def block(
        title: str,
        note: str,
        columns: list[tuple[str, Callable[[dict[str, Any] | None], str]]],
        rows: list[dict[str, Any]],
        units: bool = True,
    ) -> None:
        headings = ["system"]
        for op, _ in columns:
            name, unit = OPERATIONS[op]
            headings.append(f"{name} ({unit})" if units and unit not in (name, "ratio") else name)
        cells = [
            [s["label"]] + [render(idx.get((s["name"], op))) for op, render in columns]
            for s in rows
        ]
        out.extend(["", f"### {title}", "", note, ""] + table(headings, cells))

    block(
        "Throughput",
        f"Median operations per second{against}.",
        [(op, rate) for op in THROUGHPUT],
        systems,
    )
    block(
        "Against the floor",
        "Each rate over pickle's alone (`pickle.dumps` for writes, `pickle.loads` for "
        "reads, into one dict for `get_many`): 1.00 would mean the store costs nothing "
        "beyond serialisation.",
        [(op, against_floor) for op in THROUGHPUT],
        stores,
        units=False,
    )
    out.extend(paired_table(data))
    block(
        "Large values",
        f"{large['count']} values of {large['size'] >> 20} MiB `bytes`: put + commit, then "
        f"get{against}. Peak RSS is the worker process's "
        "(which also holds the input values); the RSS rise is what one get of one value "
        "allocates at its peak: one value's size when the read path copies nothing.",
        [("large_put", rate), ("large_get", rate)]
        + [("large_peak_rss", plain), ("large_get_rss_rise", plain)],
        systems,
    )
    block(
        "Threads",
        f"{threads['readers']} reader threads doing `get` for {threads['duration_s']:g} s, "
        f"first alone, then beside 1 writer thread doing puts in batches of "
        f'{threads["write_batch"]} with a commit after each{against}. "With / without '
        'writer" is the share of the read rate that readers keep while a writer works.',
        [("threads_reads_alone", rate), ("threads_reads", rate)]
        + [("threads_read_ratio", plain), ("threads_writes", rate)],
        stores,
    )

    out.extend(codec_table(data, idx))
    out.extend(serializer_table(data, idx))
    out.extend(arrays_table(data, idx))
    out.extend(streams_table(data))
    out.extend(targets(data, idx))

    rows = []
    for s in systems:
        encoding = "pickled by the benchmark" if s.get("pickled_by_hand") else "by the store"
        if s["name"] == data["floor_system"]:
            encoding = "pickle"
        notes = "; ".join(x for x in (s.get("note", ""), s.get("detail", "")) if x)
        rows.append([s["label"], s.get("version") or "", encoding, notes, s["status"]])
    out.extend(["", "### Systems", ""])
    out.extend(table(["system", "version", "values encoded", "notes", "status"], rows, 5))

    failures = [
        f"- {s['label']}: {s['status']}: {s.get('reason', '')}"
        for s in systems
        if s["status"] != "ok"
    ]
    failures += [
        f"- {r['label']}, {OPERATIONS[r['operation']][0]}: {r.get('reason', '')}"
        for r in data["results"]
        if (r["status"] == "error" or r.get("errors"))
        and next(s for s in systems if s["name"] == r["system"])["status"] == "ok"
    ]
    if failures:
        out.extend(["", "### Failures", ""] + failures)

    # n/a cells, grouped by reason: "no batch read: sqlitedict, shelve".
    unsupported: dict[str, list[str]] = {}
    for r in data["results"]:
        if r["status"] == "unsupported":
            what = f"{r['label']} ({OPERATIONS[r['operation']][0]})"
            unsupported.setdefault(r.get("reason", ""), []).append(what)
    if unsupported:
        out.extend(["", "n/a, by reason:", ""])
        out.extend(f"- {reason}: {', '.join(what)}" for reason, what in unsupported.items())
    return "\n".join(out).lstrip("\n") + "\n"


def codec_table(data: dict[str, Any], idx: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """This package's serializer alone (its native pickle codec, handing what
    it does not handle to pickle) against pickle, on the same values."""
    floor = data["floor_system"]
    if not any(idx.get((THIS, f"codec_{shape}_dumps")) for shape in CODEC_SHAPES):
        return []

    def cell(shape: str, way: str, gc: str) -> list[str]:
        op = f"codec_{shape}_{way}{gc}"
        ours, theirs = idx.get((THIS, op)), idx.get((floor, op))
        ratio = against_floor(ours) if ours else "n/a"
        return [rate_plain(theirs), rate_plain(ours), ratio]

    rows = []
    for shape, what in CODEC_SHAPES.items():
        for gc, when in (("", "paused"), ("_gc", "running")):
            rows.append([what, when] + cell(shape, "dumps", gc) + cell(shape, "loads", gc))
    headings = ["values", "collector", "pickle.dumps", "this", "×", "pickle.loads", "this", "×"]
    return [
        "",
        "### The codec alone",
        "",
        "Values per second through `pickle` and through this package's serializer (the "
        "native codec, which writes the same bytes), and the ratio; every value read is "
        "kept, as a batch read keeps them.",
        "",
    ] + table(headings, rows, 2)


def serializer_table(data: dict[str, Any], idx: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Each serializer of this store on the workload, against its own floor."""
    if not any(idx.get((THIS, f"ser_{s}_put")) for s in SERIALIZERS):
        return []
    floor = data["floor_system"]
    rows = []
    for ser, (what, base) in SERIALIZERS.items():
        row = [f"`{ser}`", what]
        for op in ("put", "get", "get_many"):
            ours = idx.get((THIS, f"ser_{ser}_{op}"))
            row += [rate_plain(ours), against_floor(ours) if ours else "n/a"]
        floors = [rate_plain(idx.get((floor, f"ser_{base}_{op}"))) for op in ("put", "get")]
        rows.append(row + [f"{base}: {' / '.join(floors)}"])
    headings = ["serializer", "values stored", "put", "× floor", "get", "× floor"]
    headings += ["get_many", "× floor", "floor (dumps / loads per s)"]
    return [
        "",
        "### Serializers",
        "",
        "This store with each `serializer=` on the workload (ops/s), and the ratio to "
        "that serializer's floor measured in the same run: `pickle.dumps`/`pickle.loads` "
        "for pickle, safe and raw, `json.dumps`/`json.loads` for json, "
        "`msgpack.packb`/`msgpack.unpackb` for msgpack (for `get_many`, loads into one "
        "dict). The workload's values are JSON-able, so every row stores the same values.",
        "",
    ] + table(headings, rows, 2)


def arrays_table(data: dict[str, Any], idx: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The data-loader row: vectors/s of each way, against pickle and lightning-disk-kv."""
    where = {op: system for system, ops in ARRAY_SYSTEMS.items() for op in ops}
    found = {op: idx.get((where[op], op)) for op in ARRAYS}
    if not any(r for r in found.values()):
        return []
    base, peer = found["arrays_pickle_get_many"], found["arrays_ldkv"]

    def over(row: dict[str, Any] | None, other: dict[str, Any] | None) -> str:
        if not row or not other or row["status"] != "ok" or other["status"] != "ok":
            return "n/a"
        return times(row["value"] / other["value"])

    rows = [
        [what, rate_plain(found[op]), over(found[op], base), over(found[op], peer)]
        for op, what in ARRAYS.items()
        if found[op] is not None
    ]
    a = data["parameters"].get("arrays", {})
    return [
        "",
        "### Arrays",
        "",
        f"{a.get('count', 0):,} float32 vectors of {a.get('dim')} read in batches of "
        f"{a.get('batch')} shuffled keys, each vector once per round (vectors/s), and the "
        "ratio to this store's pickled arrays and to lightning-disk-kv's vector path.",
        "",
    ] + table(["how", "vectors/s", "× pickle get_many", "× lightning-disk-kv"], rows)


STREAM_WAYS = {
    "put_file": "`put_file(key, path)`",
    "put_file writemap": "`put_file(key, path)`, `writemap=True`",
    "put(bytes)": "`store[key] = f.read()` + `flush()`",
    "python copy": "plain Python: copy to a new file + `fsync`",
    "open().readinto": "`open(key)`, `readinto` 1 MiB pieces",
    "open().read": "`open(key)`, `read(1 MiB)`",
    "get(bytes)": "`store[key]` (one `bytes`)",
    "python read": "plain Python: the source file, `readinto` 1 MiB pieces",
}


def paired_table(data: dict[str, Any]) -> list[str]:
    """This store against the floor, each operation timed next to the floor's
    loop in one process: the median ratio of the pairs and its quartiles."""
    p = data.get("paired")
    if not p:
        return []
    pairs = p["rows"][0]["pairs"]
    rows = [
        [
            r["operation"],
            r["floor"],
            r["collector"],
            human(r["rate"]),
            human(r["floor_rate"]),
            f"{r['ratio']:.2f}",
            f"{r['ratio_low']:.2f}–{r['ratio_high']:.2f}",
        ]
        for r in p["rows"]
    ]
    return [
        "",
        "### Against the floor, in pairs",
        "",
        f"This store (used directly: `store[k] = v`, `store[k]`, `get_many`, `items()`) "
        f"and the floor, each operation timed right next to the floor's loop in one "
        f"process, {pairs} pair{'s' if pairs != 1 else ''} in alternating order, N = {p['n']:,} "
        "(`benchmarks/paired.py`). The ratio is the median of the pairs' ratios, with "
        "the middle half of them beside it: one figure does not carry the speed swings "
        "of a shared machine from one process to the next, as a ratio of two medians "
        "measured apart can.",
        "",
    ] + table(
        ["operation", "floor", "collector", "ops/s", "floor ops/s", "× floor", "middle half"],
        rows,
        numeric_from=3,
    )


def streams_table(data: dict[str, Any]) -> list[str]:
    """put_file and open() of one large value: MB/s and peak RSS per way."""
    s = data.get("streams")
    if not s:
        return []
    rows = [
        [STREAM_WAYS.get(r["way"], r["way"]), f"{r['mbps']:,.0f}", f"{r['peak_mib']:,.0f}"]
        for r in s["rows"]
    ]
    return [
        "",
        "### Streamed large values",
        "",
        f"One value of {s['mib']:,} MiB written and read back, median of {s['rounds']} "
        "rounds (`benchmarks/streams.py`, each way in a child process of its own); peak RSS "
        "above that process's baseline.",
        "",
    ] + table(["how", "MB/s", "peak RSS (MiB)"], rows)


def rate_plain(row: dict[str, Any] | None) -> str:
    if not row or row["status"] != "ok":
        return why_not(row) or "n/a"
    return human(row["value"])


def targets(data: dict[str, Any], idx: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The targets, met or not, from this run's figures alone."""
    this, ref, floor = THIS, data["ref_system"], data["floor_system"]

    def ratio(system: str, op: str, own_op: str | None = None) -> float | None:
        row, base = idx.get((system, own_op or op)), idx.get((ref, op))
        if not row or not base or row["status"] != "ok" or base["status"] != "ok":
            return None
        return row["value"] / base["value"]

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}×"

    rows = []
    for op, least in TARGETS:
        got = ratio(this, op)
        met = "n/a" if got is None else ("yes" if got >= least else "no")
        floor_op = "put" if op == "put_many" else op  # pickling is the same either way
        best = shown(ratio(floor, op, floor_op))
        rows.append([OPERATIONS[op][0], f"≥ {least:.1f}×", shown(got), met, best])
    lines = [
        "",
        "### Targets",
        "",
        "This package's ratio to 0.1.0 on each row it aims at, and the floor's: pickle "
        "alone against 0.1.0, the ratio a store would reach if finding and storing the "
        "bytes cost nothing.",
        "",
    ]
    lines += table(["operation", "target", "this package", "met", "the floor"], rows, 1)

    share = idx.get((this, "threads_read_ratio"))
    if share and share["status"] == "ok":
        met = "met" if share["value"] >= THREADS_TARGET else "not met"
        lines += [
            "",
            f"- Readers beside a writer keep {share['value']:.2f} of their rate "
            f"(target ≥ {THREADS_TARGET:g}: {met}).",
        ]
    behind = []
    for op in OPERATIONS:
        ours, theirs = idx.get((this, op)), idx.get((RIVAL, op))
        if not ours or not theirs or ours["status"] != "ok" or theirs["status"] != "ok":
            continue
        if op in ("large_peak_rss", "large_get_rss_rise", "threads_read_ratio"):
            continue
        if ours["value"] < theirs["value"]:
            behind.append(
                f"{OPERATIONS[op][0]} ({human(ours['value'])} against {human(theirs['value'])})"
            )
    rival = next((s["label"] for s in data["systems"] if s["name"] == RIVAL), None)
    if rival:
        lines.append(
            f"- Against {rival}: ahead on every row both have."
            if not behind
            else f"- Against {rival}: behind on " + "; ".join(behind) + ", ahead on the rest."
        )
    return lines


def page(data: dict[str, Any]) -> str:
    """docs/performance.md: figures, method, machine, versions, the command."""
    tables = markdown_tables(data)
    p, m = data["parameters"], data["machine"]
    versions = "\n".join(
        f"- {s['label']}: {s.get('version') or s['status']}"
        + (f" ({s['requirement']})" if s.get("requirement") else "")
        for s in data["systems"]
    )
    arr = p.get("arrays") or {"count": 65_536, "dim": 512, "batch": 256}
    rounds = f"{p['rounds']} round" + ("s" if p["rounds"] != 1 else "")
    rev = data["revision"]
    revision = (rev["commit"][:12] or "unknown") + (" with local changes" if rev["dirty"] else "")
    return f"""# Performance

How `lmdb_object_store` compares with `pickle` alone (the floor), with
`lmdb-object-store` 0.1.0 (the pure-Python package it replaces) and with the
stores Python users reach for. Absolute figures depend on the machine; the
ratios, measured in one run with interleaved rounds, are what carries over.

Regenerate this page, its chart and `docs/benchmark-results.json` with one command
from the repository root:

```
{data["command"]}
```

(`python benchmarks/run.py` for the full run, `--quick` for a smaller one; see
`benchmarks/README.md`.) These figures: N = {p["n"]:,}, {rounds},
{data["created"]}, revision {revision}, {data["elapsed_s"]:.0f} s in all.

![throughput relative to lmdb-object-store 0.1.0](img/benchmark.png)

Where the time goes in each operation, from profiles: [profiles.md](profiles.md).

## Results

{tables}
## Method

- Workload: N entries, keys `f"key:{{i:08d}}".encode()`, values
  `{{"id": i, "name": f"user{{i}}", "tags": ["a", "b"], "score": i * 0.5}}`.
- `put`: `store[k] = v` for every entry, then the store's commit (`flush()` here);
  `put, sync=False`: the same on a store opened with `sync=False` (LMDB-based
  stores only: no fsync at commit). `get`: `store[k]` for every key in one fixed
  shuffled order (seed {p["seed"]}); 200 values are compared with the originals
  afterwards. `put_many` / `get_many`: one batch call with all entries / all keys,
  where the store has one. `iterate`: `for k, v in store.items()` over everything.
- `large`: {p["large"]["count"]} values of {p["large"]["size"] >> 20} MiB `bytes` (incompressible):
  put + commit, then get, in MB/s (10^6 bytes). Peak RSS is `ru_maxrss` of the
  worker process, which also holds the input values and, for stores that map
  their file (LMDB), the pages read. The RSS rise per get is measured apart: the
  peak resident set while one value already read once is read again, with malloc
  set to return big blocks at once, so it shows what the read allocates.
- `threads`: N entries; {p["threads"]["readers"]} threads call `get` in a loop for
  {p["threads"]["duration_s"]:g} s, first alone, then beside 1 thread writing puts in
  batches of {p["threads"]["write_batch"]} with a commit after each (overwriting
  existing keys). Stores that are not thread-safe are skipped.
- The floor: `pickle.dumps(v, HIGHEST_PROTOCOL)` over the values (for writes) and
  `pickle.loads` over their pickles (for reads), in the same kind of loop. For
  `get_many` the floor keeps what it unpickles: `pickle.loads` over the pickles in
  the shuffled read order, each result stored in one dict under its key, as a
  batch read must.
  "Against the floor" divides a store's rate by the floor's.
- Serializers: this store opened with each `serializer=`, `store[k] = v` for
  every entry then `flush()`, `store[k]` in the shuffled order, one
  `get_many` of every key. The workload's values are already JSON-able (str
  keys, an int, a str, a list of str, a float; JSON and MessagePack give them
  back equal), so the json and msgpack rows store the same values as the
  others. `raw` stores their pickles, made before the timed sections (so its
  rows show the store without any serializer, set against pickle's floor). Each
  row has its own floor, measured in the same run on the same values:
  `pickle.dumps`/`pickle.loads` for pickle, safe and raw; `json.dumps(v)` and
  `json.loads` of the UTF-8 bytes for json; `msgpack.packb`/`msgpack.unpackb`
  for msgpack; for `get_many`, the loads into one dict.
- Arrays: {arr["count"]:,} float32 vectors of {arr["dim"]} (random,
  seeded), read in batches of {arr["batch"]} keys in a shuffled order, every
  vector once. This store: `put_array` then `get_arrays(batch)` (a new
  `(batch, {arr["dim"]})` array per batch) and `get_arrays(batch, out=)` (one
  array reused); the same arrays stored with `store[k] = v` (pickled) and read
  with `get_many` + `numpy.stack`. lightning-disk-kv: `store_vectors` then
  `get_vectors_batch` (integer ids, 5 shards), its vector path. The floor:
  `pickle.loads` of the pickles held in memory + `numpy.stack`. The last
  batch is compared with the vectors written.
- Each store runs with its defaults except: a 2 GiB LMDB map for every
  LMDB-based store (so that no timed section includes map growth), sqlitedict
  with `autocommit=False`, diskcache puts inside `transact()`, kohakuvault with
  its write-back cache on. Values are pickled by the benchmark for stores that
  take only bytes (see "Systems"); the others encode values themselves.
- Every round runs every system, in an order shuffled per round; every
  (round, system, group) is a new process with a new temporary directory. Each
  figure is the median over the rounds; the garbage collector is paused inside
  timed sections, as `timeit` does.
- A system that failed to install or run, or an operation that failed, shows as
  "failed" with the reason under "Failures"; "n/a" marks an operation the store
  does not offer.

### JSON and MessagePack: why the C modules

The `"json"` and `"msgpack"` serializers call CPython's `json` module (its C
accelerator) and the `msgpack` C extension, and write their exact bytes; json
values of the plain types are encoded in Rust instead (below). What they call
was chosen by measuring the ways to encode and decode the workload's
values, one value per call, with `benchmarks/serializer_paths.py`. On this
shared virtual machine even CPU time moved by 2× and more from run to run
(time stolen by other guests counts as the process's), so the figures are
instructions, counted by `valgrind --tool=callgrind` (Python 3.11, 5,000
values, each way 4 times over, less a run that only builds the values; orjson
3.13.0 and ormsgpack 1.13.1 stand for what a Rust encoder or decoder reaches):

| way | instructions per value | × before |
| --- | ---: | ---: |
| json encode: `JSONEncoder.encode` (before) | 22,850 | 1.00 |
| json encode: the C encoder built directly (now, for values of other types) | 18,290 | 0.80 |
| json encode: orjson (Rust) | 1,950 | 0.085 |
| json decode: `JSONDecoder.decode` (before) | 14,230 | 1.00 |
| json decode: the C scanner called directly (now) | 9,170 | 0.64 |
| json decode: orjson (Rust) | 4,480 | 0.31 |
| msgpack encode: `msgpack.packb` (before) | 5,980 | 1.00 |
| msgpack encode: a reused `Packer` (now) | 4,460 | 0.75 |
| msgpack encode: ormsgpack (Rust) | 2,760 | 0.46 |
| msgpack decode: `unpackb` (unchanged) | 7,440 | 1.00 |
| msgpack decode: ormsgpack (Rust) | 4,430 | 0.60 |

Inside the store (callgrind, 20,000 values put then flushed, then read with
`store[k]` in shuffled order, less a run that only opens the store; the
release build before and after the change), per value:

| serializer | put before | put after | get before | get after |
| --- | ---: | ---: | ---: | ---: |
| json | 25,950 | 21,000 | 18,400 | 12,650 |
| msgpack | 10,110 | 8,170 | 11,630 | 11,500 |

msgpack's read path did not change (the same `unpackb` call): its two
figures differ by what whole-process counts move from one run to the next.

So a Rust encoder is much cheaper than the C modules, above all for JSON
encoding (a tenth of the instructions), and the json serializer now has one
for encoding (`src/json_fast.rs`), for values made only of `dict` with `str`
keys, `list`, `tuple`, `str`, `int`, `float`, `bool` and `None` (the types
themselves, not subclasses). What is hard to match exactly, it does not
rewrite: a float is formatted by the CPython function `float.__repr__` calls
(`PyOS_double_to_string`), an integer beyond 64 bits by `int.__repr__`; and
whatever else the module decides (how `int`, `float`, `bool` and `None` keys
become strings, subclasses, other types, and every error: NaN and the
infinities, a lone surrogate, a cycle, the recursion limit) is left to it, the
whole value going through the C encoder as before. The bytes are checked
against `JSONEncoder.encode` by property tests (`tests/test_json_fast.py`).
Same method as the table above, 20,000 values put then flushed, less a run that
only opens the store and builds the values, release builds before and after,
the mean of three runs each (which differ by less than 0.1%):

| serializer | put before (C encoder) | put after (Rust encoder) | × before |
| --- | ---: | ---: | ---: |
| json | 20,050 | 7,010 | 0.35 |

Of the 7,010, the encoding is about 3,800 (the whole of the store's encode
step), and about 1,600 of those are CPython's float formatting for the one
float of each value; the rest is the store around it, as for pickle.

Decoding stays with the C scanner: a Rust decoder would have to accept what the
module accepts from other programs (`NaN` and `Infinity`, escaped lone
surrogates, integers of any size, a repeated key's last value). serde_json
differs on the first three (it refuses `NaN`, `Infinity` and escaped lone
surrogates, and reads big integers as floats) and would need its values turned
into Python objects afterwards, so it would be a decoder written over PyO3,
checked value for value against the module: the gain still open here.

## Machine

- {m["cpu_count"]} CPUs ({m["cpu_model"] or "model unknown"}), {m["memory_gib"]} GiB memory
- {m["platform"]}
- Python {m["python"]}

## Versions

{versions}
"""


def chart(data: dict[str, Any], path: str) -> None:
    """Grouped bars: every system's figure over 0.1.0's, per operation, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = index(data)
    systems = [s for s in data["systems"] if s["name"] != data["ref_system"]]

    def ratio(system: str, op: str) -> float | None:
        return idx.get((system, op), {}).get("ratio_to_ref")

    ops = [op for op in CHART if any(ratio(s["name"], op) for s in systems)]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(14, 6.5))
    # Red is kept for this package.
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (6, 7)]
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, op in enumerate(ops):
            r = ratio(s["name"], op)
            if r:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(r)
        style: dict[str, Any] = {"color": palette[i % len(palette)]}
        if s["name"] == "this":
            style = {"color": "#d62728", "edgecolor": "black", "linewidth": 0.8, "zorder": 3}
        elif s["name"] == data["floor_system"]:
            style = {"color": "#bbbbbb", "hatch": "//", "edgecolor": "#777777"}
        bars = ax.bar(xs, ys, width, label=s["label"], **style)
        if s["name"] == "this":
            texts = ax.bar_label(bars, [times(y) for y in ys], fontsize=7, fontweight="bold")
            for text in texts:
                text.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ops)), [CHART[op] for op in ops])
    ax.set_ylabel("throughput / lmdb-object-store 0.1.0 (log scale)")
    params = data["parameters"]
    ax.set_title(
        f"N = {params['n']:,}, median of {params['rounds']} interleaved rounds, "
        f"{data['machine']['cpu_count']} CPUs, Python {data['machine']['python']}"
    )
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(ncol=2, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("chart", "page"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    if argv[0] == "chart":
        chart(data, argv[2])
    else:
        with open(argv[2], "w") as f:
            f.write(page(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
