"""What the reference server does, behind its HTTP routes: models, updates, rounds, scores.

Everything here is synchronous and thread-safe; the routes run it in a worker thread.
An update is checked against its model's structure (its initial model or latest
aggregate) and stored in one step. Rounds are run by
:class:`~.rounds.Rounds`; updates a crash left RUNNING are PENDING again at start-up.

The database is SQLite in the data directory (one server at a time: the directory is
locked), or a PostgreSQL that any number of replicas share (``database``; see
docs/SCALING.md). At start a server sweeps what a crash left behind. On a database it
owns alone that is everything no row points at; on a shared one, another replica may be
writing right now, so only what is provably orphaned goes (upload files whose upload is
gone, see :meth:`~.uploads.Uploads.sweep`, and objects of an object store older than its
grace period): blob files of a shared directory are not swept there, and a
round a dead replica left RUNNING is taken over when its lease expires (:mod:`.leases`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid as uuid_module
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..codecs.base import Tensors, decode_with, read_tag
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import CodecError, EncodeError, TooManyTensorsError
from ..registry import CodecRegistry
from ..settings import BLOBS_ENV, DATABASE_ENV, S3_ENDPOINT_URL_ENV
from . import jsonstream
from .blobs import BlobWriter, open_blob_store
from .datadir import DataDirLock, prepare
from .deadlines import Clock
from .errors import HTTPError, bad_request, detail, forbidden, not_found
from .jsonvalues import shown
from .keys import Keys
from .leases import DEFAULT_LEASE
from .limits import DEFAULT_MAX_TENSORS, PausePoint, check_tensors_schema, too_many_tensors
from .locks import KeyedLocks
from .mean import all_finite
from .rounds import AutoAggregate, Rounds
from .signed import SignedUpdate, check_update
from .store import NewBlob, Row, Store
from .structure import Structure, difference, structure_of
from .uploads import DEFAULT_EXPIRY, DEFAULT_UPLOAD_QUOTA, Uploads
from .validation import (
    UPDATE_FIELDS,
    cast_layers,
    check_against_schema,
    check_depth,
    json_object,
    model_fields,
    reference,
    tensor_dtypes,
    tensor_names,
    update_fields,
)
from .waiting import Waiters
from .weights import ModelBases, decode_data, load, store_tensors

__all__ = ["Service"]

#: The field holding the dtype tags of an initial model's plain layers.
_INITIAL_DTYPES = "initial_model_dtypes"

TOKEN_ENV = "FMA_CONNECT_ADMIN_TOKEN"
_NO_TENSORS = "The update holds no tensors; send at least one."
#: A JSON integer literal of 19 digits or more (fraction and exponent digits excluded).
_LONG_INTEGER = re.compile(rb"(?<![\w.+-])-?[0-9]{19,}(?![0-9.eE])")
log = logging.getLogger("fma_connect.server")


class Service:
    """The server's state and operations over one data directory.

    Args:
        data_dir: Holds ``fma.sqlite3`` (unless ``database`` is given), ``blobs/`` and
            ``uploads/``; created if missing. Replicas sharing a database share it too.
        registry: The codecs updates may use.
        admin_token: Token of the admin (user 1); default ``FMA_CONNECT_ADMIN_TOKEN``,
            else the stored one, else a new random one. A token given either way
            replaces the stored one.
        auto_aggregate: When rounds run by themselves (see :class:`~.rounds.Rounds`).
        max_tensors: Most tensors an update (or initial model) may hold.
        upload_expiry: Seconds a resumable upload lives after its last activity.
        upload_quota: Most bytes a client's open resumable uploads may declare.
        max_held: Most ``get_latest_aggregate`` requests held at once (see :mod:`.waiting`).
        database: A ``postgresql://`` URL of a database replicas share; default
            ``FMA_CONNECT_DATABASE``, else SQLite in ``data_dir``.
        blobs: Where payloads live (see :func:`~.blobs.open_blob_store`); default
            ``FMA_CONNECT_BLOBS``, else ``data_dir/blobs``.
        s3_endpoint_url: The S3 endpoint of ``blobs``; default
            ``FMA_CONNECT_S3_ENDPOINT_URL``.
        round_lease: Seconds a round's lease lasts unless renewed (see :mod:`.leases`).
        clock: The time now, for round deadlines (tests move it; see :mod:`.policies`),
            signed requests' timestamps and enrolment tokens' expiry.

    Attributes:
        admin_token: The admin's token.
        admin_token_created: Whether this start created it.
        rounds: Runs the aggregation rounds (``rounds.aggregate`` is the admin trigger).
        uploads: The resumable uploads (:class:`~.uploads.Uploads`).
        waiters: The requests held until a new aggregate (:class:`~.waiting.Waiters`).
        keys: The identity tables: client keys, enrolment tokens, allow-lists, request
            nonces, update signatures (:class:`~.keys.Keys`; docs/SECURITY.md).

    Raises:
        DataDirError: ``data_dir`` is a file, or another server is using it (SQLite).
        DatabaseError: the database cannot be opened, or is newer than this code.
    """

    def __init__(
        self,
        data_dir: Path,
        registry: CodecRegistry,
        *,
        admin_token: str | None = None,
        auto_aggregate: AutoAggregate = "sync",
        max_tensors: int = DEFAULT_MAX_TENSORS,
        upload_expiry: float = DEFAULT_EXPIRY,
        upload_quota: int = DEFAULT_UPLOAD_QUOTA,
        max_held: int = 64,
        database: str | None = None,
        blobs: str | None = None,
        s3_endpoint_url: str | None = None,
        round_lease: float = DEFAULT_LEASE,
        clock: Clock = time.time,
    ) -> None:
        prepare(data_dir)
        database = database or os.environ.get(DATABASE_ENV) or None
        # Replicas on one PostgreSQL may share the directory; SQLite has one server.
        own = database is None or database.lower().startswith("sqlite:")
        self._dir_lock = DataDirLock(data_dir) if own else None
        store = None
        try:
            self.store = store = Store(data_dir / "fma.sqlite3", database)
            self.blobs = open_blob_store(
                blobs or os.environ.get(BLOBS_ENV) or None,
                data_dir,
                endpoint_url=s3_endpoint_url or os.environ.get(S3_ENDPOINT_URL_ENV) or None,
            )
            token = admin_token or os.environ.get(TOKEN_ENV) or None
            self.admin_token, self.admin_token_created = self.store.ensure_admin(token)
            if not self.store.db.shared:
                if self.store.reset_running():
                    log.warning("updates left RUNNING by an interrupted round are PENDING again")
                self.blobs.sweep(self.store.blob_filenames())
            elif self.blobs.sweeps_while_shared:
                self.blobs.sweep(self.store.blob_filenames())
            self.uploads = Uploads(
                self.store, self.blobs, data_dir, expiry=upload_expiry, quota=upload_quota
            )
            self.uploads.sweep()
        except BaseException:
            if store is not None:
                store.close()
            if self._dir_lock is not None:
                self._dir_lock.release()
            raise
        self.registry = registry
        #: The identity tables (client keys, tokens, allow-lists, nonces, signatures).
        self.keys = Keys(self.store, clock)
        self.max_tensors = max_tensors
        self._pause = PausePoint()  # crash tests only (FMA_CONNECT_TEST_PAUSE)
        #: model id -> (blob id, structure) of the blob that established its structure.
        self._structures: dict[int, tuple[int, Structure]] = {}
        # Checking an update against the model's structure and storing it is one step per
        # model, so an update is never stored against a structure that just changed.
        self._intake = KeyedLocks()
        self.waiters = Waiters(max_held)
        self.rounds = Rounds(
            self.store,
            self.blobs,
            registry,
            auto_aggregate=auto_aggregate,
            pause=self._pause,
            stored=self.waiters.notify,
            lease=round_lease,
            clock=clock,
        )

    def close(self) -> None:
        """Stop the aggregation worker and close the database."""
        self.rounds.close()
        self.store.close()
        if self._dir_lock is not None:
            self._dir_lock.release()

    # -- models ----------------------------------------------------------------------

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
            initial, _ = self._store_json_weights(
                body["initial_model"], "initial_model", names=names
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

    # -- updates ---------------------------------------------------------------------

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
            blob, shape = self._store_json_weights(
                body["data"], "data", raw, schema, names, digest=signed is not None
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
        problem = _NO_TENSORS if not shape else _not_finite(tensors)
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

    def _store_json_weights(
        self,
        value: Any,
        field: str,
        raw: Any = None,
        schema: Any = None,
        names: list[str] | None = None,
        *,
        digest: bool = False,
    ) -> tuple[NewBlob, Structure]:
        """Check and store JSON weights; return their blob and their structure.

        Args:
            value: The parsed weights.
            field: The request field they came in (for errors).
            raw: The request body they were parsed from, to find integers beyond 64 bits
                (which orjson turns into floats).
            schema: An ``update_schema`` to check the tensors' plain-lists form against.
            names: The names of plain layer lists, in order (see :func:`tensor_names`).
            digest: Also give the SHA-256 of the bytes stored (a signed update's).
        """
        try:
            # Plain layers and npz-b64 are counted before any array is made.
            codec, tensors = decode_data(value, self.registry, max_tensors=self.max_tensors)
        except TooManyTensorsError as exc:
            raise too_many_tensors(exc.count, exc.limit, field) from exc
        except CodecError as exc:
            raise bad_request(field, str(exc)) from exc
        if names is not None:
            if codec != "json":
                raise bad_request(
                    "tensor_names",
                    f"tensor_names name plain layer lists; a {codec} payload names its own "
                    "tensors: drop tensor_names.",
                )
            if len(names) != len(tensors):
                raise bad_request(
                    f"{field}_tensor_names" if field != "data" else "tensor_names",
                    f"Expected one name per layer of {field}: {len(tensors)} names, got "
                    f"{len(names)}.",
                )
            tensors = [(name, array) for name, (_, array) in zip(names, tensors, strict=True)]
        check_tensors_schema(schema, tensors)
        problem = _NO_TENSORS if not tensors else _not_finite(tensors)
        if problem is not None:
            raise bad_request(field, problem)
        if codec == "json" and raw is not None:
            problem = _integer_beyond_64_bits(raw, tensors)
            if problem is not None:
                raise bad_request(field, problem)
        shape = structure_of(tensors)
        del tensors
        stored = orjson.dumps(value)
        sha256 = hashlib.sha256(stored).hexdigest() if digest else None
        filename, nbytes = self.blobs.write([stored])
        return NewBlob(codec, filename, nbytes, names, sha256), shape

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


def _not_finite(tensors: Tensors) -> str | None:
    """Why weights cannot be averaged: a tensor holds NaN or infinity (else None)."""
    for name, array in tensors:
        if not all_finite(array):
            return (
                f"Tensor {name!r} holds NaN or infinite values; the server averages updates, "
                "so every value must be finite."
            )
    return None


def _integer_beyond_64_bits(raw: Any, tensors: Tensors) -> str | None:
    """Why plain JSON weights cannot be stored: an integer beyond int64 and uint64.

    orjson reads such integers as floats, so they can only be told apart from large
    floats in the text; the text is searched only when a float that large is there.
    """
    large = any(
        array.dtype.kind == "f" and array.size and max(array.max(), -array.min()) >= 2.0**63
        for _, array in tensors
    )
    if not large:
        return None
    for match in _LONG_INTEGER.finditer(memoryview(raw).cast("B")):
        if not -(2**63) <= int(match.group()) < 2**64:
            return (
                f"The integer {match.group().decode()} is beyond the 64-bit range of int64 "
                "and uint64; send it as a float (e.g. 1e20) or use a binary codec."
            )
    return None
