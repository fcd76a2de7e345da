"""Built-in codecs and the codec contract (see :mod:`fma_connect.codecs.base`)."""

from __future__ import annotations

from .base import Codec, Tensors
from .json_lists import JsonListsCodec
from .msgpack_numpy import MsgpackCodec
from .npz_base64 import NpzBase64Codec

__all__ = ["Codec", "JsonListsCodec", "MsgpackCodec", "NpzBase64Codec", "Tensors"]
