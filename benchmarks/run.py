"""Benchmark lmdb_object_store against pickle alone and the stores Python users pick.

    python benchmarks/run.py            # N = 100,000, 3 rounds: the figures in docs/
    python benchmarks/run.py --quick    # N = 10,000, lighter large/threads rows
    python benchmarks/run.py --smoke    # this package and the floor, current Python

The first run creates ``benchmarks/.env`` (a virtual environment with matplotlib
and the peers from PyPI, this package built from the working tree, and
``lmdb-object-store`` 0.1.0 in a directory of its own, since it has the same
import name). Later runs reuse it and rebuild this package only when its
sources changed.

Every (round, system, group of operations) runs in a fresh worker process; the
systems' order is shuffled in every round, and each figure is the median over
the rounds. Results go to ``benchmarks/results/latest.json`` and, except for
``--smoke``, to ``docs/benchmark-results.json``, ``docs/performance.md`` and
``docs/img/benchmark.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report
from systems import SYSTEMS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ENV = BENCH / ".env"
REF_TARGET = ENV / "ref-0.1.0"
STATE = ENV / "install-state.json"
RESULTS = BENCH / "results"
DOCS = ROOT / "docs"

SERIALIZERS = ("pickle", "safe", "raw", "json", "msgpack")
GROUPS = ("basic", "large", "threads", "codec", *(f"ser-{s}" for s in SERIALIZERS), "arrays")
REF = "ref"
FLOOR = "floor"
# The floor figure each operation is set against.
FLOOR_OF = {
    "put": "put",
    "put_nosync": "put",
    "put_many": "put",
    "get": "get",
    "get_many": "get_many",
    "iterate": "get",
    "large_put": "large_put",
    "large_get": "large_get",
}
# The codec alone: this package's serializer against pickle on the same values.
CODEC_SHAPES = ("workload", "floats", "config", "strings", "bytes")
CODEC_OPERATIONS = [
    f"codec_{shape}_{way}{gc}"
    for shape in CODEC_SHAPES
    for way in ("dumps", "loads")
    for gc in ("", "_gc")
]
FLOOR_OF.update({op: op for op in CODEC_OPERATIONS})
# Each serializer against its own floor: pickle for the pickle-based ones (raw
# stores values pickled beforehand), json and msgpack alone for theirs.
SERIALIZER_FLOOR = {"pickle": "pickle", "safe": "pickle", "raw": "pickle"}
SERIALIZER_FLOOR |= {"json": "json", "msgpack": "msgpack"}
SERIALIZER_OPERATIONS = {
    s: [f"ser_{s}_{op}" for op in ("put", "get", "get_many")] for s in SERIALIZERS
}
for _ser, _ops in SERIALIZER_OPERATIONS.items():
    FLOOR_OF.update({op: op.replace(_ser, SERIALIZER_FLOOR[_ser], 1) for op in _ops})
# The vectors of the data-loader row, each way set against pickle.loads + stack.
ARRAY_OPERATIONS = report.ARRAY_SYSTEMS
FLOOR_OF.update({op: "arrays_pickle_floor" for ops in ARRAY_OPERATIONS.values() for op in ops})
THIS = "this"
# Sources whose change means this package must be rebuilt.
SOURCES = ("Cargo.toml", "Cargo.lock", "pyproject.toml", ".cargo", "src", "lmdb_object_store")

MODES = {
    # n, rounds, large values, seconds per threads phase, worker time limit
    "full": {"n": 100_000, "rounds": 3, "large_count": 64, "duration": 2.0, "timeout": 900},
    "quick": {"n": 10_000, "rounds": 3, "large_count": 16, "duration": 0.5, "timeout": 120},
    "smoke": {"n": 1_000, "rounds": 1, "large_count": 4, "duration": 0.2, "timeout": 120},
}
# Vectors in the arrays row (float32 of 512, read in batches of 256).
ARRAYS_COUNT = {"full": 65_536, "quick": 16_384, "smoke": 1_024}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the environment ---------------------------------------------------------------


def env_python() -> Path:
    return ENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def source_hash() -> str:
    """A digest of this package's sources, to know when the install is stale."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                digest.update(str(f.relative_to(ROOT)).encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()


