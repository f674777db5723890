"""The safe serializer's codec (docs/codec.md "The safe decoder"), through its
private hooks ``_codec_loads_safe`` and ``_codec_dumps_safe``: the plain types
of the safe set round-trip, byte for byte as ``pickle.dumps`` writes them, and
no stream makes it import or call anything outside its allow-list.

Hostile streams run in a child interpreter: each carries a side effect (a
file or directory created, a class changed) that shows whether it ran, and
the same stream is also given to ``pickle.loads`` there, to prove that the
payload is live."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import fractions
import json
import math
import pickle
import types
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import run_python
from lmdb_object_store import Error, UnsafeValueError, _native

loads_safe = _native._codec_loads_safe
dumps_safe = _native._codec_dumps_safe


def same(got, want):
    """``got`` is ``want``'s equal, with the same exact types all the way down."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            same(g, w)
    elif isinstance(want, dict):
        assert len(got) == len(want)
        for (gk, gv), (wk, wv) in zip(got.items(), want.items(), strict=True):
            same(gk, wk)
            same(gv, wv)
    elif isinstance(want, (set, frozenset)):
        key = lambda x: (type(x).__name__, repr(x))  # noqa: E731
        assert sorted(map(key, got)) == sorted(map(key, want))
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        # repr tells apart what == does not: -0.0, Decimal("1.0") and
        # Decimal("1"), a datetime's tzinfo and fold.
        assert got == want and repr(got) == repr(want), (got, want)


EAST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
WEST = dt.timezone(dt.timedelta(hours=-3, seconds=7))

SAMPLES = [
    None,
    True,
    False,
    0,
    -1,
    255,
    2**31,
    -(2**70),
    2**1000,
    1.5,
    -0.0,
    math.inf,
    complex(1.5, -2.0),
    complex(0.0, math.inf),
    "",
    "text",
    "é😀\x00",
    b"",
    b"ab\x00\xff",
    bytearray(),
    bytearray(b"xyz"),
    (),
    (1, "a", None),
    [],
    [1, [2, [3]]],
    {},
    {"a": 1, 2: [b"x"], (1, 2): None},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({1.5, b"b"}),
    dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
    dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=EAST),
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc, fold=1),
    dt.datetime(1, 1, 1, tzinfo=WEST),
    dt.date(2020, 1, 2),
    dt.date.max,
    dt.time(1, 2, 3, 4),
    dt.time(23, 0, tzinfo=EAST, fold=1),
    dt.timedelta(days=-3, seconds=7, microseconds=11),
    dt.timedelta.max,
    dt.timezone.utc,
    EAST,
    WEST,
    decimal.Decimal("1.5"),
    decimal.Decimal("1.50"),
    decimal.Decimal("-0"),
    decimal.Decimal("-Infinity"),
    decimal.Decimal("1E+999999"),
    uuid.UUID(int=0),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    uuid.UUID(int=2**128 - 1, is_safe=uuid.SafeUUID.safe),
    # Everything at once, nested.
    {
        "when": [dt.datetime(2020, 1, 1, tzinfo=EAST), dt.date(2020, 1, 1)],
        "ids": (uuid.UUID(int=7), frozenset({decimal.Decimal("2.5")})),
        "raw": [bytearray(b"\x00"), b"\x01", complex(1, 1)],
    },
]


