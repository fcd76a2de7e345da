"""What the reference server does with models, behind its routes: a model read (by a
client or an admin), created (with its initial model), changed or deleted, and its
aggregates published and scored. Part of :class:`~.service.Service`.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..exceptions import EncodeError
from ..registry import CodecRegistry
from . import jsonstream
from .blobs import BlobStore
from .errors import bad_request, forbidden, not_found
from .json_weights import store_json_weights
from .jsonvalues import shown
from .store import Store
from .store_core import NewBlob, Row
from .structure import Structure
from .uploads import Uploads
from .validation import check_against_schema, check_depth, model_fields, reference
from .validation_tensors import cast_layers, tensor_dtypes, tensor_names
from .weights_storage import load, store_tensors

__all__ = ["ModelOperations"]

#: The field holding the dtype tags of an initial model's plain layers.
_INITIAL_DTYPES = "initial_model_dtypes"


class ModelOperations:
    """The models, their artifacts and scores (a part of :class:`~.service.Service`, which
    sets these attributes)."""

    store: Store
    blobs: BlobStore
    registry: CodecRegistry
    uploads: Uploads
    max_tensors: int
    #: model id -> (blob id, structure) of the blob that established its structure.
    _structures: dict[int, tuple[int, Structure]]

    def model(self, model_id: int) -> Row:
        """Return a model row.

        Raises:
            HTTPError: 404, no such model.
        """
        row = self.store.get_model(model_id)
        if row is None:
            raise not_found()
        return row

    def model_for_client(self, model_id: int, client: str | None) -> Row:
        """Return a model a federated client (or, with None, an admin) may read.

        Raises:
            HTTPError: 404 no such model, 403 client not registered with it.
        """
        row = self.model(model_id)
        if client is not None and not self.store.is_registered(model_id, client):
            raise forbidden(_not_member(row, client))
        return row

    def create_model(self, body: Mapping[str, Any], user: int) -> int:
        """Create a model from a request body; return its id."""
        fields, clients = model_fields({"developer": user, **body}, self.store)
        initial = None
        if body.get("initial_model") is not None:
            names = tensor_names(body, "initial_model_tensor_names", body["initial_model"])
            dtypes = tensor_dtypes(body, _INITIAL_DTYPES)
            initial, _ = store_json_weights(
                self.blobs,
                self.registry,
                self.max_tensors,
                body["initial_model"],
                "initial_model",
                names=names,
            )
        try:
            if initial is not None:
                initial = self._initial_as_binary(initial, dtypes)
            return self.store.insert_model(fields, clients or [], initial)
        except BaseException:
            if initial is not None:
                self.blobs.delete([initial[1]])
            raise

    def _initial_as_binary(self, blob: NewBlob, dtypes: list[np.dtype[Any]] | None) -> NewBlob:
        """A plain JSON initial model stored again in ``msgpack``, where answers allow.

        Until a model's first aggregate, its initial model is the base of every delta
        update, read each round: parsed from JSON, that is a float64 copy of the model in
        memory; in msgpack it is a view of its file. The msgpack blob holds the tensors
        the JSON decodes to (float64 where a layer holds a float, the names kept), so
        every answer converted from it is what it was; a plain JSON answer, until now
        the stored text itself, is then written from those tensors. So the JSON is kept
        where that would not be the same text byte for byte (a layer mixing ``1`` and
        ``2.5`` is written back ``1.0``), and when ``msgpack`` is not installed. Models
        created before keep their JSON blob, which still decodes as it did.

        With ``dtypes`` (``initial_model_dtypes``, which AdminClient sends), the layers
        are stored in those dtypes instead (a float32 model stays float32), and JSON
        answers are written from them.

        Raises:
            HTTPError: 400, the layers do not fit ``dtypes``.
        """
        if blob.codec != "json" or "msgpack" not in self.registry:
            return blob
        row = {"codec": blob.codec, "filename": blob.filename, "tensor_names": blob.tensor_names}
        tensors = load(self.blobs, row, self.registry)
        if dtypes is not None:
            tensors = cast_layers(tensors, dtypes, _INITIAL_DTYPES)
        try:
            document = self.registry.get("json").encode(tensors)
            if dtypes is None and not _same_json(self.blobs.read(blob.filename), document):
                return blob
            binary = store_tensors(self.blobs, tensors, self.registry.get("msgpack"))
        except (EncodeError, orjson.JSONEncodeError):
            return blob
        self.blobs.delete([blob.filename])
        return binary

    def patch_model(self, model_id: int, body: Mapping[str, Any]) -> None:
        """Change a model's fields (its initial model cannot change)."""
        current = self.model(model_id)
        if "initial_model" in body:
            raise bad_request(
                "initial_model", "The initial model cannot be changed; publish instead."
            )
        fields, clients = model_fields(body, self.store, current=current)
        self.store.update_model(model_id, fields, clients)

    def delete_model(self, model_id: int) -> None:
        """Delete a model, its updates, aggregates, artifacts, scores, uploads and blobs."""
        self.model(model_id)
        self.uploads.abandon_model(model_id)
        self.blobs.delete(self.store.delete_model(model_id))
        self._structures.pop(model_id, None)

    # -- artifacts and scores ------------------------------------------------------------

    def publish(self, aggregate_id: int, body: Mapping[str, Any]) -> Row:
        """Publish an aggregate as its model's current artifact (``{"version": ...}``)."""
        aggregate = self.store.get_aggregate(aggregate_id)
        if aggregate is None:
            raise not_found()
        version = body.get("version")
        if version is None:
            raise bad_request("version", "This field is required.")
        if not isinstance(version, str) or not version.strip() or len(version) > 100:
            raise bad_request(
                "version",
                f"Expected a non-empty string of at most 100 characters, got {shown(version)}.",
            )
        artifact = self.store.get_artifact(self.store.publish(aggregate, version))
        assert artifact is not None
        return artifact

    def add_score(self, client: str, body: Mapping[str, Any]) -> Row:
        """Store a client's validation results for an aggregate."""
        check_depth(body)  # the results are written back, inside the answer
        aggregate_id = reference(body, "aggregate", required=True)
        assert aggregate_id is not None
        aggregate = self.store.get_aggregate(aggregate_id)
        if aggregate is None:
            raise bad_request("aggregate", f'Invalid pk "{aggregate_id}" - object does not exist.')
        named = body.get("client", client)
        if named != client and _uuid(named) != client:  # any spelling of the same UUID
            raise bad_request(
                "client",
                f"Must be the client named by the CLIENT-UUID header ({client}), "
                f"got {shown(named)}.",
            )
        if "validation_results" not in body:
            raise bad_request("validation_results", "This field is required.")
        model = self.model(aggregate["federated_model"])
        if not self.store.is_registered(model["id"], client):
            raise forbidden(
                f"Aggregate {aggregate_id} belongs to federated model {model['id']}, which "
                f"client {client} is not registered with."
            )
        check_against_schema(
            model["client_agg_results_schema"], body["validation_results"], "validation_results"
        )
        score_id = self.store.insert_score(aggregate_id, client, body["validation_results"])
        if score_id is None:
            raise bad_request(
                "non_field_errors", "The fields aggregate, client must make a unique set."
            )
        score = self.store.get_score(score_id)
        assert score is not None
        return score


def _not_member(model: Row, client: str) -> str:
    """Why a client may not use a model: not registered, or not enrolled as it requires."""
    enrolment = model.get("enrolment") or "open"
    text = f"Client {client} is not registered with federated model {model['id']}"
    if enrolment == "open":
        return f"{text}."
    needs = (
        "admission by one of its tokens, and an active key"
        if enrolment == "token"
        else "an active key on its allow-list"
    )
    return (
        f"{text}, or lacks the enrolment it requires ({enrolment!r}: {needs}); enrol "
        "(POST .../enrol/, docs/SECURITY.md)."
    )


def _uuid(value: Any) -> str | None:
    """The canonical form of a UUID string, or None."""
    try:
        return str(uuid_module.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _same_json(stored: Any, document: Any) -> bool:
    """Whether the JSON text ``stored`` is what writing ``document`` as an answer gives.

    An answer converted to plain JSON is written by :mod:`.jsonstream`; it is compared
    here piece by piece, so the other text is never held whole.
    """
    view = memoryview(stored).cast("B")
    offset = 0
    for piece in jsonstream.pieces(document):
        end = offset + len(piece)
        if view[offset:end] != piece:
            return False
        offset = end
    return offset == view.nbytes
