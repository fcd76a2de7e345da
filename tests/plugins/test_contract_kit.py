"""What fma_connect.testing.check_codec catches that plugin authors rely on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fma_connect import Tensors
from fma_connect.codecs import MsgpackCodec
from fma_connect.testing import check_codec


class BytearrayOnly(MsgpackCodec):
    """Decodes only the form the client happens to read into."""

    name = "bytearray-only"

    def decode(self, payload: Any, *, max_tensors: int | None = None) -> Tensors:
        if not isinstance(payload, bytearray):
            raise TypeError("this decoder wants a bytearray")
        return super().decode(payload, max_tensors=max_tensors)


class OnesItsInput(MsgpackCodec):
    """Copies the tensors into its body, then scribbles on the caller's arrays."""

    name = "ones-its-input"

    def encode(self, tensors: Any) -> list[Any]:
        chunks = [bytes(memoryview(chunk).cast("B")) for chunk in super().encode(tensors)]
        for _, array in tensors:
            if array.flags.writeable:
                array[...] = 1
        return chunks


class Negating(MsgpackCodec):
    """A lossy codec: float values come back negated, which its tolerance admits."""

    name = "negating"
    lossless = False

    def decode(self, payload: Any, *, max_tensors: int | None = None) -> Tensors:
        tensors = super().decode(payload, max_tensors=max_tensors)
        return [(n, np.asarray(-a) if a.dtype.kind in "fV" else a) for n, a in tensors]

    def tolerance(self, sent: np.ndarray, received: np.ndarray) -> bool:
        expected = -sent if sent.dtype.kind in "fV" else sent
        return bool(np.array_equal(received, expected))


def test_a_decoder_that_takes_only_bytearray_is_caught() -> None:
    with pytest.raises(TypeError, match="wants a bytearray"):
        check_codec(BytearrayOnly(), max_examples=30)


def test_an_encoder_that_modifies_its_input_is_caught() -> None:
    with pytest.raises(AssertionError, match="encode modified the caller's tensor"):
        check_codec(OnesItsInput(), max_examples=30)


def test_a_lossy_codec_is_held_to_its_own_tolerance() -> None:
    check_codec(Negating(), max_examples=30)
    with pytest.raises(AssertionError, match="outside the codec's tolerance"):
        check_codec(Negating(), max_examples=30, tolerance=np.array_equal)
