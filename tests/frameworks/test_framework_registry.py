"""Framework adapters come from plugins; frameworks are imported only when their objects appear."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest
from fw_support import over_the_wire, round_trip

from fma_connect import EncodeError, FrameworkError, PluginError, hookimpl, plugin_manager
from fma_connect.frameworks import Branch, Leaf, defined_in
from fma_connect.plugins import PluginWarning, build_framework_registry
from fma_connect.registry import FrameworkRegistry
from fma_connect.spec import flatten, restore_like

FRAMEWORK_MODULES = ("torch", "jax", "jaxlib", "tensorflow", "keras", "sklearn")
BUILTIN = ["numpy", "jax", "torch", "tensorflow", "sklearn"]


def imported_frameworks(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the framework packages it imported."""
    probe = (
        f"{code}\nimport sys\nprint(sorted(m for m in {FRAMEWORK_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(eval(out.stdout.strip().splitlines()[-1]))


def test_importing_fma_connect_imports_no_framework() -> None:
    command = [sys.executable, "-X", "importtime", "-c", "import fma_connect"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "fma_connect" in imported
    assert sorted(m for m in imported if m.split(".")[0] in FRAMEWORK_MODULES) == []


def test_sending_and_restoring_numpy_weights_imports_no_framework() -> None:
    code = (
        "import numpy as np\n"
        "from fma_connect.plugins import default_framework_registry\n"
        "from fma_connect.spec import flatten, restore_like\n"
        "assert len(default_framework_registry()) == 5\n"
        "tensors, spec = flatten({'w': np.zeros(2), 'n': [1.0, 2.0], 'b': (True, 3)})\n"
        "spec.restore(tensors)\n"
        "restore_like({'w': np.ones(2), 'n': [0.0, 0.0], 'b': (False, 0)}, tensors)"
    )
    assert imported_frameworks(code) == []


def test_sending_torch_weights_imports_torch_and_no_other_framework() -> None:
    pytest.importorskip("torch")
    code = "import torch\nfrom fma_connect.spec import flatten\nflatten(torch.nn.Linear(2, 2))"
    assert imported_frameworks(code) == ["torch"]


def test_the_builtin_adapters_are_registered_through_the_hook() -> None:
    registry = build_framework_registry(plugin_manager(autoload=False))
    assert registry.names() == BUILTIN
    assert registry.info("torch").plugin == "fma_connect.frameworks.torch_adapter"
    assert registry.info("torch").distribution == "fma-connect"
    assert "jax" in registry and len(registry) == 5


def test_unknown_objects_are_refused_listing_the_installed_frameworks() -> None:
    with pytest.raises(EncodeError, match=r"'a.b'.*installed framework \(numpy, jax, torch, "):
        flatten({"a": {"b": object()}})
    with pytest.raises(
        FrameworkError, match="no framework adapter named 'mxnet'; installed: numpy"
    ):
        build_framework_registry(plugin_manager(autoload=False)).get("mxnet")


# -- a third-party framework, added without touching fma_connect ------------------------


class Tensor:
    """A toy framework's tensor: an array with a device label."""

    def __init__(self, values: Any, device: str = "toy:0") -> None:
        self.values, self.device = np.asarray(values), device


class Model:
    """A toy framework's model: named tensors, loaded in place."""

    def __init__(self, **tensors: Tensor) -> None:
        self.tensors = tensors


class ToyFramework:
    name = "toy"

    def claims(self, obj: Any) -> bool:
        return defined_in(obj, "toy_framework")

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        if isinstance(obj, Model):
            return Branch(list(obj.tensors.items()))
        return Leaf(obj.values, "toy.Tensor", obj.device)

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        return Tensor(array, meta)

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        if target is None:
            return Model(**dict(items))
        target.tensors = dict(items)
        return target


class Override(ToyFramework):
    """Claims numpy arrays, which the built-in numpy adapter would take."""

    name = "numpy-override"

    def claims(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        return Leaf(obj, "override")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importable plugin modules; the toy framework's classes appear to come from its package."""
    for cls in (Tensor, Model):
        monkeypatch.setattr(cls, "__module__", "toy_framework.core")

    def module(name: str, register: Any) -> None:
        plugin = types.ModuleType(name)
        plugin.fma_connect_register_frameworks = hookimpl(register)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, plugin)

    def register_toy(registry: Any) -> None:
        registry.add(ToyFramework())

    def register_clash(registry: Any) -> None:
        registry.add(ToyFramework())
        registry.add(ToyFramework())

    def register_raises(registry: Any) -> None:
        raise RuntimeError("boom in hook")

    def register_override(registry: Any) -> None:
        registry.add(Override())

    module("toy_plugin", register_toy)
    module("clash_plugin_fw", register_clash)
    module("raising_plugin_fw", register_raises)
    module("override_plugin", register_override)


def registry_of(*modules: str) -> FrameworkRegistry:
    eps = [importlib.metadata.EntryPoint(m, m, "fma_connect") for m in modules]
    return build_framework_registry(plugin_manager(entry_points=eps))


def test_a_third_party_framework_round_trips_through_its_plugin(plugins: None) -> None:
    registry = registry_of("toy_plugin")
    assert registry.names() == [*BUILTIN, "toy"] and registry.info("toy").plugin == "toy_plugin"
    tree = {"model": Model(w=Tensor([[1.5, 2.5]]), b=Tensor(7, "toy:1")), "lr": 0.1}
    tensors, spec = flatten(tree, registry=registry)
    assert spec.names == ["lr", "model.w", "model.b"] and spec.frameworks == ["toy", "numpy"]
    back = spec.restore(over_the_wire("msgpack", tensors))
    assert isinstance(back["model"], Model) and back["lr"] == 0.1
    assert back["model"].tensors["b"].device == "toy:1"
    assert back["model"].tensors["w"].values.tolist() == [[1.5, 2.5]]
    template = Model(w=Tensor([[0.0, 0.0]]), b=Tensor(0))
    assert (
        restore_like({"model": template, "lr": 0.0}, tensors, registry=registry)["model"]
        is template
    )
    assert template.tensors["b"].values.item() == 7


def test_a_later_plugin_is_asked_before_the_builtin_adapters(plugins: None) -> None:
    _, spec = flatten({"w": np.zeros(2)}, registry=registry_of("override_plugin"))
    assert spec.leaves[0].framework == "numpy-override"


def test_a_plugin_whose_hook_raises_is_skipped_with_a_warning(plugins: None) -> None:
    with pytest.warns(PluginWarning, match="'raising_plugin_fw' failed to register its framework"):
        registry = registry_of("raising_plugin_fw", "toy_plugin")
    assert "toy" in registry


def test_duplicate_framework_names_are_an_error_naming_both_plugins(plugins: None) -> None:
    with pytest.raises(PluginError, match="'toy' is registered twice: by clash_plugin_fw and by"):
        registry_of("clash_plugin_fw")


def test_registering_something_that_is_not_an_adapter_is_refused() -> None:
    with pytest.raises(PluginError, match="lacks the framework adapter attributes"):
        FrameworkRegistry().add(object())  # type: ignore[arg-type]


class Broken(ToyFramework):
    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        raise ValueError("cannot read it")

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        raise RuntimeError("device gone")


def test_adapter_failures_become_our_errors_naming_the_tensor(plugins: None) -> None:
    registry = FrameworkRegistry()
    registry.add(Broken())
    with pytest.raises(
        EncodeError, match=r"toy adapter cannot send the Tensor at 'x.0'.*cannot read"
    ):
        flatten({"x": [Tensor(1)]}, registry=registry)
    working = FrameworkRegistry()
    working.add(ToyFramework())
    tensors, spec = flatten({"x": [Tensor(1)]}, registry=working)
    broken_spec = type(spec)(
        spec.leaves, ("dict", dict, ["x"], [("list", [("leaf", 0, Broken())])])
    )
    with pytest.raises(FrameworkError, match="could not restore tensor 'x.0'.*device gone"):
        broken_spec.restore(tensors)


# -- numpy, the built-in adapter -----------------------------------------------------


def test_numpy_leaves_of_every_kind_round_trip_through_lossless_codecs(lossless: str) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.array([0x7FC1, 0x8000, 0x7F80], np.uint16).view(ml_dtypes.bfloat16)
    tree = {
        "bf16": bf16,
        "big_endian": np.arange(3, dtype=">i4"),
        "scalar": np.float16(1.5),
        "numbers": (True, 3, 2.5),
        "list": [[1, 2], [3, 4]],
    }
    back = round_trip(tree, lossless)
    assert back["bf16"].dtype == bf16.dtype and back["bf16"].view(np.uint16).tolist() == [
        0x7FC1,
        0x8000,
        0x7F80,
    ]
    assert back["big_endian"].tolist() == [0, 1, 2]
    assert type(back["scalar"]) is np.float16 and back["numbers"] == (True, 3, 2.5)
    assert [type(v) for v in back["numbers"]] == [bool, int, float]
    assert back["list"] == [[1, 2], [3, 4]]


def test_one_tree_may_mix_frameworks(lossless: str) -> None:
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    tree = {"torch": torch.ones(2, dtype=torch.bfloat16), "jax": jnp.ones(2), "np": np.ones(2)}
    _, spec = flatten(tree)
    assert spec.frameworks == ["torch", "jax", "numpy"]
    back = round_trip(tree, lossless)
    assert [type(v).__module__.split(".")[0] for v in back.values()] == ["torch", "jaxlib", "numpy"]
