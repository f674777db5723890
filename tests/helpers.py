"""Helpers shared by the test modules (imported as ``helpers``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb_object_store
from lmdb_object_store import Error

KiB = 1024
MiB = 1024 * 1024

# Soak runs: the tests that repeat a random or racy scenario to catch what is
# rare run a short default, and longer when this variable is a number n > 0.
# tests/conftest.py lists what each of them does with it.
SOAK_VARIABLE = "LMDB_OBJECT_STORE_SOAK"


def soak_level() -> int:
    """The value of ``LMDB_OBJECT_STORE_SOAK``; 0 (the default runs) when unset."""
    text = os.environ.get(SOAK_VARIABLE, "").strip()
    try:
        level = int(text or "0")
    except ValueError:
        level = -1
    if level < 0:
        raise ValueError(f"{SOAK_VARIABLE} must be a whole number >= 0, got {text!r}")
    return level


SOAK = soak_level()


def soak_rounds(default: int) -> int:
    """``default`` rounds, or ``default * n`` with ``LMDB_OBJECT_STORE_SOAK=n``."""
    return default * max(1, SOAK)


# The package's automatic growth rule: max(2 x current, current + 64 MiB).
GROWTH_STEP = 64 * MiB


def grow(size: int, cap: int | None = None) -> int:
    """One growth step of the map, as the spec defines it."""
    new = max(2 * size, size + GROWTH_STEP)
    return new if cap is None else min(new, cap)


def growth_sizes(start: int, steps: int = 6) -> list[int]:
    """The map sizes reachable from ``start`` by 1..steps growth steps."""
    sizes, size = [], start
    for _ in range(steps):
        size = grow(size)
        sizes.append(size)
    return sizes


def raw_items(env) -> dict[bytes, bytes]:
    """All key -> raw value bytes of a py-lmdb environment's main database."""
    with env.begin() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def package_records(caplog, min_level=logging.NOTSET):
    """Records emitted on the ``lmdb_object_store`` logger or its children."""
    return [
        r
        for r in caplog.records
        if (r.name == "lmdb_object_store" or r.name.startswith("lmdb_object_store."))
        and r.levelno >= min_level
    ]


def run_threads(targets, timeout=20.0):
    """Run callables in daemon threads; return (results, errors), one per thread.

    Fails the test if any thread does not finish within ``timeout`` seconds (a
    deadlock) instead of hanging.
    """
    n = len(targets)
    results: list = [None] * n
    errors: list[BaseException | None] = [None] * n

    def wrap(i, fn):
        def run():
            try:
                results[i] = fn()
            except BaseException as exc:  # reported to the test
                errors[i] = exc

        return run

    threads = [threading.Thread(target=wrap(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"threads {stuck} did not finish within {timeout}s (deadlock?)"
    return results, errors


def start_thread(fn):
    """Start ``fn`` in a daemon thread; return (thread, outcome dict)."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # reported to the test
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def join_or_fail(thread, timeout=20.0):
    thread.join(timeout)
    assert not thread.is_alive(), f"thread did not finish within {timeout}s (deadlock?)"


def assert_ok_or_error(exc):
    """A re-entrant call may work or raise the package's ``Error``, nothing else."""
    assert exc is None or isinstance(exc, Error), repr(exc)


def fd_count() -> int:
    """Number of open file descriptors of this process (Linux /proc)."""
    return len(os.listdir("/proc/self/fd"))


def last_txnid(store) -> int:
    return store.info()["last_txnid"]


class Hooked:
    """A picklable value whose unpickling calls ``Hooked.hook(obj)`` when set.

    Pickles by reference to this module (``helpers.Hooked``), so it works from
    any test. Use the ``hooked`` fixture, which resets the hook afterwards.
    """

    hook = None

    def __init__(self, tag=None):
        self.tag = tag

    def __eq__(self, other):
        return isinstance(other, Hooked) and other.tag == self.tag

    def __hash__(self):
        return hash(self.tag)

    def __setstate__(self, state):
        self.__dict__.update(state)
        hook = type(self).hook
        if hook is not None:
            hook(self)


def run_python(code: str, *args: str, timeout: float = 60.0) -> str:
    """Run ``code`` (dedented) in a new interpreter that imports this same
    package; fail the test with its stderr unless it exits 0. Returns stdout."""
    pkg_parent = str(Path(lmdb_object_store.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
