"""How the reference server takes an update, behind its routes: its fields checked, its
weights checked against the model's structure (its initial model or latest aggregate)
and stored in one step, and an Idempotency-Key's repeat answered. Part of
:class:`~.service.Service`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from ..codecs.base import decode_with, read_tag
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import CodecError, TooManyTensorsError
from .blobs import BlobWriter
from .errors import HTTPError, bad_request, detail
from .json_weights import NO_TENSORS, not_finite, store_json_weights
from .keys import Keys
from .limits import PausePoint, check_tensors_schema, too_many_tensors
from .locks import KeyedLocks
from .rounds import Rounds
from .service_models import ModelOperations
from .signed import SignedUpdate, check_update
from .store_core import NewBlob, Row
from .structure import Structure, difference, structure_of
from .validation import UPDATE_FIELDS, check_against_schema, update_fields
from .validation_parsing import json_object
from .validation_tensors import tensor_names
from .weights_storage import ModelBases, load

__all__ = ["UpdateIntake"]


class UpdateIntake(ModelOperations):
    """The updates (a part of :class:`~.service.Service`, which sets these attributes)."""

    keys: Keys
    rounds: Rounds
    _pause: PausePoint
    _intake: KeyedLocks

    def check_update(
        self, client: str, fields: Mapping[str, Any], *, json_body: bool = True
    ) -> dict[str, Any]:
        """Validate an update's fields and what they name; return them normalised.

        Args:
            client: The sender.
            fields: The JSON body, or the query fields of a binary body.
            json_body: Whether ``fields`` is a JSON body (see
                :func:`~.validation.update_fields`: its data's form is checked too, not
                its tensors).

        Raises:
            HTTPError: 400 for bad fields, 403 when the client is not registered.
        """
        checked = update_fields(fields, json_body=json_body)
        model_id = checked["federated_model"]
        if self.store.get_model(model_id) is None:
            raise bad_request(
                "federated_model", f'Invalid pk "{model_id}" - object does not exist.'
            )
        self.model_for_client(model_id, client)
        base = checked["base_aggregate"]
        if base is not None:
            aggregate = self.store.get_aggregate(base)
            if aggregate is None or aggregate["federated_model"] != model_id:
                raise bad_request(
                    "base_aggregate",
                    f'Invalid pk "{base}" - no such aggregate of federated model {model_id}.',
                )
        return {**checked, "client": client}

    def add_json_update(
        self,
        client: str,
        spool: BlobWriter,
        key: str | None,
        *,
        signed: SignedUpdate | None = None,
    ) -> tuple[Row, bool]:
        """Store an update whose JSON body was spooled to ``spool``; run a round if due.

        With ``signed``, the signature must cover the update as stored (its ``data``
        written back by orjson, see :func:`fma_connect.identity.payload_sha256`), else
        it is refused (400) and nothing is stored.

        Returns:
            The update row (with its status after that round) and whether it is new
            (False: the idempotency key was used, for the same update).
        """
        raw = spool.contents()
        try:
            body = json_object(raw)
            fields = self.check_update(client, body)
            if "data" not in body or body["data"] is None:
                raise bad_request(
                    "data",
                    "This field is required."
                    if "data" not in body
                    else "This field may not be null.",
                )
            schema = self.model(fields["federated_model"])["update_schema"]
            if read_tag(body["data"]) is None:  # plain lists: checked as sent, as stock does
                check_against_schema(schema, body["data"], "data")
                schema = None
            names = tensor_names(body, "tensor_names", body["data"])
            blob, shape = store_json_weights(
                self.blobs,
                self.registry,
                self.max_tensors,
                body["data"],
                "data",
                raw,
                schema,
                names,
                digest=signed is not None,
            )
        finally:
            spool.discard()
        return self._insert(fields, blob, key, shape, signed)

    def add_binary_update(
        self,
        fields: dict[str, Any],
        codec_name: str,
        body: BlobWriter,
        key: str | None,
        *,
        signed: SignedUpdate | None = None,
    ) -> tuple[Row, bool]:
        """Store an update whose binary body (checked ``fields``) is in ``body``.

        With ``signed``, the signature must cover the body's bytes (as stored), else it
        is refused (400) and nothing is stored; its digest is the one computed as the
        body arrived, else (a resumable upload, assembled) that of ``body``'s bytes.
        """
        codec = self.registry.get(codec_name)
        model_id = fields["federated_model"]
        bases = ModelBases(self.store, self.blobs, self.registry, model_id)
        context = CodecContext(bases=bases)
        try:
            # Counted before the tensors are built, by the codecs that can (see decode_with).
            tensors = decode_with(
                codec, body.contents(), max_tensors=self.max_tensors, context=context
            )
            shape = structure_of(tensors)
        except TooManyTensorsError as exc:
            body.discard()
            raise too_many_tensors(exc.count, exc.limit) from exc
        except MissingBaseError as exc:
            body.discard()
            raise bad_request(
                "base_aggregate",
                f"The {codec.name} body is a delta against "
                + ("the initial model" if exc.aggregate is None else f"aggregate {exc.aggregate}")
                + f", which federated model {model_id} does not have; send the update against "
                "one of its aggregates.",
            ) from exc
        except CodecError as exc:
            body.discard()
            raise bad_request("data", f"The {codec.name} body does not decode: {exc}") from exc
        other = [base for base in bases.loaded if base != fields["base_aggregate"]]
        if other:
            body.discard()
            what = "the initial model" if other[0] is None else f"aggregate {other[0]}"
            raise bad_request(
                "base_aggregate",
                f"The {codec.name} body is a delta against {what}, but the update names "
                f"base_aggregate {fields['base_aggregate']}: they must agree.",
            )
        check_tensors_schema(self.model(fields["federated_model"])["update_schema"], tensors)
        problem = NO_TENSORS if not shape else not_finite(tensors)
        del tensors  # views of the spooled file
        if problem is not None:
            body.discard()
            raise bad_request("data", problem)
        sha256 = None
        if signed is not None:
            sha256 = signed.sha256 or hashlib.sha256(body.contents()).hexdigest()
        filename = body.commit()
        blob = NewBlob(codec.name, filename, body.nbytes, sha256=sha256)
        return self._insert(fields, blob, key, shape, signed)

    def replay(
        self, row: Row, codec: str | None, query: Mapping[str, Any], spool: BlobWriter
    ) -> Row:
        """Answer a request whose Idempotency-Key stored ``row``: the same update again?

        The request's fields pass the same checks as a fresh request's, then are compared
        with the stored ones: ``1.0`` or ``true`` for ``1`` is refused, not "equal".
        What they name is not looked up again, so the answer does not change when, say,
        the client was unregistered since the original was stored.

        Args:
            row: The update the key stored.
            codec: The codec of a binary body, or None for a JSON body.
            query: The binary body's query fields (see :func:`~.validation.query_fields`).
            spool: The request body.

        Returns:
            ``row``, when the request (spooled to ``spool``) carries the same update.

        Raises:
            HTTPError: 400 for fields a fresh request would be refused for; 422, the key
                was used for a different update.
        """
        raw = spool.contents()
        names = None
        if codec is None:
            body = json_object(raw)
            fields = update_fields(body)
            names = tensor_names(body, "tensor_names", body["data"])
            tagged = read_tag(body["data"])  # well formed: update_fields checked it
            codec = tagged[0] if tagged else "json"
            try:
                payload: Any = orjson.dumps(body["data"])
            except orjson.JSONEncodeError:  # deeper than orjson writes: no stored update is
                raise _key_reused(row) from None
        else:
            fields = update_fields(query, json_body=False)
            payload = raw
        if self._same_update(row, fields, NewBlob(codec, "", 0, names), payload):
            return row
        raise _key_reused(row)

    def _insert(
        self,
        fields: dict[str, Any],
        blob: NewBlob,
        key: str | None,
        shape: Structure,
        signed: SignedUpdate | None = None,
    ) -> tuple[Row, bool]:
        self._pause.reached("update-stored")
        model_id = fields["federated_model"]
        try:
            with self._intake.hold(model_id):
                existing = self.store.update_by_key(fields["client"], key) if key else None
                if existing is None:
                    problem = self._structure_problem(model_id, shape)
                    if problem is not None:
                        raise bad_request("data", problem)
                    if signed is not None:
                        assert blob.sha256 is not None  # the add_* methods computed it
                        check_update(
                            signed, fields, blob.tensor_names, blob.codec, key, blob.sha256
                        )
                    # The update and its signature, or neither; and only for a sender that
                    # still has the right now: its body may have taken long to arrive, and
                    # a revocation committed meanwhile holds (write transactions are
                    # serialized, so none commits between this check and the insert).
                    with self.store.transaction() as conn:
                        request_key = None
                        if signed is not None:
                            request_key = signed.request_key or signed.signer.key_id
                        self.keys.check_sender(
                            conn,
                            model_id,
                            fields["client"],
                            request_key,
                            None if signed is None else signed.signer.key_id,
                        )
                        row, created = self.store.insert_update(fields, blob, key)
                        if created and signed is not None:
                            assert blob.sha256 is not None
                            self.keys.record_signature(
                                row["id"], signed.signer, blob.sha256, signed.signature
                            )
                else:
                    row, created = existing, False
        except BaseException:
            self.blobs.delete([blob[1]])
            raise
        if not created:  # the key was used already: the same update again, or a misuse
            same = self._same_update(row, fields, blob, self.blobs.read(blob.filename))
            self.blobs.delete([blob[1]])
            if not same:
                raise _key_reused(row)
        elif self.rounds.after_update(model_id):
            row = self.store.get_update(row["id"]) or row  # its status after that round
        return row, created

    def _structure_problem(self, model_id: int, shape: Structure) -> str | None:
        """Why an update of this structure does not fit the model, or None."""
        established = self._established(model_id)
        if established is None:
            return None
        expected, source = established
        return difference(expected, shape, source)

    def _established(self, model_id: int) -> tuple[Structure, str] | None:
        """The model's structure and what established it, or None if nothing has yet.

        That is its latest aggregate, else its current artifact (the initial model).
        Before either exists, updates are not checked against each other on arrival: the
        model's first round takes the structure most clients sent (see
        :meth:`~.rounds.Rounds`), so no single client's first update can define it.
        """
        found: tuple[int, str] | None = None
        aggregate = self.store.latest_aggregate(model_id)
        model = self.store.get_model(model_id)
        if aggregate is not None:
            found = aggregate["blob"], f"the model's latest aggregate ({aggregate['id']})"
        elif model is not None and model["current_artifact"] is not None:
            artifact = self.store.get_artifact(model["current_artifact"])
            if artifact is not None:
                what = "the initial model" if artifact["aggregate"] is None else "the artifact"
                found = artifact["blob"], what
        if found is None:
            return None
        blob_id, source = found
        cached = self._structures.get(model_id)
        if cached is None or cached[0] != blob_id:
            try:
                tensors = load(self.blobs, self.store.get_blob(blob_id), self.registry)
            except (CodecError, OSError):
                return None  # unreadable: its round marks what cannot be read
            cached = blob_id, structure_of(tensors)
            del tensors
            self._structures[model_id] = cached
        return cached[1], source

    def _same_update(
        self, row: Row, fields: Mapping[str, Any], blob: NewBlob, payload: Any
    ) -> bool:
        """Whether a request would store the same update as ``row``.

        Args:
            row: The stored update.
            fields: The request's update fields.
            blob: The request's codec and tensor names (its file is not looked at).
            payload: The request's weights, as they would be stored.
        """
        if row["codec"] != blob.codec or any(
            row[name] != fields.get(name) for name in UPDATE_FIELDS
        ):
            return False
        stored_blob = self.store.get_blob(row["blob"])
        if stored_blob["tensor_names"] != blob.tensor_names:  # the same lists, other tensors
            return False
        try:
            stored = self.blobs.read(stored_blob["filename"])
        except OSError:
            return True  # the original is unreadable: nothing to tell them apart by
        return _same_bytes(stored, payload)


def _key_reused(row: Row) -> HTTPError:
    return detail(
        422,
        f"Idempotency-Key {row['idempotency_key']!r} was already used for update {row['id']}, "
        "with a different request; send a new key with a new update.",
    )


def _same_bytes(first: Any, second: Any) -> bool:
    """Whether two bytes-like objects (e.g. memory maps) hold the same bytes."""
    a, b = memoryview(first).cast("B"), memoryview(second).cast("B")
    if a.nbytes != b.nbytes:
        return False
    step = 1 << 24
    return all(a[i : i + step] == b[i : i + step] for i in range(0, a.nbytes, step))
