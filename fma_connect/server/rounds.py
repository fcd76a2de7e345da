"""Aggregation rounds of the reference server: when they run and what they record.

Rounds of one model never overlap (a lock per model). A round takes the model's
PENDING updates, marks them RUNNING, averages them one at a time from their
memory-mapped blobs, and commits the aggregate and every update's final status
(COMPLETE, or INVALID with its reason) in one transaction. If it fails, the updates
are PENDING again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np

from ..codecs.base import Tensors
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import CodecError, EncodeError
from ..registry import CodecRegistry
from . import store as st
from .aggregation import AGGREGATORS, requirement_met
from .blobs import BlobStore
from .errors import HTTPError, bad_request, not_found
from .in_place import InPlace
from .limits import PausePoint
from .locks import KeyedLocks
from .mean import Accumulator
from .sparse_aggregates import Step, sparse_step
from .store import NewBlob, Row, Store
from .structure import Structure, difference, structure_of
from .weights import ModelBases, load, result_codec, store_tensors

__all__ = ["AutoAggregate", "Result", "Rounds"]

AutoAggregate = Literal["sync", "background", "off"]
log = logging.getLogger("fma_connect.server")


class Rounds:
    """Runs the aggregation rounds of every model of one server.

    Args:
        store: The server's metadata.
        blobs: The server's payload files.
        registry: The codecs stored updates may use.
        auto_aggregate: Run a round when a model's requirement is met after an update:
            in the request (``sync``, deterministic), in a worker thread
            (``background``), or never (``off``: admin trigger only).
        pause: The crash tests' pause point.
        stored: Called with the model's id after a round stored an aggregate (it wakes
            the requests waiting for one, see :mod:`.waiting`).
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        registry: CodecRegistry,
        *,
        auto_aggregate: AutoAggregate,
        pause: PausePoint,
        stored: Callable[[int], None],
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.auto_aggregate = auto_aggregate
        self._pause = pause
        self._stored = stored
        self._model_locks = KeyedLocks()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if auto_aggregate == "background":
            self._worker = threading.Thread(target=self._work, name="fma-aggregation", daemon=True)
            self._worker.start()

    def close(self) -> None:
        """Stop the background worker (after the rounds already queued)."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def wait_idle(self) -> None:
        """Block until the background worker has run every queued round."""
        self._queue.join()

    def after_update(self, model_id: int) -> bool:
        """A new update of the model was stored: run a round now, queue one, or neither.

        Returns:
            Whether a round ran now (so the update's status may have changed).
        """
        if self.auto_aggregate == "sync":
            self._auto_round(model_id)
            return True
        if self.auto_aggregate == "background":
            self._queue.put(model_id)
        return False

    def aggregate(self, model_id: int) -> Row:
        """Run a round now (admin trigger); return the new aggregate.

        Raises:
            HTTPError: 404 no such model; 400 aggregation disabled, nothing pending, or no
                valid update (those are then INVALID, with their reasons).
        """
        model = self.store.get_model(model_id)
        if model is None:
            raise not_found()
        if not model["allow_aggregation"]:
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

    def _round(self, model_id: int, *, auto: bool) -> Row | None:
        with self._model_locks.hold(model_id):
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
                aggregate_id, invalid = self._average(model, pending, set(clients), auto=auto)
            except BaseException:
                self.store.set_update_status(ids, st.PENDING, only=st.RUNNING)
                raise
        if aggregate_id is None and auto:
            if invalid:
                log.info("round of model %s refused updates %s", model_id, invalid)
            return None
        if aggregate_id is None:
            reasons = [f"update {i}: {reason}" for i, reason in invalid.items()]
            raise bad_request("non_field_errors", "No valid update to aggregate.", *reasons)
        self._stored(model_id)
        aggregate = self.store.get_aggregate(aggregate_id)
        assert aggregate is not None
        return aggregate

    def _average(
        self, model: Row, pending: list[Row], clients: set[str], *, auto: bool
    ) -> tuple[int | None, dict[int, str]]:
        """Average the valid ones of ``pending`` and record the round.

        An automatic round makes an aggregate only when the valid updates alone still
        meet the model's requirement; otherwise the refused ones are marked INVALID and
        the valid ones wait (PENDING) for more.
        """
        weighted = AGGREGATORS[model["aggregator"]]
        allowed = None
        if model["furthest_base_agg"]:
            recent = self.store.recent_aggregate_ids(model["id"], model["furthest_base_agg"])
            allowed = set(recent) if recent else None
        accumulator = Accumulator()
        used: list[int] = []
        codecs: list[str] = []
        invalid: dict[int, str] = {}
        if self.store.latest_aggregate(model["id"]) is None and model["current_artifact"] is None:
            pending = self._by_first_round_majority(pending, clients)
        # One context for the round: a base that several updates start from is read once.
        context = CodecContext(bases=ModelBases(self.store, self.blobs, self.registry, model["id"]))
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
                    row = self.store.get_blob(update["blob"])
                    # Sparse updates are held as their changes (see mean.Accumulator).
                    tensors = load(self.blobs, row, self.registry, context, lazy=True)
                except CodecError as exc:
                    reason = f"the stored update does not decode: {exc}"
                except OSError as exc:  # no server path in a reason clients can read
                    reason = f"the stored update cannot be read: {exc.strerror or exc}"
                else:
                    weight = float(update["num_examples"] or 1) if weighted else 1.0
                    # Every codec but plain JSON carries the dtypes the sender chose.
                    typed = update["codec"] != "json"
                    reason = accumulator.add(tensors, weight, typed=typed)
                    del tensors
            if reason is None:
                used.append(update["id"])
                codecs.append(update["codec"])
            else:
                invalid[update["id"]] = reason
        if used and auto and invalid:
            senders = [u["client"] for u in pending if u["id"] in set(used)]
            args = (model["requirement"], model["requirement_args"], sorted(clients), senders)
            if not requirement_met(*args):
                self.store.record_round(model["id"], None, model["aggregator"], [], invalid)
                self.store.set_update_status(used, st.PENDING, only=st.RUNNING)
                return None, invalid
        self._pause.reached("round-running")
        result = self._store_result(accumulator, codecs, model, context) if used else None
        self._pause.reached("round-stored")
        stale = model["residual_blob"]
        stale_file = None if stale is None else self.store.get_blob(stale)["filename"]
        try:
            aggregate_id = self.store.record_round(
                model["id"],
                None if result is None else result.aggregate,
                model["aggregator"],
                used,
                invalid,
                step=None if result is None else result.step,
                residual=None if result is None else result.residual,
            )
        except BaseException:
            if result is not None:
                self.blobs.delete([new.filename for new in result if new is not None])
            raise
        if result is not None and stale_file is not None:  # the round replaced it
            self.blobs.delete([stale_file])
        return aggregate_id, invalid

    def _by_first_round_majority(self, pending: list[Row], clients: set[str]) -> list[Row]:
        """Order a model's first round so that the structure most clients sent comes first.

        A model created without an initial model has no structure until its first
        aggregate. Its first round takes the structure (tensor count, names, shapes) sent
        by the most registered clients; the Accumulator then refuses the other
        structures. So one client's bogus first update cannot define the model and lock
        every honest client out. On a tie the round does not run (its updates stay
        PENDING for more to arrive).

        Raises:
            HTTPError: 400, two structures were sent by as many clients.
        """
        groups: list[tuple[Structure, set[str], list[Row]]] = []
        unread: list[Row] = []
        for update in pending:
            try:
                blob = self.store.get_blob(update["blob"])
                context = CodecContext(
                    bases=ModelBases(self.store, self.blobs, self.registry, blob["federated_model"])
                )
                tensors = load(self.blobs, blob, self.registry, context)
            except (CodecError, OSError):
                unread.append(update)  # the main pass says why
                continue
            shape = structure_of(tensors)
            del tensors
            group = next((g for g in groups if difference(g[0], shape, "") is None), None)
            if group is None:
                group = (shape, set(), [])
                groups.append(group)
            _, senders, members = group
            members.append(update)
            if update["client"] in clients:
                senders.add(update["client"])
        ordered = sorted(groups, key=lambda group: -len(group[1]))
        if len(ordered) > 1 and len(ordered[0][1]) == len(ordered[1][1]) > 0:
            counts = ", ".join(f"{len(g[1])} with {_describe(g[0])}" for g in ordered)
            raise bad_request(
                "non_field_errors",
                "The model's first round has no majority structure: its clients sent "
                f"{counts}. The round waits for more updates; give the model an "
                "initial_model to define its structure.",
            )
        return [update for _, _, members in ordered for update in members] + unread

    def _store_result(
        self, accumulator: Accumulator, codecs: list[str], model: Row, context: CodecContext
    ) -> Result:
        """Store the round's aggregate; with ``aggregate_fraction``, as a sparse step from
        the previous one (see :mod:`.sparse_aggregates`), with the step and the residual.

        A whole aggregate is computed straight into its blob's file where its codec
        allows (see :class:`~.in_place.InPlace`): not held in memory, written once.
        """
        candidates = result_codec(codecs, self.registry)
        placed = None
        if model["aggregate_fraction"] is None:
            placed = InPlace.open(self.blobs, accumulator.planned(), candidates[0])
        try:
            aggregate = accumulator.result(None if placed is None else placed.arrays)
            step = None
            if model["aggregate_fraction"] is not None:
                step = self._sparse_step(aggregate, model, context)
                if step is not None:
                    aggregate = step.aggregate
            errors = []
            for codec in candidates:
                try:
                    if placed is not None and codec is placed.codec:
                        blob = placed.store(aggregate)
                    else:
                        blob = store_tensors(self.blobs, aggregate, codec)
                except EncodeError as exc:
                    errors.append(f"{codec.name}: {exc}")
                    continue
                if step is None:
                    return Result(blob)
                written = [blob]
                try:
                    written.append(NewBlob("sparse", *self.blobs.write([step.payload])))
                    residual = sorted(step.residual.items())
                    written.append(
                        store_tensors(self.blobs, residual, self.registry.get("msgpack"))
                    )
                except BaseException:
                    self.blobs.delete([new.filename for new in written])
                    raise
                return Result(*written)
        finally:
            if placed is not None:
                placed.discard()
        raise EncodeError(f"no installed codec can store the aggregate: {'; '.join(errors)}")

    def _sparse_step(self, mean: Tensors, model: Row, context: CodecContext) -> Step | None:
        """The sparse step from the model's latest aggregate; None for its first one."""
        latest = self.store.latest_aggregate(model["id"])
        previous = None if latest is None else latest["id"]
        carried: dict[str, np.ndarray] = {}
        if model["residual_blob"] is not None:
            row = self.store.get_blob(model["residual_blob"])
            carried = dict(load(self.blobs, row, self.registry))
        assert context.bases is not None
        try:
            return sparse_step(
                mean,
                previous,
                context.bases,
                carried,
                model["aggregate_fraction"],
                model["aggregate_values"] or "float32",
            )
        except MissingBaseError:  # the first aggregate of a model without initial model
            return None


class Result(NamedTuple):
    """The blobs a round wrote: the aggregate's, and for a sparse step its payload and
    the model's new residual."""

    aggregate: NewBlob
    step: NewBlob | None = None
    residual: NewBlob | None = None


def _describe(structure: Structure) -> str:
    """A short description of a structure, for messages."""
    shown = ", ".join(f"{name} {list(shape)}" for name, shape in structure[:3])
    more = f", ... ({len(structure)} tensors)" if len(structure) > 3 else ""
    return f"[{shown}{more}]"
