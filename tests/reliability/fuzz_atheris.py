"""Coverage-guided fuzzing of one built-in decoder with atheris (libFuzzer), run by hand.

    pip install atheris
    python tests/reliability/fuzz_atheris.py msgpack -max_total_time=600 -timeout=10 \\
        -rss_limit_mb=2048 -max_len=8192

The first argument names the codec (``json``, ``msgpack``, ``npz-b64``); the rest go to
libFuzzer, including a corpus directory (default: ``fma-fuzz-<codec>`` in the system's
temporary directory). The input is the body a receiver gets (for ``npz-b64``: the zip archive,
which is base64-wrapped into its tagged object before decoding, so the fuzzer works on
the archive's structure rather than on base64). Each input must satisfy
:func:`fuzz_support.decode_guarded` (only DecodeError escapes, allocation within the
linear budget); libFuzzer adds a hang check (``-timeout``) and an RSS limit. The corpus
is seeded with valid encodings of a few tensors, and libFuzzer grows it. libFuzzer
prints the number of inputs run when it stops.
docs/RELIABILITY.md records the last campaign.
"""

from __future__ import annotations

import sys
import tempfile
import tracemalloc
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports():
    import numpy as np
    from fuzz_support import body_of, decode_guarded, npz_archive_of, npz_body

    from fma_connect.codecs.base import Codec
    from fma_connect.codecs.json_lists import JsonListsCodec
    from fma_connect.codecs.msgpack_numpy import MsgpackCodec
    from fma_connect.codecs.npz_base64 import NpzBase64Codec

CODECS: dict[str, Codec] = {
    "json": JsonListsCodec(),
    "msgpack": MsgpackCodec(),
    "npz-b64": NpzBase64Codec(),
}


def _seeds(name: str) -> list[bytes]:
    codec = CODECS[name]
    tensors: list[list[tuple[str, np.ndarray]]] = [
        [("w", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", np.array([1, -2], np.int16))],
        [("s", np.array(3.5)), ("e", np.zeros((0, 4), np.float64))],
        [("c", np.array([1 + 2j], np.complex64)), ("u", np.array([2**64 - 1], np.uint64))],
        [],
    ]
    seeds: list[bytes] = []
    for sent in tensors:
        if codec.lossless or all(a.dtype.kind in "biuf" for _, a in sent):
            body = body_of(codec, sent)
            seeds.append(npz_archive_of(body) if name == "npz-b64" else body)
    return seeds


def main() -> None:
    """Fuzz the codec named by argv[1] with libFuzzer's arguments after it."""
    if len(sys.argv) < 2 or sys.argv[1] not in CODECS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(CODECS)}}} [libFuzzer options] [corpus]")
    name = sys.argv.pop(1)
    codec = CODECS[name]
    given = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    corpus = Path(given[-1]) if given else Path(tempfile.gettempdir()) / f"fma-fuzz-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(_seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    arguments = sys.argv if given else [*sys.argv, str(corpus)]

    def one_input(data: bytes) -> None:
        body = npz_body(data) if name == "npz-b64" else data
        decode_guarded(codec, body)

    tracemalloc.start()
    atheris.Setup(arguments, one_input)
    atheris.Fuzz()  # libFuzzer reports the inputs run ("Done N runs") and exits


if __name__ == "__main__":
    main()
