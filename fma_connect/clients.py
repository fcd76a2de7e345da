"""WebClient: the federated client's side of an FMA service, over requests.

The seed API (``WebClient(federated_model_id, uuid=None, url=None)`` and its methods) is
kept as the original client documents it; every new option is keyword-only.

What each call means (paths, headers, bodies, status handling, decoding and restoring
weights) lives in :class:`fma_connect._protocol.ClientProtocol`, which
:class:`~fma_connect.aio.AsyncWebClient` speaks too; this module only moves its bytes,
with one requests.Session (:class:`fma_connect._transport.Transport`).
"""

from __future__ import annotations

import functools
import os
import time
import uuid as uuid_module
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import requests

from . import settings
from ._in_flight import in_threads
from ._messages import Close, Command, Flow, ReadBody, Reply, Request, Requests, Sleep, run_flow
from ._protocol import META_HEADER, ClientProtocol, Target, read_timeout_of
from ._tls import Cert, Verify
from ._transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Progress, Transport
from .codecs.base import Codec, Tensors
from .codecs.context import ContextCodec
from .identity import ClientKey
from .registry import CodecRegistry
from .resumable import DEFAULT_CHUNK_SIZE, DEFAULT_IN_FLIGHT, DEFAULT_RESUMABLE_FROM
from .spec import Spec

__all__ = ["META_HEADER", "APIException", "Target", "WebClient"]

from .exceptions import APIException  # re-exported: the seed's import path

T = TypeVar("T")


