"""Aggregation rounds of the reference server: when they run and what they record.

Rounds of one model never overlap, in one server (a lock per model) nor across replicas
sharing a database (the model's lease, see :mod:`.leases`: a replica that dies mid-round
leaves it to another, which finds its updates PENDING again). A round takes the model's
PENDING updates, marks them RUNNING, averages them one at a time from their
memory-mapped blobs, and commits the aggregate and every update's final status
(COMPLETE, or INVALID with its reason) in one transaction. If it fails, the updates
are PENDING again.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np

from ..codecs.base import Tensors
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import CodecError, EncodeError
from ..plugins import default_aggregator_registry
from ..registry import AggregatorRegistry, CodecRegistry, UnknownAggregatorError
from .aggregators import Aggregation, AggregatorArgsError, Contribution, RoundContext
from .blobs import BlobStore
from .deadlines import Clock, Deadlines
from .errors import HTTPError, bad_request, not_found
from .in_place import InPlace
from .leases import DEFAULT_LEASE, RoundLeases
from .limits import PausePoint
from .locks import KeyedLocks
from .policies import Decision, RoundPolicy, decide, epoch
from .sparse_aggregates import Step, sparse_step
from .store import Store
from .store_core import PENDING, RUNNING, NewBlob, Row
from .store_rounds import InputsChanged
from .structure import Structure, difference, structure_of
from .weights_storage import ModelBases, load, result_codec, store_tensors

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
        aggregators: The aggregators models may name; default: every installed one
            (:func:`~fma_connect.plugins.default_aggregator_registry`).
        lease: Seconds a round's lease lasts unless renewed (see :mod:`.leases`): how
            long after a replica died mid-round another takes the round over.
        clock: The time now, for round deadlines (see :mod:`.policies`).
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
        aggregators: AggregatorRegistry | None = None,
        lease: float = DEFAULT_LEASE,
        clock: Clock = time.time,
    ) -> None:
        self.aggregators = default_aggregator_registry() if aggregators is None else aggregators
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.auto_aggregate = auto_aggregate
        self._pause = pause
        self._stored = stored
        self._model_locks = KeyedLocks()
        self.leases = RoundLeases(store, lease)
        store.round_fence = self.leases.fence
        if not store.db.shared:  # the database is this server's alone: leases are a dead one's
            self.leases.clear()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if auto_aggregate == "background":
            self._worker = threading.Thread(target=self._work, name="fma-aggregation", daemon=True)
            self._worker.start()
        self._clock = clock
        self._deadlines: Deadlines | None = None
        if auto_aggregate != "off":
            self._deadlines = Deadlines(clock, self._deadline_came)
            self._schedule_waiting()
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        if store.db.shared:
            self._watcher = threading.Thread(
                target=self._watch, name="fma-rounds-watch", daemon=True
            )
            self._watcher.start()

    def close(self) -> None:
        """Stop the background worker (after the rounds already queued) and the watcher."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def _watch(self) -> None:
        """With a shared database: take over the rounds of replicas that died mid-round,
        and wake this server's held requests when another replica stores an aggregate."""
        seen: int | None = None  # the newest aggregate id seen
        interval = min(1.0, self.leases.duration / 4)
        while not self._closing.wait(interval):
            try:
                for model_id in self.leases.expired():
                    log.warning(
                        "taking over the round of model %s from a replica that stopped", model_id
                    )
                    self._take_over(model_id)
                row = self.store.one("SELECT MAX(id) AS id FROM aggregates")  # the key's end
                newest = int(row["id"] or 0) if row else 0
                if seen is not None and newest > seen:
                    for found in self.store.all(
                        "SELECT DISTINCT federated_model FROM aggregates WHERE id > ?", (seen,)
                    ):
                        self._stored(found["federated_model"])
                seen = newest
                self._schedule_waiting()  # deadlines of rounds whose updates others stored
            except Exception:  # the database is away for a moment: try again next time
                log.warning("the rounds watcher could not read the database", exc_info=True)

    def _take_over(self, model_id: int) -> None:
        """Take an expired lease (its round's updates are PENDING again in the same
        transaction), then run the round the dead replica did not finish, if automatic
        rounds are on."""
        # Under the model's lock, as every use of a lease in this server: a round of this
        # server holding it meanwhile is never mistaken for the dead one's.
        with self._model_locks.hold(model_id):
            try:
                if not self.leases.try_take(model_id):
                    return  # another replica was quicker
            except HTTPError:
                return  # the model is gone
            self.leases.release(model_id)
        if self.auto_aggregate != "off":
            self._auto_round(model_id)

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

    def _state(self, model_id: int) -> tuple[Row, list[Row], list[str]]:
        """The model, its PENDING updates and its clients.

        Raises:
            HTTPError: 404, no such model.
        """
        model = self.store.get_model(model_id)
        if model is None:
            raise not_found()
        return model, self.store.pending_updates(model_id), self.store.model_clients(model_id)

    def _schedule_waiting(self) -> None:
        """Schedule the deadline of every model with a deadline whose round has updates
        (at start, and on a shared database for the updates other replicas stored)."""
        if self._deadlines is None:
            return
        sql = (
            "SELECT m.id, m.round_deadline, MIN(u.created_on) AS first FROM models m "
            "JOIN updates u ON u.federated_model = m.id AND u.status = ? "
            "WHERE m.round_deadline IS NOT NULL GROUP BY m.id, m.round_deadline"
        )
        for row in self.store.all(sql, (PENDING,)):
            self._deadlines.schedule(row["id"], epoch(row["first"]) + row["round_deadline"])

    def _deadline_came(self, model_id: int) -> None:
        """A model's round deadline came: run its round if the policy says so now."""
        if self.auto_aggregate == "background":
            self._queue.put(model_id)
        else:
            self._auto_round(model_id)

    def _decide(self, model: Row, pending: list[Row], clients: list[str]) -> Decision:
        """Whether an automatic round of the model runs now, given its PENDING updates;
        a deadline still to come is scheduled."""
        if not model["allow_aggregation"]:
            return Decision(False, why="aggregation is disabled")
        policy = RoundPolicy.of(model)
        registered = set(clients)
        arrived = [
            (u["client"], epoch(u["created_on"])) for u in pending if u["client"] in registered
        ]
        missed = {} if policy.drop_after_missed is None else self.store.missed_rounds(model["id"])
        decision = decide(
            model["requirement"],
            model["requirement_args"],
            policy,
            clients,
            arrived,
            missed,
            self._clock(),
        )
        if decision.wake_at is not None and self._deadlines is not None:
            self._deadlines.schedule(model["id"], decision.wake_at)
        return decision

    def _round(self, model_id: int, *, auto: bool) -> Row | None:
        # Most updates leave the requirement unmet: seen without the lease's two writes.
        if auto and not self._decide(*self._state(model_id)).run:
            return None
        with self._model_locks.hold(model_id), self.leases.hold(model_id):
            model, pending, clients = self._state(model_id)  # read again under the lease
            if auto and not self._decide(model, pending, clients).run:
                return None
            if not pending:
                raise bad_request(
                    "non_field_errors",
                    f"No pending updates to aggregate for federated model {model_id}.",
                )
            ids = [u["id"] for u in pending]
            self.store.set_update_status(ids, RUNNING)
            try:
                aggregate_id, invalid = self._average(model, pending, set(clients), auto=auto)
            except InputsChanged as exc:
                # Revoked while the round ran (marked INVALID): the round, computed with
                # them, is not committed; it runs again with the updates still valid.
                self.leases.put_back(model_id, ids)
                log.warning("round of model %s runs again without updates %s", model_id, exc.ids)
                retry = True
            except BaseException:
                self.leases.put_back(model_id, ids)  # unless another replica took them over
                raise
            else:
                retry = False
        if retry:
            return self._round(model_id, auto=auto)
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
        # One context for the round: a base that several updates start from is read once.
        context = CodecContext(bases=ModelBases(self.store, self.blobs, self.registry, model["id"]))
        aggregation, old_state = self._start(model, context)
        allowed = None
        if model["furthest_base_agg"]:
            recent = self.store.recent_aggregate_ids(model["id"], model["furthest_base_agg"])
            allowed = set(recent) if recent else None
        used: list[int] = []
        codecs: list[str] = []
        invalid: dict[int, str] = {}
        if self.store.latest_aggregate(model["id"]) is None and model["current_artifact"] is None:
            pending = self._by_first_round_majority(pending, clients)
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
                    # Every codec but plain JSON carries the dtypes the sender chose.
                    typed = update["codec"] != "json"
                    reason = aggregation.add(
                        Contribution(tensors, update["num_examples"], update["client"], typed)
                    )
                    del tensors
            if reason is None:
                used.append(update["id"])
                codecs.append(update["codec"])
            else:
                invalid[update["id"]] = reason
        if used and auto and invalid:
            valid = [u for u in pending if u["id"] in set(used)]
            if not self._decide(model, valid, sorted(clients)).run:
                self.store.record_round(model["id"], None, model["aggregator"], [], invalid)
                self.store.set_update_status(used, PENDING, only=RUNNING)
                return None, invalid
        self._pause.reached("round-running")
        result = self._store_result(aggregation, codecs, model, context) if used else None
        if result is not None and (model.get("enrolment") or "open") != "open":
            result = result._replace(aggregate=self._with_digest(result.aggregate))
        state = None if result is None else self._store_state(aggregation)
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
                state=state,
            )
        except BaseException:
            if result is not None:
                self.blobs.delete([new.filename for new in result if new is not None])
            if state is not None:
                self.blobs.delete([state.filename])
            raise
        if result is not None and stale_file is not None:  # the round replaced it
            self.blobs.delete([stale_file])
        if state is not None and old_state is not None:  # replaced with the aggregate
            self.blobs.delete([old_state])
        return aggregate_id, invalid

    def _with_digest(self, blob: NewBlob) -> NewBlob:
        """``blob`` with the SHA-256 of its stored bytes, which the aggregate row keeps
        (``admin verify`` finds an aggregate altered in storage).

        One more read of the aggregate, for models that check who enrols only: an open
        model's round costs what it did. The aggregate was written once, often straight
        into its file (:class:`~.in_place.InPlace`), so it is hashed from the store.
        """
        try:
            data = self.blobs.read(blob.filename)
        except OSError:  # recorded without a digest; verify reads it and says so
            return blob
        digest = hashlib.sha256(memoryview(data).cast("B")).hexdigest()
        del data
        return blob._replace(sha256=digest)

    def _start(self, model: Row, context: CodecContext) -> tuple[Aggregation, str | None]:
        """Begin the round of the model's aggregator; also return its state's blob file.

        Raises:
            HTTPError: 400, the aggregator is not installed (any more) or its stored
                ``aggregator_args`` no longer suit it.
        """
        name = model["aggregator"]
        try:
            aggregator = self.aggregators.get(name)
            args = aggregator.check_args(model["aggregator_args"])
        except (UnknownAggregatorError, AggregatorArgsError) as exc:
            raise bad_request(
                "aggregator", f"Federated model {model['id']} cannot aggregate: {exc}"
            ) from None
        row = self.store.aggregator_state(model["id"])
        latest = self.store.latest_aggregate(model["id"])
        # A state continues only from the aggregate it was made with: after a round of
        # another aggregator (or a state another one kept), the aggregator starts afresh.
        mine = (
            row
            if row is not None
            and row["aggregator"] == name
            and latest is not None
            and row["aggregate"] == latest["id"]
            else None
        )

        def current() -> Tensors | None:
            assert context.bases is not None
            try:
                return list(context.bases(None if latest is None else latest["id"]))
            except MissingBaseError:  # neither an aggregate nor an initial model yet
                return None

        def state() -> Tensors | None:
            if mine is None:
                return None
            return load(self.blobs, self.store.get_blob(mine["blob"]), self.registry)

        round_context = RoundContext(model["id"], args, current, state)
        return aggregator.start(round_context), None if row is None else row["filename"]

    def _store_state(self, aggregation: Aggregation) -> NewBlob | None:
        """Write the state the aggregation keeps for the next round (None: it keeps none).

        It is stored in ``msgpack`` (lossless, a view of its file when read) and
        committed with the round's aggregate (see :meth:`Store.record_round`).
        """
        state = aggregation.state()
        if state is None:
            return None
        return store_tensors(self.blobs, state, self.registry.get("msgpack"))

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
        self, aggregation: Aggregation, codecs: list[str], model: Row, context: CodecContext
    ) -> Result:
        """Store the round's aggregate; with ``aggregate_fraction``, as a sparse step from
        the previous one (see :mod:`.sparse_aggregates`), with the step and the residual.

        A whole aggregate is computed straight into its blob's file where its codec
        allows (see :class:`~.in_place.InPlace`): not held in memory, written once.
        """
        candidates = result_codec(codecs, self.registry)
        placed = None
        if model["aggregate_fraction"] is None:
            placed = InPlace.open(self.blobs, aggregation.planned(), candidates[0])
        try:
            aggregate = aggregation.result(None if placed is None else placed.arrays)
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
