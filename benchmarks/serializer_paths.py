"""The ways the json and msgpack serializers could encode and decode one value,
measured against each other in one process, interleaved round by round.

    python benchmarks/serializer_paths.py              # 100,000 values, 7 rounds
    python benchmarks/serializer_paths.py --n 20000 --rounds 5

It is how the serializers' implementation was chosen (see docs/performance.md):
each way turns the workload's values into the bytes the store writes (UTF-8 for
json) and back, one value per call as a put or a get does. Needs msgpack; orjson
and ormsgpack (Rust encoders and decoders, the speed a Rust path could reach;
orjson writes the store's bytes for these values, not for every value) are
measured when installed. Each figure is the median over the rounds in values
per second of the process's CPU time, with the ratio to the first row of each
table (the way the store took before the second); "same bytes" says whether the
way writes exactly the store's bytes (for a decoder: gives back the same values).

On a shared virtual machine even CPU time moves with the load (time stolen by
other guests is counted), so the figures in docs/ are instructions counted:

    for k in 0 1 2; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python benchmarks/serializer_paths.py --n 5000 --count $k; done
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import json.decoder
import json.encoder
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgpack


def make_values(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"user{i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(n)]


def json_ways() -> tuple[dict[str, Callable[[Any], bytes]], dict[str, Callable[[bytes], Any]]]:
    # The store's encoder: compact, UTF-8 rather than escapes, no NaN.
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    decoder = json.JSONDecoder()
    encode_str = json.encoder.encode_basestring  # ensure_ascii=False
    make = json.encoder.c_make_encoder

    def c_encoder_per_call(obj: Any) -> bytes:
        # What JSONEncoder.iterencode builds on every call, built directly: a
        # fresh markers dict keeps the circular-reference check and its error.
        enc = make({}, encoder.default, encode_str, None, ":", ",", False, False, False)
        return "".join(enc(obj, 0)).encode()

    shared = make(None, encoder.default, encode_str, None, ":", ",", False, False, False)

    def c_encoder_once(obj: Any) -> bytes:
        # Built once: no markers, so a cycle is a RecursionError, not ValueError.
        return "".join(shared(obj, 0)).encode()

    encoders: dict[str, Callable[[Any], bytes]] = {
        "JSONEncoder.encode (the store before)": lambda o: encoder.encode(o).encode(),
        "c_make_encoder per call (the store)": c_encoder_per_call,
        "c_make_encoder once, no cycle check": c_encoder_once,
        "json.dumps defaults": lambda o: json.dumps(o).encode(),
    }
    scan = decoder.scan_once

    def scan_once(data: bytes) -> Any:
        text = data.decode()
        obj, end = scan(text, 0)
        if end != len(text):
            return decoder.decode(text)  # trailing text: decode() says what is wrong
        return obj

    decoders: dict[str, Callable[[bytes], Any]] = {
        "JSONDecoder.decode (the store before)": lambda b: decoder.decode(b.decode()),
        "scanner called directly (the store)": scan_once,
        "json.loads(bytes)": json.loads,
    }
    try:
        import orjson
    except ImportError:
        pass
    else:
        encoders["orjson.dumps (Rust)"] = orjson.dumps
        decoders["orjson.loads (Rust)"] = orjson.loads
    return encoders, decoders


def msgpack_ways() -> tuple[dict[str, Callable[[Any], bytes]], dict[str, Callable[[bytes], Any]]]:
    packer = msgpack.Packer()
    unpack_kwargs = {"strict_map_key": False, "raw": False}
    encoders: dict[str, Callable[[Any], bytes]] = {
        "msgpack.packb (the store before)": msgpack.packb,
        "one Packer reused (the store: one per call at a time)": packer.pack,
    }
    decoders: dict[str, Callable[[bytes], Any]] = {
        "partial(unpackb) (the store)": functools.partial(msgpack.unpackb, **unpack_kwargs),
        "unpackb(**kwargs)": lambda b: msgpack.unpackb(b, **unpack_kwargs),
    }
    try:
        import ormsgpack
    except ImportError:
        pass
    else:
        opt = ormsgpack.OPT_NON_STR_KEYS
        encoders["ormsgpack.packb (Rust)"] = lambda o: ormsgpack.packb(o, option=opt)
        decoders["ormsgpack.unpackb (Rust)"] = ormsgpack.unpackb
    return encoders, decoders


def timed(fn: Callable[[], Any]) -> float:
    """CPU seconds of ``fn()``, the collector paused."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        fn()
        return time.process_time() - start
    finally:
        gc.enable()


def runs_of(
    values: list[Any], ways: tuple[dict, dict]
) -> tuple[dict[str, Callable[[], Any]], list[Any]]:
    """Each way over every value, by name; and the store's bytes of the values."""
    encoders, decoders = ways
    stored = [next(iter(encoders.values()))(v) for v in values]
    runs: dict[str, Callable[[], Any]] = {}
    for label, enc in encoders.items():
        runs[f"encode: {label}"] = functools.partial(lambda e: [e(v) for v in values], enc)
    for label, dec in decoders.items():
        runs[f"decode: {label}"] = functools.partial(lambda d: [d(b) for b in stored], dec)
    return runs, stored


def measure(
    values: list[Any], rounds: int, seed: int, name: str, ways: tuple[dict, dict]
) -> list[str]:
    encoders, decoders = ways
    base_enc, base_dec = next(iter(encoders)), next(iter(decoders))
    runs, stored = runs_of(values, ways)
    times: dict[str, list[float]] = {k: [] for k in runs}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(runs)
        rng.shuffle(order)
        for k in order:
            times[k].append(timed(runs[k]))
    n = len(values)
    rate = {k: n / statistics.median(ts) for k, ts in times.items()}
    lines = [f"\n{name}: {n:,} values, median of {rounds} rounds\n"]
    lines.append("| way | values/s | × first row | same bytes / values |")
    lines.append("| --- | ---: | ---: | --- |")
    for k in runs:
        kind, label = k.split(": ", 1)
        if kind == "encode":
            same = all(encoders[label](v) == s for v, s in zip(values[:1000], stored, strict=False))
            base = rate[f"encode: {base_enc}"]
        else:
            same = all(decoders[label](s) == v for v, s in zip(values[:1000], stored, strict=False))
            base = rate[f"decode: {base_dec}"]
        lines.append(
            f"| {k} | {rate[k]:,.0f} | {rate[k] / base:.2f}× | {'yes' if same else 'no'} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--count",
        type=int,
        metavar="K",
        help="run way K (see --list; 0: none) once over the values and exit, for an "
        "instruction counter: (count(K) - count(0)) / n is the way's count per value",
    )
    p.add_argument("--list", action="store_true", help="list the ways and exit")
    args = p.parse_args()
    values = make_values(args.n)
    if args.count is not None or args.list:
        runs = {}
        for ways in (json_ways(), msgpack_ways()):
            runs.update(runs_of(values, ways)[0])
        if args.list:
            print("\n".join(f"{i}: {name}" for i, name in enumerate(runs, 1)))
        elif args.count:
            list(runs.values())[args.count - 1]()
        return
    lines = measure(values, args.rounds, args.seed, "json", json_ways())
    lines += measure(values, args.rounds, args.seed, "msgpack", msgpack_ways())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
