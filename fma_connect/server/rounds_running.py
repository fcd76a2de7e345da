"""Running a round (a part of :class:`~.rounds.Rounds`): under the model's lock and
lease, its PENDING updates become RUNNING and are checked and averaged one at a time by
the model's aggregator (a first round's order chosen by the structure most clients sent);
the aggregate (see :mod:`.rounds_results`) and every update's final status are then
committed in one transaction, or the updates are PENDING again.
"""

from __future__ import annotations

import logging

from ..codecs.base import Tensors
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import CodecError
from ..registry import UnknownAggregatorError
from .aggregators import Aggregation, AggregatorArgsError, Contribution, RoundContext
from .errors import bad_request
from .rounds_results import RoundResults
from .store_core import PENDING, RUNNING, Row
from .store_rounds import InputsChanged
from .structure import Structure, difference, structure_of
from .weights_storage import ModelBases, load

__all__ = ["RoundRunning"]

log = logging.getLogger("fma_connect.server")


class RoundRunning(RoundResults):
    """Running a round (a part of :class:`~.rounds.Rounds`)."""

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


def _describe(structure: Structure) -> str:
    """A short description of a structure, for messages."""
    shown = ", ".join(f"{name} {list(shape)}" for name, shape in structure[:3])
    more = f", ... ({len(structure)} tensors)" if len(structure) > 3 else ""
    return f"[{shown}{more}]"