def sample_id(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("value", SAMPLES, ids=sample_id)
def test_allowed_values_round_trip_byte_for_byte(value, protocol):
    data = dumps_safe(value, protocol)
    assert data == pickle.dumps(value, protocol)
    # What pickle.loads reads (protocols 2 and 3 drop a datetime's fold).
    same(loads_safe(data), pickle.loads(data))
    assert loads_safe(bytearray(data)) == value


@pytest.mark.parametrize("protocol", [0, 1])
@pytest.mark.parametrize("value", SAMPLES, ids=sample_id)
def test_reads_protocol_0_and_1_pickles(value, protocol):
    data = pickle.dumps(value, protocol)
    same(loads_safe(data), pickle.loads(data))
    assert loads_safe(data) == value


@pytest.mark.parametrize("protocol", range(6))
def test_shared_and_recursive_references_are_kept(protocol):
    when = dt.datetime(2020, 5, 6, tzinfo=EAST)
    loop = [when, uuid.UUID(int=3)]
    loop.append(loop)
    value = {"a": when, "b": [when, loop], "c": loop}
    got = loads_safe(pickle.dumps(value, protocol))
    assert got["a"] is got["b"][0] is got["c"][0]
    assert got["c"][2] is got["c"] and got["b"][1] is got["c"]
    assert got["a"] == when and got["c"][1] == uuid.UUID(int=3)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_values_go_through_the_native_encoder(protocol):
    # A value the native encoder writes is not pickled again or read back:
    # its bytes are the native encoder's.
    value = {"a": [1, 2.5, None, "x", (b"y", True)], "b": {3}, "c": frozenset({4})}
    native = _native._codec_dumps(value, protocol)
    if native is not None:
        assert dumps_safe(value, protocol) == native


def test_the_error_type_is_in_the_tree():
    import lmdb_object_store

    assert issubclass(UnsafeValueError, Error)
    assert "UnsafeValueError" in lmdb_object_store.__all__
    assert lmdb_object_store.UnsafeValueError is UnsafeValueError
    made = UnsafeValueError("made by hand")
    assert made.global_name is None and made.key is None


# ------------------------------------------------------------ hostile streams

HOSTILE = r"""
import copyreg, json, os, pickle, resource, subprocess, sys, uuid
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
workdir = sys.argv[1]
sys.path.insert(0, workdir)
from lmdb_object_store import UnsafeValueError, _native

P4 = b"\x80\x04"


def text(s):
    data = s.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def short(s):
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data


def stack_global(module, name):
    return short(module) + short(name) + b"\x93"


class Call:
    # Pickles as func(*args), which pickle.loads calls.
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def exists(path):
    return os.path.exists(path)


def fraction_changed(_):
    import fractions

    return hasattr(fractions.Fraction, "planted")


def imported(_):
    return "evilmod" in sys.modules or exists(os.path.join(workdir, "evilmod-ran"))


with open(os.path.join(workdir, "evilmod.py"), "w") as f:
    f.write(f"open({os.path.join(workdir, 'evilmod-ran')!r}, 'w').close()\nthing = 1\n")

copyreg.add_extension("os", "mkdir", 0xF0)

# name -> (stream maker taking the marker path, check of the side effect)
CASES = {
    "os.system, GLOBAL + REDUCE, protocol 0": (
        lambda m: b"cos\nsystem\n(S'touch " + m.encode() + b"'\ntR.", exists),
    "os.system, STACK_GLOBAL + REDUCE, protocol 4": (
        lambda m: P4 + stack_global("os", "system") + text("touch " + m) + b"\x85R.", exists),
    "builtins.eval": (
        lambda m: P4 + stack_global("builtins", "eval")
        + text(f"__import__('os').mkdir({m!r})") + b"\x85R.", exists),
    "__builtin__.eval, Python 2 name, protocol 0": (
        lambda m: b"c__builtin__\neval\n(V__import__('os').mkdir(" + repr(m).encode()
        + b")\ntR.", exists),
    "getattr chain": (
        lambda m: P4 + stack_global("builtins", "getattr")
        + stack_global("builtins", "__import__") + text("os") + b"\x85R"
        + text("mkdir") + b"\x86R" + text(m) + b"\x85R.", exists),
    "dotted name through an allowed module": (
        lambda m: P4 + stack_global("uuid", "os.mkdir") + text(m) + b"\x85R.", exists),
    "dotted name through an allowed class": (
        lambda m: P4 + stack_global("uuid", "UUID.__init__.__globals__") + b".", None),
    "INST": (lambda m: b"(V" + m.encode() + b"\nios\nmkdir\n.", exists),
    "OBJ": (lambda m: b"(cos\nmkdir\nV" + m.encode() + b"\no.", exists),
    "NEWOBJ of a class outside the set": (
        lambda m: P4 + stack_global("subprocess", "Popen") + b")\x81.", None),
    "PERSID": (lambda m: b"Pfoo\n.", None),
    "BINPERSID": (lambda m: P4 + text("foo") + b"Q.", None),
    "EXT1 registered to os.mkdir": (lambda m: b"\x80\x02\x82\xf0" + text(m) + b"\x85R.", exists),
    "NEXT_BUFFER": (
        lambda m: pickle.dumps(pickle.PickleBuffer(b"x"), 5, buffer_callback=lambda b: False),
        None),
    "READONLY_BUFFER": (lambda m: b"\x80\x05C\x01x\x98.", None),
    "_codecs.encode with another codec": (
        lambda m: b"\x80\x02c_codecs\nencode\n" + text("x") + text("rot13") + b"\x86R.", None),
    "_codecs.encode memoized, reused with another codec": (
        lambda m: b"\x80\x02c_codecs\nencode\nq\x00" + text("x") + text("latin1")
        + b"\x86Rh\x00" + text("x") + text("hex") + b"\x86R\x86.", None),
    # _reconstructor(cls, base, state) calls base.__init__(obj, state), and a
    # FileHandler's creates the file it is given.
    "copyreg._reconstructor with a class outside the set": (
        lambda m: b"\x80\x02ccopy_reg\n_reconstructor\nclogging\nFileHandler\nq\x01h\x01"
        + text(m) + b"\x87R.", exists),
    "copyreg._reconstructor with another base": (
        lambda m: b"ccopy_reg\n_reconstructor\n(cuuid\nUUID\nc__builtin__\nset\n(I1\nltR.",
        None),
    "copyreg._reconstructor with a state": (
        lambda m: b"ccopy_reg\n_reconstructor\n(cuuid\nUUID\nc__builtin__\nobject\nI1\ntR.",
        None),
    "builtins.object called": (lambda m: b"c__builtin__\nobject\n)R.", None),
    "builtins.bytes of a size": (
        lambda m: b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.",
        None),
    "builtins.bytearray of a size": (
        lambda m: b"\x80\x02c__builtin__\nbytearray\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.",
        None),
    # Every stream is read with allowed=["fractions.Fraction"] (which no
    # other case needs): a class may be allowed, yet no stream may change it
    # for the whole process.
    "BUILD on an allowed class": (
        lambda m: P4 + stack_global("fractions", "Fraction") + b"N}" + short("planted")
        + b"K\x05s\x86b.", fraction_changed),
    "a module the stream names": (
        lambda m: P4 + stack_global("evilmod", "thing") + b".", imported),
}
for protocol in range(6):
    CASES[f"nested in allowed containers, protocol {protocol}"] = (
        lambda m, p=protocol: pickle.dumps(
            {"ok": [1, uuid.UUID(int=1)], "bad": [(2, {"x": Call(os.mkdir, m)})]}, p),
        exists)
    CASES[f"the same global twice (memoized), protocol {protocol}"] = (
        lambda m, p=protocol: pickle.dumps(
            [Call(os.mkdir, m + "-a"), Call(os.mkdir, m)], p),
        exists)


def outcome(name, make, effect, safe):
    marker = os.path.join(workdir, ("safe-" if safe else "plain-") + str(abs(hash(name))))
    data = make(marker)
    error = global_name = None
    try:
        if safe:
            _native._codec_loads_safe(data, allowed=["fractions.Fraction"])
        else:
            pickle.loads(data)
    except Exception as exc:
        error = type(exc).__name__
        global_name = getattr(exc, "global_name", None)
    return {
        "error": error,
        "global_name": global_name,
        "ran": None if effect is None else effect(marker),
    }


results = {}
for name, (make, effect) in CASES.items():
    results[name] = {"safe": outcome(name, make, effect, True)}
# Then each payload under pickle.loads, to show it is live; this also
# fills the unpickler's extension cache, which the safe reader must not use.
for name, (make, effect) in CASES.items():
    results[name]["plain"] = outcome(name, make, effect, False)
make, effect = CASES["EXT1 registered to os.mkdir"]
results["EXT1 registered to os.mkdir, its cache filled"] = {
    "safe": outcome("EXT1 again", make, exists, True),
    "plain": {"error": None, "global_name": None, "ran": True},
}
print(json.dumps(results))
"""

MKDIR = f"{__import__('os').mkdir.__module__}.mkdir"

# Case -> the global the error names (None: an opcode or a helper's arguments
# were refused, and the error names no global, or names the helper).
EXPECTED = {
    "os.system, GLOBAL + REDUCE, protocol 0": "os.system",
    "os.system, STACK_GLOBAL + REDUCE, protocol 4": "os.system",
    "builtins.eval": "builtins.eval",
    "__builtin__.eval, Python 2 name, protocol 0": "builtins.eval",
    "getattr chain": "builtins.getattr",
    "dotted name through an allowed module": "uuid.os.mkdir",
    "dotted name through an allowed class": "uuid.UUID.__init__.__globals__",
    "INST": "os.mkdir",
    "OBJ": "os.mkdir",
    "NEWOBJ of a class outside the set": "subprocess.Popen",
    "PERSID": None,
    "BINPERSID": None,
    "EXT1 registered to os.mkdir": None,
    "EXT1 registered to os.mkdir, its cache filled": None,
    "NEXT_BUFFER": None,
    "READONLY_BUFFER": None,
    "_codecs.encode with another codec": "_codecs.encode",
    "_codecs.encode memoized, reused with another codec": "_codecs.encode",
    "copyreg._reconstructor with a class outside the set": "logging.FileHandler",
    "copyreg._reconstructor with another base": "copyreg._reconstructor",
    "copyreg._reconstructor with a state": "copyreg._reconstructor",
    "builtins.object called": "builtins.object",
    "builtins.bytes of a size": "builtins.bytes",
    "builtins.bytearray of a size": "builtins.bytearray",
    "BUILD on an allowed class": None,
    "a module the stream names": "evilmod.thing",
    **{f"nested in allowed containers, protocol {p}": MKDIR for p in range(6)},
    **{f"the same global twice (memoized), protocol {p}": MKDIR for p in range(6)},
}


@pytest.fixture(scope="module")
def hostile_outcomes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    return json.loads(run_python(HOSTILE, str(workdir), timeout=120))


@pytest.mark.parametrize("case", list(EXPECTED))
def test_hostile_stream_is_refused_and_never_runs(hostile_outcomes, case):
    got = hostile_outcomes[case]
    assert got["safe"]["error"] == "UnsafeValueError", got
    assert got["safe"]["global_name"] == EXPECTED[case], got
    assert not got["safe"]["ran"], f"the payload ran: {got}"
    # The payload is live: plain pickle.loads runs it.
    assert got["plain"]["ran"] in (True, None), got


def test_every_hostile_case_is_checked(hostile_outcomes):
    assert set(hostile_outcomes) == set(EXPECTED)


MALFORMED = r"""
import pickle, random, resource, sys, uuid, datetime, decimal, os, json
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from lmdb_object_store import UnsafeValueError, _native

P4 = b"\x80\x04"
results = {}


def attempt(name, data):
    try:
        _native._codec_loads_safe(data)
        results[name] = ["read", ""]
    except Exception as exc:
        results[name] = [type(exc).__name__, str(exc)]


date = b"\x8c\x08datetime\x8c\x04date\x93C\x04\x07\xe4\x01\x02\x85R"
# A tuple key 200,000 deep next to a date (so the native reader hands the
# stream over): CPython's unpickler would overflow the C stack hashing it.
attempt("deep tuple key", P4 + b"})" + b"\x85" * 200_000 + date + b"s.")
# A UUID whose state holds a deep tuple, then hashed as a dict key.
attempt(
    "deep state", P4 + b"}\x8c\x04uuid\x8c\x04UUID\x93)\x81\x94}\x8c\x03int)"
    + b"\x85" * 100 + b"sbNs.")
attempt("memo index past the stream", b"\x80\x02c__builtin__\nset\nr\xff\xff\xff\x7f)R.")
attempt("bytes longer than the stream", P4 + date + b"\x8e\xff\xff\xff\xff\xff\x00\x00\x00.")
attempt("truncated", pickle.dumps(uuid.UUID(int=3), 2)[:-3])
attempt("unknown opcode", b"\x80\x02c__builtin__\nset\n\xff.")
attempt("empty", b"")

# Mutated pickles of allowed values next to a live payload: whatever the
# outcome, no crash and the payload never runs.
marker = os.path.join(sys.argv[1], "fuzz-ran")


class Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


rng = random.Random(1234)
values = [
    [datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc), decimal.Decimal("1.5")],
    {"u": uuid.UUID(int=9), "c": complex(1, 2), "s": {1, 2}, "b": bytearray(b"x")},
    [Call(os.mkdir, marker), datetime.timedelta(3)],
]
kinds = {}
for case in range(4000):
    data = bytearray(pickle.dumps(rng.choice(values), rng.randrange(6)))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(data))
        choice = rng.randrange(3)
        if choice == 0:
            data[i] = rng.randrange(256)
        elif choice == 1:
            del data[i]
        else:
            data.insert(i, rng.randrange(256))
    try:
        _native._codec_loads_safe(bytes(data))
        kind = "read"
    except Exception as exc:
        kind = type(exc).__name__
    kinds[kind] = kinds.get(kind, 0) + 1
results["fuzz"] = [sorted(kinds), str(os.path.exists(marker))]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def malformed_outcomes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("malformed")
    return json.loads(run_python(MALFORMED, str(workdir), timeout=120))


@pytest.mark.parametrize(
    "case, message",
    [
        ("deep tuple key", "nested 3001 deep"),
        ("deep state", "state nested"),
        ("memo index past the stream", "memo index"),
        ("bytes longer than the stream", "truncated"),
        ("truncated", "Ran out of input"),
        ("unknown opcode", "invalid load key"),
        ("empty", "Ran out of input"),
    ],
)
def test_malformed_streams_raise_the_unpickling_error(malformed_outcomes, case, message):
    kind, text = malformed_outcomes[case]
    assert kind == "UnpicklingError", (kind, text)
    assert message in text


def test_mutated_streams_never_crash_or_run_a_payload(malformed_outcomes):
    kinds, ran = malformed_outcomes["fuzz"]
    assert ran == "False"
    assert "UnsafeValueError" in kinds and "read" in kinds


# ------------------------------------------------------------ allowed=


@pytest.mark.parametrize(
    "value, name",
    [
        (collections.OrderedDict(a=1, b=[2]), "collections.OrderedDict"),
        (fractions.Fraction(1, 3), "fractions.Fraction"),
        (types.SimpleNamespace(a=1, b=dt.date(2020, 1, 1)), "types.SimpleNamespace"),
        (collections.UserDict(a=1), "collections.UserDict"),
    ],
)
@pytest.mark.parametrize("protocol", range(6))
def test_allowed_widens_the_set(value, name, protocol):
    data = pickle.dumps(value, protocol)
    with pytest.raises(UnsafeValueError) as refused:
        loads_safe(data)
    assert refused.value.global_name == name
    assert name in str(refused.value)
    got = loads_safe(data, allowed=[name])
    assert type(got) is type(value) and got == value
    assert loads_safe(data, allowed={name, "os.system"}) == value
    if protocol >= 2:
        assert dumps_safe(value, protocol, allowed=(name,)) == data
        with pytest.raises(UnsafeValueError) as refused:
            dumps_safe(value, protocol)
        assert refused.value.global_name == name


@pytest.mark.parametrize(
    "allowed, error, message",
    [
        ("collections.OrderedDict", TypeError, "not one string"),
        ([b"collections.OrderedDict"], TypeError, 'not a "module.qualname"'),
        (["OrderedDict"], ValueError, "module.qualname"),
        (["collections."], ValueError, "module.qualname"),
        (3, TypeError, "not iterable"),
    ],
)
def test_allowed_must_name_globals(allowed, error, message):
    with pytest.raises(error, match=message):
        loads_safe(pickle.dumps(None), allowed=allowed)


# ------------------------------------------------------------ writes


class Reduces:
    """Pickles as whatever ``__reduce__`` returns."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_write_outside_the_set_fails_at_the_call(protocol):
    with pytest.raises(UnsafeValueError) as refused:
        dumps_safe({"a": [Reduces((print, ("x",)))]}, protocol)
    assert refused.value.global_name == "builtins.print"
    with pytest.raises(UnsafeValueError) as refused:
        dumps_safe(Reduces((__import__("codecs").encode, ("x", "rot13"))), protocol)
    assert refused.value.global_name == "_codecs.encode"


def test_a_write_that_would_not_read_back_fails_at_the_call():
    with pytest.raises(UnsafeValueError, match="would not read this value back") as refused:
        dumps_safe(Reduces((dt.date, ("not a date",))))
    assert refused.value.global_name is None
    assert isinstance(refused.value.__cause__, TypeError)


# ------------------------------------------------------------ property

timezones = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.builds(
        dt.timezone,
        st.timedeltas(
            min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23)
        ),
    ),
)
safe_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.decimals(allow_nan=False),
    st.datetimes(timezones=timezones),
    st.dates(),
    st.times(timezones=timezones),
    st.timedeltas(),
    st.uuids(),
)
safe_hashables = st.one_of(safe_atoms, st.lists(safe_atoms, max_size=3).map(tuple))
safe_values = st.recursive(
    st.one_of(safe_atoms, st.binary(max_size=20).map(bytearray)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(safe_hashables, inner, max_size=4),
        st.sets(safe_hashables, max_size=4),
        st.frozensets(safe_hashables, max_size=4),
    ),
    max_leaves=12,
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(value=safe_values, protocol=st.sampled_from([2, 3, 4, 5]), old=st.sampled_from([0, 1]))
def test_random_allowed_values(value, protocol, old):
    data = dumps_safe(value, protocol)
    assert data == pickle.dumps(value, protocol)
    same(loads_safe(data), pickle.loads(data))
    old_data = pickle.dumps(value, old)
    same(loads_safe(old_data), pickle.loads(old_data))
