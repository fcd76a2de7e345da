"""fma_connect: move model weights between federated clients and an FMA service.

Start with :class:`WebClient`; codecs are listed by ``fma-connect codecs``.
"""

from __future__ import annotations

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
from .plugins import (
    build_codec_registry,
    build_framework_registry,
    default_codec_registry,
    default_framework_registry,
    plugin_manager,
)
from .registry import CodecRegistry, FrameworkRegistry
from .spec import Spec, flatten, restore_like

__all__ = [
    "APIError",
    "APIException",
    "AdminClient",
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
    "build_codec_registry",
    "build_framework_registry",
    "default_codec_registry",
    "default_framework_registry",
    "flatten",
    "hookimpl",
    "plugin_manager",
    "restore_like",
]
