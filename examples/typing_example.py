"""A fully typed program that uses lmdb_object_store, as a user's project would.

CI type-checks it against the installed wheel with ``mypy --strict`` and with
pyright in strict mode, so the shipped stubs must describe every call below;
``python examples/typing_example.py`` runs it in a temporary directory.
"""

# pyright: strict

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from lmdb_object_store import (
    ClosedError,
    Error,
    LmdbObjectStore,
    MapFullError,
    UnpickleError,
    lmdb_version,
)


@dataclass(frozen=True)
class User:
    name: str
    langs: tuple[str, ...]


def user_key(name: str) -> str:
    return f"user:{name.lower()}"


def save_users(store: LmdbObjectStore, users: list[User]) -> None:
    """All or nothing: one transaction for the whole list."""
    store.put_many({user_key(user.name): user for user in users})


def load_user(store: LmdbObjectStore, name: str) -> User | None:
    value = store.get(user_key(name))
    return value if isinstance(value, User) else None


def users_by_prefix(store: LmdbObjectStore, prefix: str) -> Iterator[tuple[str, User]]:
    for key, value in store.items(prefix=prefix):
        if isinstance(key, str) and isinstance(value, User):
            yield key, value


def missing_users(store: LmdbObjectStore, names: list[str]) -> list[str]:
    _found, not_found = store.get_many([user_key(n) for n in names], decode_keys=True)
    return [key for key in not_found if isinstance(key, str)]


def describe(store: LmdbObjectStore) -> str:
    entries: int = store.stat()["entries"]
    map_size: int = store.info()["map_size"]
    encoding: str | None = store.key_encoding
    return f"{store.path}: {entries} entries, map {map_size} bytes, keys as {encoding}"


def main() -> None:
    major, minor, patch = lmdb_version()
    print(f"LMDB {major}.{minor}.{patch}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "users.lmdb")
        with LmdbObjectStore(path, batch_size=100, key_encoding="utf-8") as store:
            save_users(store, [User("Ada", ("python", "rust")), User("Grace", ("cobol",))])
            store[b"raw:counter"] = 1
            ada = load_user(store, "Ada")
            assert ada is not None and ada.langs == ("python", "rust")
            assert missing_users(store, ["Ada", "Linus"]) == ["user:linus"]
            assert [key for key, _ in users_by_prefix(store, "user:")] == [
                "user:ada",
                "user:grace",
            ]
            count: int = store.pop("raw:counter")
            assert count == 1
            print(describe(store))
        try:
            store.get("user:ada")
        except ClosedError:
            print("a closed store refuses reads")
        except (MapFullError, UnpickleError, Error) as exc:
            raise SystemExit(f"unexpected error: {exc!r}") from exc


if __name__ == "__main__":
    main()
