"""Buffered writes survive a store that is never closed: at interpreter exit,
and when the store object is dropped."""

import gc
import subprocess
import sys
import textwrap

from lmdb_object_store import LmdbObjectStore


def test_unclosed_store_commits_its_buffer_at_interpreter_exit(tmp_path):
    path = tmp_path / "db"
    script = textwrap.dedent(
        f"""
        from lmdb_object_store import LmdbObjectStore
        store = LmdbObjectStore({str(path)!r}, batch_size=1_000_000)
        for i in range(500):
            store[b"k%03d" % i] = {{"i": i}}
        assert store.pending == 500
        # no flush, no close: the process just ends
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with LmdbObjectStore(path) as store:
        assert len(store) == 500
        assert store[b"k499"] == {"i": 499}


def test_dropped_store_commits_its_buffer(tmp_path):
    path = tmp_path / "db"
    store = LmdbObjectStore(path, batch_size=1_000_000)
    store[b"dropped"] = "still here"
    assert store.pending == 1
    del store
    gc.collect()
    with LmdbObjectStore(path) as again:
        assert again[b"dropped"] == "still here"
