"""fma-connect-quantize: lossy codecs that cut the size of float tensors on the wire.

Installing the distribution registers ``quantize-f16``, ``quantize-int8`` (affine)
and ``quantize-int8-sym`` (symmetric); select one with
``WebClient(..., codec="quantize-int8")``. The error bounds and the handling of NaN
and infinities are in :mod:`fma_connect_quantize.schemes`.
"""

from __future__ import annotations

from .codec import CODECS, FORMAT_VERSION, QuantizeCodec

__all__ = ["CODECS", "FORMAT_VERSION", "QuantizeCodec"]
