"""Tensor bytes as zstd frames of byte planes, chunk by chunk, on two threads.

What the ``delta`` codec's frames are made of: a tensor's bytes (XORed with a
reference's, where given) are cut into chunks of :data:`CHUNK_BYTES`; each chunk's
values are grouped by byte plane (all first bytes, then all second bytes... so the runs
of zero high bytes sit together) and compressed as one zstd frame. Chunks are coded on
:data:`THREADS` threads, each with its own zstd contexts and scratch buffers; the crc32
of each chunk is taken as its job completes, while it is in cache. Byte planes are made
and undone with word shifts (contiguous passes: 2x a strided byte copy to make float32
planes, 5x to undo them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, cast

import numpy as np
import zstandard

from ..exceptions import DecodeError
from .msgpack_numpy import crc32

__all__ = [
    "CHUNK_BYTES",
    "THREADS",
    "Pool",
    "as_words",
    "chunk_bytes",
    "chunk_spans",
    "decode_frames",
    "encode_frames",
]

#: zstd level 1: as small as level 3 on XORed byte planes (0.533 against 0.532 of raw,
#: measured on 100M float32 values) and faster. Its parameters for a chunk's size (hash
#: log 14, min match 7, where ``level=1`` alone takes 13 and 6) compress a chunk of
#: planes in 0.6x the time, to the same size: the nearly-zero high planes hold many
#: short matches that min match 6 stops to take.
LEVEL = 1
THREADS = 2
#: Tensor bytes per frame: as small as one frame per tensor on 100M float32 values, and
#: each chunk's buffers stay in the caches of a core.
CHUNK_BYTES = 4 << 20
_PARAMETERS = zstandard.ZstdCompressionParameters.from_level(LEVEL, source_size=CHUNK_BYTES)
_In = TypeVar("_In")
_Out = TypeVar("_Out")
#: A chunk's [start, end) bytes.
Span = tuple[int, int]
#: zlib's and ISA-L's crc32 both go on from a running value (the annotation omits it).
_crc32_from = cast(Callable[[Any, int], int], crc32)


def encode_frames(
    data: np.ndarray, reference: np.ndarray | None, itemsize: int, pool: Pool
) -> tuple[list[bytes], int]:
    """zstd frames of ``data``'s bytes (XORed with ``reference``'s) in planes, chunk by
    chunk, and the crc32 of ``data``."""
    spans = chunk_spans(data.size, chunk_bytes(itemsize))
    frames = []
    crc = 0
    job = partial(_encode_chunk, pool, data, reference, itemsize)
    for (lo, hi), frame in zip(spans, pool.map(job, spans), strict=True):
        crc = _crc32_from(data[lo:hi], crc)  # the chunk was just read: it is in cache
        frames.append(frame)
    return frames, crc


def _encode_chunk(
    pool: Pool, data: np.ndarray, reference: np.ndarray | None, itemsize: int, span: Span
) -> bytes:
    lo, hi = span
    buffers = pool.buffers()
    words = as_words(data[lo:hi], itemsize)
    if reference is not None:
        xored = as_words(buffers.scratch("words", hi - lo), itemsize)
        words = np.bitwise_xor(words, as_words(reference[lo:hi], itemsize), out=xored)
    planes = buffers.scratch("planes", hi - lo).reshape(itemsize, -1)
    _to_planes(words, planes, buffers.scratch("words", hi - lo))
    if planes.shape[1] >= zstandard.BLOCKSIZE_MAX:
        return buffers.compressor.compress(planes.data)
    # Planes shorter than a zstd block would share one block's Huffman table (random
    # low bytes with nearly-zero high bytes): a block per plane saves ~6% (1% changed).
    stream = buffers.compressor.compressobj(size=planes.nbytes)
    parts = []
    for plane in planes:
        parts += [stream.compress(plane.data), stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)]
    return b"".join([*parts, stream.flush()])


def decode_frames(
    blocks: Callable[[], np.ndarray],
    name: str,
    out: np.ndarray,
    reference: np.ndarray | None,
    itemsize: int,
    chunk: int,
    pool: Pool,
) -> int:
    """Fill ``out`` from the frames of its chunks (XORed with ``reference``); its crc32."""
    spans = chunk_spans(out.size, chunk)
    jobs = [(span, blocks()) for span in spans]
    crc = 0
    work = partial(_decode_chunk, pool, name, out, reference, itemsize)
    for (lo, hi), _ in zip(spans, pool.map(work, jobs), strict=True):
        crc = _crc32_from(out[lo:hi], crc)  # just written: in cache
    return crc


def _decode_chunk(
    pool: Pool,
    name: str,
    out: np.ndarray,
    reference: np.ndarray | None,
    itemsize: int,
    job: tuple[Span, np.ndarray],
) -> None:
    (lo, hi), frame = job
    try:
        declared = zstandard.frame_content_size(frame.data)
        if declared != hi - lo:  # the encoder states every frame's size
            stated = "no size" if declared < 0 else f"{declared} bytes"
            raise DecodeError(
                f"delta tensor {name!r}: a frame states {stated} for a chunk of {hi - lo} bytes"
            )
        planes = pool.buffers().decompressor.decompress(frame.data, max_output_size=hi - lo)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"delta tensor {name!r} does not decompress: {exc}") from exc
    if len(planes) != hi - lo:
        raise DecodeError(
            f"delta tensor {name!r}: a frame holds {len(planes)} bytes, its chunk {hi - lo}"
        )
    target = as_words(out[lo:hi], itemsize)
    _from_planes(np.frombuffer(planes, np.uint8).reshape(itemsize, -1), target)
    if reference is not None:
        np.bitwise_xor(target, as_words(reference[lo:hi], itemsize), out=target)


def _to_planes(words: np.ndarray, planes: np.ndarray, scratch: np.ndarray) -> None:
    """Byte ``j`` of every word into ``planes[j]`` (``scratch``: as many bytes as words,
    may be ``words`` itself, whose values are then lost)."""
    itemsize = planes.shape[0]
    if words.ndim == 2 or itemsize == 1:  # 16-byte values: a strided copy
        np.copyto(planes, words.reshape(-1).view(np.uint8).reshape(-1, itemsize).T)
        return
    # Shifts and truncating casts are contiguous SIMD passes: 2-5x a strided byte copy.
    np.copyto(planes[0], words, casting="unsafe")
    shifted = as_words(scratch, itemsize)
    for j in range(1, itemsize):
        np.right_shift(words, 8, out=shifted)
        np.copyto(planes[j], shifted, casting="unsafe")
        words = shifted


def _from_planes(planes: np.ndarray, words: np.ndarray) -> None:
    """Undo :func:`_to_planes`: the words whose byte ``j`` is in ``planes[j]``."""
    itemsize = planes.shape[0]
    if words.ndim == 2 or itemsize == 1:
        np.copyto(words.reshape(-1).view(np.uint8).reshape(-1, itemsize), planes.T)
        return
    np.copyto(words, planes[-1], casting="unsafe")
    for plane in planes[-2::-1]:
        np.left_shift(words, 8, out=words)
        np.bitwise_or(words, plane, out=words)


def chunk_bytes(itemsize: int) -> int:
    """The bytes of a chunk of a tensor whose values have ``itemsize`` bytes."""
    return CHUNK_BYTES // itemsize * itemsize


def chunk_spans(size: int, chunk: int) -> list[Span]:
    """The chunks of ``size`` bytes, as [start, end) spans: one, empty, when ``size`` is 0."""
    return [(lo, min(lo + chunk, size)) for lo in range(0, size, chunk)] or [(0, 0)]


def as_words(data: np.ndarray, itemsize: int) -> np.ndarray:
    """Flat bytes as one unsigned word per value (16-byte values: rows of two words)."""
    if itemsize in (1, 2, 4, 8):
        return data.view(f"<u{itemsize}")
    return data.view("<u8").reshape(-1, itemsize // 8)


class _Buffers:
    """One thread's zstd contexts and scratch arrays (reused from chunk to chunk)."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(compression_params=_PARAMETERS)
        self.decompressor = zstandard.ZstdDecompressor()
        self._scratch: dict[str, np.ndarray] = {}

    def scratch(self, key: str, size: int) -> np.ndarray:
        """A flat uint8 array of ``size`` bytes, kept for the next chunk."""
        array = self._scratch.get(key)
        if array is None or array.size < size:
            array = self._scratch[key] = np.empty(max(size, 1), np.uint8)
        return array[:size]


class Pool:
    """Chunk jobs on :data:`THREADS` threads (inline when one job), for one call.

    Threads and buffers live as long as the call: nothing outlives it into a forked
    child, and an idle client keeps no scratch memory.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def buffers(self) -> _Buffers:
        """The calling thread's buffers."""
        buffers: _Buffers | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = _Buffers()
        return buffers

    def map(self, job: Callable[[_In], _Out], items: Sequence[_In]) -> Iterator[_Out]:
        """``job`` of each item, in order, on the pool's threads when there are several."""
        if len(items) < 2:
            return map(job, items)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="fma-delta")
        return self._executor.map(job, items)
