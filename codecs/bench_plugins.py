"""Wire size and throughput of the plugin codecs, printed as a markdown table.

Needs the plugins installed (``pip install -e codecs/fma-connect-zstd -e
codecs/fma-connect-quantize``). Run::

    python codecs/bench_plugins.py [--mb 100] [--repeat 3] [--levels 1 3 9]

Payloads (``--mb`` each, one tensor): float32 from a normal distribution, float16 from
the same, and a sparse float32 delta with 99% zeros. ``ratio`` is the body size over the
plain ``msgpack`` body of the same payload; throughputs are payload megabytes per second
of wall time (best of ``--repeat``), decode starting from one joined ``bytearray`` as the
client receives it. For the quantize codecs, ``max error`` is the largest ``|x - x̂|``
and ``/ bound`` divides it by the codec's documented bound.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fma_connect_quantize import CODECS, QuantizeCodec
from fma_connect_quantize.schemes import error_bound
from fma_connect_zstd import ZstdCodec

from fma_connect import Codec
from fma_connect.codecs import MsgpackCodec

MB = 1_000_000


def payloads(megabytes: int) -> dict[str, np.ndarray]:
    """The benchmark tensors, ``megabytes`` each."""
    rng = np.random.default_rng(0)
    count32 = megabytes * MB // 4
    delta = np.zeros(count32, dtype=np.float32)
    changed = rng.choice(count32, count32 // 100, replace=False)
    delta[changed] = rng.normal(0, 0.01, size=changed.size)
    return {
        "float32 normal": rng.normal(0, 0.05, size=count32).astype(np.float32),
        "float16 normal": rng.normal(0, 0.05, size=megabytes * MB // 2).astype(np.float16),
        "float32 sparse delta (99% zeros)": delta,
    }


def _best(run: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def _join(chunks: Sequence[Any]) -> bytearray:
    body = bytearray()
    for chunk in chunks:
        body += memoryview(chunk).cast("B")
    return body


def measure(codec: Codec, array: np.ndarray, repeat: int) -> dict[str, float]:
    """Body size, encode and decode seconds, and the largest error of one payload."""
    tensors = [("w", array)]
    encode_s, chunks = _best(lambda: codec.encode(tensors), repeat)
    body = _join(chunks)
    del chunks
    decode_s, received = _best(lambda: codec.decode(body), repeat)
    back = received[0][1]
    error = float(np.max(np.abs(back.astype(np.float64) - array.astype(np.float64))))
    return {"bytes": len(body), "encode_s": encode_s, "decode_s": decode_s, "error": error}


def quantize_bound(name: str, array: np.ndarray) -> float:
    """The documented bound of a quantize codec on ``array`` (see fma_connect_quantize)."""
    x = array.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    peak = max(abs(lo), abs(hi))
    if name == "quantize-f16":
        return 2.0**-11 * peak  # the per-element bound 2**-11 * |x| at its largest
    scheme = CODECS[name]
    scale = peak / 127 if scheme == "symmetric-int8" else (hi - lo) / 255
    return error_bound(scheme, array.dtype.name, {"scale": scale}, peak)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="megabytes per payload")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 3, 9], help="zstd levels")
    args = parser.parse_args(argv)

    plain = MsgpackCodec()
    candidates: list[Codec] = [plain]
    candidates += [ZstdCodec(plain, level=level) for level in args.levels]
    candidates += [QuantizeCodec(name) for name in CODECS]
    candidates.append(ZstdCodec(QuantizeCodec("quantize-int8-sym")))

    print(f"payload: {args.mb} MB per tensor; best of {args.repeat}\n")
    columns = ["payload", "codec", "level", "body MB", "ratio", "encode MB/s", "decode MB/s"]
    columns += ["max error", "/ bound"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for label, array in payloads(args.mb).items():
        size = array.nbytes / MB
        baseline = None
        for codec in candidates:
            if codec.name == "quantize-f16" and array.dtype == np.float16:
                continue  # float16 tensors are sent as they are
            m = measure(codec, array, args.repeat)
            baseline = baseline or m["bytes"]
            lossy = not codec.lossless
            inner = codec.inner if isinstance(codec, ZstdCodec) else codec
            bound = quantize_bound(inner.name, array) if lossy else 0.0
            print(
                f"| {label} | {codec.name} | "
                f"{codec.level if isinstance(codec, ZstdCodec) else '-'} | "
                f"{m['bytes'] / MB:.1f} | {m['bytes'] / baseline:.3f} | "
                f"{size / m['encode_s']:.0f} | {size / m['decode_s']:.0f} | "
                f"{m['error']:.3g} | {m['error'] / bound if bound else 0:.3f} |"
            )


if __name__ == "__main__":
    main()
