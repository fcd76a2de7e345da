"""scikit-learn's bundled handwritten digits, split for a federation on one machine.

What the demo (``fma-connect demo``) and the federation benchmark
(``benchmarks/federation.py``) share: the same held-out split and the same non-IID
shares, so their figures describe the same data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits_split", "non_iid_shares"]


def load_digits_split(
    seed: int, *, user: str = "the demo", install: str = "pip install 'fma-connect[demo]'"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as float32 in [0, 1], a quarter held out: ``x_train, y_train, x_test, y_test``.

    Args:
        seed: Seed of the shuffle that picks the held-out quarter.
        user: What needs the digits, for the message when scikit-learn is missing.
        install: The command that installs scikit-learn for ``user``, for that message.

    Raises:
        SystemExit: scikit-learn is not installed (the message says how to install it).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(f"{user} trains on scikit-learn's bundled digits: {install}") from None
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    test = order[: len(y) // 4]
    train = order[len(y) // 4 :]
    return x[train], y[train], x[test], y[test]


def non_iid_shares(y: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """Indices into ``y`` for each client: two label-sorted shards each, so few digits apiece.

    This is the pathological non-IID split of McMahan et al. (2017): sorted by label and
    dealt out in ``2 * clients`` contiguous shards, two per client at random.
    """
    shards = np.array_split(np.argsort(y, kind="stable"), 2 * clients)
    picks = np.random.default_rng(seed).permutation(2 * clients)
    return [
        np.concatenate([shards[picks[2 * c]], shards[picks[2 * c + 1]]]) for c in range(clients)
    ]
