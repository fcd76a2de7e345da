"""Aggregates that change only a fraction of the model per round: ``aggregate_fraction``.

A round's downloads cost as much as its uploads: every client fetches the new
aggregate. A model created with ``aggregate_fraction`` (in (0, 1]) makes each new
aggregate a *sparse step* from the previous one, as Sparse Ternary Compression does
downstream (Sattler et al., 2019): the round's mean is encoded with the ``sparse``
codec against the previous aggregate (or the initial model), keeping the largest
``aggregate_fraction`` of each float tensor's changes with values coded as
``aggregate_values`` (``float32``, ``float16``, ``q2`` to ``q8`` or ``ternary``: the
codec's value codings), and the new aggregate is
what that payload decodes to. What the step left out is the model's *residual*, added to
the next round's change (server-side error feedback), so nothing is lost, only delayed.

The step's payload is stored beside the aggregate. A client that holds the previous
aggregate (a ``delta`` or ``sparse`` client) receives that payload as it is: it decodes
to the new aggregate bit for bit, because the aggregate *is* its decoding. Every client
gets the same aggregate; the sparsity is in what is published, not in how it travels.

The residual is one copy of the model's float tensors (float32 for float32 and
narrower, float64 for float64), stored as a blob of the model and replaced in the
round's transaction. Integer and bool tensors, tensors whose shape changed, and the
first aggregate of a model without an initial model are published whole.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..codecs.base import Tensors
from ..codecs.context import CodecContext
from ..codecs.sparse_delta import RESIDUAL, SparseDeltaCodec

__all__ = ["Step", "sparse_step"]


class Step(NamedTuple):
    """A sparse step: the aggregate to publish, its payload, and the residual left.

    Attributes:
        aggregate: The new aggregate's tensors.
        payload: The ``sparse`` payload from the previous aggregate that decodes to it.
        residual: The change not yet applied, by tensor name (flat arrays).
    """

    aggregate: Tensors
    payload: bytes
    residual: dict[str, np.ndarray]


def sparse_step(
    mean: Tensors,
    previous: int | None,
    bases: Callable[[int | None], Sequence[tuple[str, np.ndarray]]],
    residual: Mapping[str, np.ndarray],
    fraction: float,
    values: str,
) -> Step:
    """Move from aggregate ``previous`` towards the round's ``mean`` by a sparse step.

    Args:
        mean: The round's mean of the updates.
        previous: The previous aggregate's id (None: the initial model).
        bases: The model's aggregates by id (see
            :class:`~fma_connect.server.weights_storage.ModelBases`).
        residual: What earlier steps left out, by tensor name.
        fraction: The share of each float tensor's entries the step changes.
        values: How the changed values are coded (see the ``sparse`` codec).

    Raises:
        MissingBaseError: ``previous`` is not held.
    """
    # The server's own payload, of a model it already holds: no bound on its size.
    codec = SparseDeltaCodec(fraction, values, max_output_size=sys.maxsize)
    state = {RESIDUAL: dict(residual)}
    payload = b"".join(codec.encode(mean, CodecContext(previous, bases, state)))
    aggregate = codec.decode(bytearray(payload), CodecContext(bases=bases))
    return Step(aggregate, payload, state[RESIDUAL])
