"""What a round writes (a part of :class:`~.rounds.Rounds`): its aggregate, whole or as a
sparse step with the model's new residual, the aggregate's digest, and the state the
aggregator keeps for the next round. The round commits them (see :mod:`.rounds_running`).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from ..codecs.base import Tensors
from ..codecs.context import CodecContext, MissingBaseError
from ..exceptions import EncodeError
from .aggregators import Aggregation
from .in_place import InPlace
from .rounds_core import RoundsCore
from .sparse_aggregates import Step, sparse_step
from .store_core import NewBlob, Row
from .weights_storage import load, result_codec, store_tensors

__all__ = ["Result", "RoundResults"]


class RoundResults(RoundsCore):
    """What a round writes (a part of :class:`~.rounds.Rounds`)."""

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

    def _store_state(self, aggregation: Aggregation) -> NewBlob | None:
        """Write the state the aggregation keeps for the next round (None: it keeps none).

        It is stored in ``msgpack`` (lossless, a view of its file when read) and
        committed with the round's aggregate (see :meth:`~.store.Store.record_round`).
        """
        state = aggregation.state()
        if state is None:
            return None
        return store_tensors(self.blobs, state, self.registry.get("msgpack"))

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
