"""``fma-connect demo``: a real federation on one machine.

The embedded reference server starts on a free loopback port; several clients, each
holding a non-IID share of scikit-learn's bundled handwritten digits (each client sees
only a few of the ten digits), train a softmax classifier locally in numpy, send their
updates, and pull the aggregate back - every step over HTTP, through WebClient.
The federated model is then compared with each client trained alone on its own share.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import requests

from .bench.progress import TransferBars
from .clients import WebClient
from .digits import load_digits_split, non_iid_shares
from .plugins import default_codec_registry

__all__ = ["DemoResult", "RoundStats", "run_demo"]

_LOCAL_EPOCHS = 5
_LEARNING_RATE = 0.5
_BATCH = 32


@dataclass(frozen=True)
class RoundStats:
    """What one federated round did."""

    round: int
    accuracy: float
    wire_bytes: int
    seconds: float


@dataclass
class DemoResult:
    """The demo's figures: per round, and the best client trained alone."""

    rounds: list[RoundStats] = field(default_factory=list)
    best_single_client: float = 0.0

    @property
    def final_accuracy(self) -> float:
        """Held-out accuracy of the last aggregate."""
        return self.rounds[-1].accuracy if self.rounds else 0.0


class _WireCounter:
    """Counts the bytes of request and response bodies that cross a requests.Session."""

    def __init__(self) -> None:
        self.total = 0

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body
        self.total += len(body) if body is not None else 0
        self.total += int(response.headers.get("Content-Length", 0))

    def session(self) -> requests.Session:
        session = requests.Session()
        session.hooks["response"].append(self.hook)
        return session


def _initial_model() -> dict[str, np.ndarray]:
    return {"weight": np.zeros((64, 10), np.float32), "bias": np.zeros(10, np.float32)}


def _train(
    model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int, seed: int
) -> dict[str, np.ndarray]:
    """Mini-batch SGD on softmax cross-entropy, in numpy."""
    w, b = model["weight"].copy(), model["bias"].copy()
    rng = np.random.default_rng(seed)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), _BATCH):
            batch = order[start : start + _BATCH]
            logits = x[batch] @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            grad = (p - onehot[batch]) / len(batch)
            w -= _LEARNING_RATE * x[batch].T @ grad
            b -= _LEARNING_RATE * grad.sum(axis=0)
    return {"weight": w, "bias": b}