class WebClient:
    """REST client of one federated model on an FMA service.

    Args:
        federated_model_id: Id of the federated model this client sends updates for.
        uuid: The client's UUID (a UUID string or :class:`uuid.UUID`) from an earlier
            registration; None registers a new client on first use (reading ``uuid`` or
            calling ``register()``). Keep it and pass it on later runs: a new client on
            every run leaves the old ones registered, and a model with the
            ``all_clients`` requirement then waits for them forever.
        url: Root URL of the service, e.g. ``http://127.0.0.1:8000`` or
            ``https://host/prefix``; the client appends ``api/v1/...`` to it, so a URL
            ending in ``/api/v1`` is refused. Default ``fma_connect.settings.default_url``.
        codec: Codec name or object for updates (default ``"json"``, which the stock
            service aggregates). Responses in any installed codec are decoded.
        timeout: Seconds, or ``(connect, read)``; read bounds silence, not a transfer.
        retries: Retries of GETs and of connections that failed before a request was sent.
        session: A requests.Session to use (its headers, auth, proxies); the client
            closes only a session it created.
        headers: Extra headers on every request.
        auth: A requests auth (e.g. :class:`fma_connect.TokenAuth`) for every request.
        verify: TLS: True (default) checks the service's certificate against the
            default CAs; the path of a PEM file (or directory) of CAs checks it against
            those instead (a private CA); False checks nothing (anyone on the path can
            then read and change the traffic). As requests' ``verify``.
        cert: TLS: for a service that requires client certificates (mutual TLS), a PEM
            file with the client's certificate and key, or a ``(cert, key)`` pair.
        registry: The codecs to use; default: every installed codec.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` during uploads
            and downloads of weights; for an upload in chunks, from the threads that
            send them (one call at a time, docs/UPLOADS.md).
        retry_updates: Also resend an update whose outcome is unknown (connection lost
            after sending, 429/502/503/504), with the same ``Idempotency-Key``. Turn it on
            for services that honour the key (the reference server does); the stock
            service ignores it, so there a resend could store the update twice. Updates
            whose connection failed before sending are always retried.
        codec_state: A file that keeps the state of a codec that has one (the ``sparse``
            codec's error-feedback residual) between runs: read at construction, written
            (atomically) after every update sent. Without it the state lives in memory.
        resumable_from: Binary updates of at least this many bytes (default 32 MiB) go
            as resumable uploads to a service that offers them (the reference server;
            docs/UPLOADS.md): a cut connection, a 5xx or a restart resends only the
            chunks the service lacks, and chunks it holds from earlier updates of the
            model are not sent at all. None: always one plain request.
        upload_chunk_size: The chunk size of resumable uploads (default 8 MiB, at least
            64 KiB; larger for payloads that would need more than 4096 chunks): the most a
            cut connection costs, and the grain at which unchanged bytes are not resent.
        upload_in_flight: How many chunks of a resumable upload go at once, each on a
            connection of its own (default 4, at most 16): on a distant service a round
            trip per chunk is then not spent idle; 1 costs a server next to the client
            the least CPU (docs/UPLOADS.md).
        identity: The client's Ed25519 key (:class:`~fma_connect.ClientKey`, needs
            ``fma-connect[identity]``), for a service that enrols clients (the reference
            server; docs/SECURITY.md): every request attempt is signed afresh (a retry is
            never a replay), and every update carries a signature of its payload. Bind
            it to the client once with :meth:`enrol`. None: the UUID alone (stock).

    The client is a context manager; ``close()`` releases its connections. Use one
    client per thread (or :class:`~fma_connect.aio.AsyncWebClient` for many in one).
    """

    def __init__(
        self,
        federated_model_id: int,
        uuid: str | uuid_module.UUID | None = None,
        url: str | None = None,
        *,
        codec: str | Codec | ContextCodec = "json",
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        registry: CodecRegistry | None = None,
        progress: Progress | None = None,
        retry_updates: bool = False,
        codec_state: str | os.PathLike[str] | None = None,
        resumable_from: int | None = DEFAULT_RESUMABLE_FROM,
        upload_chunk_size: int = DEFAULT_CHUNK_SIZE,
        upload_in_flight: int = DEFAULT_IN_FLIGHT,
        verify: Verify = True,
        cert: Cert | None = None,
        identity: ClientKey | None = None,
    ) -> None:
        self._url = url if url is not None else settings.default_url
        self._protocol = ClientProtocol(
            federated_model_id,
            uuid,
            codec=codec,
            registry=registry,
            progress=progress,
            retry_updates=retry_updates,
            codec_state=codec_state,
            resumable_from=resumable_from,
            upload_chunk_size=upload_chunk_size,
            upload_in_flight=upload_in_flight,
            read_timeout=read_timeout_of(timeout),
            clock=_monotonic,
            identity=identity,
        )
        self._transport = Transport(
            self._url,
            timeout=timeout,
            retries=retries,
            session=session,
            headers=headers,
            auth=auth,
            verify=verify,
            cert=cert,
        )
        if identity is not None:
            self._transport.sign_with(self._protocol.request_signature)

    # -- the seed's properties ------------------------------------------------------

    @property
    def uuid(self) -> str:
        """Client UUID; without one yet, registers a new client with the federated model first.

        Keep it and pass it as ``uuid=`` on later runs to stay the same client.
        """
        return self._run(self._protocol.ensure_uuid())

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return self._url

    @property
    def federated_model_id(self) -> int:
        """Id of the federated model for which to send updates."""
        return self._protocol.federated_model_id

    # -- additions ------------------------------------------------------------------

    @property
    def codec(self) -> Codec | ContextCodec:
        """The codec updates are sent in."""
        return self._protocol.codec

    @property
    def spec(self) -> Spec | None:
        """The structure of the last update sent, used to restore received weights."""
        return self._protocol.spec

    def close(self) -> None:
        """Release the client's connections."""
        self._transport.close()

    def __enter__(self) -> WebClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the seed's methods ---------------------------------------------------------

    def register(self) -> str:
        """Register this client with the federated model and return its UUID.

        A client that already has a UUID re-registers under it (no change if it is
        registered already).

        Raises:
            APIException: the service answered something other than 200 or 201.
        """
        return self._run(self._protocol.register())

    def enrol(self, token: str | None = None) -> str:
        """Bind this client's key (``identity=``) to it and join the federated model.

        Reference server only. The request is signed with the key (proof the client
        holds it). Without a UUID a new client is made; with one, the key is bound to
        that client. A model of ``enrolment`` ``token`` needs ``token`` (one-time, from
        ``fma-connect admin enrolment-token``); one of ``keys`` needs the key on its
        allow-list; an ``open`` one neither. An enrolled client enrolls with other
        models the same way, with the same key.

        Returns:
            The client's UUID (keep it, with the key file, for later runs).

        Raises:
            ConfigurationError: the client has no ``identity``.
            APIException: the service refused (a spent or expired token, a key not on
                the allow-list, a key bound to another client).
        """
        return self._run(self._protocol.enrol(token))

    def rotate_key(self, new: ClientKey) -> str:
        """Replace this client's key with ``new`` (the current key signs the request, the
        new one proves it is held); later requests are signed with ``new``.

        The old key stays on the server, retired, to verify the updates it signed.

        Returns:
            The new key's id.

        Raises:
            ConfigurationError: the client has no ``identity``.
            APIException: the service refused (the new key is enrolled already).
        """
        return self._run(self._protocol.rotate_key(new))

    def send_update(
        self,
        data: Any,
        base_aggregate: int | np.integer[Any] | None = None,
        *,
        num_examples: int | None = None,
    ) -> dict[str, Any]:
        """Send a weight update for the federated model.

        Args:
            data: The weights: numpy arrays, numbers, or dicts/lists/tuples of them.
            base_aggregate: Id of the aggregate these weights start from.
            num_examples: How many examples trained them (weights FedAvg on services
                that support it; others ignore it).

        Returns:
            The service's answer (on the stock service, ``data`` is the stored file's URL).

        Raises:
            ConfigurationError: a delta codec's ``base_aggregate`` is not an aggregate id.
            EncodeError: the weights cannot be written in this client's codec.
            APIException: the service did not answer 201.
        """
        return self._run(self._protocol.send_update(data, base_aggregate, num_examples))

    def check_for_new_model_aggregate(
        self,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """Return the latest aggregate if it is newer than ``update_after``.

        Args:
            update_after: Aggregate id the new one must exceed; default: the last
                aggregate this client has seen (any aggregate, on a fresh client).
            like: A template to restore the weights into (default: the last update's
                structure, or what the service sent if none was sent yet).
            into: Arrays to receive the weights in, instead of new ones: a list, dict
                or nested tree of writable numpy arrays of the weights' shapes (the
                previous answer's weights, say). They are overwritten and returned as
                the weights. Tensors that travel as raw bytes (``msgpack``) are read
                from the socket straight into them; others are decoded and copied in.
                If the call raises, they may hold part of the new weights. Not with
                ``like``.

        Returns:
            ``{"id", "result", "validation_score", ...}`` with ``result`` holding the
            weights, or None when there is no newer aggregate.

        Raises:
            ConfigurationError: ``update_after`` is not an integer or None, or ``into``
                is not a tree of writable numpy arrays.
            APIException: the service did not answer 200.
        """
        return self._run(self._protocol.check_for_new_model_aggregate(update_after, like, into))

    def wait_for_new_model(
        self,
        timeout: float,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """Wait up to ``timeout`` seconds for an aggregate newer than ``update_after``.

        A service that can hold the request until the aggregate exists (it answers
        ``FMA-Long-Poll``, as the reference server does; docs/ROUNDS.md) is asked to;
        any other is polled with :meth:`check_for_new_model_aggregate`, waiting 0.5 s
        at first, then twice as long each time up to 10 s.

        Args:
            timeout: Most seconds to wait.
            update_after: As for :meth:`check_for_new_model_aggregate`.
            like: As for :meth:`check_for_new_model_aggregate`.
            into: As for :meth:`check_for_new_model_aggregate`.

        Returns:
            What :meth:`check_for_new_model_aggregate` returns for the new aggregate as
            soon as it exists, or None when ``timeout`` passed without one.

        Raises:
            ConfigurationError: ``timeout`` is not a number of seconds >= 0, or
                ``update_after`` is not an integer or None.
            APIException: the service did not answer 200.
        """
        return self._run(self._protocol.wait_for_new_model(timeout, update_after, like, into))

    def get_current_artifact(self, *, like: Any = None, into: Any = None) -> dict[str, Any] | None:
        """Return the model's published artifact, with ``values`` holding its weights.

        Args:
            like: As for :meth:`check_for_new_model_aggregate`.
            into: As for :meth:`check_for_new_model_aggregate`.

        Returns:
            ``{"id", "values", "version", "created_on", "federated_model"}``, or None
            when nothing has been published.

        Raises:
            APIException: the service did not answer 200.
        """
        return self._run(self._protocol.get_current_artifact(like, into))

    def check_for_latest_model(
        self,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """Return the latest model (aggregate or artifact) if newer than ``update_after``.

        Args:
            update_after: Aggregate id the latest must exceed; default: the last
                aggregate this client has seen. Values from an artifact (``aggregate``
                None, e.g. the initial model) count as aggregate -1, as in the original
                client: a client gets them once.
            like: A template to restore the weights into.
            into: As for :meth:`check_for_new_model_aggregate`.

        Returns:
            ``{"values": <weights>, "aggregate": id or None}``, or None.

        Raises:
            ConfigurationError: ``update_after`` is not an integer or None.
            APIException: the service did not answer 200.
        """
        return self._run(self._protocol.check_for_latest_model(update_after, like, into))

    def send_val_results(self, results: Any, aggregate_id: int) -> dict[str, Any]:
        """Send this client's validation results for an aggregate.

        Raises:
            EncodeError: ``results`` holds NaN, infinities or values JSON cannot carry.
            APIException: the service did not answer 201 (the stock service answers 400
                to a second score for the same aggregate and client).
        """
        return self._run(self._protocol.send_val_results(results, aggregate_id))

    def __repr__(self) -> str:
        # Never self.uuid, which registers a client; and the UUID is the client's only
        # credential on the stock service, so a repr (which ends up in logs) shows a prefix.
        uuid = self._protocol.uuid
        shown = "unregistered" if uuid is None else repr(f"{uuid[:8]}...")
        return (
            f"WebClient(federated_model_id={self.federated_model_id!r}, url={self._url!r}, "
            f"codec={self.codec.name!r}, uuid={shown})"
        )

    # -- moving the protocol's bytes ------------------------------------------------

    def _run(self, flow: Flow[T]) -> T:
        return run_flow(flow, self._execute)

    def _execute(self, command: Command) -> Any:
        """Carry out one command of a protocol flow with requests."""
        if isinstance(command, Request):
            response = self._transport.request(
                command.method,
                command.path,
                body=command.body,
                content_type=command.content_type,
                headers=command.headers,
                params=command.params,
                stream=command.stream,
                resend=command.resend,
            )
            return Reply(
                response.status_code,
                response.headers,
                str(response.request.method),
                str(response.url),
                None if command.stream else response.content,
                response,
            )
        if isinstance(command, Requests):
            sends = [functools.partial(self._execute, request) for request in command.requests]
            return in_threads(sends, command.width)
        if isinstance(command, ReadBody):
            raw: requests.Response = command.reply.raw
            return self._transport.read_body_placed(raw, command.place, command.progress)
        if isinstance(command, Close):
            command.reply.raw.close()
            return None
        if isinstance(command, Sleep):
            time.sleep(command.seconds)
            return None
        raise AssertionError(f"unknown protocol command {command!r}")

    # -- the protocol's state, under the names tests and tools know -------------------

    @property
    def _held(self) -> tuple[int | None, Tensors] | None:
        return self._protocol.held

    @_held.setter
    def _held(self, value: tuple[int | None, Tensors] | None) -> None:
        self._protocol.held = value

    def _accept(self, target: Target) -> str:
        return self._protocol.accept(target)


def _monotonic() -> float:
    # Looked up at each call, so a test that replaces this module's ``time`` moves it.
    return time.monotonic()
