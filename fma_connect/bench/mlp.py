"""A small multilayer perceptron in numpy: what the federation benchmark's clients train.

The model is a dict of named float32 tensors (``fc1.weight``, ``fc1.bias``, ...), the
form a client hands to :meth:`~fma_connect.clients.WebClient.send_update`. Training is
mini-batch SGD with momentum on softmax cross-entropy, ReLU between layers, all float32,
deterministic for a given seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LAYERS", "Model", "TrainingConfig", "accuracy", "init_mlp", "parameter_count", "train"]

#: Digits' 8x8 pixels in, two hidden layers, ten classes out: 167,178 parameters.
LAYERS = (64, 512, 256, 10)

Model = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainingConfig:
    """How a client trains locally each round.

    Attributes:
        epochs: Passes over the client's share per round.
        learning_rate: SGD step size.
        momentum: Heavy-ball momentum; the velocity starts at zero each round, since a
            client keeps nothing between rounds but the model it receives.
        batch: Mini-batch size.
    """

    epochs: int = 2
    learning_rate: float = 0.05
    momentum: float = 0.5
    batch: int = 32


def init_mlp(sizes: Sequence[int] = LAYERS, seed: int = 0) -> Model:
    """He-initialised weights (zero biases) for layers of ``sizes`` units."""
    rng = np.random.default_rng(seed)
    model: Model = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        scale = np.float32(np.sqrt(2.0 / fan_in))
        model[f"fc{i}.weight"] = rng.standard_normal((fan_in, fan_out), np.float32) * scale
        model[f"fc{i}.bias"] = np.zeros(fan_out, np.float32)
    return model


def parameter_count(model: Mapping[str, np.ndarray]) -> int:
    """How many numbers the model holds."""
    return sum(int(np.asarray(v).size) for v in model.values())


def _layers(model: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    count = len(model) // 2
    return [
        (
            np.asarray(model[f"fc{i}.weight"], np.float32),
            np.asarray(model[f"fc{i}.bias"], np.float32),
        )
        for i in range(1, count + 1)
    ]


def _forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> list[np.ndarray]:
    """Activations of every layer, the input first and the logits last."""
    outputs = [x]
    for i, (w, b) in enumerate(layers):
        z = outputs[-1] @ w + b
        outputs.append(z if i == len(layers) - 1 else np.maximum(z, 0))
    return outputs


def train(
    model: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    seed: int,
) -> Model:
    """Train a copy of ``model`` on ``(x, y)`` and return it (``model`` is left as it was)."""
    layers = [(w.copy(), b.copy()) for w, b in _layers(model)]
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in layers]
    onehot = np.eye(layers[-1][0].shape[1], dtype=np.float32)[y]
    rng = np.random.default_rng(seed)
    lr, mu = np.float32(config.learning_rate), np.float32(config.momentum)
    for _ in range(config.epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), config.batch):
            batch = order[start : start + config.batch]
            outputs = _forward(layers, x[batch])
            logits = outputs[-1] - outputs[-1].max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            delta = (p - onehot[batch]) / np.float32(len(batch))
            for i in range(len(layers) - 1, -1, -1):
                w, b = layers[i]
                grad_w, grad_b = outputs[i].T @ delta, delta.sum(axis=0)
                if i > 0:  # the gradient flows on through this layer's input's ReLU
                    delta = (delta @ w.T) * (outputs[i] > 0)
                vw, vb = velocity[i]
                vw *= mu
                vw += grad_w
                vb *= mu
                vb += grad_b
                w -= lr * vw
                b -= lr * vb
    return {
        name: tensor
        for i, (w, b) in enumerate(layers, start=1)
        for name, tensor in ((f"fc{i}.weight", w), (f"fc{i}.bias", b))
    }


def accuracy(model: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The share of ``x`` the model labels as ``y``."""
    logits = _forward(_layers(model), x)[-1]
    return float(np.mean(np.argmax(logits, axis=1) == y))
