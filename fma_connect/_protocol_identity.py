"""Who a client is and how it asks, as the client protocol speaks it (no I/O): a part of
:class:`~fma_connect._protocol.ClientProtocol`.

:class:`Identity` holds the calls that make or prove the client's identity (registering,
enrolling its key, rotating the key), the signature of each request attempt, and
:meth:`Identity.call`, which sends every request as this client and tells an unknown or
unregistered client what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._messages import Flow, Reply, Request, Requests, json_object
from ._receiving import Receiving
from ._transport import API_PREFIX, dumps_json
from .exceptions import APIError, ConfigurationError
from .identity import ClientKey
from .signing import CLIENT_HEADER, header

__all__ = ["Identity"]

_API = API_PREFIX
_JSON = "application/json"


class Identity(Receiving):
    """The client's identity and its requests (a part of :class:`~._protocol.ClientProtocol`,
    which sets the state).

    Attributes:
        uuid: The client's UUID (None: not registered yet).
        identity: The client's key (None: the UUID alone identifies the client).
    """

    uuid: str | None
    identity: ClientKey | None

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

    # -- requests -----------------------------------------------------------------------

    def call(self, request: Request) -> Flow[Reply]:
        """Send a request as this client; an unknown or unregistered client is told what to do."""
        reply: Reply = yield from self._told(request)
        return reply

    def call_all(self, requests: Sequence[Request], width: int) -> Flow[list[Reply]]:
        """Send requests as this client, ``width`` at once (see :class:`Requests`)."""
        replies: list[Reply] = yield from self._told(Requests(tuple(requests), width))
        return replies

    def _told(self, command: Request | Requests) -> Flow[Any]:
        """The result of ``command``; a refusal of an unknown client with what to do."""
        try:
            return (yield command)
        except APIError as exc:
            hinted = self._hinted(exc)
            if hinted is None:
                raise
            raise hinted from exc

    def _hinted(self, exc: APIError) -> APIError | None:
        """``exc`` with what to do, when the service does not know this client (else None)."""
        if exc.status_code in (401, 403) and exc.hint is None:
            hint = self._identity_hint(exc)
            if hint is not None:
                return APIError(exc.status_code, exc.detail, hint)
        return None

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
