"""Progress bars for large transfers: a ``progress`` callback for :class:`WebClient`.

::

    with TransferBars() as bars:
        client = WebClient(model_id, progress=bars)

A bar (tqdm, on stderr) appears only for transfers of at least ``threshold`` bytes,
so small requests stay quiet; a callback whose byte count goes back down starts a
new transfer.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["THRESHOLD", "TransferBars"]

#: Smallest transfer that gets a bar, in bytes.
THRESHOLD = 32 << 20


class TransferBars:
    """A ``progress(done, total)`` callback that draws one tqdm bar per large transfer.

    Args:
        threshold: Transfers smaller than this (or of unknown size below it) get no bar.
        disable: Passed to tqdm (None: no bar when stderr is not a terminal).
    """

    def __init__(self, threshold: int = THRESHOLD, disable: bool | None = None) -> None:
        self.threshold = threshold
        self.disable = disable
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if done < self._done:
            self.close()
        self._done = done
        if self._bar is None:
            if max(done, total or 0) < self.threshold:
                return
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                disable=self.disable,
                desc="transfer",
            )
        self._bar.update(done - self._bar.n)
        if total is not None and done >= total:
            self.close()

    def close(self) -> None:
        """Close the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._done = 0

    def __enter__(self) -> TransferBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
