"""AdminClient: the developer's side of an FMA service (models, rounds, publishing).

Works with the reference server (``fma-connect serve``) and, except for the
extensions noted per method, with the stock FMA service::

    admin = AdminClient("http://127.0.0.1:8000", token)
    model = admin.create_model("digits", requirement="require_x_updates", requirement_args=[3])
"""

from __future__ import annotations

from enum import IntEnum
from types import TracebackType
from typing import Any

import orjson
import requests

from . import settings
from ._tls import Cert, Verify
from ._transport import API_PREFIX, DEFAULT_RETRIES, DEFAULT_TIMEOUT, Transport, dumps_json
from .admin_identity import IdentityAdmin
from .auth import TokenAuth
from .codecs.json_lists import JsonListsCodec
from .dtypes import tag_of
from .exceptions import APIError, ConfigurationError, DecodeError
from .spec import flatten

__all__ = ["AdminClient", "UpdateStatus"]

_API = API_PREFIX
_JSON = "application/json"
_MAX_PAGE = 20


class UpdateStatus(IntEnum):
    """A model update's ``status``, as the FMA service numbers it (0-4).

    An int enum, so it equals its number (``UpdateStatus.COMPLETE == 2``) and code
    written against the numbers keeps working, while ``.name`` reads as a word.
    """

    PENDING = 0
    RUNNING = 1
    COMPLETE = 2
    FAILED = 3
    INVALID = 4


_STATUSES = frozenset(UpdateStatus)


