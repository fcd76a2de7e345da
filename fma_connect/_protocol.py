"""What a federated client's call means, with no I/O: the one protocol both clients speak.

:class:`ClientProtocol` holds a client's state (its UUID, the last update's Spec, the
last aggregate seen, what the service offers, a delta codec's held base) and writes
each call as a :data:`~fma_connect._messages.Flow`: a generator that yields the
requests to send (paths, headers, bodies), is sent the replies, and interprets them
(status hints, JSON or binary bodies, what to decode and restore)::

    WebClient (requests) ─────┐                           ┌─ yields Request, ReadBody, Close, Sleep
                              ├─ ClientProtocol.<call>() ─┤
    AsyncWebClient (aiohttp) ─┘                           └─ is sent Reply, a body, None

:class:`ClientProtocol` is assembled by inheritance from its parts, each building on the
one it calls::

    ClientProtocol ─▶ Sending ─▶ Offers ─▶ Identity ─▶ Receiving

    _protocol.py           ClientProtocol: state and its options' checks; check_uuid
    _protocol_sending.py   Sending: send_update, send_val_results
    _protocol_offers.py    Offers: what the service decodes and offers, a refused codec
    _protocol_identity.py  Identity: register, enrol, rotate_key, signatures, call's hints
    _receiving.py          Receiving: aggregates, latest model, artifact, long-poll, restore, bases
    _messages.py           the commands, the reply, errors and their wording
    resumable.py           the resumable upload flow

The two clients differ only in how bytes move; every rule lives here once.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

from ._protocol_sending import Sending
from ._receiving import META_HEADER, Target, check_update_after
from ._transport import Progress
from .codecs.base import Codec, Tensors
from .codecs.context import ContextCodec, load_state, uses_context
from .exceptions import ConfigurationError, DecodeError
from .identity import ClientKey
from .plugins import default_codec_registry
from .registry import CodecRegistry
from .resumable import MAX_CHUNK, MAX_IN_FLIGHT, MIN_CHUNK
from .spec import Spec

__all__ = [
    "META_HEADER",
    "ClientProtocol",
    "Target",
    "check_update_after",
    "check_uuid",
    "read_timeout_of",
]


class ClientProtocol(Sending):
    """One federated client's state and calls, as flows for a driver to run.

    The state and the checks of its options are here; the calls are in its parts:
    sending updates and scores (:class:`~._protocol_sending.Sending`), asking what the
    service offers (:class:`~._protocol_offers.Offers`), registering, keys and requests
    as this client (:class:`~._protocol_identity.Identity`), and receiving aggregates,
    models and artifacts and restoring weights (:class:`~._receiving.Receiving`).

    Args:
        federated_model_id, uuid, codec, registry, progress, retry_updates,
        codec_state, resumable_from, upload_chunk_size, upload_in_flight: As for
            :class:`~fma_connect.clients.WebClient`, and checked the same way.
        read_timeout: The transport's read timeout (None: none), which bounds how long
            a long-poll may ask the service to hold a request.
        clock: Monotonic seconds (the driver's, so tests can move it).
        identity: The client's key (see :class:`~fma_connect.identity.ClientKey`): its
            updates are signed, and the driver signs each request attempt with
            :meth:`~._protocol_identity.Identity.request_signature`.
            None: the UUID alone identifies the client.

    Raises:
        ConfigurationError: an option is not what it must be (the message says what).
    """

    def __init__(
        self,
        federated_model_id: int,
        uuid: str | uuid_module.UUID | None,
        *,
        codec: str | Codec | ContextCodec,
        registry: CodecRegistry | None,
        progress: Progress | None,
        retry_updates: bool,
        codec_state: str | os.PathLike[str] | None,
        resumable_from: int | None,
        upload_chunk_size: int,
        upload_in_flight: int,
        read_timeout: float | None,
        clock: Callable[[], float],
        identity: ClientKey | None = None,
    ) -> None:
        if registry is not None and not isinstance(registry, CodecRegistry):
            raise ConfigurationError(
                f"registry must be a CodecRegistry (or None for every installed codec), "
                f"got {registry!r}"
            )
        if progress is not None and not callable(progress):
            raise ConfigurationError(
                "progress must be a callable progress(bytes_done, bytes_total_or_None), or "
                f"None; got {progress!r}"
            )
        if type(retry_updates) is not bool:
            raise ConfigurationError(f"retry_updates must be True or False, got {retry_updates!r}")
        if resumable_from is not None and (type(resumable_from) is not int or resumable_from < 1):
            raise ConfigurationError(
                f"resumable_from must be a size in bytes (>= 1) or None, got {resumable_from!r}"
            )
        if type(upload_chunk_size) is not int or not MIN_CHUNK <= upload_chunk_size <= MAX_CHUNK:
            raise ConfigurationError(
                f"upload_chunk_size must be an integer from {MIN_CHUNK} to {MAX_CHUNK}, "
                f"got {upload_chunk_size!r}"
            )
        if type(upload_in_flight) is not int or not 1 <= upload_in_flight <= MAX_IN_FLIGHT:
            raise ConfigurationError(
                f"upload_in_flight must be an integer from 1 to {MAX_IN_FLIGHT}, "
                f"got {upload_in_flight!r}"
            )
        if identity is not None and not isinstance(identity, ClientKey):
            raise ConfigurationError(
                "identity must be a fma_connect.ClientKey (ClientKey.load(path), or "
                f"ClientKey.generate()), or None; got {type(identity).__name__}"
            )
        self.identity = identity
        self.resumable_from = resumable_from
        self.chunk_size = upload_chunk_size
        self.in_flight = upload_in_flight
        self.federated_model_id = federated_model_id
        self.uuid = check_uuid(uuid)
        self.registry = registry if registry is not None else default_codec_registry()
        self.codec: Codec | ContextCodec
        if isinstance(codec, str):
            self.codec = self.registry.get(codec)
        elif isinstance(codec, Codec | ContextCodec):
            self.codec = codec
        else:
            raise ConfigurationError(
                f"codec must be a codec name ({', '.join(self.registry.names())}) or a codec "
                f"object, got {codec!r}"
            )
        self.progress = progress
        self.retry_updates = retry_updates
        self.read_timeout = read_timeout
        self.clock = clock
        self.spec: Spec | None = None
        self.last_aggregate: int | None = None
        #: The media types the service lists for updates (None: not asked yet), and
        #: where its resumable uploads start (None: it has none).
        self.accepted: set[str] | None = None
        self.uploads_path: str | None = None
        #: For a delta codec: the last aggregate received (id, tensors as received, a
        #: copy), the base of the next update; and the codec's own state.
        self.held: tuple[int | None, Tensors] | None = None
        self._received: Tensors | None = None
        self.state_path = codec_state
        self.codec_state: dict[str, Any] = {}
        if codec_state is not None:
            if not uses_context(self.codec):
                raise ConfigurationError(
                    f"codec_state keeps the state of a codec that has one (such as 'sparse'); "
                    f"the {self.codec.name!r} codec keeps none"
                )
            try:
                self.codec_state = load_state(codec_state, self.codec.name)
            except DecodeError as exc:
                raise ConfigurationError(f"codec_state: {exc}") from exc


def check_uuid(value: object) -> str | None:
    """Return the client UUID as a string, or raise ConfigurationError if it is not one."""
    if value is None:
        return None
    if isinstance(value, uuid_module.UUID):
        return str(value)
    if isinstance(value, str) and value.isprintable() and value == value.strip():
        try:
            uuid_module.UUID(value)
        except ValueError:
            pass
        else:
            if "_" not in value:  # int() takes digit separators; a UUID has none
                return value
    raise ConfigurationError(
        "uuid must be a UUID string such as '3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f' (or None "
        f"to register), got {value!r}"
    )


def read_timeout_of(timeout: object) -> float | None:
    """The read part of a client's ``timeout`` option (None: none; checked by its transport)."""
    if isinstance(timeout, tuple) and len(timeout) == 2:
        read = timeout[1]
        return float(read) if isinstance(read, int | float) else None
    return float(timeout) if isinstance(timeout, int | float) else None
