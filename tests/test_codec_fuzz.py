"""Fuzzing the native pickle reader with random and mutated streams, in a
child interpreter (a crash fails the test instead of killing pytest).

For every stream the native reader either hands it to CPython's unpickler,
or reads the value CPython reads, or raises where CPython raises too; it
never crashes, and it never accepts what CPython rejects. CPython's side runs
with imports forbidden (``find_class`` raises), under an address-space limit
so that what a stream claims cannot exhaust the machine."""

from __future__ import annotations

import os

import pytest

from helpers import run_python, soak_rounds

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

FUZZ = r"""
import io, pickle, random, resource, sys
sys.path.insert(0, sys.argv[1])
seed, cases = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.setrecursionlimit(10_000)

from lmdb_object_store import _native
from test_codec_format import assert_same_graph


class NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} forbidden here")


def reference(data):
    try:
        return True, NoGlobals(io.BytesIO(data)).load()
    except Exception as exc:
        return False, exc


rng = random.Random(seed)


def value(depth=0):
    kinds = ["none", "bool", "int", "big", "float", "str", "bytes", "ba"]
    if depth < 3:
        kinds += ["list", "tuple", "dict", "set", "fs"] * 2
    kind = rng.choice(kinds)
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-70000, 70000)
    if kind == "big":
        return rng.randint(-(2**200), 2**200)
    if kind == "float":
        return rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), rng.random()])
    if kind == "str":
        points = [65, 233, 0x263A, 0x1F600, 0xD800]
        return "".join(chr(rng.choice(points)) for _ in range(rng.randint(0, 5)))
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 6))
    if kind == "ba":
        return bytearray(rng.randbytes(rng.randint(0, 3)))
    items = [value(depth + 1) for _ in range(rng.randint(0, 4))]
    hashable = [i for i in items if _hashable(i)]
    if kind == "list":
        if items and rng.random() < 0.3:
            items.append(items)
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "dict":
        return {k: v for k, v in zip(hashable, items)}
    if kind == "set":
        return set(hashable)
    return frozenset(hashable)


def _hashable(t):
    try:
        hash(t)
        return True
    except TypeError:
        return False


def mutate(data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if not data:
            data.append(rng.randrange(256))
        i = rng.randrange(len(data))
        if op == 0:
            data[i] = rng.randrange(256)
        elif op == 1:
            del data[i]
        elif op == 2:
            data.insert(i, rng.randrange(256))
        elif op == 3:
            j = rng.randrange(len(data))
            data[i], data[j] = data[j], data[i]
        else:
            # A length or index field set to something huge.
            huge = [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]
            data[i:i + 4] = rng.choice(huge)
    return bytes(data)


stats = {"native": 0, "fallback": 0, "refused": 0}
for case in range(cases):
    if case % 5 == 0:
        data = rng.randbytes(rng.randint(0, 40))
    else:
        data = pickle.dumps(value(), rng.choice([0, 1, 2, 3, 4, 5]))
        if case % 5 != 1:
            data = mutate(data)
    try:
        handled, got = _native._codec_loads(data)
    except pickle.UnpicklingError as exc:
        stats["refused"] += 1
        if "nested" in str(exc):
            continue  # CPython would crash on this one: nothing to compare
        ok, _ = reference(data)
        assert not ok, f"native refused what CPython reads: {data!r}"
        continue
    if not handled:
        stats["fallback"] += 1
        continue
    ok, want = reference(data)
    assert ok, f"native read what CPython rejects ({want!r}): {data!r}"
    try:
        assert_same_graph(got, want)
    except AssertionError as exc:
        raise AssertionError(f"{data!r}: {exc}") from None
    stats["native"] += 1
print(stats)
"""


@pytest.mark.parametrize("seed", range(soak_rounds(4)))
def test_native_reader_agrees_with_cpython_on_random_and_mutated_streams(seed):
    out = run_python(FUZZ, TESTS_DIR, str(seed), "8000", timeout=300)
    stats = eval(out.strip().splitlines()[-1])
    # The corpus exercises every outcome.
    assert stats["native"] > 500 and stats["fallback"] > 500 and stats["refused"] > 0, stats


CRAFTED = r"""
import pickle, resource, sys
from lmdb_object_store import _native
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

def refused(data):
    try:
        _native._codec_loads(data)
    except pickle.UnpicklingError as exc:
        return str(exc)
    raise AssertionError(f"not refused: {data[:40]!r}")

# Sizes far past the end: refused before anything is allocated.
for code in (b"\x8e", b"\x96"):
    for size in (1 << 62, 1 << 40, 1 << 31):
        data = b"\x80\x05" + code + size.to_bytes(8, "little") + b"."
        assert refused(data) == "pickle data was truncated"
assert refused(b"\x80\x03B\xff\xff\xff\xff.") == "pickle data was truncated"

# A memo index in the billions costs one entry...
ok, value = _native._codec_loads(b"\x80\x02Nr\xff\xff\xff\xffj\xff\xff\xff\xff\x86.")
assert ok and value == (None, None)
# ...and a bad reference after it is refused here, not handed to CPython
# (whose memo would be sized by the index).
assert "Memo" in refused(b"\x80\x02Nr\xff\xff\xff\xffj\xfe\xff\xff\xff\x86.")

# A tuple nested 200,000 deep as a dict key: CPython's unpickler overflows
# the C stack hashing it; here it is refused.
deep = b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"Ns."
assert "nested" in refused(deep)
deep_set = b"\x80\x04\x8f(" + b")" + b"\x85" * 200_000 + b"\x90."
assert "nested" in refused(deep_set)
# Deep values that are not hashed read fine (no recursion in the reader).
ok, value = _native._codec_loads(b"\x80\x04)" + b"\x85" * 200_000 + b".")
assert ok
ok, value = _native._codec_loads(b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b".")
assert ok
print("ok")
"""


def test_crafted_streams_are_refused_without_crash_or_claimed_allocation():
    assert run_python(CRAFTED, timeout=120).strip() == "ok"