class AdminClient(IdentityAdmin):
    """REST client for an FMA service's admin routes, authenticated by token.

    The identity actions (enrolment tokens, allow-lists, client keys, revocation,
    ``verify``) are :class:`~fma_connect.admin_identity.IdentityAdmin`'s.

    Args:
        url: Root URL of the service (as for :class:`~fma_connect.WebClient`); default
            ``fma_connect.settings.default_url``.
        token: The admin's API token (``Authorization: Token <token>``).
        timeout: Seconds, or ``(connect, read)``.
        retries: Retries of GETs and of connections that failed before sending.
        session: A requests.Session to use.
        verify, cert: TLS, as for :class:`~fma_connect.WebClient`.

    Raises:
        ConfigurationError: an option is malformed (url, token, timeout, retries,
            session, verify, cert).
    """

    def __init__(
        self,
        url: str | None,
        token: str,
        *,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: requests.Session | None = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        if not isinstance(token, str) or not token.strip() or not token.isprintable():
            shown = "<hidden>" if isinstance(token, str) and token.strip() else repr(token)
            raise ConfigurationError(
                "token must be the admin's API token, a non-empty printable string (fma-connect "
                f"admin-token prints a reference server's), got {shown}"
            )
        self._url = url if url is not None else settings.default_url
        self._transport = Transport(
            self._url,
            timeout=timeout,
            retries=retries,
            session=session,
            auth=TokenAuth(token),
            verify=verify,
            cert=cert,
        )

    def __repr__(self) -> str:
        # The token is a credential: a repr lands in logs and tracebacks, so never show it.
        return f"AdminClient(url={self._url!r}, token=<hidden>)"

    @property
    def url(self) -> str:
        """Root URL of the service."""
        return self._url

    def close(self) -> None:
        """Release the client's connections."""
        self._transport.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_model(
        self,
        name: str,
        *,
        aggregator: str = "avg_values_if_data",
        requirement: str | None = None,
        requirement_args: list[Any] | None = None,
        allow_aggregation: bool = True,
        developer: int = 1,
        initial_model: Any = None,
        update_schema: Any = None,
        client_agg_results_schema: Any = None,
        furthest_base_agg: int | None = None,
        aggregate_fraction: float | None = None,
        aggregate_values: str | None = None,
        clients: list[str] | None = None,
        aggregator_args: Any = None,
        round_deadline: float | None = None,
        round_quorum: int | None = None,
        min_clients: int | None = None,
        drop_after_missed: int | None = None,
        enrolment: str | None = None,
    ) -> dict[str, Any]:
        """Create a federated model and return it.

        Args:
            name: Its name.
            aggregator: ``avg_values_if_data``, ``average_layers`` or (reference server)
                any installed aggregator: ``fed_avg``, ``fed_adam``, ``fed_yogi``,
                ``median``, ``trimmed_mean`` and plugins' (docs/ROUNDS.md lists them).
            requirement: When a round runs: ``all_clients`` (an update from every
                registered client), ``require_x_updates`` (``x`` updates) or None: every
                single update then makes its own aggregate, so pick one of the others
                for federated averaging.
            requirement_args: ``[x]`` for ``require_x_updates``.
            allow_aggregation: Whether the service aggregates it.
            developer: The developer's user id (1 is the reference server's admin).
            initial_model: Initial weights (any tree ``send_update`` takes), sent as
                plain JSON lists in the layer order ``send_update`` uses, with their
                names and dtypes (the reference server keeps both, so a float32 model
                is served as float32; the stock service stores the lists); they become
                the current artifact.
            update_schema: JSON Schema that each update's ``data`` must match.
            client_agg_results_schema: JSON Schema for clients' validation results.
            furthest_base_agg: How many recent aggregates an update may be based on.
            aggregate_fraction: (reference server) The share of each float tensor's
                entries an aggregate may change from the previous one, in (0, 1]; the
                rest of the change carries over to the next round. With a delta codec
                (``delta``, ``sparse``), clients then download about that share of the
                model per round. None (the default): every aggregate is the full mean.
            aggregate_values: (reference server) How the changed values of such an
                aggregate are coded, as the ``sparse`` codec's values: ``float32``
                (None: the default), ``float16``, ``q2`` to ``q8`` (b-bit stochastic
                quantization) or ``ternary`` (one magnitude per tensor).
            clients: UUIDs of clients to register with it.
            aggregator_args: (reference server) The aggregator's arguments, a JSON
                object, e.g. ``{"trim": 0.2}`` for ``trimmed_mean`` or ``{"eta": 0.1}``
                for ``fed_adam``; None: its defaults.
            round_deadline: (reference server) Seconds after a round's first update
                when the round runs with what arrived, if ``round_quorum`` clients sent
                it (docs/ROUNDS.md, "Round policies"); None: no deadline.
            round_quorum: (reference server) The fewest clients a deadline round
                takes (None: 1).
            min_clients: (reference server) No automatic round while fewer clients
                are registered.
            drop_after_missed: (reference server) ``all_clients`` stops waiting for a
                client that missed this many rounds in a row, until it sends again.
            enrolment: (reference server) How clients join: ``open`` (None: the default,
                anyone, as the stock service), ``token`` (with a one-time token from
                :meth:`enrolment_token`) or ``keys`` (with a key on its allow-list,
                :meth:`allow_key`); see docs/SECURITY.md.

        Raises:
            APIError: the service refused (the detail says which field and why).
        """
        body: dict[str, Any] = {
            "name": name,
            "developer": developer,
            "aggregator": aggregator,
            "allow_aggregation": allow_aggregation,
            "requirement": requirement,
            "requirement_args": requirement_args,
            "update_schema": update_schema,
            "client_agg_results_schema": client_agg_results_schema,
            "furthest_base_agg": furthest_base_agg,
        }
        if aggregate_fraction is not None:  # the stock service knows no such field
            body["aggregate_fraction"] = aggregate_fraction
        if aggregate_values is not None:
            body["aggregate_values"] = aggregate_values
        if aggregator_args is not None:
            body["aggregator_args"] = aggregator_args
        policy = {
            "round_deadline": round_deadline,
            "round_quorum": round_quorum,
            "min_clients": min_clients,
            "drop_after_missed": drop_after_missed,
            "enrolment": enrolment,
        }
        body.update({key: value for key, value in policy.items() if value is not None})
        if clients is not None:
            body["clients"] = clients
        if initial_model is not None:
            tensors, spec = flatten(initial_model)
            body["initial_model"] = JsonListsCodec().encode(tensors)
            if not spec.positional:  # as WebClient.send_update sends tensor_names
                body["initial_model_tensor_names"] = spec.names
            # Plain JSON numbers carry no dtype: the reference server keeps these (a
            # float32 model stays float32); the stock service ignores the field.
            body["initial_model_dtypes"] = [tag_of(array.dtype, name) for name, array in tensors]
        return self._object(self._post(f"{_API}models/", body))

    def get_model(self, model_id: int) -> dict[str, Any]:
        """Return a federated model."""
        return self._object(self._transport.request("GET", f"{_API}models/{model_id}/"))

    def list_models(self) -> list[dict[str, Any]]:
        """Return every federated model, newest first."""
        return self._all(f"{_API}models/", {})

    def delete_model(self, model_id: int) -> None:
        """Delete a federated model and everything it owns."""
        self._transport.request("DELETE", f"{_API}models/{model_id}/")

    def list_updates(self, model_id: int) -> list[dict[str, Any]]:
        """Return the model's updates, newest first.

        Each update's ``status`` (a reference-server field) is an :class:`UpdateStatus`,
        which equals the number the service sent; a number outside 0-4 is kept as it came.
        The ``?federated_model=`` filter is a reference-server extension; the rows are
        filtered here too, so a service that ignores it still gives only this model's.

        Raises:
            APIError: 404 when the model does not exist.
        """
        rows = self._of_model(f"{_API}model_updates/", model_id)
        for row in rows:
            status = row.get("status")
            if type(status) is int and status in _STATUSES:
                row["status"] = UpdateStatus(status)
        return rows

    def list_aggregates(self, model_id: int) -> list[dict[str, Any]]:
        """Return the model's aggregates, newest first (``result`` is a URL).

        Raises:
            APIError: 404 when the model does not exist.
        """
        return self._of_model(f"{_API}model_aggregates/", model_id)

    def _of_model(self, path: str, model_id: int) -> list[dict[str, Any]]:
        self.get_model(model_id)  # a missing model is a 404, not an empty list
        rows = self._all(path, {"federated_model": model_id})
        return [row for row in rows if row.get("federated_model") == model_id]

    def aggregate(self, model_id: int) -> dict[str, Any]:
        """Run an aggregation round of the model's pending updates now; return the aggregate.

        The round runs whether or not the model's requirement is met. Reference server
        only (``POST /api/v1/models/<id>/aggregate/``).

        Raises:
            APIError: 400 when nothing is pending or no update is valid (the reasons
                are in the detail).
        """
        return self._object(self._post(f"{_API}models/{model_id}/aggregate/", {}))

    def list_clients(self, model_id: int) -> list[dict[str, Any]]:
        """Return the clients registered with the model, in registration order.

        Each: ``uuid``, ``registered_on``, ``last_seen`` (when its newest update to the
        model arrived, or None), ``updates`` (how many it sent to the model) and
        ``statuses`` (how many of them are in each status, by :class:`UpdateStatus` name).
        Reference server only (``GET /api/v1/models/<id>/clients/``).

        Raises:
            APIError: 404 when the model does not exist, or the service has no such route
                (the stock service: the hint says so).
        """
        path = f"{_API}models/{model_id}/clients/"
        response = self._extension("GET", path, model_id)
        rows = _parse(response)
        if not isinstance(rows, list):
            raise DecodeError(f"GET {path} should answer a JSON list, got {type(rows).__name__}")
        return rows

    def remove_client(self, model_id: int, uuid: str) -> None:
        """Remove a client's registration with the model.

        Its updates stay stored; its PENDING ones no longer count toward a round (the
        next round marks them INVALID), and the model's requirement is checked again at
        once, so an ``all_clients`` model that waited only for this client runs its round.
        The client is refused (403) on the model's routes until it registers again.
        Reference server only (``DELETE /api/v1/models/<id>/clients/<uuid>/``).

        Raises:
            APIError: 400 for a malformed UUID; 404 when the model does not exist, the
                client is not registered with it, or the service has no such route.
        """
        self._extension("DELETE", f"{_API}models/{model_id}/clients/{uuid}/", model_id)

    def _extension(self, method: str, path: str, model_id: int) -> requests.Response:
        """Send a request to a reference-server route; a 404 without it says so."""
        try:
            return self._transport.request(method, path)
        except APIError as exc:
            if exc.status_code != 404:
                raise
            if _ours(exc.detail):  # the detail says it all; "check the url" would mislead
                raise APIError(exc.status_code, exc.detail) from exc
            self.get_model(model_id)  # a missing model: that 404, as it is
            raise APIError(
                exc.status_code,
                exc.detail,
                f"{method} {self._transport.url(path)} needs the reference server "
                "(fma-connect serve); the stock FMA service has no such route",
            ) from exc

    def publish(self, aggregate_id: int, version: str) -> dict[str, Any]:
        """Publish an aggregate as its model's current artifact; return the artifact."""
        path = f"{_API}model_aggregates/{aggregate_id}/publish_aggregate/"
        return self._object(self._post(path, {"version": version}))

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return self._transport.request("POST", path, body=dumps_json(body), content_type=_JSON)

    def _all(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            query = {**params, "page": page, "page_size": _MAX_PAGE}
            try:
                response = self._transport.request("GET", path, params=query)
            except APIError as exc:
                if exc.status_code == 404 and page > 1:
                    return rows  # "Invalid page.": the previous page was the last
                raise
            batch = _parse(response)
            if not isinstance(batch, list):
                raise DecodeError(
                    f"GET {path} should answer a JSON list, got {type(batch).__name__}"
                )
            rows += batch
            if len(batch) < _MAX_PAGE:
                return rows
            page += 1

    @staticmethod
    def _object(response: requests.Response) -> dict[str, Any]:
        value = _parse(response)
        if not isinstance(value, dict):
            raise DecodeError(
                f"{response.request.method} {response.url} should answer a JSON object, "
                f"got {type(value).__name__}"
            )
        return value


def _ours(detail: Any) -> bool:
    """Whether a 404 body is the reference server's about a client (not a missing route)."""
    return isinstance(detail, dict) and "is not registered" in str(detail.get("detail", ""))


def _parse(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"{response.request.method} {response.url} answered {response.status_code} "
            f"with a body that is not JSON: {response.content[:200]!r}"
        ) from exc
