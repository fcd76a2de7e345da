"""The installed plugins' registries.

* :class:`CodecRegistry`: codecs, looked up by name, media type or payload tag.
* :class:`FrameworkRegistry`: framework adapters, asked in turn to claim an object.
* :class:`AggregatorRegistry`: the reference server's aggregators, by name (see
  :mod:`fma_connect.server.aggregators` for what an aggregator provides).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .codecs.base import Codec, codec_problem
from .exceptions import FrameworkError, PluginError, UnknownCodecError
from .frameworks.base import Framework

if TYPE_CHECKING:  # the server's module (and numpy work) is imported only by the server
    from .server.aggregators.base import Aggregator

__all__ = [
    "AggregatorInfo",
    "AggregatorRegistry",
    "CodecInfo",
    "CodecRegistry",
    "FrameworkInfo",
    "FrameworkRegistry",
    "UnknownAggregatorError",
]


class _Info(Protocol):
    @property
    def plugin(self) -> str: ...


InfoT = TypeVar("InfoT", bound=_Info)


@dataclass(frozen=True)
class CodecInfo:
    """A registered codec and where it came from.

    Attributes:
        codec: The codec object.
        plugin: The name of the plugin that registered it (``"builtin"`` for ours).
        distribution: The distribution that ships the plugin, when known.
        version: That distribution's version, when known.
    """

    codec: Codec
    plugin: str
    distribution: str | None = None
    version: str | None = None


class _Registry(Generic[InfoT]):
    """What both registries share: unique names, each recorded with who registered it."""

    _kind = ""  # "codec" or "framework", for messages

    def __init__(self) -> None:
        self._infos: dict[str, InfoT] = {}
        # Set by the plugin loader while a plugin's hook runs, so add() knows who called it.
        self.source: tuple[str, str | None, str | None] = ("user", None, None)

    def _check(self, item: object, is_valid: bool, name: str, attributes: str) -> None:
        if not is_valid:
            raise PluginError(f"{self.source[0]} registered {item!r}, which lacks the {attributes}")
        taken = self._infos.get(name)
        if taken is not None:
            raise PluginError(
                f"{self._kind} name {name!r} is registered twice: by {taken.plugin} and by "
                f"{self.source[0]}; uninstall or block one of them (FMA_CONNECT_BLOCK_PLUGINS)"
            )

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)


class CodecRegistry(_Registry[CodecInfo]):
    """Codecs by name. Names are unique: registering a taken name is an error."""

    _kind = "codec"

    def add(self, codec: Codec) -> None:
        """Register ``codec`` under ``codec.name``.

        Raises:
            PluginError: the object is not a codec; its name, media type or flags are
                malformed (see :func:`~fma_connect.codecs.base.codec_problem`); its name
                is taken; or it is a binary codec with the media type of another one
                (JSON-native codecs share ``application/json`` and go by their tag).
        """
        is_codec = isinstance(codec, Codec)
        problem = codec_problem(codec) if is_codec else None
        if problem is not None:
            raise PluginError(f"{self.source[0]} registered the codec {codec!r}, but {problem}")
        name = codec.name if is_codec else ""
        self._check(
            codec,
            is_codec,
            name,
            "codec attributes (name, media_type, lossless, json_native, encode, decode)",
        )
        if not codec.json_native:
            rival = next(
                (
                    info
                    for info in self._infos.values()
                    if not info.codec.json_native and info.codec.media_type == codec.media_type
                ),
                None,
            )
            if rival is not None:
                raise PluginError(
                    f"media type {codec.media_type!r} is registered twice: by {rival.plugin} "
                    f"(codec {rival.codec.name!r}) and by {self.source[0]} (codec {name!r}); "
                    "a binary codec needs a media type of its own. Uninstall or block one "
                    "of them (FMA_CONNECT_BLOCK_PLUGINS)"
                )
        self._infos[name] = CodecInfo(codec, *self.source)

    def get(self, name: str) -> Codec:
        """Return the codec named ``name``.

        Raises:
            UnknownCodecError: no such codec; the message lists the installed ones.
        """
        try:
            return self._infos[name].codec
        except KeyError:
            raise UnknownCodecError(
                f"no codec named {name!r}; installed codecs: {', '.join(self.names())}"
            ) from None

    def for_media_type(self, media_type: str) -> Codec:
        """Return the binary codec whose media type is ``media_type`` (parameters ignored).

        Raises:
            UnknownCodecError: no binary codec uses that media type.
        """
        bare = media_type.split(";", 1)[0].strip().lower()
        for info in self._infos.values():
            if not info.codec.json_native and info.codec.media_type == bare:
                return info.codec
        binary = [f"{i.codec.name} ({i.codec.media_type})" for i in self if not i.codec.json_native]
        raise UnknownCodecError(
            f"no installed codec reads media type {bare!r}; binary codecs installed: "
            f"{', '.join(binary) or 'none'}"
        )

    def info(self, name: str) -> CodecInfo:
        """Return the registration record of ``name`` (see :meth:`get` for errors)."""
        self.get(name)
        return self._infos[name]

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._infos)

    def __iter__(self) -> Iterator[CodecInfo]:
        return iter(sorted(self._infos.values(), key=lambda info: info.codec.name))


@dataclass(frozen=True)
class FrameworkInfo:
    """A registered framework adapter and where it came from.

    Attributes:
        framework: The adapter object.
        plugin: The name of the plugin that registered it.
        distribution: The distribution that ships the plugin, when known.
        version: That distribution's version, when known.
    """

    framework: Framework
    plugin: str
    distribution: str | None = None
    version: str | None = None


class FrameworkRegistry(_Registry[FrameworkInfo]):
    """Framework adapters by name. Names are unique: registering a taken name is an error.

    :meth:`find` asks the adapters in reverse order of registration, so a plugin loaded
    after the built-ins can take over objects a built-in adapter would claim.
    """

    _kind = "framework"

    def add(self, framework: Framework) -> None:
        """Register ``framework`` under ``framework.name``.

        Raises:
            PluginError: the object is not an adapter, or its name is already registered.
        """
        is_adapter = isinstance(framework, Framework)
        name = framework.name if is_adapter else ""
        self._check(
            framework,
            is_adapter,
            name,
            "framework adapter attributes (name, claims, flatten, restore, rebuild)",
        )
        self._infos[name] = FrameworkInfo(framework, *self.source)

    def find(self, obj: Any) -> Framework | None:
        """Return the adapter that claims ``obj``, or None when none does."""
        for info in reversed(self._infos.values()):
            if info.framework.claims(obj):
                return info.framework
        return None

    def get(self, name: str) -> Framework:
        """Return the adapter named ``name``.

        Raises:
            FrameworkError: no such adapter; the message lists the installed ones.
        """
        try:
            return self._infos[name].framework
        except KeyError:
            raise FrameworkError(
                f"no framework adapter named {name!r}; installed: {', '.join(self.names())}"
            ) from None

    def info(self, name: str) -> FrameworkInfo:
        """Return the registration record of ``name`` (see :meth:`get` for errors)."""
        self.get(name)
        return self._infos[name]

    def names(self) -> list[str]:
        """Return the registered names, in registration order."""
        return list(self._infos)

    def __iter__(self) -> Iterator[FrameworkInfo]:
        return iter(self._infos.values())


class UnknownAggregatorError(PluginError, LookupError):
    """No aggregator of that name is registered (the message lists the installed ones)."""


#: An aggregator's name: what a model's ``aggregator`` field holds (lowercase snake_case,
#: like the stock ``avg_values_if_data``; digits and hyphens allowed after the first letter).
_AGGREGATOR_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class AggregatorInfo:
    """A registered aggregator and where it came from.

    Attributes:
        aggregator: The aggregator object.
        plugin: The name of the plugin that registered it (``fma_connect.builtin_aggregators``
            for ours).
        distribution: The distribution that ships the plugin, when known.
        version: That distribution's version, when known.
    """

    aggregator: Aggregator
    plugin: str
    distribution: str | None = None
    version: str | None = None


class AggregatorRegistry(_Registry[AggregatorInfo]):
    """Aggregators by name. Names are unique: registering a taken name is an error."""

    _kind = "aggregator"

    def add(self, aggregator: Aggregator) -> None:
        """Register ``aggregator`` under ``aggregator.name``.

        Raises:
            PluginError: the object lacks an aggregator's attributes (``name``,
                ``summary``, ``weighted``, ``check_args``, ``start``), its name is not
                lowercase snake_case, or the name is taken.
        """
        is_aggregator = (
            isinstance(getattr(aggregator, "name", None), str)
            and isinstance(getattr(aggregator, "summary", None), str)
            and isinstance(getattr(aggregator, "weighted", None), bool)
            and callable(getattr(aggregator, "check_args", None))
            and callable(getattr(aggregator, "start", None))
        )
        name = aggregator.name if is_aggregator else ""
        if is_aggregator and not _AGGREGATOR_NAME.fullmatch(name):
            raise PluginError(
                f"{self.source[0]} registered the aggregator {aggregator!r} named {name!r}; "
                "expected a lowercase name of letters, digits, '_' and '-' starting with a "
                "letter (at most 64 characters), e.g. 'trimmed_mean'"
            )
        self._check(
            aggregator,
            is_aggregator,
            name,
            "aggregator attributes (name, summary, weighted, check_args, start)",
        )
        self._infos[name] = AggregatorInfo(aggregator, *self.source)

    def get(self, name: str) -> Aggregator:
        """Return the aggregator named ``name``.

        Raises:
            UnknownAggregatorError: no such aggregator; the message lists the installed ones.
        """
        try:
            return self._infos[name].aggregator
        except (KeyError, TypeError):
            raise UnknownAggregatorError(
                f"no aggregator named {name!r}; installed aggregators: {', '.join(self.names())}"
            ) from None

    def info(self, name: str) -> AggregatorInfo:
        """Return the registration record of ``name`` (see :meth:`get` for errors)."""
        self.get(name)
        return self._infos[name]

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._infos)

    def __iter__(self) -> Iterator[AggregatorInfo]:
        return iter(sorted(self._infos.values(), key=lambda info: info.aggregator.name))
