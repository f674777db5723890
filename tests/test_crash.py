"""A writer process killed (SIGKILL) at any moment, in the middle of a flush
included, never leaves a partial batch, and never loses a batch whose
``flush()`` returned (docs/semantics.md "Buffering and atomicity",
"Durability").

The writer (``proc_workers.crash_writer``) commits numbered batches, one
``flush()`` each, and appends ``done <b>`` to a record file (fsync'd) after each
flush returns. Each batch holds data keys whose values encode the batch and the
index, plus a count key, so a partial batch shows. The parent kills the writer,
reopens the store, checks it, and starts the next writer on the same store.

With ``sync=False`` LMDB skips the fsync, which only an OS crash or power loss can
punish: a killed process still leaves every committed batch in the page cache,
so the same guarantees hold. Set ``LMDB_OBJECT_STORE_SOAK=<n>`` for n times the
rounds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import join_or_fail, soak_rounds, start_thread
from lmdb_object_store import LmdbObjectStore
from proc_workers import (
    CRASH_KEYS_PER_BATCH,
    crash_batch,
    crash_count_key,
    wait_readable,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROUNDS = soak_rounds(40)
# Seconds any single wait on a writer may take before the test fails.
TIMEOUT = 20.0


def _parse_record(path: str) -> tuple[list[int], set[int]]:
    """(batches whose flush started, in order; batches whose flush returned)."""
    started: list[int] = []
    done: set[int] = set()
    with open(path, "rb") as f:
        for line in f.read().split(b"\n")[:-1]:  # a last line without "\n" is cut
            word, number = line.split()
            if word == b"flushing":
                started.append(int(number))
            else:
                assert word == b"done", line
                done.add(int(number))
    return started, done


def _cut_partial_line(path: str) -> None:
    """Cut a line the killed writer left half written, so that the next
    writer's lines start on a line of their own. A write of a few bytes can
    be cut short by SIGKILL when it crosses a page of the file; the cut line
    (``flushing <b>`` or ``done <b>``) then counts as never written, as the
    last line of the record always did."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class Writer:
    """One ``crash_writer`` process, with its stdout to aim the kill."""

    def __init__(self, tmp_path, db_path, sync, start, announce, round_no):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
        self.stderr_path = tmp_path / f"writer-{round_no}.err"
        script = "import sys, proc_workers; proc_workers.crash_writer(*sys.argv[1:])"
        args = [db_path, "1" if sync else "0", str(start), str(tmp_path / "record"), str(announce)]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", script, *args],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )

    def expect(self, line: bytes) -> None:
        got = wait_readable(self.proc.stdout.fileno(), len(line), timeout=TIMEOUT)
        assert got == line, f"writer said {got!r}, expected {line!r}: {self.stderr()}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        # Still running: it did not die of an error of its own before the kill.
        assert self.proc.poll() is None, f"writer exited by itself: {self.stderr()}"
        self.proc.send_signal(signal.SIGKILL)
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        finally:
            self.proc.stdout.close()
        assert code == -signal.SIGKILL, (code, self.stderr())

    def abandon(self) -> None:
        """Cleanup after a failure: never leave a writer running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        if not self.proc.stdout.closed:
            self.proc.stdout.close()


def _check_batch(store, batch: int, must_be_whole: bool) -> bool:
    """Whether ``batch`` is in the store; fail if it is there in part."""
    expected = crash_batch(batch)
    found, not_found = store.get_many(list(expected))
    if found:
        assert not not_found, f"batch {batch} is partial: {len(not_found)} keys missing"
        assert found == expected, f"batch {batch} has wrong values"
        return True
    assert not must_be_whole, f"batch {batch} was flushed but is gone"
    return False


# How each round picks its moment, in turn; the timing within each is random.
MOMENTS = ["flush", "running", "flush", "starting", "flush", "running"]


def _kill_at_a_random_moment(rng, writer, how):
    """Kill the writer at a moment of kind ``how``."""
    if how == "starting":
        # Anywhere from interpreter start-up through opening to the first batches.
        time.sleep(rng.uniform(0.0, 0.15))
    elif how == "running":
        writer.expect(b"ready\n")
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        # Right after the writer announces a flush: the kill lands in that
        # flush (page writes, fsync, meta page) or just after it.
        writer.expect(b"ready\n")
        writer.expect(b"flush\n")
        pause = rng.choice([0.0, 0.0, 0.0002, 0.0005, 0.001, 0.003])
        if pause:
            time.sleep(pause)
    writer.kill()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_a_writer_killed_at_any_moment_never_leaves_a_partial_or_lost_batch(
    tmp_path, db_path, rearm_watchdog, sync
):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    record = str(tmp_path / "record")
    open(record, "wb").close()
    checked_up_to = 0  # batches below this were checked in an earlier round
    committed: set[int] = set()
    in_flight_kills = {"committed": 0, "lost": 0}
    moments: dict[str, int] = {}
    start = 0
    for round_no in range(ROUNDS):
        rearm_watchdog()  # a soak outlasts the per-test watchdog; no round does
        context = f"seed {seed}, round {round_no}, sync={sync}"
        # Aim some flush kills at a large batch, whose flush takes longest.
        announce = start + rng.choice([0, 1, 2, 15 - start % 16])
        writer = Writer(tmp_path, db_path, sync, start, announce, round_no)
        how = MOMENTS[round_no % len(MOMENTS)]
        try:
            _kill_at_a_random_moment(rng, writer, how)
        finally:
            writer.abandon()
        moments[how] = moments.get(how, 0) + 1
        _cut_partial_line(record)  # the writer is dead: nothing writes to it now

        started, done = _parse_record(record)
        this_round = [b for b in started if b >= start]
        assert this_round == list(range(start, start + len(this_round))), context
        # Only the last batch of a round can have been cut off in its flush.
        assert all(b in done for b in this_round[:-1]), context

        store = LmdbObjectStore(db_path, sync=sync)
        try:
            for batch in range(checked_up_to, start + len(this_round)):
                if _check_batch(store, batch, must_be_whole=batch in done):
                    committed.add(batch)
            # Nothing beyond the last batch begun, and no stray keys anywhere.
            assert store.get(crash_count_key(start + len(this_round))) is None, context
            entries = store.stat()["entries"]
            assert entries == len(committed) * (CRASH_KEYS_PER_BATCH + 1) + (round_no > 0), context
            # The write lock the dead writer may have held is free again.
            t, outcome = start_thread(lambda s=store, r=round_no: (s.put(b"parent", r), s.flush()))
            join_or_fail(t, timeout=TIMEOUT)
            assert "error" not in outcome, (context, outcome)
        finally:
            store.close()

        if this_round and this_round[-1] not in done:
            cut = this_round[-1]
            in_flight_kills["committed" if cut in committed else "lost"] += 1
        if this_round:
            start = this_round[-1] + 1
        checked_up_to = start

    # Every batch whose flush returned is there, exactly, after all the kills.
    started, done = _parse_record(record)
    assert done <= committed, sorted(done - committed)
    with LmdbObjectStore(db_path, sync=sync) as store:
        expected: dict = {}
        for batch in sorted(committed):
            expected.update(crash_batch(batch))
        expected[b"parent"] = ROUNDS - 1
        assert dict(store.items()) == expected

    # Some kills really landed inside a flush, and the writers made progress.
    summary = f"seed {seed}: {moments}, kills during a flush: {in_flight_kills}"
    assert len(done) >= ROUNDS, summary
    assert sum(in_flight_kills.values()) >= 1, summary


def test_a_record_line_cut_by_a_kill_does_not_merge_with_the_next_writers(tmp_path):
    # A writer killed in the middle of writing a line, then the next writer.
    record = str(tmp_path / "record")
    with open(record, "wb") as f:
        f.write(b"flushing 0\ndone 0\nflushing 1\ndone 1")
    _cut_partial_line(record)
    with open(record, "ab") as f:
        f.write(b"flushing 2\ndone 2\n")
    assert _parse_record(record) == ([0, 1, 2], {0, 2})
