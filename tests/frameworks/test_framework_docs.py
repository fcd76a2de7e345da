"""Every framework example in the README runs against a fake service and does what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fw_support import FakeFMA

DOC = Path(__file__).resolve().parents[2] / "README.md"
# The module each section's example needs; a section missing here fails the test below.
NEEDS = {"PyTorch": "torch", "TensorFlow / Keras": "keras", "JAX": "jax", "scikit-learn": "sklearn"}


def examples() -> dict[str, str]:
    """Section title -> the python code block of that section."""
    found = {}
    frameworks = DOC.read_text().split("\n## Frameworks\n", 1)[1].split("\n## ", 1)[0]
    for section in re.split(r"^### ", frameworks, flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
        if blocks:
            assert len(blocks) == 1, title
            found[title] = blocks[0]
    return found


def test_every_framework_has_one_example_of_five_lines() -> None:
    found = examples()
    assert sorted(found) == sorted(NEEDS)
    for title, code in found.items():
        lines = [
            line for line in code.splitlines() if line and not line.startswith(("import", "from"))
        ]
        assert len(lines) == 5, title


def run(title: str) -> dict[str, Any]:
    pytest.importorskip(NEEDS[title])
    namespace: dict[str, Any] = {}
    exec(compile(examples()[title], f"{DOC.name}: {title}", "exec"), namespace)
    return namespace


def test_pytorch_example(fake_fma: FakeFMA) -> None:
    ns = run("PyTorch")
    torch = ns["torch"]
    assert fake_fma.updates[-1][0] == "application/vnd.fma-connect.msgpack"
    values = ns["latest"]["values"]
    assert all(isinstance(t, torch.Tensor) for t in values.values())
    assert torch.equal(values["weight"], ns["model"].weight.detach())


def test_keras_example(fake_fma: FakeFMA) -> None:
    ns = run("TensorFlow / Keras")
    assert fake_fma.updates[-1][0] == "application/json"
    values = ns["latest"]["values"]
    assert [v.dtype for v in values] == [np.float32, np.float32]
    assert all(np.array_equal(a, b) for a, b in zip(values, ns["model"].get_weights(), strict=True))


def test_jax_example(fake_fma: FakeFMA) -> None:
    ns = run("JAX")
    jnp = ns["jnp"]
    params = ns["params"]
    assert set(params["dense"]) == {"kernel", "bias"}
    assert params["dense"]["kernel"].dtype == jnp.bfloat16
    assert isinstance(params["dense"]["bias"], ns["jnp"].ndarray)


def test_sklearn_example(fake_fma: FakeFMA) -> None:
    ns = run("scikit-learn")
    values = ns["latest"]["values"]
    assert list(values) == ["coef_", "intercept_"]
    assert ns["clf"].coef_ is values["coef_"] and values["coef_"].shape == (1, 4)
    ns["clf"].predict(np.zeros((1, 4)))
