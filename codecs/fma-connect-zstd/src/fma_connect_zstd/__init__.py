"""fma-connect-zstd: zstandard compression over any binary fma_connect codec.

Installing the distribution registers ``zstd+msgpack`` (and ``zstd+<name>`` for the
other binary codecs registered before it); select one with
``WebClient(..., codec="zstd+msgpack")`` or pass ``codec=ZstdCodec(inner, level=9)``.
See :mod:`fma_connect_zstd.codec` for the options and the decompression bound.
"""

from __future__ import annotations

from .codec import DEFAULT_LEVEL, DEFAULT_MAX_OUTPUT_SIZE, ZstdCodec
from .frames import FORMAT_VERSION

__all__ = ["DEFAULT_LEVEL", "DEFAULT_MAX_OUTPUT_SIZE", "FORMAT_VERSION", "ZstdCodec"]
