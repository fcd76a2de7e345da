"""Server optimizers: FedAdam and FedYogi (Reddi et al., "Adaptive Federated Optimization",
ICLR 2021, Algorithm 2).

Each round, with ``x`` the model the clients trained from (the latest aggregate, else
the initial model) and ``mean`` the round's mean weighted by ``num_examples`` (as
``fed_avg`` computes and would store it)::

    d = mean - x                                    # the pseudo-gradient
    m = beta_1 * m + (1 - beta_1) * d
    v = beta_2 * v + (1 - beta_2) * d**2            # fed_adam
    v = v - (1 - beta_2) * d**2 * sign(v - d**2)    # fed_yogi
    x = x + eta * m / (sqrt(v) + tau)

with ``m`` and ``v`` zero before the first round, and no bias correction (as in the
paper). Arguments (``aggregator_args``): ``eta`` (server learning rate, default 0.01),
``beta_1`` (0.9), ``beta_2`` (0.99), ``tau`` (adaptivity, 1e-3).

The moments are the aggregator's state: kept per model in float64, stored with each
round's aggregate in one transaction, so a restarted server continues the same
trajectory. They continue only from the aggregate they were made with: after a round of
another aggregator (the model's ``aggregator`` was changed and back), or when they were
kept by fed_yogi for fed_adam or the other way round, the moments start from zero. Only
float tensors (bfloat16 too) are optimised; integer, bool and complex ones take the
weighted mean, as ``fed_avg``. A model's first round
without an initial model has no ``x``: its aggregate is the mean, and the moments start
with the next round. The step is computed in float64 and stored in the mean's dtype
(float64 where it would not fit). ``sparse`` updates and sparse aggregates
(``aggregate_fraction``) work as with the means; ``x`` is then the aggregate as stored.

Memory: the result, the mean's running sums (float64, as ``fed_avg``), and the new
moments (2 x 8 bytes an element of the float tensors); ``x`` and the previous moments
are read from their blob files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...codecs.base import Tensors
from .. import mean as mean_module
from ..mean import Accumulator, cast_values
from ..structure import by_name
from .base import (
    Aggregation,
    Contribution,
    Number,
    Planned,
    RoundContext,
    check_numbers,
)

__all__ = ["FED_OPT_ARGS", "FedOpt", "FedOptRound"]

#: What fed_adam and fed_yogi take (``aggregator_args``).
FED_OPT_ARGS = {
    "eta": Number(0.01, 0.0, low_open=True, meaning="the server learning rate"),
    "beta_1": Number(0.9, 0.0, 1.0, high_open=True, meaning="the first moment's decay"),
    "beta_2": Number(0.99, 0.0, 1.0, high_open=True, meaning="the second moment's decay"),
    "tau": Number(1e-3, 0.0, low_open=True, meaning="the adaptivity"),
}


class FedOpt:
    """``fed_adam`` or ``fed_yogi`` (see the module).

    Args:
        yogi: FedYogi's second moment instead of FedAdam's.
    """

    weighted = True
    memory = (
        "the result, float64 running sums of the model (as fed_avg) and the new moments "
        "m and v (16 bytes an element of the float tensors); the current model and the "
        "previous moments are read from their blob files"
    )

    def __init__(self, *, yogi: bool) -> None:
        self.yogi = yogi
        self.name = "fed_yogi" if yogi else "fed_adam"
        self.summary = (
            f"{'FedYogi' if yogi else 'FedAdam'} server optimizer on the weighted mean's "
            "pseudo-gradient (moments kept per model)"
        )

    def check_args(self, args: Any) -> dict[str, Any]:
        """``{"eta", "beta_1", "beta_2", "tau"}``, each optional (see the module)."""
        return check_numbers(self.name, args, FED_OPT_ARGS)

    def start(self, context: RoundContext) -> Aggregation:
        """Begin a round."""
        return FedOptRound(self, self.check_args(dict(context.args)), context)

    def __repr__(self) -> str:
        return f"FedOpt({self.name})"


class FedOptRound:
    """One round of :class:`FedOpt`: the weighted mean, then the optimizer's step."""

    def __init__(self, method: FedOpt, args: Mapping[str, float], context: RoundContext) -> None:
        self._method, self._args, self._context = method, args, context
        self._accumulator = Accumulator()
        self._state: Tensors | None = None

    def add(self, update: Contribution) -> str | None:
        """Add an update to the weighted mean (see :meth:`Accumulator.add`)."""
        return self._accumulator.add(update.tensors, update.weight, typed=update.typed)

    def planned(self) -> list[Planned]:
        """The mean's names, shapes and dtypes."""
        return self._accumulator.planned()

    def result(self, out: Sequence[np.ndarray] | None = None) -> Tensors:
        """The mean, stepped from the current model (computed into ``out`` where it fits)."""
        mean = self._accumulator.result(out)
        current = self._context.current()
        if current is None:  # a first round without initial model: nothing to step from
            return mean
        bases = _matched(mean, current)
        previous = dict(self._context.state() or [])
        state: Tensors = []
        result: Tensors = []
        for i, (name, values) in enumerate(mean):
            base = None if bases is None else bases[i]
            if values.dtype.kind not in "fV" or base is None or base.shape != values.shape:
                result.append((name, values))
                continue
            moments = [previous.get(f"{key}/{name}") for key in ("m", "v")]
            old_m, old_v = (
                None if array is None or array.shape != values.shape else array for array in moments
            )
            m = np.empty(values.shape, np.float64)
            v = np.empty(values.shape, np.float64)
            if not self._step(values, base, old_m, old_v, m, v, values):
                # Beyond the mean's dtype: in float64, from the mean computed again.
                again = dict(self._accumulator.result())[name]
                values = np.empty(values.shape, np.float64)
                self._step(again, base, old_m, old_v, m, v, values)
            result.append((name, values))
            state += [(f"m/{name}", m), (f"v/{name}", v)]
        self._state = state
        return result

    def _step(
        self,
        mean: np.ndarray,
        base: np.ndarray,
        old_m: np.ndarray | None,
        old_v: np.ndarray | None,
        m: np.ndarray,
        v: np.ndarray,
        target: np.ndarray,
    ) -> bool:
        """Write the new moments into ``m``, ``v`` and the stepped model into ``target``
        (which may be ``mean``), a slice at a time; False if a value does not fit
        ``target``'s dtype (``target`` is then partly written)."""
        eta, beta_1, beta_2, tau = (self._args[k] for k in ("eta", "beta_1", "beta_2", "tau"))
        flat_mean, flat_base = mean.reshape(-1), base.reshape(-1)
        flat_m, flat_v, flat_target = m.reshape(-1), v.reshape(-1), target.reshape(-1)
        limit = _float_max(target.dtype)
        for start in range(0, flat_mean.size, mean_module.SLICE):
            stop = start + mean_module.SLICE
            x = flat_base[start:stop].astype(np.float64)
            d = flat_mean[start:stop].astype(np.float64) - x
            m_part = (1 - beta_1) * d
            if old_m is not None:
                m_part += beta_1 * old_m.reshape(-1)[start:stop]
            squared = d * d
            before = 0.0 if old_v is None else old_v.reshape(-1)[start:stop]
            if self._method.yogi:
                v_part = before - (1 - beta_2) * squared * np.sign(before - squared)
            else:
                v_part = beta_2 * before + (1 - beta_2) * squared
            stepped = x + eta * m_part / (np.sqrt(v_part) + tau)
            if limit is not None and stepped.size and float(np.abs(stepped).max()) > limit:
                return False
            flat_m[start:stop] = m_part
            flat_v[start:stop] = v_part
            flat_target[start:stop] = cast_values(stepped, target.dtype)
        return True

    def state(self) -> Tensors | None:
        """The new moments ``m/<name>``, ``v/<name>`` (None: no step was taken)."""
        return self._state


def _matched(mean: Tensors, current: Tensors) -> list[np.ndarray] | None:
    """The current model's tensors in the order of the mean's (by name, else by position
    when the shapes agree); None when they cannot be paired."""
    paired = by_name([name for name, _ in mean], current)
    if paired is not None:
        return [array for _, array in paired]
    if len(current) == len(mean) and all(
        a.shape == b.shape for (_, a), (_, b) in zip(current, mean, strict=True)
    ):
        return [array for _, array in current]
    return None


def _float_max(dtype: np.dtype[Any]) -> float | None:
    """The largest finite value of a float dtype narrower than float64; None otherwise."""
    if dtype == np.float64:
        return None
    if dtype.kind == "V":
        import ml_dtypes  # the only source of such dtypes

        return float(ml_dtypes.finfo(dtype).max)  # type: ignore[no-untyped-call]
    return float(np.finfo(dtype).max)
