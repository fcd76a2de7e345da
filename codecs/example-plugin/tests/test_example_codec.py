"""The example codec keeps the codec contract and is found once installed."""

from __future__ import annotations

import numpy as np
from fma_connect_example import ExampleRawCodec

from fma_connect import build_codec_registry, plugin_manager
from fma_connect.testing import check_codec


def test_the_codec_keeps_the_contract() -> None:
    check_codec(ExampleRawCodec())


def test_the_installed_plugin_registers_the_codec() -> None:
    registry = build_codec_registry(plugin_manager())
    assert registry.info("example-raw").distribution == "fma-connect-example"
    tensors = [("w", np.arange(6, dtype=np.float32).reshape(2, 3))]
    body = b"".join(bytes(chunk) for chunk in registry.get("example-raw").encode(tensors))
    [(name, array)] = registry.get("example-raw").decode(body)
    assert name == "w" and array.tolist() == [[0, 1, 2], [3, 4, 5]]
