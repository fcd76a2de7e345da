"""The aggregator contract: what :func:`fma_connect.testing.check_aggregator` checks.

A plugin's test suite needs one call (it needs the ``server`` and ``test`` extras)::

    from fma_connect.testing import check_aggregator

    def test_my_aggregator_keeps_the_contract():
        check_aggregator(MyAggregator(), args={"f": 1})

Generated rounds (one to six updates of one to three tensors: float32, float64 and
int32, shapes from 0-d to empty, with or without ``num_examples``) are fed to the
aggregator as the server feeds them: read-only arrays, in memory or views of memory-mapped
files. It checks that:

* its attributes are there, and ``check_args`` refuses an argument it does not know
  with :class:`~fma_connect.server.aggregators.AggregatorArgsError`;
* ``planned()`` refuses a round without updates (ValueError), and tells the names,
  shapes and dtypes ``result()`` gives; the names are the updates', the dtypes theirs
  when they all share one, and computing into ``out`` gives the same bits;
* one update in gives that update back (to float rounding of a weighted mean);
* the same round twice gives the same bits (no randomness, no hidden state);
* the order of the updates does not matter beyond float rounding (unless
  ``order_matters``);
* ``num_examples`` is honoured as a count (an update with ``num_examples=2`` counts as
  that update sent twice) when ``weighted``, and ignored otherwise;
* an update whose shapes or tensor count differ from the first one, or that holds NaN,
  is refused with a reason and changes nothing;
* inputs are never written to (they are read-only, and compared bit for bit after);
* a state it keeps is tensors, and the next round takes it;
* with ``robust_to=k``: k poisoned updates (values 1e6 off) among more than 2k honest
  ones leave every coordinate within the honest updates' range.
"""

from __future__ import annotations

import mmap
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .codecs.base import Tensors
from .server.aggregators import (
    Aggregation,
    Aggregator,
    AggregatorArgsError,
    Contribution,
    RoundContext,
)

__all__ = ["check_aggregator", "rounds"]

_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32)]
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
#: How far off a poisoned update is.
POISON = 1e6


class _Round:
    """A generated round: updates (tensors + num_examples) of one structure."""

    def __init__(self, updates: list[Tensors], counts: list[int | None]) -> None:
        self.updates, self.counts = updates, counts

    def __repr__(self) -> str:
        shapes = [(n, a.shape, str(a.dtype)) for n, a in self.updates[0]]
        return f"_Round({len(self.updates)} updates of {shapes}, counts={self.counts})"


@st.composite
def rounds(draw: st.DrawFn, min_updates: int = 1, max_updates: int = 6) -> _Round:
    """A hypothesis strategy of rounds: updates of one structure, with ``num_examples``."""
    count = draw(st.integers(1, 3))
    structure: list[tuple[str, tuple[int, ...], np.dtype[Any]]] = [
        (
            f"layer{i}",
            draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4)),
            draw(st.sampled_from(_DTYPES)),
        )
        for i in range(count)
    ]
    n = draw(st.integers(min_updates, max_updates))
    updates = []
    for _ in range(n):
        update = []
        for name, shape, dtype in structure:
            elements: st.SearchStrategy[Any] = (
                st.integers(-1000, 1000)
                if dtype.kind == "i"
                else st.floats(-100, 100, width=32 if dtype.itemsize == 4 else 64)
            )
            update.append((name, draw(hnp.arrays(dtype, shape, elements=elements))))
        updates.append(update)
    counts = draw(st.lists(st.none() | st.integers(1, 50), min_size=n, max_size=n))
    return _Round(updates, counts)


class _Files:
    """Read-only views of arrays written to temporary files, as the server's blobs are."""

    def __init__(self) -> None:
        self._files: list[Any] = []

    def view(self, array: np.ndarray) -> np.ndarray:
        if array.nbytes == 0:
            frozen = array.copy()
            frozen.flags.writeable = False
            return frozen
        file = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
        file.write(np.ascontiguousarray(array).tobytes())
        file.flush()
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._files.append(file)
        return np.frombuffer(mapped, array.dtype, array.size).reshape(array.shape)

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files = []


def _frozen(update: Tensors, files: _Files | None) -> Tensors:
    if files is not None:
        return [(name, files.view(array)) for name, array in update]
    out = []
    for name, array in update:
        copy = np.array(array)  # an array even for a 0-d scalar
        copy.flags.writeable = False
        out.append((name, copy))
    return out


