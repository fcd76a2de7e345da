"""Receiving weights, as the client protocol speaks it (no I/O): the second half of
:class:`~fma_connect._protocol.ClientProtocol`.

:class:`Receiving` holds the calls that bring weights back (the latest aggregate, the
latest model, the published artifact, long-polling) and what they share: the Accept
header a codec asks in, JSON or binary answers, a URL to download, decoding into
``into=`` arrays, restoring into ``like=`` or the last update's Spec, and a delta
codec's held base aggregate.

The calls, and which answer is new, are here; what they share is its base
:class:`~fma_connect._receiving_weights.ReceivingWeights` (with :data:`Target` and
:data:`META_HEADER`, still importable from here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._messages import Close, Flow, Request, Sleep, json_object
from ._receiving_weights import META_HEADER, ReceivingWeights, Target, _is_json, _meta
from ._transport import API_PREFIX, LONG_POLL_HEADER
from .exceptions import ConfigurationError, DecodeError

__all__ = ["META_HEADER", "Receiving", "Target", "check_update_after"]

_API = API_PREFIX
#: Seconds to ask a service to hold a request (the reference server holds at most 30).
_LONGEST_HOLD = 30.0
#: Seconds between polls of a service that cannot hold requests: first, and at most.
_POLL_FIRST, _POLL_MOST = 0.5, 10.0


class Receiving(ReceivingWeights):
    """The receiving calls of a client protocol; :class:`ClientProtocol` sets the state
    (its attributes: see :class:`~fma_connect._receiving_weights.ReceivingWeights`).
    """

    def check_for_new_model_aggregate(
        self, update_after: int | np.integer[Any] | None, like: Any, into: Any
    ) -> Flow[dict[str, Any] | None]:
        """See :meth:`fma_connect.clients.WebClient.check_for_new_model_aggregate`."""
        check_update_after(update_after)
        target = self.target(like, into)
        aggregate, _ = yield from self._new_aggregate(update_after, target)
        return aggregate

    def wait_for_new_model(
        self, timeout: float, update_after: int | np.integer[Any] | None, like: Any, into: Any
    ) -> Flow[dict[str, Any] | None]:
        """See :meth:`fma_connect.clients.WebClient.wait_for_new_model`."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
            raise ConfigurationError(f"timeout must be seconds >= 0, got {timeout!r}")
        check_update_after(update_after)
        target = self.target(like, into)
        deadline = self.clock() + timeout
        delay = _POLL_FIRST
        long_poll = True  # until an answer shows the service cannot hold the request
        while True:
            remaining = max(0.0, deadline - self.clock())
            hold = min(remaining, self._longest_hold()) if long_poll else None
            aggregate, long_poll = yield from self._new_aggregate(update_after, target, hold)
            remaining = deadline - self.clock()
            if aggregate is not None or remaining <= 0:
                return aggregate
            if not long_poll:
                yield Sleep(min(delay, remaining))
                delay = min(2 * delay, _POLL_MOST)

    def get_current_artifact(self, like: Any, into: Any) -> Flow[dict[str, Any] | None]:
        """See :meth:`fma_connect.clients.WebClient.get_current_artifact`."""
        target = self.target(like, into)
        headers = yield from self._client_headers()
        reply = yield from self.call(
            Request(
                "GET",
                f"{_API}models/{self.federated_model_id}/get_current_artifact/",
                headers=headers,
            )
        )
        artifact = json_object(reply)
        if not artifact:
            return None
        artifact["values"] = yield from self._weights(artifact.get("values"), target)
        return artifact

    def check_for_latest_model(
        self, update_after: int | np.integer[Any] | None, like: Any, into: Any
    ) -> Flow[dict[str, Any] | None]:
        """See :meth:`fma_connect.clients.WebClient.check_for_latest_model`."""
        check_update_after(update_after)
        target = self.target(like, into)
        headers = yield from self._client_headers()
        reply = yield from self.call(
            Request(
                "GET",
                f"{_API}models/{self.federated_model_id}/get_latest_model/",
                headers={**headers, "Accept": self.accept(target)},
                stream=True,
            )
        )
        if _is_json(reply):
            latest, restored = yield from self._json_with_weights(reply, "values", target)
            if not latest or not self._is_new(latest.get("aggregate"), update_after):
                return None
            if not restored:
                latest["values"] = yield from self._weights(latest.get("values"), target)
        else:
            latest = _meta(reply)
            if not self._is_new(latest.get("aggregate"), update_after):
                yield Close(reply)
                return None
            tensors = yield from self._decode_binary(reply, target)
            latest["values"] = self._restore(tensors, target)
        self._saw(latest.get("aggregate"))
        self._hold(latest.get("aggregate"))
        return latest

    def _new_aggregate(
        self,
        update_after: int | np.integer[Any] | None,
        target: Target,
        hold: float | None = None,
    ) -> Flow[tuple[dict[str, Any] | None, bool]]:
        """The latest aggregate if newer than ``update_after``; and whether the service
        can hold the request (its ``FMA-Long-Poll`` header).

        Args:
            hold: Ask the service to hold the request this many seconds, until a newer
                aggregate exists (None: answer at once).
        """
        params = None
        if hold is not None:
            threshold = int(update_after) if update_after is not None else self.last_aggregate
            after = -1 if threshold is None else threshold
            params = {"wait": f"{hold:.3f}", "after": str(after)}
        headers = yield from self._client_headers()
        reply = yield from self.call(
            Request(
                "GET",
                f"{_API}models/{self.federated_model_id}/get_latest_aggregate/",
                headers=headers,
                params=params,
            )
        )
        long_poll = LONG_POLL_HEADER in reply.headers
        aggregate = json_object(reply)
        if not aggregate or not self._is_new(aggregate.get("id"), update_after):
            return None, long_poll
        aggregate["result"] = yield from self._weights(aggregate.get("result"), target)
        self._saw(aggregate["id"])
        self._hold(aggregate["id"])
        return aggregate, long_poll

    def _longest_hold(self) -> float:
        """Seconds a service may hold a request: well within the read timeout."""
        read = self.read_timeout
        return _LONGEST_HOLD if read is None else min(_LONGEST_HOLD, read / 2)

    def _is_new(self, aggregate_id: Any, update_after: int | np.integer[Any] | None) -> bool:
        """Whether an answer is newer than ``update_after`` (default: the last one seen).

        As in the original client, an answer without an aggregate (the current
        artifact, e.g. the initial model) counts as aggregate -1: a client gets it once.
        """
        threshold = int(update_after) if update_after is not None else self.last_aggregate
        return threshold is None or _aggregate_number(aggregate_id) > threshold

    def _saw(self, aggregate_id: Any) -> None:
        """Remember an answer handed to the caller, so it is not handed over again."""
        current = _aggregate_number(aggregate_id)
        if self.last_aggregate is None or current > self.last_aggregate:
            self.last_aggregate = current


def check_update_after(value: object) -> None:
    """Refuse an ``update_after`` that is not an aggregate id or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
        raise ConfigurationError(
            "update_after must be an aggregate id (an int) or None for the last one this "
            f"client saw, got {value!r}"
        )


def _aggregate_number(aggregate_id: Any) -> int:
    if aggregate_id is None:
        return -1
    if type(aggregate_id) is not int:
        raise DecodeError(f"the service sent aggregate id {aggregate_id!r}; expected an integer")
    return aggregate_id
