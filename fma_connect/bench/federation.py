"""A real federation through the reference server, counted on the wire, once per scheme.

For each scheme, a fresh reference server (its own temporary data directory) holds one
``fed_avg`` model with ``all_clients`` and the same initial MLP; the clients, each with
the same non-IID share of the digits, talk to it through a :mod:`counting proxy
<.counting_proxy>`. Each round every client pulls the latest model
(``check_for_latest_model``), trains it locally, and sends it back
(``send_update(weights, base_aggregate=<the aggregate it started from>, num_examples=n)``);
the last update of a round makes the aggregate. The bytes each round moved through the
proxy, client to server (up) and server to client (down), are recorded with the
held-out accuracy of the round's aggregate.

The accuracy is read by an observer outside the federation: it asks the server
directly (not through the proxy, so its bytes are not counted) with the admin token
and the lossless ``msgpack`` codec, so it sees the aggregate as the server holds it.
For lossless schemes the observer also checks, every round, that the server stored
each update bit for bit as sent and that each client received the aggregate bit for
bit as stored (``exact`` in the results): lossless is checked, not assumed.

Everything but the codec is the same for every scheme: data, shares, initial model,
and the seed of every client's training in every round.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import requests

from ..auth import TokenAuth
from ..clients import META_HEADER, WebClient
from ..codecs.base import decode_with
from ..digits import load_digits_split, non_iid_shares
from ..registry import CodecRegistry
from ..spec import spec_like
from .counting_proxy import ByteCounts, counting_proxy
from .extras import INSTALL
from .mlp import LAYERS, Model, TrainingConfig, accuracy, init_mlp, train
from .schemes import Scheme

__all__ = ["FederationConfig", "FederationData", "RoundRecord", "SchemeRun", "run_scheme"]


@dataclass(frozen=True)
class FederationConfig:
    """The federation every scheme runs.

    Attributes:
        clients: How many clients (each a non-IID share of the training digits).
        rounds: Federated rounds.
        seed: Seed of the split, the shares, the initial model and all training.
        layers: The MLP's layer widths.
        training: How each client trains per round.
    """

    clients: int = 10
    rounds: int = 20
    seed: int = 0
    layers: tuple[int, ...] = LAYERS
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass(frozen=True)
class FederationData:
    """What every scheme's federation starts from: the same data, shares and model."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shares: list[np.ndarray]
    initial: Model

    @classmethod
    def load(cls, config: FederationConfig) -> FederationData:
        """The digits split, the clients' non-IID shares and the initial model of ``config``."""
        install = INSTALL  # the bench extra holds scikit-learn
        x_train, y_train, x_test, y_test = load_digits_split(
            config.seed, user="the federation benchmark", install=install
        )
        shares = non_iid_shares(y_train, config.clients, config.seed)
        initial = init_mlp(config.layers, config.seed)
        return cls(x_train, y_train, x_test, y_test, shares, initial)


@dataclass(frozen=True)
class RoundRecord:
    """One round of one scheme.

    Attributes:
        round: 1-based.
        accuracy: Held-out accuracy of the round's aggregate.
        up: Bytes the clients sent (the round's requests: polls and updates).
        down: Bytes the clients received (the answers: the model pulled, acknowledgements).
        seconds: Wall time of the round (training included).
    """

    round: int
    accuracy: float
    up: int
    down: int
    seconds: float


@dataclass
class SchemeRun:
    """A scheme's federation: its rounds, or why it did not run.

    Attributes:
        label: The scheme's label.
        codec: The wire name of the clients' codec ("" when skipped).
        lossless: Whether that codec says it is lossless.
        rounds: One record per round.
        exact: For lossless codecs, whether every update was stored and every model
            received bit for bit; None for lossy ones (and when skipped).
        skipped: Why the scheme did not run (its codec is not installed), or None.
        error: Why it failed, or None.
    """

    label: str
    codec: str = ""
    lossless: bool = False
    rounds: list[RoundRecord] = field(default_factory=list)
    exact: bool | None = None
    skipped: str | None = None
    error: str | None = None

    @property
    def ran(self) -> bool:
        """Whether the run completed (neither skipped nor failed)."""
        return self.skipped is None and self.error is None

    @property
    def final_accuracy(self) -> float:
        """Held-out accuracy of the last aggregate."""
        return self.rounds[-1].accuracy if self.rounds else 0.0

    @property
    def total(self) -> ByteCounts:
        """Bytes over the whole run, in each direction."""
        return ByteCounts(sum(r.up for r in self.rounds), sum(r.down for r in self.rounds))