def _run(
    aggregator: Aggregator,
    updates: Sequence[Tensors],
    counts: Sequence[int | None],
    args: dict[str, Any],
    *,
    files: bool = False,
    state: Tensors | None = None,
    current: Tensors | None = None,
    out: bool = False,
) -> tuple[Tensors, Tensors | None, list[str | None]]:
    """One round over ``updates``; return the result, the state kept, and each reason."""
    holder = _Files() if files else None
    try:
        context = RoundContext(7, args, lambda: current, lambda: state)
        aggregation: Aggregation = aggregator.start(context)
        reasons = [
            aggregation.add(Contribution(_frozen(update, holder), count, f"client-{i}"))
            for i, (update, count) in enumerate(zip(updates, counts, strict=True))
        ]
        planned = aggregation.planned()
        arrays = [np.zeros(shape, dtype) for _, shape, dtype in planned] if out else None
        result = aggregation.result(arrays)
        assert [(n, a.shape) for n, a in result] == [(n, s) for n, s, _ in planned], (
            f"{aggregator.name}: result() gave {[(n, a.shape) for n, a in result]}, "
            f"planned() said {[(n, s) for n, s, _ in planned]}"
        )
        for (name, array), (_, _, dtype) in zip(result, planned, strict=True):
            assert array.dtype == dtype or array.dtype == np.float64, (
                f"{aggregator.name}: tensor {name!r} came in {array.dtype}; planned() said {dtype}"
            )
        result = [(name, np.array(array)) for name, array in result]  # off the files
        kept = aggregation.state()
        kept = None if kept is None else [(name, np.array(array)) for name, array in kept]
        return result, kept, reasons
    finally:
        if holder is not None:
            holder.close()


def _bits(tensors: Tensors) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    return [(n, str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes()) for n, a in tensors]


def _assert_close(what: str, got: Tensors, want: Tensors, n: int, scale: float = 100.0) -> None:
    """Equal names, shapes and dtypes; values equal to float rounding of ``n`` terms."""
    assert [(name, a.shape, a.dtype) for name, a in got] == [
        (name, a.shape, a.dtype) for name, a in want
    ], f"{what}: {[(k, a.shape, str(a.dtype)) for k, a in got]} != expected layout"
    for (name, a), (_, b) in zip(got, want, strict=True):
        if a.dtype.kind in "iub":
            ok = np.array_equal(a, b)
        else:
            rtol = 16 * n * float(np.finfo(a.dtype).eps)
            ok = np.allclose(
                a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=rtol * scale
            )
        assert ok, f"{what}: tensor {name!r} is {a!r}, expected {b!r}"