def _accuracy(model: dict[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    w, b = (np.asarray(model[k]) for k in ("weight", "bias"))
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


class _Numpy:
    """Clients holding numpy weights."""

    def template(self) -> Any:
        return _initial_model()

    def train(self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
        return _train(model, x, y, epochs, seed)


class _Torch:
    """Clients holding a torch state dict, trained with autograd."""

    def __init__(self) -> None:
        try:
            import torch
        except ImportError:
            raise SystemExit(
                "--framework torch needs PyTorch: pip install 'fma-connect[torch]'"
            ) from None
        self.torch = torch

    def template(self) -> Any:
        return {k: self.torch.from_numpy(v) for k, v in _initial_model().items()}

    def train(self, model: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
        torch = self.torch
        w = model["weight"].clone().requires_grad_(True)
        b = model["bias"].clone().requires_grad_(True)
        generator = torch.Generator().manual_seed(seed)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(epochs):
            order = torch.randperm(len(ys), generator=generator)
            for start in range(0, len(ys), _BATCH):
                batch = order[start : start + _BATCH]
                loss = torch.nn.functional.cross_entropy(xs[batch] @ w + b, ys[batch])
                loss.backward()
                with torch.no_grad():
                    for p in (w, b):
                        p -= _LEARNING_RATE * p.grad
                        p.grad = None
        return {"weight": w.detach(), "bias": b.detach()}


def run_demo(
    clients: int = 3,
    rounds: int = 5,
    codec: str = "json",
    *,
    framework: str = "numpy",
    seed: int = 0,
    out: TextIO | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the federation and print one line per round; return the figures.

    Args:
        clients: Number of federated clients.
        rounds: Number of federated rounds.
        codec: Codec the clients send updates in.
        framework: What the clients train with: ``numpy`` or ``torch``.
        seed: Seed of the data split and the training order.
        out: Where to print (default: stdout).
        progress: Show progress bars (on stderr).
    """
    from tqdm import tqdm

    from .admin import AdminClient
    from .server.testing import running_server

    def say(line: str) -> None:
        tqdm.write(line, file=out)

    default_codec_registry().get(codec)  # an unknown codec fails before anything starts
    trainer = _Torch() if framework == "torch" else _Numpy()
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    shares = non_iid_shares(y_train, clients, seed)
    result = DemoResult()
    for i, share in enumerate(shares):
        alone = _train(
            _initial_model(), x_train[share], y_train[share], rounds * _LOCAL_EPOCHS, seed + i
        )
        result.best_single_client = max(result.best_single_client, _accuracy(alone, x_test, y_test))

    counter = _WireCounter()
    with (
        tempfile.TemporaryDirectory(prefix="fma-demo-") as data_dir,
        running_server(data_dir) as server,
    ):
        with AdminClient(server.url, server.admin_token) as admin:
            model_id = admin.create_model(
                "digits-demo",
                aggregator="fed_avg",
                requirement="all_clients",
                initial_model=_initial_model(),
            )["id"]
        say(
            f"reference server on {server.url}; model {model_id}; {clients} {framework} clients; "
            f"codec {codec}"
        )
        for c, share in enumerate(shares):
            digits = ", ".join(str(d) for d in np.unique(y_train[share]))
            say(f"  client {c}: {len(share)} examples of digits {digits}")
        federation = [
            WebClient(
                model_id,
                url=server.url,
                codec=codec,
                session=counter.session(),
                retry_updates=True,
                # A bar per transfer of 32 MiB or more (models larger than the digits one).
                progress=TransferBars(disable=None if progress else True),
            )
            for _ in shares
        ]
        for client in federation:
            client.register()
        template = trainer.template()
        models: list[Any] = [None] * len(federation)  # what each client holds now
        say(f"{'round':>5}  {'accuracy':>8}  {'wire bytes':>11}  {'seconds':>7}")
        # disable=None: no bar when stderr is not a terminal, so logs stay clean.
        rounds_bar = tqdm(
            range(1, rounds + 1),
            desc="rounds",
            unit="round",
            leave=False,
            disable=None if progress else True,
        )
        for r in rounds_bar:
            started, sent_before = time.perf_counter(), counter.total
            for c, (client, share) in enumerate(zip(federation, shares, strict=True)):
                # The seed's polling loop: None means nothing newer than what it holds.
                latest = client.check_for_latest_model(like=template)
                if latest is not None:
                    models[c] = latest["values"]
                if models[c] is None:
                    raise RuntimeError("the server has neither an aggregate nor an initial model")
                update = trainer.train(
                    models[c],
                    x_train[share],
                    y_train[share],
                    _LOCAL_EPOCHS,
                    seed + 100 * r + c,
                )
                client.send_update(update, num_examples=len(share))
            latest = federation[0].check_for_latest_model(like=template)
            if latest is None:
                raise RuntimeError(f"round {r} made no aggregate")
            models[0] = latest["values"]
            stats = RoundStats(
                r,
                _accuracy(models[0], x_test, y_test),
                counter.total - sent_before,
                time.perf_counter() - started,
            )
            result.rounds.append(stats)
            say(f"{r:>5}  {stats.accuracy:>8.3f}  {stats.wire_bytes:>11,}  {stats.seconds:>7.2f}")
        for client in federation:
            client.close()
    say(
        f"final accuracy {result.final_accuracy:.3f} (federated) vs "
        f"{result.best_single_client:.3f} (best client trained alone on its own share)"
    )
    return result
