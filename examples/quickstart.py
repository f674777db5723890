"""A first tour of lmdb_object_store against a store on disk.

Run it with ``python examples/quickstart.py``. It works in a temporary
directory and removes it at the end.
"""

import os
import tempfile

from lmdb_object_store import LmdbObjectStore


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "users.lmdb")
        print(f"opening a new store at {path}")

        # str keys need a key_encoding; without one, keys must be bytes-like.
        store = LmdbObjectStore(path, key_encoding="utf-8")

        users = {
            "user:ada": {"name": "Ada", "langs": ["python", "rust"]},
            "user:grace": {"name": "Grace", "langs": ["cobol"]},
            "user:linus": {"name": "Linus", "langs": ["c"]},
            "team:core": {"members": ["user:ada", "user:linus"]},
        }
        for key, value in users.items():
            store[key] = value  # pickled now, held in the write buffer
        print(f"wrote {len(users)} entries; {store.pending} waiting in the buffer")

        store.flush()  # one LMDB write transaction for the whole buffer
        print(f"flushed; {store.pending} waiting in the buffer")

        print("store['user:ada'] ->", store["user:ada"])
        print("store.get('user:nobody', 'absent') ->", store.get("user:nobody", "absent"))

        found, not_found = store.get_many(["user:grace", "user:nobody"], decode_keys=True)
        print("get_many found:", found)
        print("get_many not found:", not_found)

        print("keys with prefix 'user:', in key order:")
        for key, value in store.items(prefix="user:"):
            print(f"  {key} -> {value['name']}")

        print("len(store) ->", len(store))
        store.close()
        print("closed")

        with LmdbObjectStore(path, key_encoding="utf-8") as reopened:
            print(f"reopened: {len(reopened)} entries")
            if dict(reopened.items()) != users:
                raise SystemExit("the reopened store does not hold what was written")
            print("every entry survived the close:", sorted(reopened))


if __name__ == "__main__":
    main()
