"""What the reference server does, behind its HTTP routes: models, updates, rounds, scores.

Everything here is synchronous and thread-safe; the routes run it in a worker thread.
Aggregation rounds of one model never overlap (a lock per model); a round takes the
model's PENDING updates, marks them RUNNING, averages them one at a time and commits
the aggregate and every update's final status (COMPLETE, or INVALID with its reason)
in one transaction. Updates left RUNNING by a crash are PENDING again at start-up.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import orjson

from ..exceptions import CodecError, EncodeError
from ..registry import CodecRegistry
from . import store as st
from .aggregation import AGGREGATORS, Accumulator, requirement_met
from .blobs import BlobStore, BlobWriter
from .errors import HTTPError, bad_request, forbidden, not_found
from .store import Row, Store
from .validation import check_against_schema, model_fields, reference
from .weights import decode_data, load, result_codec, store_tensors

__all__ = ["AutoAggregate", "Service"]

AutoAggregate = Literal["sync", "background", "off"]
TOKEN_ENV = "FMA_CONNECT_ADMIN_TOKEN"
log = logging.getLogger("fma_connect.server")


class Service:
    """The server's state and operations over one data directory.

    Args:
        data_dir: Holds ``fma.sqlite3`` and ``blobs/``; created if missing.
        registry: The codecs updates may use.
        admin_token: Token of the admin (user 1); default ``FMA_CONNECT_ADMIN_TOKEN``,
            else the stored one, else a new random one.
        auto_aggregate: Run a round when a model's requirement is met after an update:
            in the request (``sync``, deterministic), in a worker thread
            (``background``), or never (``off``: admin trigger only).

    Attributes:
        admin_token: The admin's token.
        admin_token_created: Whether this start created it.
    """

    def __init__(
        self,
        data_dir: Path,
        registry: CodecRegistry,
        *,
        admin_token: str | None = None,
        auto_aggregate: AutoAggregate = "sync",
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.store = Store(data_dir / "fma.sqlite3")
        self.blobs = BlobStore(data_dir)
        token = admin_token or os.environ.get(TOKEN_ENV) or None
        self.admin_token, self.admin_token_created = self.store.ensure_admin(token)
        if self.store.reset_running():
            log.warning("updates left RUNNING by an interrupted round are PENDING again")
        self.blobs.sweep(self.store.blob_filenames())
        self.auto_aggregate = auto_aggregate
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if auto_aggregate == "background":
            self._worker = threading.Thread(target=self._work, name="fma-aggregation", daemon=True)
            self._worker.start()

    def close(self) -> None:
        """Stop the aggregation worker and close the database."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        self.store.close()

    def wait_idle(self) -> None:
        """Block until the background worker has run every queued round."""
        self._queue.join()

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
            raise forbidden(f"Client {client} is not registered with federated model {model_id}.")
        return row

    def create_model(self, body: Mapping[str, Any], user: int) -> int:
        """Create a model from a request body; return its id."""
        fields, clients = model_fields({"developer": user, **body}, self.store)
        initial = None
        if body.get("initial_model") is not None:
            initial = self._store_json_weights(body["initial_model"], "initial_model")
        try:
            return self.store.insert_model(fields, clients or [], initial)
        except BaseException:
            if initial is not None:
                self.blobs.delete([initial[1]])
            raise

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
        """Delete a model, its updates, aggregates, artifacts, scores and blobs."""
        self.model(model_id)
        self.blobs.delete(self.store.delete_model(model_id))

    # -- updates ---------------------------------------------------------------------

    def check_update(self, client: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Validate an update's fields (not its data); return them normalised.

        Raises:
            HTTPError: 400 for bad fields, 403 when the client is not registered.
        """
        model_id = reference(fields, "federated_model", required=True)
        assert model_id is not None
        if self.store.get_model(model_id) is None:
            raise bad_request(
                "federated_model", f'Invalid pk "{model_id}" - object does not exist.'
            )
        self.model_for_client(model_id, client)
        base = reference(fields, "base_aggregate", required=False)
        if base is not None:
            aggregate = self.store.get_aggregate(base)
            if aggregate is None or aggregate["federated_model"] != model_id:
                raise bad_request(
                    "base_aggregate",
                    f'Invalid pk "{base}" - no such aggregate of federated model {model_id}.',
                )
        examples = fields.get("num_examples")
        if examples is not None and (type(examples) is not int or examples < 1):
            raise bad_request("num_examples", "Expected null or an integer of at least 1.")
        return {
            "federated_model": model_id,
            "client": client,
            "base_aggregate": base,
            "num_examples": examples,
        }

    def add_json_update(self, client: str, spool: BlobWriter, key: str | None) -> tuple[Row, bool]:
        """Store an update whose JSON body was spooled to ``spool``; run a round if due.

        Returns:
            The update row and whether it is new (False: the idempotency key was used).
        """
        raw = spool.contents()
        try:
            body = orjson.loads(memoryview(raw))
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, {"detail": f"JSON parse error - {exc}"}) from exc
        finally:
            spool.discard()
        if not isinstance(body, dict):
            raise bad_request(
                "non_field_errors",
                f"Invalid data. Expected a dictionary, but got {type(body).__name__}.",
            )
        fields = self.check_update(client, body)
        if "data" not in body or body["data"] is None:
            raise bad_request(
                "data",
                "This field is required." if "data" not in body else "This field may not be null.",
            )
        schema = self.model(fields["federated_model"])["update_schema"]
        check_against_schema(schema, body["data"], "data")
        blob = self._store_json_weights(body["data"], "data")
        return self._insert(fields, blob, key)

    def add_binary_update(
        self, fields: dict[str, Any], codec_name: str, body: BlobWriter, key: str | None
    ) -> tuple[Row, bool]:
        """Store an update whose binary body (checked ``fields``) is in ``body``."""
        codec = self.registry.get(codec_name)
        try:
            codec.decode(body.contents())
        except CodecError as exc:
            body.discard()
            raise bad_request("data", f"The {codec.name} body does not decode: {exc}") from exc
        filename = body.commit()
        return self._insert(fields, (codec.name, filename, body.nbytes), key)

    def _insert(
        self, fields: dict[str, Any], blob: tuple[str, str, int], key: str | None
    ) -> tuple[Row, bool]:
        try:
            row, created = self.store.insert_update(fields, blob, key)
        except BaseException:
            self.blobs.delete([blob[1]])
            raise
        if not created:
            self.blobs.delete([blob[1]])
        elif self.auto_aggregate == "sync":
            self._auto_round(fields["federated_model"])
        elif self.auto_aggregate == "background":
            self._queue.put(fields["federated_model"])
        return row, created

    def _store_json_weights(self, value: Any, field: str) -> tuple[str, str, int]:
        try:
            codec, _ = decode_data(value, self.registry)
        except CodecError as exc:
            raise bad_request(field, str(exc)) from exc
        filename, nbytes = self.blobs.write([orjson.dumps(value)])
        return codec, filename, nbytes

    # -- aggregation -----------------------------------------------------------------

    def aggregate(self, model_id: int) -> Row:
        """Run a round now (admin trigger); return the new aggregate.

        Raises:
            HTTPError: 404 no model; 400 aggregation disabled, nothing pending, or no
                valid update (those are then INVALID, with their reasons).
        """
        if not self.model(model_id)["allow_aggregation"]:
            raise bad_request(
                "non_field_errors", f"Aggregation is disabled for federated model {model_id}."
            )
        aggregate = self._round(model_id, auto=False)
        assert aggregate is not None
        return aggregate

    def _auto_round(self, model_id: int) -> None:
        try:
            self._round(model_id, auto=True)
        except HTTPError as exc:
            log.info("automatic round of model %s made no aggregate: %s", model_id, exc.body)
        except Exception:
            log.exception("automatic round of model %s failed", model_id)

    def _work(self) -> None:
        while True:
            model_id = self._queue.get()
            try:
                if model_id is None:
                    return
                self._auto_round(model_id)
            finally:
                self._queue.task_done()

    @contextmanager
    def _model_lock(self, model_id: int) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(model_id, threading.Lock())
        with lock:
            yield

    def _round(self, model_id: int, *, auto: bool) -> Row | None:
        with self._model_lock(model_id):
            model = self.store.get_model(model_id)
            if model is None:
                raise not_found()
            pending = self.store.pending_updates(model_id)
            clients = self.store.model_clients(model_id)
            if auto and not (
                model["allow_aggregation"]
                and requirement_met(
                    model["requirement"],
                    model["requirement_args"],
                    clients,
                    [u["client"] for u in pending if u["client"] in clients],
                )
            ):
                return None
            if not pending:
                raise bad_request(
                    "non_field_errors",
                    f"No pending updates to aggregate for federated model {model_id}.",
                )
            ids = [u["id"] for u in pending]
            self.store.set_update_status(ids, st.RUNNING)
            try:
                aggregate_id, invalid = self._average(model, pending, set(clients))
            except BaseException:
                self.store.set_update_status(ids, st.PENDING, only=st.RUNNING)
                raise
        if aggregate_id is None:
            reasons = [f"update {i}: {reason}" for i, reason in invalid.items()]
            raise bad_request("non_field_errors", "No valid update to aggregate.", *reasons)
        aggregate = self.store.get_aggregate(aggregate_id)
        assert aggregate is not None
        return aggregate

    def _average(
        self, model: Row, pending: list[Row], clients: set[str]
    ) -> tuple[int | None, dict[int, str]]:
        weighted = AGGREGATORS[model["aggregator"]]
        allowed = None
        if model["furthest_base_agg"]:
            recent = self.store.recent_aggregate_ids(model["id"], model["furthest_base_agg"])
            allowed = set(recent) if recent else None
        accumulator = Accumulator()
        used: list[int] = []
        codecs: list[str] = []
        invalid: dict[int, str] = {}
        for update in pending:
            reason = None
            if update["client"] not in clients:
                reason = "its client is no longer registered with the model"
            elif allowed is not None and update["base_aggregate"] not in allowed:
                reason = (
                    f"its base aggregate {update['base_aggregate']} is not among the model's "
                    f"{model['furthest_base_agg']} latest aggregates (furthest_base_agg)"
                )
            else:
                try:
                    tensors = load(self.blobs, self.store.get_blob(update["blob"]), self.registry)
                except CodecError as exc:
                    reason = f"the stored update does not decode: {exc}"
                except OSError as exc:  # no server path in a reason clients can read
                    reason = f"the stored update cannot be read: {exc.strerror or exc}"
                else:
                    weight = float(update["num_examples"] or 1) if weighted else 1.0
                    typed = self.registry.get(update["codec"]).lossless
                    reason = accumulator.add(tensors, weight, typed=typed)
                    del tensors
            if reason is None:
                used.append(update["id"])
                codecs.append(update["codec"])
            else:
                invalid[update["id"]] = reason
        blob = self._store_result(accumulator, codecs) if used else None
        try:
            aggregate_id = self.store.record_round(
                model["id"], blob, model["aggregator"], used, invalid
            )
        except BaseException:
            if blob is not None:
                self.blobs.delete([blob[1]])
            raise
        return aggregate_id, invalid

    def _store_result(self, accumulator: Accumulator, codecs: list[str]) -> tuple[str, str, int]:
        result = accumulator.result()
        errors = []
        for codec in result_codec(codecs, self.registry):
            try:
                return store_tensors(self.blobs, result, codec)
            except EncodeError as exc:
                errors.append(f"{codec.name}: {exc}")
        raise EncodeError(f"no installed codec can store the aggregate: {'; '.join(errors)}")

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
            raise bad_request("version", "Expected a non-empty string of at most 100 characters.")
        artifact = self.store.get_artifact(self.store.publish(aggregate, version))
        assert artifact is not None
        return artifact

    def add_score(self, client: str, body: Mapping[str, Any]) -> Row:
        """Store a client's validation results for an aggregate."""
        aggregate_id = reference(body, "aggregate", required=True)
        assert aggregate_id is not None
        aggregate = self.store.get_aggregate(aggregate_id)
        if aggregate is None:
            raise bad_request("aggregate", f'Invalid pk "{aggregate_id}" - object does not exist.')
        if body.get("client", client) != client:
            raise bad_request("client", "Must be the client named by the CLIENT-UUID header.")
        if "validation_results" not in body:
            raise bad_request("validation_results", "This field is required.")
        model = self.model_for_client(aggregate["federated_model"], client)
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