def check_aggregator(
    aggregator: Aggregator,
    *,
    args: Any = None,
    max_examples: int = 50,
    order_matters: bool = False,
    robust_to: int = 0,
) -> None:
    """Run the aggregator contract (see the module); raise AssertionError on a breach.

    Args:
        aggregator: The aggregator under test.
        args: The ``aggregator_args`` to run it with (None: its defaults).
        max_examples: Hypothesis examples per property.
        order_matters: Skip the order check, for a method whose result depends on the
            order of updates by design (say so in its docs).
        robust_to: Check that this many poisoned updates cannot move any coordinate out
            of the honest updates' range.
    """
    for attribute, kind in (("name", str), ("summary", str), ("weighted", bool), ("memory", str)):
        value = getattr(aggregator, attribute, None)
        assert isinstance(value, kind), f"{aggregator!r} lacks {attribute} ({kind.__name__})"
    assert _NAME.fullmatch(aggregator.name), f"{aggregator.name!r} is not a lowercase name"
    checked = aggregator.check_args(args)
    assert isinstance(checked, dict), "check_args must return the arguments as a dict"
    message = ""
    try:
        aggregator.check_args({"no such argument, surely": 1})
    except AggregatorArgsError as exc:
        message = str(exc) or "(empty)"
    assert message, f"{aggregator.name}: check_args took an unknown argument"
    assert message != "(empty)", "an AggregatorArgsError needs a message saying what is expected"
    empty = aggregator.start(RoundContext(args=checked))
    try:
        empty.planned()
    except ValueError:
        pass
    else:
        raise AssertionError(f"{aggregator.name}: planned() of a round without updates")

    run = settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    @run
    @given(rounds(), st.booleans())
    def keeps_the_contract(drawn: _Round, files: bool) -> None:
        updates, counts = drawn.updates, drawn.counts
        originals = [_bits(update) for update in updates]
        result, _, reasons = _run(aggregator, updates, counts, checked, files=files)
        assert reasons == [None] * len(updates), f"{aggregator.name} refused {reasons}"
        assert [_bits(u) for u in updates] == originals, "an input was changed"
        assert [n for n, _ in result] == [n for n, _ in updates[0]], "names not kept"
        same = [
            all(update[i][1].dtype == updates[0][i][1].dtype for update in updates)
            for i in range(len(updates[0]))
        ]
        for keep, (name, array), (_, sent) in zip(same, result, updates[0], strict=True):
            assert not keep or array.dtype == sent.dtype, (
                f"{aggregator.name}: every update sent {name!r} as {sent.dtype}, the result "
                f"is {array.dtype}"
            )
        again, _, _ = _run(aggregator, updates, counts, checked, files=not files)
        assert _bits(again) == _bits(result), f"{aggregator.name}: not deterministic"
        placed, _, _ = _run(aggregator, updates, counts, checked, out=True)
        assert _bits(placed) == _bits(result), f"{aggregator.name}: result(out) differs"
        n = len(updates)
        if not order_matters and n > 1:
            order = list(reversed(range(n)))
            flipped, _, _ = _run(
                aggregator, [updates[i] for i in order], [counts[i] for i in order], checked
            )
            _assert_close(f"{aggregator.name} with the updates reversed", flipped, result, n)
        # One update in: that update back.
        alone, _, _ = _run(aggregator, updates[:1], counts[:1], checked)
        _assert_close(f"{aggregator.name} of one update", alone, updates[0], 1)
        # Weights: as a count, or ignored.
        unit, _, _ = _run(aggregator, updates, [None] * n, checked)
        if aggregator.weighted:
            doubled = [updates[0], *updates]
            twice, _, _ = _run(aggregator, doubled, [None] * (n + 1), checked)
            counted, _, _ = _run(aggregator, updates, [2] + [None] * (n - 1), checked)
            _assert_close(
                f"{aggregator.name}: num_examples=2 as an update sent twice", counted, twice, n + 1
            )
        else:
            _assert_close(
                f"{aggregator.name} (unweighted): num_examples changed it", result, unit, n
            )

    @run
    @given(rounds(min_updates=1, max_updates=4), st.sampled_from(["shape", "count", "nan"]))
    def refuses_what_does_not_fit(drawn: _Round, flaw: str) -> None:
        updates, counts = drawn.updates, drawn.counts
        first = updates[0]
        if flaw == "shape":
            bad = [(n, np.zeros((*a.shape, 2), a.dtype)) for n, a in first]
        elif flaw == "count":
            bad = [*first, ("extra", np.zeros(3, np.float32))]
        else:
            floats = [i for i, (_, a) in enumerate(first) if a.dtype.kind == "f" and a.size]
            if not floats:
                return
            bad = list(first)
            name, array = bad[floats[0]]
            poisoned = array.copy()
            poisoned.reshape(-1)[0] = np.nan
            bad[floats[0]] = (name, poisoned)
        with_bad = [*updates[:1], bad, *updates[1:]]
        result, _, reasons = _run(aggregator, with_bad, [counts[0], None, *counts[1:]], checked)
        assert isinstance(reasons[1], str) and reasons[1], (
            f"{aggregator.name} took an update with a {flaw} flaw"
        )
        without, _, _ = _run(aggregator, updates, counts, checked)
        assert _bits(result) == _bits(without), f"{aggregator.name}: a refused update counted"

    @run
    @given(rounds(min_updates=2, max_updates=4))
    def takes_its_state(drawn: _Round) -> None:
        updates, counts = drawn.updates, drawn.counts
        current = [(n, np.zeros_like(a)) for n, a in updates[0]]
        _, kept, _ = _run(aggregator, updates, counts, checked, current=current)
        if kept is None:
            return
        assert all(isinstance(a, np.ndarray) for _, a in kept), "state() must give arrays"
        first, _, _ = _run(aggregator, updates, counts, checked, current=current, state=kept)
        second, _, _ = _run(aggregator, updates, counts, checked, current=current, state=kept)
        assert _bits(first) == _bits(second), f"{aggregator.name}: not deterministic with state"

    @run
    @given(rounds(min_updates=2 * robust_to + 1, max_updates=2 * robust_to + 4), st.booleans())
    def resists_poison(drawn: _Round, sign: bool) -> None:
        honest = drawn.updates
        if len(honest) <= 2 * robust_to:
            return
        bad = [
            (name, np.asarray(array + (POISON if sign else -POISON)).astype(array.dtype))
            for name, array in honest[0]
        ]
        mixed = [*honest, *([bad] * robust_to)]
        result, _, reasons = _run(aggregator, mixed, [None] * len(mixed), checked)
        assert all(r is None for r in reasons)
        for i, (name, array) in enumerate(result):
            column = np.stack([u[i][1].astype(np.float64) for u in honest])
            low, high = column.min(axis=0), column.max(axis=0)
            values = array.astype(np.float64)
            slack = 1e-6 * (1 + np.abs(column).max(initial=0))
            assert np.all(values >= low - slack) and np.all(values <= high + slack), (
                f"{aggregator.name}: {robust_to} poisoned update(s) moved {name!r} out of the "
                "honest updates' range"
            )

    keeps_the_contract()
    refuses_what_does_not_fit()
    takes_its_state()
    if robust_to:
        resists_poison()
