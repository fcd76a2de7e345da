"""WebClient: the federated client's side of an FMA service.

The seed API (``WebClient(federated_model_id, uuid=None, url=None)`` and its methods) is
kept as the original client documents it; every new option is keyword-only.
"""

from __future__ import annotations

import os
import time
import uuid as uuid_module
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np
import orjson
import requests

from . import settings
from ._into import Into
from ._transport import (
    API_PREFIX,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    LONG_POLL_HEADER,
    Chunks,
    Progress,
    Transport,
    dumps_json,
)
from .codecs.base import Codec, Tensors, decode_with, read_tag
from .codecs.context import (
    CodecContext,
    ContextCodec,
    MissingBaseError,
    encode_with,
    load_state,
    save_state,
    uses_context,
)
from .codecs.json_lists import check_document_size, fast_layers
from .codecs.msgpack_numpy import MsgpackCodec
from .exceptions import APIError, ConfigurationError, DecodeError, EncodeError, UnknownCodecError
from .plugins import default_codec_registry
from .registry import CodecRegistry
from .resumable import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_RESUMABLE_FROM,
    MAX_CHUNK,
    MIN_CHUNK,
    RESUMABLE_HEADER,
    upload,
)
from .spec import Spec, flatten, spec_like, untyped

__all__ = ["APIException", "WebClient"]

from .exceptions import APIException  # re-exported: the seed's import path

