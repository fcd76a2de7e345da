"""Sending updates and scores, as the client protocol speaks it (no I/O): a part of
:class:`~fma_connect._protocol.ClientProtocol`.

:class:`Sending` holds :meth:`Sending.send_update` (encoding, a delta codec's base and
state, signing, and the body it goes in: JSON, binary, or a resumable upload) and
:meth:`Sending.send_val_results`.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._messages import Flow, Request, json_object
from ._protocol_offers import Offers
from ._transport import API_PREFIX, Chunks, dumps_json
from .codecs.context import encode_with, save_state, uses_context
from .codecs.json_lists import check_document_size
from .exceptions import APIError, ConfigurationError, EncodeError
from .identity import payload_sha256
from .resumable import upload_flow
from .signing import UPDATE_SIGNATURE_HEADER
from .spec import flatten

__all__ = ["Sending"]

_API = API_PREFIX
_JSON = "application/json"
#: JSON bodies larger than this are sent in slices with progress, like binary ones.
_STREAM_JSON = 8 << 20


class Sending(Offers):
    """The sending calls (a part of :class:`~._protocol.ClientProtocol`).

    Attributes:
        retry_updates: Also resend an update whose outcome is unknown, with the same
            ``Idempotency-Key`` (the ``WebClient`` option).
        chunk_size: The chunk size of resumable uploads, in bytes.
        in_flight: How many of their chunks go at once.
        state_path: The file that keeps the codec's state between runs (None: it lives
            in memory).
    """

    retry_updates: bool
    chunk_size: int
    in_flight: int
    state_path: str | os.PathLike[str] | None

    # -- the calls --------------------------------------------------------------------

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
                    self.call_all,
                    self.uploads_path,
                    payload,
                    media_type=self.codec.media_type,
                    fields=fields,
                    headers=plain_headers,
                    chunk_size=self.chunk_size,
                    in_flight=self.in_flight,
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