def run_scheme(
    scheme: Scheme,
    data: FederationData,
    config: FederationConfig,
    registry: CodecRegistry,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SchemeRun:
    """Run the federation of ``config`` with ``scheme``'s codec on a fresh reference server.

    Args:
        scheme: The scheme.
        data: The data, shares and initial model (the same for every scheme).
        config: Rounds, clients, seeds and training.
        registry: The codecs installed (named schemes are looked up in it).
        on_round: Called with each round's record as it completes.

    Returns:
        The run; ``skipped`` says why when the scheme's codec is not installed.
    """
    from ..admin import AdminClient
    from ..server.testing import running_server

    reason = scheme.unavailable(registry)
    if reason is not None:
        return SchemeRun(scheme.label, skipped=reason)
    codecs = [scheme.make_codec(registry) for _ in data.shares]
    run = SchemeRun(scheme.label, codecs[0].name, all(c.lossless for c in codecs))
    exact = True
    with (
        tempfile.TemporaryDirectory(prefix="fma-federation-") as data_dir,
        running_server(data_dir, **scheme.server_options) as server,
        counting_proxy(server.url) as proxy,
    ):
        with AdminClient(server.url, server.admin_token) as admin:
            model_id = int(
                admin.create_model(
                    f"federation-{scheme.label}",
                    aggregator="fed_avg",
                    requirement="all_clients",
                    initial_model=data.initial,
                    **scheme.model_options,
                )["id"]
            )
        clients = [WebClient(model_id, url=proxy.url, codec=codec) for codec in codecs]
        observer = _Observer(server.url, server.admin_token, model_id, registry)
        try:
            for client in clients:
                client.register()  # before round 1: the setup is not a round's traffic
            models: list[Model | None] = [None] * len(clients)
            bases: list[int | None] = [None] * len(clients)
            stored: Model | None = None  # the last aggregate, as the server holds it
            for r in range(1, config.rounds + 1):
                started, before = time.perf_counter(), proxy.counts()
                sent: list[tuple[int, Model]] = []
                for c, (client, share) in enumerate(zip(clients, data.shares, strict=True)):
                    latest = client.check_for_latest_model(like=data.initial)
                    if latest is not None:
                        models[c], bases[c] = latest["values"], latest["aggregate"]
                        if run.lossless and stored is not None:
                            exact = exact and _same(stored, latest["values"])
                    model = models[c]
                    if model is None:
                        raise RuntimeError(
                            "the server sent neither an aggregate nor the initial model"
                        )
                    update = train(
                        model,
                        data.x_train[share],
                        data.y_train[share],
                        config.training,
                        seed=config.seed * 1_000_003 + 1000 * r + c,
                    )
                    answer = client.send_update(
                        update, base_aggregate=bases[c], num_examples=len(share)
                    )
                    sent.append((int(answer["id"]), update))
                moved = proxy.counts() - before
                seconds = time.perf_counter() - started
                stored = observer.latest(data.initial, r)
                if run.lossless:
                    exact = exact and all(_same(u, observer.update(i)) for i, u in sent)
                record = RoundRecord(
                    r, accuracy(stored, data.x_test, data.y_test), moved.up, moved.down, seconds
                )
                run.rounds.append(record)
                if on_round is not None:
                    on_round(record)
        finally:
            for client in clients:
                client.close()
            observer.close()
    run.exact = exact if run.lossless else None
    return run


class _Observer:
    """Reads the server directly as the admin, in msgpack: outside the federation.

    It is no client of the model (an ``all_clients`` round would wait for it), so it
    sends the admin token and no ``CLIENT-UUID``.
    """

    def __init__(self, url: str, token: str, model_id: int, registry: CodecRegistry) -> None:
        self._api = f"{url.rstrip('/')}/api/v1"
        self._model_id = model_id
        self._msgpack = registry.get("msgpack")
        self._session = requests.Session()
        self._session.auth = TokenAuth(token)

    def latest(self, like: Model, round_number: int) -> Model:
        """The newest aggregate, which round ``round_number`` must have made."""
        response = self._get(f"models/{self._model_id}/get_latest_model/")
        meta = orjson.loads(response.headers.get(META_HEADER, "{}"))
        if meta.get("aggregate") is None:
            raise RuntimeError(
                f"round {round_number} made no aggregate: the server did not aggregate "
                "after every client sent its update"
            )
        restored: Model = spec_like(like).restore(decode_with(self._msgpack, response.content))
        return restored

    def update(self, update_id: int) -> Model:
        """An update's weights as the server stored them."""
        return dict(
            decode_with(self._msgpack, self._get(f"model_updates/{update_id}/data/").content)
        )

    def _get(self, path: str) -> requests.Response:
        response = self._session.get(
            f"{self._api}/{path}", headers={"Accept": self._msgpack.media_type}, timeout=60
        )
        response.raise_for_status()
        if not response.headers.get("Content-Type", "").startswith(self._msgpack.media_type):
            raise RuntimeError(f"GET {path} did not answer in msgpack: {response.text[:200]}")
        return response

    def close(self) -> None:
        self._session.close()


def _same(expected: Model, got: Any) -> bool:
    """Whether ``got`` holds ``expected``'s tensors bit for bit (names, dtypes, shapes, bytes)."""
    return set(got) == set(expected) and all(
        isinstance(got[k], np.ndarray)
        and got[k].dtype == v.dtype
        and got[k].shape == v.shape
        and got[k].tobytes() == v.tobytes()
        for k, v in expected.items()
    )
