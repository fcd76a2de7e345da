"""Where the json codec's encode time goes: ``python benchmarks/json_encode_floor.py``.

The suite's target for the json codec is an encode >= 20x faster than stdlib ``json``
over ``tolist()``. This script shows how close orjson (the float writer behind the
codec) lets us get on the suite's 100 MB model, by timing in one run:

- stdlib ``json.dumps`` over ``tolist()`` (the original client's path);
- the codec's encode (``orjson.dumps`` of the codec's layers: nested lists on the wire);
- the same values written flat (each tensor raveled to 1-D): the same digits, no nesting.
  No JSON writer of the nested document can beat this with orjson, so it is the floor.

Per tensor it prints nanoseconds per value nested and flat: the difference is orjson's
cost per nested row, which dominates tensors with a small last dimension (3x3 kernels).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from fma_connect.bench.measure import make_model
from fma_connect.codecs.json_lists import JsonListsCodec

NUMPY = orjson.OPT_SERIALIZE_NUMPY


def best_of(run: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs of ``run``, after one untimed warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Time the three encodes and print the ratios and the per-tensor breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="model size in MB (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the fast paths")
    args = parser.parse_args()

    model = make_model(args.mb * 1_000_000)
    codec = JsonListsCodec()
    started = time.perf_counter()
    json.dumps([array.tolist() for _, array in model], allow_nan=False).encode()
    stdlib = time.perf_counter() - started
    nested = best_of(lambda: orjson.dumps(codec.encode(model), option=NUMPY), args.repeat)
    flat = best_of(
        lambda: orjson.dumps([array.ravel() for _, array in model], option=NUMPY), args.repeat
    )

    print(
        f"json encode, {args.mb} MB float32 model (stdlib timed once, others best of {args.repeat})\n"
    )
    print("| path | seconds | stdlib / path |")
    print("|---|---|---|")
    for label, seconds in (
        ("stdlib json over tolist()", stdlib),
        ("json codec (nested lists)", nested),
        ("same values written flat (floor)", flat),
    ):
        print(f"| {label} | {seconds:.3f} | {stdlib / seconds:.2f}x |")
    print("\n| tensor | shape | ns/value nested | ns/value flat |")
    print("|---|---|---|---|")
    for name, array in model:
        ns = 1e9 / array.size
        one = best_of(lambda a=array: orjson.dumps(a, option=NUMPY), args.repeat)
        raveled = best_of(lambda a=array: orjson.dumps(a.ravel(), option=NUMPY), args.repeat)
        print(f"| {name} | {array.shape} | {one * ns:.1f} | {raveled * ns:.1f} |")
    print(f"\nnumpy {np.__version__}, orjson {orjson.__version__}")


if __name__ == "__main__":
    main()
