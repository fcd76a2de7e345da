"""What a federated client's call means, with no I/O: the one protocol both clients speak.

:class:`ClientProtocol` holds a client's state (its UUID, the last update's Spec, the
last aggregate seen, what the service offers, a delta codec's held base) and writes
each call as a :data:`~fma_connect._messages.Flow`: a generator that yields the
requests to send (paths, headers, bodies), is sent the replies, and interprets them
(status hints, JSON or binary bodies, what to decode and restore)::

    WebClient (requests) ─────┐                           ┌─ yields Request, ReadBody, Close, Sleep
                              ├─ ClientProtocol.<call>() ─┤
    AsyncWebClient (aiohttp) ─┘                           └─ is sent Reply, a body, None

    _protocol.py   ClientProtocol: state, register, send_update, send_val_results, offers
    _receiving.py  Receiving: aggregates, latest model, artifact, long-poll, restore, bases
    _messages.py   the commands, the reply, errors and their wording
    resumable.py   the resumable upload flow

The two clients differ only in how bytes move; every rule lives here once.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._messages import Flow, Reply, Request, json_object
from ._receiving import META_HEADER, Receiving, Target, check_update_after
from ._transport import API_PREFIX, Chunks, Progress, dumps_json
from .codecs.base import Codec, Tensors
from .codecs.context import ContextCodec, encode_with, load_state, save_state, uses_context
from .codecs.json_lists import check_document_size
from .exceptions import APIError, ConfigurationError, DecodeError, EncodeError
from .identity import ClientKey, payload_sha256
from .plugins import default_codec_registry
from .registry import CodecRegistry
from .resumable import MAX_CHUNK, MIN_CHUNK, RESUMABLE_HEADER, upload_flow
from .signing import CLIENT_HEADER, UPDATE_SIGNATURE_HEADER, header
from .spec import Spec, flatten

__all__ = [
    "META_HEADER",
    "ClientProtocol",
    "Target",
    "check_update_after",
    "check_uuid",
    "read_timeout_of",
]

_API = API_PREFIX
_JSON = "application/json"
#: JSON bodies larger than this are sent in slices with progress, like binary ones.
_STREAM_JSON = 8 << 20


class ClientProtocol(Receiving):
    """One federated client's state and calls, as flows for a driver to run.

    Sending (registering, updates, scores, what the service offers) is here; receiving
    (aggregates, models, artifacts, restoring weights) is :class:`Receiving`'s.

    Args:
        federated_model_id, uuid, codec, registry, progress, retry_updates,
        codec_state, resumable_from, upload_chunk_size: As for
            :class:`~fma_connect.clients.WebClient`, and checked the same way.
        read_timeout: The transport's read timeout (None: none), which bounds how long
            a long-poll may ask the service to hold a request.
        clock: Monotonic seconds (the driver's, so tests can move it).
        identity: The client's key (see :class:`~fma_connect.identity.ClientKey`): its
            updates are signed, and the driver signs each request attempt with
            :meth:`request_signature`. None: the UUID alone identifies the client.

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
        if identity is not None and not isinstance(identity, ClientKey):
            raise ConfigurationError(
                "identity must be a fma_connect.ClientKey (ClientKey.load(path), or "
                f"ClientKey.generate()), or None; got {type(identity).__name__}"
            )
        self.identity = identity
        self.resumable_from = resumable_from
        self.chunk_size = upload_chunk_size
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

    # -- the calls --------------------------------------------------------------------

    def register(self) -> Flow[str]:
        """Register (or re-register under its UUID) and return the client's UUID."""
        headers = {"CLIENT-UUID": self.uuid} if self.uuid else {}
        reply = yield from self.call(
            Request(
                "POST", f"{_API}models/{self.federated_model_id}/register_client/", headers=headers
            )
        )
        self.uuid = str(json_object(reply)["uuid"])
        return self.uuid

    def enrol(self, token: str | None) -> Flow[str]:
        """See :meth:`fma_connect.clients.WebClient.enrol`."""
        if self.identity is None:
            raise ConfigurationError(
                "enrol() binds the client's key to it: create the client with "
                "identity=ClientKey.load(path) (fma-connect keys create PATH makes one)"
            )
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigurationError(f"token must be an enrolment token (a string), got {token!r}")
        headers = {"CLIENT-UUID": self.uuid} if self.uuid else {}
        body: dict[str, Any] = {"public_key": self.identity.public_key}
        if token is not None:
            body["token"] = token.strip()
        path = f"{_API}models/{self.federated_model_id}/enrol/"
        reply = yield from self.call(Request("POST", path, dumps_json(body), _JSON, headers))
        self.uuid = str(json_object(reply)["uuid"])
        return self.uuid

    def rotate_key(self, new: ClientKey) -> Flow[str]:
        """See :meth:`fma_connect.clients.WebClient.rotate_key`."""
        if self.identity is None:
            raise ConfigurationError(
                "rotate_key() needs the client's current key: create it with identity="
            )
        if not isinstance(new, ClientKey):
            raise ConfigurationError(f"new must be a ClientKey, got {type(new).__name__}")
        uuid = yield from self.ensure_uuid()
        body = {
            "public_key": new.public_key,
            "proof": new.sign_rotation(uuid, self.identity.key_id),
        }
        headers = {"CLIENT-UUID": uuid}
        reply = yield from self.call(
            Request("POST", f"{_API}client_keys/rotate/", dumps_json(body), _JSON, headers)
        )
        self.identity = new  # the next attempt signs with it
        return str(json_object(reply)["key_id"])

    def request_signature(
        self, method: str, url: str, headers: Mapping[str, str]
    ) -> dict[str, str]:
        """The signature headers of one attempt (none without ``identity``); a driver's
        transport calls it for each attempt it makes, retries included."""
        if self.identity is None:
            return {}
        return self.identity.request_headers(method, url, header(headers, CLIENT_HEADER))

    def ensure_uuid(self) -> Flow[str]:
        """The client's UUID, registering a new client first if it has none."""
        if self.uuid is None:
            yield from self.register()
        assert self.uuid is not None
        return self.uuid

    def send_update(
        self,
        data: Any,
        base_aggregate: int | np.integer[Any] | None,
        num_examples: int | None,
    ) -> Flow[dict[str, Any]]:
        """See :meth:`fma_connect.clients.WebClient.send_update`."""
        if isinstance(base_aggregate, np.integer):
            base_aggregate = int(base_aggregate)
        if uses_context(self.codec) and not (
            base_aggregate is None or (type(base_aggregate) is int and base_aggregate > 0)
        ):
            raise ConfigurationError(
                f"the {self.codec.name} codec sends an update as a delta against "
                "base_aggregate: give the id (an int) of the aggregate it starts from, or None "
                f"for the initial model; got {base_aggregate!r}"
            )
        if uses_context(self.codec):
            yield from self._check_service_decodes()
            if base_aggregate is not None and not self._holds(base_aggregate):
                # Fetched before encoding: the codec asks for its base synchronously.
                yield from self._fetch_base(base_aggregate)
        tensors, spec = flatten(data)
        # The codec's state changes only once the update is stored: a failed send leaves
        # what it would have delivered in the residual, for the next try.
        state = {k: dict(v) if isinstance(v, dict) else v for k, v in self.codec_state.items()}
        payload = encode_with(self.codec, tensors, self._context(base_aggregate, state))
        headers = yield from self._client_headers()
        plain_headers = dict(headers)
        # Lets a service that honours it store a retried POST once (the stock one ignores it).
        headers["Idempotency-Key"] = str(uuid_module.uuid4())
        path = f"{_API}model_updates/"
        fields: dict[str, Any] = {
            "federated_model": self.federated_model_id,
            "base_aggregate": base_aggregate,
        }
        if num_examples is not None:
            fields["num_examples"] = num_examples
        names = None
        if self.codec.json_native and self.codec.name == "json" and not spec.positional:
            names = spec.names
        if self.identity is not None:
            sha256 = payload_sha256(payload, json_native=self.codec.json_native)
            key = headers["Idempotency-Key"]
            signature = self.identity.sign_update(
                headers["CLIENT-UUID"],
                fields,
                names,
                sha256,
                codec=self.codec.name,
                idempotency_key=key,
            )
            headers[UPDATE_SIGNATURE_HEADER] = plain_headers[UPDATE_SIGNATURE_HEADER] = signature
            # A resumable upload's manifest carries the key too: the signature covers it.
            plain_headers["Idempotency-Key"] = key
        try:
            if self.codec.json_native:
                if names is not None:
                    # Plain lists carry no names: a service that reads these (the
                    # reference server) pairs tensors by name; others ignore the field.
                    fields["tensor_names"] = names
                body = dumps_json({**fields, "data": payload})
                check_document_size(len(body), encoding=True)
                sent = Chunks([body], self.progress) if len(body) > _STREAM_JSON else body
                reply = yield from self.call(
                    Request("POST", path, sent, _JSON, headers, resend=self.retry_updates)
                )
            elif (yield from self._resumable(payload)):
                assert self.uploads_path is not None  # _resumable found it
                reply = yield from upload_flow(
                    self.call,
                    self.uploads_path,
                    payload,
                    media_type=self.codec.media_type,
                    fields=fields,
                    headers=plain_headers,
                    chunk_size=self.chunk_size,
                    progress=self.progress,
                )
            else:
                params = {k: v for k, v in fields.items() if v is not None}
                reply = yield from self.call(
                    Request(
                        "POST",
                        path,
                        Chunks(payload, self.progress),
                        self.codec.media_type,
                        headers,
                        params=params,
                        resend=self.retry_updates,
                    )
                )
        except APIError as exc:
            if exc.status_code == 415 and not self.codec.json_native:
                raise APIError(415, exc.detail, self._unsupported_codec_hint(exc)) from exc
            raise
        self.spec = spec
        self.codec_state = state
        if self.state_path is not None:  # what the update left out, for the next one
            save_state(self.state_path, self.codec.name, state)
        return json_object(reply)

    def send_val_results(self, results: Any, aggregate_id: int) -> Flow[dict[str, Any]]:
        """See :meth:`fma_connect.clients.WebClient.send_val_results`."""
        _refuse_non_finite(results, "validation_results")
        uuid = yield from self.ensure_uuid()
        body = {"validation_results": results, "aggregate": aggregate_id, "client": uuid}
        headers = yield from self._client_headers()
        reply = yield from self.call(
            Request("POST", f"{_API}client_aggregate_scores/", dumps_json(body), _JSON, headers)
        )
        return json_object(reply)

    # -- requests -----------------------------------------------------------------------

    def call(self, request: Request) -> Flow[Reply]:
        """Send a request as this client; an unknown or unregistered client is told what to do."""
        try:
            reply: Reply = yield request
        except APIError as exc:
            if exc.status_code in (401, 403) and exc.hint is None:
                hint = self._identity_hint(exc)
                if hint is not None:
                    raise APIError(exc.status_code, exc.detail, hint) from exc
            raise
        return reply

    def _client_headers(self) -> Flow[dict[str, str]]:
        uuid = yield from self.ensure_uuid()
        return {"CLIENT-UUID": uuid}

    def _identity_hint(self, exc: APIError) -> str | None:
        """What to do when the service does not know this client, or not for this model."""
        text = str(exc.detail).lower()
        model = self.federated_model_id
        if "invalid uuid" in text:
            return (
                f"The service does not know client {self.uuid} (registered on another "
                "service, or its registration was lost): create the WebClient without uuid= "
                "to register a new client, and keep its new client.uuid"
            )
        if "requires enrolment" in text or "lacks the enrolment" in text:
            return (
                f"Federated model {model} takes only enrolled clients: create the client with "
                "identity=ClientKey.load(path) and call enrol(token=...); for a key enrolled "
                "with `fma-connect keys enrol`, pass the uuid it printed too: WebClient(model, "
                "uuid, identity=...) (docs/SECURITY.md)"
            )
        if "not registered" in text or "permission" in text:  # ours, and the stock one's
            return (
                f"Client {self.uuid} may not use federated model {model}: if it is not "
                "registered with that model, call register() first (it keeps this uuid)"
            )
        return None

    # -- what the service offers ----------------------------------------------------------

    def _resumable(self, payload: Any) -> Flow[bool]:
        """Whether a binary payload goes as a resumable upload (large, and offered)."""
        if self.resumable_from is None:
            return False
        if sum(memoryview(buffer).nbytes for buffer in payload) < self.resumable_from:
            return False
        if self.accepted is None:
            yield from self._ask_service()
        return self.uploads_path is not None

    def _ask_service(self) -> Flow[str]:
        """Ask ``OPTIONS model_updates/`` what the service decodes and offers, once.

        Returns:
            What went wrong, for a message ('' when the service answered).
        """
        headers = yield from self._client_headers()
        try:
            reply = yield from self.call(
                Request("OPTIONS", f"{_API}model_updates/", headers=headers, resend=True)
            )
        except APIError as exc:  # the stock service may refuse OPTIONS: none listed
            self.accepted = set()
            return f" (OPTIONS answered {exc.status_code}: {str(exc.detail)[:200]})"
        listed = reply.headers.get("Accept-Post", "")
        self.accepted = {
            part.split(";")[0].strip().lower() for part in listed.split(",") if part.strip()
        }
        self.uploads_path = reply.headers.get(RESUMABLE_HEADER) or None
        return ""

    def _check_service_decodes(self) -> Flow[None]:
        """Refuse, before anything is sent, a codec the service does not decode.

        Asked once per client: ``OPTIONS model_updates/`` answers the media types an
        update may be sent in (``Accept-Post``) on the reference server; the stock
        service, which averages only plain JSON, lists none.

        Raises:
            ConfigurationError: the service does not list this client's codec.
        """
        answer = (yield from self._ask_service()) if self.accepted is None else ""
        assert self.accepted is not None  # _ask_service sets it
        if self.codec.media_type.lower() in self.accepted:
            return
        json_codecs = ", ".join(i.codec.name for i in self.registry if i.codec.json_native)
        if not self.accepted:
            self.accepted = None  # asked again next time: the answer may have been an error
            raise ConfigurationError(
                f"the {self.codec.name!r} codec sends updates as deltas that only a service "
                f"which decodes them can average, and this service lists no codecs it "
                f"decodes{answer} (the stock FMA service averages plain JSON only): nothing "
                f"was sent. Use the reference server (fma-connect serve), or a JSON-native "
                f"codec: {json_codecs}"
            )
        raise ConfigurationError(
            f"this service does not decode the {self.codec.name!r} codec "
            f"({self.codec.media_type}); it accepts {', '.join(sorted(self.accepted))}: "
            "nothing was sent. Install the plugin that provides it where the server runs "
            "and restart it, or use one of those codecs"
        )

    def _unsupported_codec_hint(self, exc: APIError) -> str:
        """Why a service refused a binary body (415), and what to do about it."""
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        accepted = detail.get("accepted")
        json_codecs = ", ".join(i.codec.name for i in self.registry if i.codec.json_native)
        if isinstance(accepted, list) and len(accepted) > 1:
            # A server that speaks other binary codecs (the reference server) lacks this
            # codec's plugin; installing it there is the fix, not falling back to JSON.
            return (
                f"This server does not have the {self.codec.name!r} codec "
                f"({self.codec.media_type}); it accepts {', '.join(map(str, accepted))}. "
                f"Install the plugin that provides {self.codec.name!r} where the server "
                "runs and restart it (`fma-connect codecs` there lists its codecs), or use "
                "one of the codecs it accepts"
            )
        return (
            f"This service does not accept {self.codec.name!r} bodies "
            f"({self.codec.media_type}); a JSON-only service (such as the stock FMA "
            f"service) takes the JSON-native codecs: {json_codecs}"
        )


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