def pip_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """The line of pip's (or cargo's) output that best says why an install failed."""
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    for prefix in ("error[", "error:", "ERROR:"):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            return found[0][:300]
    return lines[-1][:300] if lines else f"exit status {proc.returncode}"


def pip_install(args: list[str], log_name: str, extra_env: dict[str, str] | None = None) -> str:
    """Run ``pip install ARGS`` in the environment; "ok" or the reason it failed."""
    cmd = [str(env_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    env = {**os.environ, **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"install-{log_name}.log").write_text(
        f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    )
    if proc.returncode == 0:
        return "ok"
    return f"install failed: {pip_failure(proc)}"


def prepare_env(reinstall: bool, systems: list[str]) -> dict[str, str]:
    """Create or update the environment; return each system's install status."""
    state: dict[str, str] = {}
    if STATE.exists() and not reinstall:
        state = json.loads(STATE.read_text())
    if not env_python().exists():
        log(f"creating {ENV.relative_to(ROOT)} (first run: a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
        state = {}

    def save() -> None:
        STATE.write_text(json.dumps(state, indent=1))

    upgrade = ["--upgrade"] if reinstall else []
    # numpy and msgpack: the arrays and msgpack rows (the package's extras).
    for tool in ("matplotlib", "numpy", "msgpack"):
        if state.get(tool) != "ok":
            log(f"installing {tool}")
            state[tool] = pip_install([*upgrade, tool], tool)
            save()
    for name in systems:
        requirement = SYSTEMS[name].requirement
        if name == REF:
            # Same import name as this package: its own directory, with its own
            # py-lmdb, put on the worker's PYTHONPATH only.
            if state.get(name) != "ok":
                log(f"installing {requirement} into {REF_TARGET.relative_to(ROOT)}")
                shutil.rmtree(REF_TARGET, ignore_errors=True)
                state[name] = pip_install(["--target", str(REF_TARGET), requirement], name)
        elif name == "this":
            digest = source_hash()
            if state.get(name) != "ok" or state.get("this-sources") != digest:
                log("building and installing this package (release build, a few minutes)")
                # A build directory that outlives pip's temporary one keeps
                # rebuilds incremental.
                target = {"CARGO_TARGET_DIR": str(ENV / "cargo-target")}
                state[name] = pip_install(
                    ["--no-deps", "--force-reinstall", str(ROOT)], name, target
                )
                state["this-sources"] = digest
        elif requirement and state.get(name) != "ok":
            log(f"installing {requirement}")
            state[name] = pip_install([*upgrade, requirement], name)
        save()
    return {name: state.get(name, "ok") for name in systems}


# --- running ---------------------------------------------------------------------


def run_worker(
    python: str, system: str, group: str, params: dict[str, Any], isolated: bool
) -> dict[str, Any]:
    """One worker process; its report, or an error standing for every operation."""
    with tempfile.TemporaryDirectory(prefix="bench-out-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [
            python,
            str(BENCH / "worker.py"),
            f"--system={system}",
            f"--group={group}",
            f"--n={params['n']}",
            f"--seed={params['seed']}",
            f"--large-count={params['large']['count']}",
            f"--large-size={params['large']['size']}",
            f"--readers={params['threads']['readers']}",
            f"--write-batch={params['threads']['write_batch']}",
            f"--duration={params['threads']['duration_s']}",
            f"--arrays-count={params['arrays']['count']}",
            f"--arrays-dim={params['arrays']['dim']}",
            f"--arrays-batch={params['arrays']['batch']}",
            f"--out={out}",
        ]
        env = dict(os.environ)
        if isolated:
            # Only 0.1.0 gets a PYTHONPATH: it must shadow this package.
            env.pop("PYTHONPATH", None)
            if system == REF:
                env["PYTHONPATH"] = str(REF_TARGET)
        env["PYTHONNOUSERSITE"] = "1"
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=params["timeout_s"]
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {params['timeout_s']} s"}
        if out.exists():
            return json.loads(out.read_text())
        if proc.returncode < 0:
            return {"error": f"worker killed by signal {-proc.returncode}"}
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"error": f"worker died: {tail[0][:300]}"}


def run_rounds(
    python: str, systems: list[str], params: dict[str, Any], isolated: bool
) -> dict[str, list[dict[str, Any]]]:
    """Every system, every round, interleaved; the worker reports per system."""
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for rnd in range(params["rounds"]):
        order = list(systems)
        random.Random(params["seed"] * 1000 + rnd).shuffle(order)
        for name in order:
            for group in GROUPS:
                if not runs(name, group):
                    continue
                start = time.perf_counter()
                rep = run_worker(python, name, group, params, isolated)
                rep.update(system=name, group=group, round=rnd)
                reports[name].append(rep)
                status = rep.get("error", "ok")
                took = time.perf_counter() - start
                where = f"round {rnd + 1}/{params['rounds']}  {name:<18} {group:<8}"
                log(f"{where} {took:6.1f} s  {status}")
    return reports


def runs(system: str, group: str) -> bool:
    """Whether a system has anything to measure in a group."""
    if group == "threads":
        return system != FLOOR  # pickle alone has nothing to do with threads
    if group == "codec":
        return system in (FLOOR, THIS)  # the peers' serializer is pickle: the floor
    if group.startswith("ser-"):
        # This store's serializers; the floor measures each distinct floor once.
        ser = group.removeprefix("ser-")
        return system == THIS or (system == FLOOR and SERIALIZER_FLOOR[ser] == ser)
    if group == "arrays":
        return system in ARRAY_OPERATIONS
    return True


# --- aggregating -------------------------------------------------------------------


def round_figures(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One worker report as {operation: record}, with the figures derived from it."""
    ops = dict(rep.get("results", {}))
    if "error" in rep:
        for op in group_operations(rep["system"], rep["group"]):
            ops[op] = {"status": "error", "reason": rep["error"]}
    if rep["group"] == "large" and rep["system"] != FLOOR and "peak_rss_mib" in rep:
        if ops.get("large_put", {}).get("status") == "ok":
            ops["large_peak_rss"] = {"status": "ok", "value": rep["peak_rss_mib"], "unit": "MiB"}
        else:
            ops["large_peak_rss"] = {"status": "error", "reason": "large put failed"}
    if rep["group"] == "threads":
        alone, mixed = ops.get("threads_reads_alone"), ops.get("threads_reads")
        if alone and mixed and alone["status"] == mixed["status"] == "ok":
            ratio = mixed["value"] / alone["value"]
            ops["threads_read_ratio"] = {"status": "ok", "value": ratio, "unit": "ratio"}
        elif mixed:
            ops["threads_read_ratio"] = dict(mixed)
    return ops


def median_row(system: str, op: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the rounds that succeeded; the others are counted as errors."""
    row: dict[str, Any] = {"system": system, "operation": op}
    good = [r for r in recs if r["status"] == "ok"]
    if not good:
        return row | {"status": recs[0]["status"], "reason": recs[0].get("reason", "")}
    values = [r["value"] for r in good]
    row.update(status="ok", value=statistics.median(values), unit=good[0]["unit"], rounds=values)
    failed = [r for r in recs if r["status"] != "ok"]
    if failed:
        row["errors"] = row["reason"] = (
            f"{len(failed)} of {len(recs)} rounds failed: {failed[0].get('reason', '')}"
        )
    return row


def aggregate(
    reports: dict[str, list[dict[str, Any]]], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows of (system, operation, median, ratios); and what each system reported."""
    per_op: dict[tuple[str, str], list[dict[str, Any]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, reps in reports.items():
        for rep in reps:
            meta = info.setdefault(name, {})
            meta.update({k: rep[k] for k in ("version", "python", "detail") if rep.get(k)})
            for op, rec in round_figures(rep).items():
                per_op.setdefault((name, op), []).append(rec)

    rows = [median_row(name, op, recs) for (name, op), recs in per_op.items()]
    medians = {(r["system"], r["operation"]): r["value"] for r in rows if r["status"] == "ok"}
    cpu_count = os.cpu_count()
    for row in rows:
        name, op = row["system"], row["operation"]
        row["label"] = SYSTEMS[name].label
        row["version"] = info[name].get("version")
        row["n"] = params["n"]
        row["cpu_count"] = cpu_count
        row["python"] = info[name].get("python")
        if row["status"] == "ok":
            floor = medians.get((FLOOR, FLOOR_OF.get(op, "")))
            ref = medians.get((REF, op))
            row["ratio_to_floor"] = row["value"] / floor if floor and name != FLOOR else None
            row["ratio_to_ref"] = row["value"] / ref if ref else None
    return rows, info


def system_entries(
    systems: list[str], install: dict[str, str], info: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """What the report says about each system: version, encoding, notes, status."""
    entries = []
    for name in systems:
        cls = SYSTEMS[name]
        entry = {
            "name": name,
            "label": cls.label,
            "version": info.get(name, {}).get("version"),
            "requirement": cls.requirement,
            "pickled_by_hand": cls.pickled_by_hand,
            "note": cls.note,
            "detail": info.get(name, {}).get("detail", ""),
            "status": "ok" if install[name] == "ok" else "install failed",
        }
        if install[name] != "ok":
            entry["reason"] = install[name].removeprefix("install failed: ")
        entries.append(entry)
    return entries


# Operations each group reports, to mark them all failed when its worker fails.
GROUP_OPERATIONS = {
    "basic": ["put", "get", "iterate", "put_nosync", "put_many", "get_many"],
    "large": ["large_put", "large_get", "large_get_rss_rise"],
    "threads": ["threads_reads_alone", "threads_reads", "threads_writes"],
    "codec": CODEC_OPERATIONS,
    **{f"ser-{s}": ops for s, ops in SERIALIZER_OPERATIONS.items()},
}


def group_operations(system: str, group: str) -> list[str]:
    if group == "arrays":
        return ARRAY_OPERATIONS.get(system, [])
    return GROUP_OPERATIONS[group]


def failed_install_rows(name: str, reason: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A system that could not be installed still gets its rows, marked failed."""
    return [
        {
            "system": name,
            "label": SYSTEMS[name].label,
            "operation": op,
            "status": "error",
            "reason": reason,
            "n": params["n"],
            "cpu_count": os.cpu_count(),
        }
        for group in GROUPS
        if runs(name, group)
        for op in group_operations(name, group) + (["large_peak_rss"] * (group == "large"))
        if op != "large_peak_rss" or name != FLOOR
    ]


def machine_info(info: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    pythons = {m["python"] for m in (info or {}).values() if m.get("python")}
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": ", ".join(sorted(pythons)) or platform.python_version(),
    }


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


# --- output --------------------------------------------------------------------------


def write_outputs(data: dict[str, Any], python: str, docs: bool, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / f"{name}.json"
    latest.write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {latest.relative_to(ROOT)}")
    tables = report.markdown_tables(data)
    print(tables)
    if not docs:
        return
    (DOCS / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(latest, DOCS / "benchmark-results.json")
    (DOCS / "performance.md").write_text(report.page(data))
    chart = subprocess.run(
        [python, str(BENCH / "report.py"), "chart", str(latest), str(DOCS / "img/benchmark.png")],
        capture_output=True,
        text=True,
    )
    if chart.returncode != 0:
        log(f"chart not drawn: {pip_failure(chart)}")
    log("wrote docs/performance.md, docs/benchmark-results.json, docs/img/benchmark.png")


# --- entry point -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="N = 10,000 and lighter rows")
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="N = 1,000, one round, this package and the floor, with the current "
        "Python (no environment); exit status 1 if this package fails",
    )
    p.add_argument("--n", type=int, help="entries per store")
    p.add_argument("--rounds", type=int, help="rounds; each figure is their median")
    p.add_argument("--systems", help="comma-separated subset of: " + ", ".join(SYSTEMS))
    p.add_argument("--seed", type=int, default=0, help="seed of read and run orders")
    p.add_argument("--no-install", action="store_true", help="use benchmarks/.env as it is")
    p.add_argument(
        "--reinstall", action="store_true", help="reinstall everything, upgrading the peers"
    )
    p.add_argument("--no-docs", action="store_true", help="do not write into docs/")
    return p.parse_args(argv)


def choose_systems(args: argparse.Namespace) -> list[str]:
    """The systems to run, in the report's order; ValueError names unknown ones."""
    if not args.systems:
        return [FLOOR, "this"] if args.smoke else list(SYSTEMS)
    chosen = {s.strip() for s in args.systems.split(",") if s.strip()}
    unknown = sorted(chosen - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems: {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    # The ratios need the floor, and 0.1.0 outside a smoke run.
    chosen |= {FLOOR} if args.smoke else {FLOOR, REF}
    return [s for s in SYSTEMS if s in chosen]


def make_parameters(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    preset = MODES[mode]
    return {
        "mode": mode,
        "n": args.n or preset["n"],
        "rounds": args.rounds or preset["rounds"],
        "seed": args.seed,
        "large": {"count": preset["large_count"], "size": 4 << 20},
        "threads": {
            "readers": 4,
            "writers": 1,
            "write_batch": 1000,
            "duration_s": preset["duration"],
        },
        "arrays": {"count": ARRAYS_COUNT[mode], "dim": 512, "batch": 256},
        # put_file/open of one large value (benchmarks/streams.py); none in smoke runs.
        "streams_mib": {"full": 1024, "quick": 256, "smoke": 0}[mode],
        # This store timed next to the floor in one process (benchmarks/paired.py).
        "pairs": {"full": 15, "quick": 5, "smoke": 1}[mode],
        "timeout_s": preset["timeout"],
    }


def run_script(python: str, script: str, args: list[str], what: str) -> dict[str, Any] | None:
    """Run ``benchmarks/SCRIPT ARGS --json OUT`` and read OUT; None when it failed."""
    name = script.removesuffix(".py")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        out = os.path.join(tmp, f"{name}.json")
        log(f"{name}: {what}")
        cmd = [python, str(BENCH / script), *args, "--json", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            log(f"{name} failed: {proc.stderr.strip()[-500:]}")
            return None
        return json.loads(Path(out).read_text())


def run_streams(python: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """put_file and open() of one large value against plain file I/O
    (benchmarks/streams.py, its own child processes); None when not run or failed."""
    mib, rounds = params["streams_mib"], params["rounds"]
    if not mib:
        return None
    args = ["--mib", str(mib), "--rounds", str(rounds)]
    return run_script(python, "streams.py", args, f"{mib} MiB, {rounds} rounds")


def run_paired(python: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """This store's put, get, get_many and iterate, each timed next to its
    floor in one process (benchmarks/paired.py); None when it failed."""
    args = ["--n", str(params["n"]), "--pairs", str(params["pairs"])]
    args += ["--seed", str(params["seed"])]
    return run_script(python, "paired.py", args, f"{params['pairs']} pairs")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    try:
        systems = choose_systems(args)
    except ValueError as exc:
        log(str(exc))
        return 2
    params = make_parameters(args, mode)

    if args.smoke:
        # CI's check: the interpreter at hand, where the package is installed.
        python, install = sys.executable, {name: "ok" for name in systems}
    elif args.no_install:
        if not env_python().exists():
            log("no benchmarks/.env yet: run once without --no-install")
            return 2
        state = json.loads(STATE.read_text()) if STATE.exists() else {}
        python, install = str(env_python()), {name: state.get(name, "ok") for name in systems}
    else:
        python, install = str(env_python()), prepare_env(args.reinstall, systems)
    for name in systems:
        if install[name] != "ok":
            log(f"{name}: {install[name]}")

    runnable = [s for s in systems if install[s] == "ok"]
    reports = run_rounds(python, runnable, params, isolated=not args.smoke)
    rows, info = aggregate(reports, params)
    for name in systems:
        if install[name] != "ok":
            rows += failed_install_rows(name, install[name], params)
    ops = list(report.OPERATIONS)
    rows.sort(key=lambda r: (systems.index(r["system"]), ops.index(r["operation"])))

    paired = run_paired(python, params) if "this" in runnable else None
    streams = run_streams(python, params) if "this" in runnable else None

    data = {
        "schema": 1,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/run.py", *argv]),
        "parameters": params,
        "machine": machine_info(info),
        "revision": git_revision(),
        "ref_system": REF,
        "floor_system": FLOOR,
        "systems": system_entries(systems, install, info),
        "results": rows,
        "paired": paired,
        "streams": streams,
        "elapsed_s": time.perf_counter() - started,
    }
    docs = not (args.smoke or args.no_docs)
    write_outputs(data, python, docs=docs, name="smoke" if args.smoke else "latest")
    log(f"done in {time.perf_counter() - started:.0f} s")

    if any(r["system"] == "this" and (r["status"] == "error" or r.get("errors")) for r in rows):
        log("lmdb_object_store failed: see the table above")
        return 1
    if "this" in runnable and paired is None:
        log("lmdb_object_store failed in benchmarks/paired.py: see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
