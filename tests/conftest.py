"""Shared fixtures for the lmdb_object_store test suite.

Every test runs under a watchdog: if a test deadlocks, faulthandler dumps the
stacks of all threads and kills the process instead of letting the run hang.

The environment variables the suite reads, all optional:

``LMDB_OBJECT_STORE_SOAK=<n>``
    Soak runs. Unset or 0: the short default runs. A number n > 0 makes the
    tests that repeat a random or racy scenario run longer (each restarts the
    watchdog between its rounds):

    - test_crash.py: 40 x n writers killed (default 40);
    - test_stress.py: n rounds of each test, each with up to 20 s of load
      (default one round of 2 s);
    - test_leaks.py: 20 x (n + 1) store lifetimes, at most 60 (default 20);
    - test_fuzz_input.py: 1,000 x n examples per test (default 200);
    - test_codec_format.py: n shards of 2,000 graphs for protocols 5 and 4
      (default 1);
    - test_codec_fuzz.py: 4 x n seeds of 8,000 streams (default 4);
    - test_lifecycle_faults.py: n times the interpreter exits with daemon
      threads reading (default 28) and writing (default 10), and n times the
      20 races of a with block's exit against close();
    - test_read_fork_faults.py: n runs of 24 forks beside a writer (default 1);
    - test_processes.py: 10 x n rounds of readers killed (default 10);
    - test_writemap_processes.py: n races of 1,500 opens against a growing
      writer (default 1).

``LMDB_OBJECT_STORE_SEED=<seed>``
    Replays the random choices of a test_stress.py run, which prints its seed.

``LMDB_OBJECT_STORE_EXPECT_INSTALLED=1``
    test_packaging.py fails unless the package under test is the installed
    distribution, in site-packages (.ci/test-wheels sets it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys

import pytest

# Make ``import helpers`` work whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import SOAK, SOAK_VARIABLE, Hooked, raw_items  # noqa: E402
from lmdb_object_store import LmdbObjectStore  # noqa: E402

# Seconds a single test may run before the whole process is killed. The suite
# as a whole runs in seconds; this only turns a deadlock into a failure.
WATCHDOG_SECONDS = 60

# File descriptor the watchdog writes tracebacks to: the terminal's stderr, not
# pytest's capture file (which is lost when the watchdog kills the process).
_watchdog_fd: int | None = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    global _watchdog_fd
    try:
        # pytest keeps the real stderr in the fd-capture object (private API,
        # hence the fallback).
        capman = config.pluginmanager.getplugin("capturemanager")
        real_fd = capman._global_capturing.err.targetfd_save
    except Exception:
        real_fd = sys.__stderr__.fileno()
    try:
        _watchdog_fd = os.dup(real_fd)
    except OSError:
        _watchdog_fd = None


def pytest_report_header(config):
    if SOAK:
        return f"soak runs: {SOAK_VARIABLE}={SOAK}"
    return None


def pytest_unconfigure(config):
    global _watchdog_fd
    if _watchdog_fd is not None:
        faulthandler.cancel_dump_traceback_later()
        os.close(_watchdog_fd)
        _watchdog_fd = None


def _arm_watchdog():
    if _watchdog_fd is not None:
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=_watchdog_fd)
    else:
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)


@pytest.fixture(autouse=True)
def _watchdog():
    """Kill the run (with a traceback of every thread) if a test deadlocks."""
    _arm_watchdog()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def rearm_watchdog():
    """``rearm_watchdog()`` restarts the countdown: for soak runs longer than
    the watchdog allows a whole test, called between steps that each finish
    well within it."""
    return _arm_watchdog


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node, call, report):
    """pytest's faulthandler plugin cancels pending timers when a test fails;
    re-arm the watchdog so a deadlock in the teardown that follows (closing a
    store a stuck thread still holds) still ends the run."""
    if isinstance(node, pytest.Item):
        _arm_watchdog()


@pytest.fixture
def db_path(tmp_path):
    """A path (str) where no store exists yet."""
    return str(tmp_path / "db")


@pytest.fixture
def table():
    """The ``table=`` that ``make_store`` opens stores with: ``None``, the main
    table. A test parametrised over ``table`` (``@pytest.mark.parametrize("table",
    [None, "t"])``) runs with a named table of the file as well."""
    return None


@pytest.fixture
def make_store(db_path, table):
    """Factory: ``make_store(path=None, *args, **kwargs)`` opens a store.

    Stores open the ``table`` fixture's table unless ``table=`` is given.
    Every store opened through the factory is closed at teardown (errors at that
    point are ignored: some tests leave a buffer that cannot be flushed).
    """
    opened: list[LmdbObjectStore] = []

    def factory(path=None, *args, **kwargs):
        if table is not None:
            kwargs.setdefault("table", table)
        store = LmdbObjectStore(db_path if path is None else path, *args, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in reversed(opened):
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture
def store(make_store):
    """A fresh writable store with default options."""
    return make_store()


@pytest.fixture
def raw_env():
    """Factory for py-lmdb environments, closed at teardown.

    py-lmdb may only open a path after every LmdbObjectStore on that path in this
    process has been closed (LMDB forbids two opens of one file per process).
    """
    import lmdb

    envs = []

    def factory(path, **kwargs):
        env = lmdb.open(str(path), **kwargs)
        envs.append(env)
        return env

    yield factory
    for env in envs:
        with contextlib.suppress(Exception):
            env.close()


@pytest.fixture
def read_raw(raw_env):
    """``read_raw(path, **kwargs)`` -> {key: raw value bytes} read with py-lmdb."""

    def reader(path, **kwargs):
        kwargs.setdefault("readonly", True)
        env = raw_env(path, **kwargs)
        try:
            return raw_items(env)
        finally:
            env.close()

    return reader


@pytest.fixture
def package_logs(caplog):
    """caplog capturing everything logged on the ``lmdb_object_store`` logger."""
    caplog.set_level(logging.DEBUG, logger="lmdb_object_store")
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def hooked():
    """The ``Hooked`` class, with its unpickling hook reset after the test."""
    Hooked.hook = None
    try:
        yield Hooked
    finally:
        Hooked.hook = None
