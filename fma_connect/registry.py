"""The installed plugins' registries.

* :class:`CodecRegistry`: codecs, looked up by name, media type or payload tag.
* :class:`FrameworkRegistry`: framework adapters, asked in turn to claim an object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .codecs.base import Codec, codec_problem
from .exceptions import FrameworkError, PluginError, UnknownCodecError
from .frameworks.base import Framework

__all__ = ["CodecInfo", "CodecRegistry", "FrameworkInfo", "FrameworkRegistry"]


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