_API = API_PREFIX
_JSON = "application/json"
#: What received weights are restored into (see ``WebClient._target``).
Target = Spec | Into | None
#: Response header holding the JSON fields of a response whose body is a binary payload.
META_HEADER = "FMA-Meta"
#: What a delta codec's client asks answers in: whole and lossless, its next base.
_BASE_MEDIA = MsgpackCodec.media_type
#: What a delta codec's client receives aggregates in, as deltas from the one it holds:
#: a sparse step the server stored (exact: the aggregate is what it decodes to), else
#: the lossless delta.
_DOWNSTREAM = ("sparse", "delta")
#: The JSON-native codec a ``json`` client asks for to receive tensors with their names.
_NAMED = "npz-b64"
#: JSON bodies larger than this are sent in slices with progress, like binary ones.
_STREAM_JSON = 8 << 20
#: Seconds to ask a service to hold a request (the reference server holds at most 30).
_LONGEST_HOLD = 30.0
#: Seconds between polls of a service that cannot hold requests: first, and at most.
_POLL_FIRST, _POLL_MOST = 0.5, 10.0


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
        registry: The codecs to use; default: every installed codec.
        progress: Called as ``progress(bytes_done, bytes_total_or_None)`` during uploads
            and downloads of weights.
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

    The client is a context manager; ``close()`` releases its connections. Use one
    client per thread.
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
        self._resumable_from = resumable_from
        self._chunk_size = upload_chunk_size
        self._federated_model_id = federated_model_id
        self._uuid = _check_uuid(uuid)
        self._url = url if url is not None else settings.default_url
        self._registry = registry if registry is not None else default_codec_registry()
        self._codec: Codec | ContextCodec
        if isinstance(codec, str):
            self._codec = self._registry.get(codec)
        elif isinstance(codec, Codec | ContextCodec):
            self._codec = codec
        else:
            raise ConfigurationError(
                f"codec must be a codec name ({', '.join(self._registry.names())}) or a codec "
                f"object, got {codec!r}"
            )
        self._transport = Transport(
            self._url, timeout=timeout, retries=retries, session=session, headers=headers, auth=auth
        )
        self._progress = progress
        self._retry_updates = retry_updates
        self._spec: Spec | None = None
        self._last_aggregate: int | None = None
        #: The media types the service lists for updates (None: not asked yet), and
        #: where its resumable uploads start (None: it has none).
        self._accepted: set[str] | None = None
        self._uploads_path: str | None = None
        #: For a delta codec: the last aggregate received (id, tensors as received, a
        #: copy), the base of the next update; and the codec's own state.
        self._held: tuple[int | None, Tensors] | None = None
        self._received: Tensors | None = None
        self._state_path = codec_state
        self._codec_state: dict[str, Any] = {}
        if codec_state is not None:
            if not uses_context(self._codec):
                raise ConfigurationError(
                    f"codec_state keeps the state of a codec that has one (such as 'sparse'); "
                    f"the {self._codec.name!r} codec keeps none"
                )
            try:
                self._codec_state = load_state(codec_state, self._codec.name)
            except DecodeError as exc:
                raise ConfigurationError(f"codec_state: {exc}") from exc

    # -- the seed's properties ------------------------------------------------------

    @property
    def uuid(self) -> str:
        """Client UUID; without one yet, registers a new client with the federated model first.

        Keep it and pass it as ``uuid=`` on later runs to stay the same client.
        """
        if self._uuid is None:
            self.register()
        assert self._uuid is not None
        return self._uuid

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return self._url

    @property
    def federated_model_id(self) -> int:
        """Id of the federated model for which to send updates."""
        return self._federated_model_id

    # -- additions ------------------------------------------------------------------

    @property
    def codec(self) -> Codec | ContextCodec:
        """The codec updates are sent in."""
        return self._codec

    @property
    def spec(self) -> Spec | None:
        """The structure of the last update sent, used to restore received weights."""
        return self._spec

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
        response = self._call(
            "POST",
            f"{_API}models/{self._federated_model_id}/register_client/",
            headers=self._client_headers(register=True),
        )
        self._uuid = str(_json(response)["uuid"])
        return self._uuid

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
        if isinstance(base_aggregate, np.integer):
            base_aggregate = int(base_aggregate)
        if uses_context(self._codec) and not (
            base_aggregate is None or (type(base_aggregate) is int and base_aggregate > 0)
        ):
            raise ConfigurationError(
                f"the {self._codec.name} codec sends an update as a delta against "
                "base_aggregate: give the id (an int) of the aggregate it starts from, or None "
                f"for the initial model; got {base_aggregate!r}"
            )
        if uses_context(self._codec):
            self._check_service_decodes()
        tensors, spec = flatten(data)
        # The codec's state changes only once the update is stored: a failed send leaves
        # what it would have delivered in the residual, for the next try.
        state = {k: dict(v) if isinstance(v, dict) else v for k, v in self._codec_state.items()}
        payload = encode_with(self._codec, tensors, self._context(base_aggregate, state))
        headers = self._client_headers()
        # Lets a service that honours it store a retried POST once (the stock one ignores it).
        headers["Idempotency-Key"] = str(uuid_module.uuid4())
        path = f"{_API}model_updates/"
        fields: dict[str, Any] = {
            "federated_model": self._federated_model_id,
            "base_aggregate": base_aggregate,
        }
        if num_examples is not None:
            fields["num_examples"] = num_examples
        try:
            if self._codec.json_native:
                if self._codec.name == "json" and not spec.positional:
                    # Plain lists carry no names: a service that reads these (the
                    # reference server) pairs tensors by name; others ignore the field.
                    fields["tensor_names"] = spec.names
                body = dumps_json({**fields, "data": payload})
                check_document_size(len(body), encoding=True)
                response = self._call(
                    "POST",
                    path,
                    body=Chunks([body], self._progress) if len(body) > _STREAM_JSON else body,
                    content_type=_JSON,
                    headers=headers,
                    resend=self._retry_updates,
                )
            elif self._resumable(payload):
                assert self._uploads_path is not None  # _resumable found it
                response = upload(
                    self._call,
                    self._uploads_path,
                    payload,
                    media_type=self._codec.media_type,
                    fields=fields,
                    headers=self._client_headers(),
                    chunk_size=self._chunk_size,
                    progress=self._progress,
                )
            else:
                params = {k: v for k, v in fields.items() if v is not None}
                response = self._call(
                    "POST",
                    path,
                    body=Chunks(payload, self._progress),
                    content_type=self._codec.media_type,
                    headers=headers,
                    params=params,
                    resend=self._retry_updates,
                )
        except APIError as exc:
            if exc.status_code == 415 and not self._codec.json_native:
                raise APIError(415, exc.detail, self._unsupported_codec_hint(exc)) from exc
            raise
        self._spec = spec
        self._codec_state = state
        if self._state_path is not None:  # what the update left out, for the next one
            save_state(self._state_path, self._codec.name, state)
        return _json(response)

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
        _check_update_after(update_after)
        return self._new_aggregate(update_after, self._target(like, into))[0]

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
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise ConfigurationError(f"timeout must be seconds >= 0, got {timeout!r}")
        _check_update_after(update_after)
        target = self._target(like, into)
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        long_poll = True  # until an answer shows the service cannot hold the request
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            hold = min(remaining, self._longest_hold()) if long_poll else None
            aggregate, long_poll = self._new_aggregate(update_after, target, hold)
            remaining = deadline - time.monotonic()
            if aggregate is not None or remaining <= 0:
                return aggregate
            if not long_poll:
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, _POLL_MOST)

    def _new_aggregate(
        self,
        update_after: int | np.integer[Any] | None,
        target: Target,
        hold: float | None = None,
    ) -> tuple[dict[str, Any] | None, bool]:
        """The latest aggregate if newer than ``update_after``; and whether the service
        can hold the request (its ``FMA-Long-Poll`` header).

        Args:
            hold: Ask the service to hold the request this many seconds, until a newer
                aggregate exists (None: answer at once).
        """
        params = None
        if hold is not None:
            threshold = int(update_after) if update_after is not None else self._last_aggregate
            after = -1 if threshold is None else threshold
            params = {"wait": f"{hold:.3f}", "after": str(after)}
        response = self._call(
            "GET",
            f"{_API}models/{self._federated_model_id}/get_latest_aggregate/",
            headers=self._client_headers(),
            params=params,
        )
        long_poll = LONG_POLL_HEADER in response.headers
        aggregate = _json(response)
        if not aggregate or not self._is_new(aggregate.get("id"), update_after):
            return None, long_poll
        aggregate["result"] = self._weights(aggregate.get("result"), target)
        self._saw(aggregate["id"])
        self._hold(aggregate["id"])
        return aggregate, long_poll

    def _longest_hold(self) -> float:
        """Seconds a service may hold a request: well within the read timeout."""
        timeout = self._transport.timeout
        read = timeout[1] if isinstance(timeout, tuple) else timeout
        return _LONGEST_HOLD if read is None else min(_LONGEST_HOLD, read / 2)

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
        target = self._target(like, into)
        response = self._call(
            "GET",
            f"{_API}models/{self._federated_model_id}/get_current_artifact/",
            headers=self._client_headers(),
        )
        artifact = _json(response)
        if not artifact:
            return None
        artifact["values"] = self._weights(artifact.get("values"), target)
        return artifact

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
        _check_update_after(update_after)
        target = self._target(like, into)
        response = self._call(
            "GET",
            f"{_API}models/{self._federated_model_id}/get_latest_model/",
            headers={**self._client_headers(), "Accept": self._accept(target)},
            stream=True,
        )
        if _is_json(response):
            latest, restored = self._json_with_weights(response, "values", target)
            if not latest or not self._is_new(latest.get("aggregate"), update_after):
                return None
            if not restored:
                latest["values"] = self._weights(latest.get("values"), target)
        else:
            latest = _meta(response)
            if not self._is_new(latest.get("aggregate"), update_after):
                response.close()
                return None
            latest["values"] = self._restore(self._decode_binary(response, target), target)
        self._saw(latest.get("aggregate"))
        self._hold(latest.get("aggregate"))
        return latest

    def send_val_results(self, results: Any, aggregate_id: int) -> dict[str, Any]:
        """Send this client's validation results for an aggregate.

        Raises:
            EncodeError: ``results`` holds NaN, infinities or values JSON cannot carry.
            APIException: the service did not answer 201 (the stock service answers 400
                to a second score for the same aggregate and client).
        """
        _refuse_non_finite(results, "validation_results")
        body = {"validation_results": results, "aggregate": aggregate_id, "client": self.uuid}
        response = self._call(
            "POST",
            f"{_API}client_aggregate_scores/",
            body=dumps_json(body),
            content_type=_JSON,
            headers=self._client_headers(),
        )
        return _json(response)

    def __repr__(self) -> str:
        # Never self.uuid, which registers a client; and the UUID is the client's only
        # credential on the stock service, so a repr (which ends up in logs) shows a prefix.
        uuid = "unregistered" if self._uuid is None else repr(f"{self._uuid[:8]}...")
        return (
            f"WebClient(federated_model_id={self._federated_model_id!r}, url={self._url!r}, "
            f"codec={self._codec.name!r}, uuid={uuid})"
        )

    # -- internals ------------------------------------------------------------------

    def _call(self, method: str, path: str, **options: Any) -> requests.Response:
        """Send a request as this client; an unknown or unregistered client is told what to do."""
        try:
            return self._transport.request(method, path, **options)
        except APIError as exc:
            if exc.status_code in (401, 403) and exc.hint is None:
                hint = self._identity_hint(exc)
                if hint is not None:
                    raise APIError(exc.status_code, exc.detail, hint) from exc
            raise

    def _identity_hint(self, exc: APIError) -> str | None:
        """What to do when the service does not know this client, or not for this model."""
        text = str(exc.detail).lower()
        model = self._federated_model_id
        if "invalid uuid" in text:
            return (
                f"The service does not know client {self._uuid} (registered on another "
                "service, or its registration was lost): create the WebClient without uuid= "
                "to register a new client, and keep its new client.uuid"
            )
        if "not registered" in text or "permission" in text:  # ours, and the stock one's
            return (
                f"Client {self._uuid} may not use federated model {model}: if it is not "
                "registered with that model, call register() first (it keeps this uuid)"
            )
        return None

    def _resumable(self, payload: Any) -> bool:
        """Whether a binary payload goes as a resumable upload (large, and offered)."""
        if self._resumable_from is None:
            return False
        if sum(memoryview(buffer).nbytes for buffer in payload) < self._resumable_from:
            return False
        if self._accepted is None:
            self._ask_service()
        return self._uploads_path is not None

    def _ask_service(self) -> str:
        """Ask ``OPTIONS model_updates/`` what the service decodes and offers, once.

        Returns:
            What went wrong, for a message ('' when the service answered).
        """
        try:
            response = self._call(
                "OPTIONS", f"{_API}model_updates/", headers=self._client_headers(), resend=True
            )
        except APIError as exc:  # the stock service may refuse OPTIONS: none listed
            self._accepted = set()
            return f" (OPTIONS answered {exc.status_code}: {str(exc.detail)[:200]})"
        listed = response.headers.get("Accept-Post", "")
        self._accepted = {
            part.split(";")[0].strip().lower() for part in listed.split(",") if part.strip()
        }
        self._uploads_path = response.headers.get(RESUMABLE_HEADER) or None
        return ""

    def _check_service_decodes(self) -> None:
        """Refuse, before anything is sent, a codec the service does not decode.

        Asked once per client: ``OPTIONS model_updates/`` answers the media types an
        update may be sent in (``Accept-Post``) on the reference server; the stock
        service, which averages only plain JSON, lists none.

        Raises:
            ConfigurationError: the service does not list this client's codec.
        """
        answer = self._ask_service() if self._accepted is None else ""
        assert self._accepted is not None  # _ask_service sets it
        if self._codec.media_type.lower() in self._accepted:
            return
        json_codecs = ", ".join(i.codec.name for i in self._registry if i.codec.json_native)
        if not self._accepted:
            self._accepted = None  # asked again next time: the answer may have been an error
            raise ConfigurationError(
                f"the {self._codec.name!r} codec sends updates as deltas that only a service "
                f"which decodes them can average, and this service lists no codecs it "
                f"decodes{answer} (the stock FMA service averages plain JSON only): nothing "
                f"was sent. Use the reference server (fma-connect serve), or a JSON-native "
                f"codec: {json_codecs}"
            )
        raise ConfigurationError(
            f"this service does not decode the {self._codec.name!r} codec "
            f"({self._codec.media_type}); it accepts {', '.join(sorted(self._accepted))}: "
            "nothing was sent. Install the plugin that provides it where the server runs "
            "and restart it, or use one of those codecs"
        )

    def _unsupported_codec_hint(self, exc: APIError) -> str:
        """Why a service refused a binary body (415), and what to do about it."""
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        accepted = detail.get("accepted")
        json_codecs = ", ".join(i.codec.name for i in self._registry if i.codec.json_native)
        if isinstance(accepted, list) and len(accepted) > 1:
            # A server that speaks other binary codecs (the reference server) lacks this
            # codec's plugin; installing it there is the fix, not falling back to JSON.
            return (
                f"This server does not have the {self._codec.name!r} codec "
                f"({self._codec.media_type}); it accepts {', '.join(map(str, accepted))}. "
                f"Install the plugin that provides {self._codec.name!r} where the server "
                "runs and restart it (`fma-connect codecs` there lists its codecs), or use "
                "one of the codecs it accepts"
            )
        return (
            f"This service does not accept {self._codec.name!r} bodies "
            f"({self._codec.media_type}); a JSON-only service (such as the stock FMA "
            f"service) takes the JSON-native codecs: {json_codecs}"
        )

    def _client_headers(self, register: bool = False) -> dict[str, str]:
        if register:
            return {"CLIENT-UUID": self._uuid} if self._uuid else {}
        return {"CLIENT-UUID": self.uuid}

    def _accept(self, target: Target) -> str:
        # Plain application/json asks for plain lists (what the original client gets);
        # a tagged JSON codec is asked for by name, a binary one by its media type.
        if self._codec.name == "json":
            if target is not None and not target.positional and _NAMED in self._registry:
                # Named weights are restored by name where the service can send names
                # (the reference server: a tagged npz-b64 object); the stock service
                # ignores Accept and sends plain lists, restored by position.
                return f"{_JSON}; codec={_NAMED}, {_JSON};q=0.9"
            return _JSON
        if self._codec.json_native:
            return f"{_JSON}; codec={self._codec.name}"
        if uses_context(self._codec):  # whole, or as a delta from the aggregate held
            whole = f"{_BASE_MEDIA}, {_JSON};q=0.9"
            if self._held is None:
                return whole
            base = "initial" if self._held[0] is None else self._held[0]
            deltas = [self._registry.get(n) for n in _DOWNSTREAM if n in self._registry]
            return ", ".join([*(f"{c.media_type}; base={base}" for c in deltas), whole])
        return f"{self._codec.media_type}, {_JSON};q=0.9"

    def _is_new(self, aggregate_id: Any, update_after: int | np.integer[Any] | None) -> bool:
        """Whether an answer is newer than ``update_after`` (default: the last one seen).

        As in the original client, an answer without an aggregate (the current
        artifact, e.g. the initial model) counts as aggregate -1: a client gets it once.
        """
        threshold = int(update_after) if update_after is not None else self._last_aggregate
        return threshold is None or _aggregate_number(aggregate_id) > threshold

    def _saw(self, aggregate_id: Any) -> None:
        """Remember an answer handed to the caller, so it is not handed over again."""
        current = _aggregate_number(aggregate_id)
        if self._last_aggregate is None or current > self._last_aggregate:
            self._last_aggregate = current

    def _weights(self, value: Any, target: Target) -> Any:
        """Turn a weight field of a JSON answer (inline weights or a URL) into weights."""
        if value is None:
            return None
        if isinstance(value, str):
            return self._download(value, target)
        tagged = read_tag(value)
        if tagged is not None:
            return self._restore(decode_with(self._registry.get(tagged[0]), value), target)
        if target is None:
            return value  # plain JSON and nothing to restore into: what the service sent
        return self._restore(decode_with(self._registry.get("json"), value), target)

    def _download(self, url: str, target: Target) -> Any:
        response = self._call(
            "GET",
            url,
            headers={**self._client_headers(), "Accept": self._accept(target)},
            stream=True,
        )
        if _is_json(response) or not _is_known_binary(response, self._registry):
            _check_json_length(response)
            body = self._transport.read_body(response, self._progress)
            if target is not None:
                fast = fast_layers(memoryview(body).cast("B"))
                if fast is not None:
                    return self._restore(fast[1], target)
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise DecodeError(
                    f"weights at {url} are neither JSON nor an installed binary codec "
                    f"(Content-Type {response.headers.get('Content-Type')!r}): {exc}"
                ) from exc
            return self._weights(value, target)
        return self._restore(self._decode_binary(response, target), target)

    def _json_with_weights(
        self, response: requests.Response, field: str, target: Target
    ) -> tuple[dict[str, Any], bool]:
        """Read a JSON object answer whose ``field`` may hold weights as plain lists.

        Returns:
            The answer, and whether ``field`` already holds the restored weights (the
            fast path, taken when there is a template or spec to restore them into).
        """
        _check_json_length(response)
        body = self._transport.read_body(response, self._progress)
        if target is not None:
            fast = fast_layers(memoryview(body).cast("B"), field)
            if fast is not None:
                fields, tensors = fast
                fields[field] = self._restore(tensors, target)
                return fields, True
        return _json(response, body), False

    def _decode_binary(self, response: requests.Response, target: Target = None) -> Tensors:
        """Decode a binary answer; into ``target``'s arrays where it is :class:`Into`."""
        content_type = response.headers.get("Content-Type", "")
        try:
            codec = self._registry.for_media_type(content_type)
        except UnknownCodecError as exc:
            response.close()
            raise DecodeError(
                f"{response.url} answered Content-Type {content_type!r}, which is neither "
                f"JSON nor the media type of an installed codec ({exc})"
            ) from exc
        place = target.placer(codec) if isinstance(target, Into) else None
        body = self._transport.read_body_placed(response, place, self._progress)
        if body is None:  # read into the arrays
            assert isinstance(target, Into)
            return target.placed()
        return decode_with(codec, body, context=self._context(None))

    def _target(self, like: Any, into: Any = None) -> Target:
        """What received weights are restored into: ``into``'s arrays, ``like``, else
        the last update's Spec."""
        if into is not None:
            if like is not None:
                raise ConfigurationError(
                    "give like= or into=, not both (into= is its own template)"
                )
            return Into(into)
        return spec_like(like) if like is not None else self._spec

    def _context(
        self, base_aggregate: int | None, state: dict[str, Any] | None = None
    ) -> CodecContext:
        """The context a delta codec encodes and decodes in: the aggregates this client has."""
        return CodecContext(
            base_aggregate, self._base, self._codec_state if state is None else state
        )

    def _base(self, aggregate: int | None) -> Tensors:
        """An aggregate's tensors (None: the initial model): the last one received, else
        an aggregate fetched from the service."""
        if self._held is not None and self._held[0] == aggregate:
            return self._held[1]
        if aggregate is None:
            raise MissingBaseError(None, "this client has not received it")
        try:
            response = self._call(
                "GET",
                f"{_API}model_aggregates/{aggregate}/result/",
                headers={**self._client_headers(), "Accept": _BASE_MEDIA},
                stream=True,
            )
        except APIError as exc:
            raise EncodeError(
                f"cannot send a {self._codec.name} update against base_aggregate {aggregate}: "
                f"this client has not received it and the service does not give it ({exc})"
            ) from exc
        tensors = self._decode_binary(response)
        self._held = (aggregate, tensors)
        return tensors

    def _hold(self, aggregate: Any) -> None:
        """Keep what was just received as the next update's base (delta codecs only).

        Weights without an aggregate are the initial model (the only artifact a model
        has before its first aggregate), the base of an update without base_aggregate.
        """
        if self._received is not None and (aggregate is None or type(aggregate) is int):
            self._held = (aggregate, self._received)
        self._received = None

    def _restore(self, tensors: Tensors, target: Target) -> Any:
        if uses_context(self._codec):  # a copy: the caller may train in place on the result
            self._received = [(name, array.copy()) for name, array in tensors]
        return target.restore(tensors) if target is not None else untyped(tensors)


