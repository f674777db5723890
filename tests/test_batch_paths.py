"""Many keys at once: get_many's ordering of large key sets, and commits
that mix updates, deletions and appends in one batch, checked against a
plain dict."""

import random

from lmdb_object_store import LmdbObjectStore


def mixed_keys(rng: random.Random, n: int) -> list[bytes]:
    """Keys of the shapes whose order is easy to get wrong: counters, keys
    longer than 16 bytes that share their first 16, keys that differ only
    by trailing zero bytes, high bytes, single bytes."""
    keys: set[bytes] = set()
    while len(keys) < n:
        r = rng.randrange(1 << 30)
        shape = r % 6
        if shape == 0:
            keys.add(f"key:{r % 100000:08d}".encode())
        elif shape == 1:
            keys.add(f"a-long-shared-head/{r % 997}".encode())
        elif shape == 2:
            keys.add(b"k" * (r % 7 + 1) + b"\x00" * (r % 3))
        elif shape == 3:
            keys.add(bytes([0xFF]) * (r % 40 + 1))
        elif shape == 4:
            keys.add(r.to_bytes(4, "big"))
        else:
            keys.add(bytes([r % 256]))
    return sorted(keys)


def test_get_many_on_thousands_of_mixed_keys(tmp_path):
    rng = random.Random(5)
    keys = mixed_keys(rng, 3000)
    stored = {k: i for i, k in enumerate(keys) if i % 3}
    with LmdbObjectStore(str(tmp_path / "db")) as store:
        store.put_many(list(stored.items()))
        store.flush()
        asked = keys + rng.sample(keys, 500)  # some asked twice
        rng.shuffle(asked)
        found, not_found = store.get_many(asked)
        assert found == {k: stored[k] for k in asked if k in stored}
        assert sorted(set(not_found)) == sorted({k for k in asked if k not in stored})
        # Buffered writes are seen as well, over the same large set.
        for k in keys[::7]:
            store[k] = "buffered"
        found, _ = store.get_many(asked)
        want = dict(stored)
        want.update({k: "buffered" for k in keys[::7]})
        assert found == {k: want[k] for k in asked if k in want}


def test_commits_mixing_updates_deletions_and_appends(tmp_path):
    rng = random.Random(11)
    model: dict[bytes, object] = {}
    with LmdbObjectStore(str(tmp_path / "db"), batch_size=500) as store:
        for round_ in range(6):
            for _ in range(1500):
                k = f"key:{rng.randrange(4000 + 2000 * round_):08d}".encode()
                if rng.random() < 0.25:
                    store.delete(k)
                    model.pop(k, None)
                else:
                    store[k] = (round_, k)
                    model[k] = (round_, k)
            store.flush()
            assert dict(store.items()) == model
            assert len(store) == len(model)
    with LmdbObjectStore(str(tmp_path / "db")) as store:
        assert dict(store.items()) == model


def test_buffer_keys_on_both_sides_of_the_inline_length(tmp_path):
    keys = [b"x" * n for n in (1, 29, 30, 31, 64, 511)]
    keys += [k + b"\x00" for k in keys[:-1]]
    with LmdbObjectStore(str(tmp_path / "db"), batch_size=100000) as store:
        for i, k in enumerate(keys):
            store[k] = i
        for i, k in enumerate(keys):
            store[k] = -i
        assert [store[k] for k in keys] == [-i for i in range(len(keys))]
        store.flush()
        assert dict(store.items()) == {k: -i for i, k in enumerate(keys)}
