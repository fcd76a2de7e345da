"""fma_connect: move model weights between federated clients and an FMA service.

Start with :class:`WebClient`; codecs are listed by ``fma-connect codecs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .admin import AdminClient, UpdateStatus
from .auth import TokenAuth
from .clients import WebClient
from .codecs.base import Codec, Tensors
from .exceptions import (
    APIError,
    APIException,
    CodecError,
    ConfigurationError,
    ConnectError,
    DecodeError,
    EncodeError,
    FMAConnectError,
    FrameworkError,
    PluginError,
    RequestTimeout,
    TooManyTensorsError,
    TransportError,
    UnknownCodecError,
)
from .hookspecs import hookimpl
from .identity import ClientKey
from .plugins import (
    build_aggregator_registry,
    build_codec_registry,
    build_framework_registry,
    default_aggregator_registry,
    default_codec_registry,
    default_framework_registry,
    plugin_manager,
)
from .registry import AggregatorRegistry, CodecRegistry, FrameworkRegistry
from .spec import Spec, flatten, restore_like

if TYPE_CHECKING:
    from .aio import AsyncWebClient

__all__ = [
    "APIError",
    "APIException",
    "AdminClient",
    "AggregatorRegistry",
    "AsyncWebClient",
    "ClientKey",
    "Codec",
    "CodecError",
    "CodecRegistry",
    "ConfigurationError",
    "ConnectError",
    "DecodeError",
    "EncodeError",
    "FMAConnectError",
    "FrameworkError",
    "FrameworkRegistry",
    "PluginError",
    "RequestTimeout",
    "Spec",
    "Tensors",
    "TokenAuth",
    "TooManyTensorsError",
    "TransportError",
    "UnknownCodecError",
    "UpdateStatus",
    "WebClient",
    "__version__",
    "build_aggregator_registry",
    "build_codec_registry",
    "build_framework_registry",
    "default_aggregator_registry",
    "default_codec_registry",
    "default_framework_registry",
    "flatten",
    "hookimpl",
    "plugin_manager",
    "restore_like",
]


def __getattr__(name: str) -> Any:
    # AsyncWebClient needs the optional ``aio`` extra (aiohttp): imported on first use,
    # so ``import fma_connect`` works without it.
    if name == "AsyncWebClient":
        from .aio import AsyncWebClient

        return AsyncWebClient
    raise AttributeError(f"module 'fma_connect' has no attribute {name!r}")