def _check_uuid(value: object) -> str | None:
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


def _check_update_after(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
        raise ConfigurationError(
            "update_after must be an aggregate id (an int) or None for the last one this "
            f"client saw, got {value!r}"
        )


def _refuse_non_finite(value: Any, path: str) -> None:
    # orjson writes NaN and infinities as null: a lost score must be an error instead.
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_non_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_non_finite(item, f"{path}.{i}")
    elif (isinstance(value, float | np.floating) and not np.isfinite(value)) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "fc" and not np.isfinite(value).all()
    ):
        raise EncodeError(f"{path} is {value!r}: JSON has no NaN or infinity; send a number")


def _aggregate_number(aggregate_id: Any) -> int:
    if aggregate_id is None:
        return -1
    if type(aggregate_id) is not int:
        raise DecodeError(f"the service sent aggregate id {aggregate_id!r}; expected an integer")
    return aggregate_id


def _json(response: requests.Response, body: Any = None) -> dict[str, Any]:
    """Parse a response (or its ``body``, read already) that must be a JSON object."""
    content = response.content if body is None else body
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"{response.request.method} {response.url} answered {response.status_code} with a "
            f"body that is not JSON: {bytes(content[:200])!r}"
        ) from exc
    if not isinstance(value, dict):
        raise DecodeError(
            f"{response.request.method} {response.url} answered a JSON {type(value).__name__}, "
            "expected an object"
        )
    return value


def _check_json_length(response: requests.Response) -> None:
    length = response.headers.get("Content-Length", "")
    if length.isdigit():
        try:
            check_document_size(int(length), encoding=False)
        except DecodeError:
            response.close()
            raise


def _is_json(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return content_type == _JSON or content_type.endswith("+json")


def _is_known_binary(response: requests.Response, registry: CodecRegistry) -> bool:
    try:
        registry.for_media_type(response.headers.get("Content-Type", ""))
    except UnknownCodecError:
        return False
    return True


def _meta(response: requests.Response) -> dict[str, Any]:
    raw = response.headers.get(META_HEADER)
    if raw is None:
        return {}
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{META_HEADER} header is not JSON: {raw[:200]!r}") from exc
    if not isinstance(meta, dict):
        raise DecodeError(f"{META_HEADER} header must be a JSON object, got {raw[:200]!r}")
    return meta
