"""The admin's identity actions (reference server only; docs/SECURITY.md), mixed into
:class:`~fma_connect.admin.AdminClient`: enrolment tokens, allow-listed keys, client
keys and revocation, changing a model's fields, and verifying a model's stored updates.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
import requests

from ._transport import API_PREFIX, Transport, dumps_json
from .exceptions import DecodeError

__all__ = ["IdentityAdmin"]

_API = API_PREFIX
_JSON = "application/json"
T = TypeVar("T", dict, list)  # type: ignore[type-arg]  # the JSON container expected


class IdentityAdmin:
    """Identity routes of the reference server, for :class:`~fma_connect.admin.AdminClient`."""

    _transport: Transport

    def update_model(self, model_id: int, **fields: Any) -> dict[str, Any]:
        """Change some fields of a model (``PATCH``), e.g. ``enrolment="token"``; return it.

        Raises:
            APIError: the service refused (the detail says which field and why).
        """
        return _json(self._send("PATCH", f"{_API}models/{model_id}/", fields), dict)

    def enrolment_token(
        self, model_id: int, expires_in: float | None = None, client: str | None = None
    ) -> dict[str, Any]:
        """Issue a one-time enrolment token for the model (shown this once; the server
        keeps only its hash).

        Args:
            model_id: The model.
            expires_in: Seconds it stays valid (None: until used).
            client: Bind the token to this existing client: only it may spend it, and
                only such a token binds a key to an existing client that has none (one
                that never enrolled, or whose keys were revoked), on any model.

        Returns:
            ``{"token", "federated_model", "expires", "client"}`` (``expires``: Unix
            seconds or None).
        """
        body = {"expires_in": expires_in, "client": client}
        return _json(self._send("POST", f"{_API}models/{model_id}/enrolment_tokens/", body), dict)

    def allow_key(self, model_id: int, public_key: str) -> dict[str, Any]:
        """Put a client public key (base64, as ``fma-connect keys create`` prints it) on
        the model's allow-list; return ``{"key_id", "public_key", "federated_model"}``."""
        path = f"{_API}models/{model_id}/allowed_keys/"
        return _json(self._send("POST", path, {"public_key": public_key}), dict)

    def disallow_key(self, model_id: int, key_id: str) -> None:
        """Take a key off the model's allow-list: its client is refused on the model at once."""
        self._transport.request("DELETE", f"{_API}models/{model_id}/allowed_keys/{key_id}/")

    def allowed_keys(self, model_id: int) -> list[dict[str, Any]]:
        """The model's allow-list: ``[{"key_id", "public_key", "added_on"}]``."""
        path = f"{_API}models/{model_id}/allowed_keys/"
        return _json(self._transport.request("GET", path), list)

    def client_keys(self, uuid: str) -> list[dict[str, Any]]:
        """A client's keys, oldest first: ``key_id``, ``public_key``, ``status``
        (``active``, ``rotated``, ``revoked``), ``created_on``, ``retired_on`` (when it
        stopped signing: rotated or revoked) and ``revoked_on`` (None unless revoked)."""
        return _json(self._transport.request("GET", f"{_API}clients/{uuid}/keys/"), list)

    def revoke(self, uuid: str, key_id: str | None = None) -> dict[str, Any]:
        """Revoke a client (all its keys; it is refused on every route at once), or only its
        key ``key_id`` (it must enrol a new key with a token or an allow-listed key).

        Returns:
            ``{"uuid", "revoked_keys": [...], "client_revoked": bool}``.
        """
        body = {} if key_id is None else {"key_id": key_id}
        return _json(self._send("POST", f"{_API}clients/{uuid}/revoke/", body), dict)

    def verify(self, model_id: int) -> dict[str, Any]:
        """Re-check every stored update of the model and every aggregate's inputs.

        Returns:
            The report: ``ok`` (no problem found), counts (``updates``, ``signed``,
            ``unsigned``, ``aggregates``), ``problems`` (each ``{"update"`` or
            ``"aggregate": id, "problem": text}``), ``notes`` and ``inputs``
            (aggregate id -> the update ids it averaged).
        """
        return _json(self._transport.request("GET", f"{_API}models/{model_id}/verify/"), dict)

    def _send(self, method: str, path: str, body: dict[str, Any]) -> requests.Response:
        return self._transport.request(method, path, body=dumps_json(body), content_type=_JSON)


def _json(response: requests.Response, kind: type[T]) -> T:
    """The JSON answer of ``response``, which must be a ``kind`` (dict or list)."""
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"{response.request.method} {response.url} answered a body that is not JSON: "
            f"{response.content[:200]!r}"
        ) from exc
    if not isinstance(value, kind):
        raise DecodeError(
            f"{response.request.method} {response.url} should answer a JSON "
            f"{'object' if kind is dict else 'list'}, got {type(value).__name__}"
        )
    return value
