"""PyTorch weights round-trip bit for bit: tensors, parameters, state_dicts and modules."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fw_support import round_trip

from fma_connect import EncodeError, FrameworkError
from fma_connect.spec import flatten, restore_like

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")


def bits(tensor: Any) -> tuple[Any, tuple[int, ...], str, bytes]:
    """dtype, shape, device and raw bytes: equal only if the tensors are bit-identical."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes()
    return tensor.dtype, tuple(tensor.shape), str(tensor.device), raw


def from_bits(values: list[int], int_dtype: Any, dtype: Any) -> Any:
    return torch.tensor(values, dtype=int_dtype).view(dtype)


def special_floats() -> dict[str, Any]:
    """Tensors holding NaN payloads, -0.0 and infinities in every float dtype."""
    f32 = np.array([0x7FC00001, 0x80000000, 0x7F800000, 0xFF800000, 0x3F800000], np.uint32)
    return {
        "f32": torch.from_numpy(f32.view(np.float32).copy()),
        "f64": torch.tensor([float("nan"), -0.0, float("inf"), 1e-310], dtype=torch.float64),
        "f16": from_bits([0x7E01, -0x8000, 0x7C00, 0x0001], torch.int16, torch.float16),
        "bf16": from_bits([0x7FC1, -0x8000, 0x7F80, 0x3F80, 0x0001], torch.int16, torch.bfloat16),
        "f8": from_bits([0x7F, -0x80, 0x38, 0x01], torch.int8, torch.float8_e4m3fn),
    }


def all_dtypes() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    tree = special_floats()
    tree.update(
        {
            "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
            "i64": torch.tensor([[-(2**63), 2**63 - 1]], dtype=torch.int64),
            "u8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
            "bool": torch.tensor([[True, False], [False, True]]),
            "c64": torch.randn(3, dtype=torch.complex64, generator=generator),
            "c128": torch.randn(2, 2, dtype=torch.complex128, generator=generator),
            "scalar": torch.tensor(3.25),
            "empty": torch.zeros(0, 5),
        }
    )
    return tree


def strided(generator: Any) -> dict[str, Any]:
    """Views whose memory is not C-contiguous (transposed, stepped, broadcast, conjugated)."""
    base = torch.randn(6, 8, generator=generator)
    return {
        "transposed": base.t(),
        "stepped": base[1::2, ::3],
        "broadcast": torch.randn(1, 4, generator=generator).expand(3, 4),
        "bf16_view": base.to(torch.bfloat16).t()[::2],
        "conj": torch.randn(4, dtype=torch.complex64, generator=generator).conj(),
    }


def test_every_dtype_round_trips_bit_for_bit(lossless: str) -> None:
    tree = all_dtypes()
    back = round_trip(tree, lossless)
    assert type(back) is dict and list(back) == list(tree)
    for name, tensor in tree.items():
        assert type(back[name]) is torch.Tensor, name
        assert bits(back[name]) == bits(tensor), name


def test_non_contiguous_views_round_trip(lossless: str) -> None:
    tree = strided(torch.Generator().manual_seed(1))
    assert not any(t.is_contiguous() for t in tree.values() if t.dim() > 1)
    back = round_trip(tree, lossless)
    for name, tensor in tree.items():
        assert bits(back[name]) == bits(tensor.resolve_conj()), name
        assert back[name].is_contiguous()


def test_a_state_dict_comes_back_as_an_ordered_state_dict_the_module_loads(lossless: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(2),
    )
    model(torch.randn(1, 2, 5, 5))  # materialises the lazy layer
    state = model.state_dict()
    back = round_trip(state, lossless)
    assert type(back) is OrderedDict and list(back) == list(state)
    assert back["1.num_batches_tracked"].dtype == torch.int64
    for name, tensor in state.items():
        assert bits(back[name]) == bits(tensor), name
    other = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(27, 2),
    )
    other.load_state_dict(back)
    assert all(bits(other.state_dict()[n]) == bits(t) for n, t in state.items())


def test_nested_state_dicts_keep_their_structure_and_names(lossless: str) -> None:
    tree = {"encoder": torch.nn.Linear(3, 2).state_dict(), "heads": [torch.zeros(2, 2)]}
    _, spec = flatten(tree)
    assert spec.names == ["encoder.weight", "encoder.bias", "heads.0"]
    back = round_trip(tree, lossless)
    assert type(back["encoder"]) is OrderedDict and type(back["heads"]) is list


def test_a_module_is_sent_as_its_state_dict_and_restored_as_one(lossless: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    _, spec = flatten(model)
    assert spec.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert spec.frameworks == ["torch"]
    back = round_trip(model, lossless)
    assert type(back) is OrderedDict
    assert all(bits(back[n]) == bits(t) for n, t in model.state_dict().items())


def test_like_a_module_loads_the_weights_into_it_and_returns_it(lossless: str) -> None:
    sender = torch.nn.Linear(4, 2).to(torch.bfloat16)
    receiver = torch.nn.Linear(4, 2).to(torch.bfloat16)
    weight = receiver.weight
    back = round_trip(sender.state_dict(), lossless, like=receiver)
    assert back is receiver and receiver.weight is weight  # loaded in place
    assert bits(receiver.weight) == bits(sender.weight)
    assert receiver.weight.requires_grad


def test_parameters_and_requires_grad_come_back(lossless: str) -> None:
    tree = [
        torch.nn.Parameter(torch.randn(2, 3)),
        torch.nn.Parameter(torch.randn(2, dtype=torch.bfloat16), requires_grad=False),
        torch.randn(3, requires_grad=True),
        torch.randn(3) * 2,
    ]
    back = round_trip(tree, lossless)
    kinds = [(type(t).__name__, t.requires_grad, t.is_leaf) for t in back]
    assert kinds == [
        ("Parameter", True, True),
        ("Parameter", False, True),
        ("Tensor", True, True),
        ("Tensor", False, True),
    ]
    assert all(bits(b) == bits(t) for b, t in zip(back, tree, strict=True))


def test_like_a_tensor_gives_its_dtype_and_device() -> None:
    received = [("0", np.array([0.5, 1.5, -2.0]))]  # plain JSON: float64, named by position
    back = restore_like(torch.zeros(3, dtype=torch.bfloat16, device="cpu"), received)
    assert back.dtype == torch.bfloat16 and back.device.type == "cpu"
    assert back.tolist() == [0.5, 1.5, -2.0]


def test_the_json_codec_carries_float32_bfloat16_ints_and_bools_through_the_spec() -> None:
    tree = {
        "w": torch.randn(3, 4, generator=torch.Generator().manual_seed(2)),
        "h": torch.randn(5).to(torch.bfloat16),
        "n": torch.tensor([-3, 7], dtype=torch.int8),
        "m": torch.tensor([True, False]),
        "empty": torch.zeros(0, 2),
    }
    back = round_trip(tree, "json")
    for name, tensor in tree.items():
        assert bits(back[name]) == bits(tensor), name


def test_received_tensors_that_do_not_fit_the_module_name_the_first_difference() -> None:
    tensors, _ = flatten(torch.nn.Linear(3, 2))
    with pytest.raises(FrameworkError, match="expected 'weight', received 'bias'"):
        restore_like(torch.nn.Linear(3, 2), [("bias", tensors[1][1]), ("kernel", tensors[0][1])])
    with pytest.raises(
        FrameworkError, match=r"'weight': expected shape \(2, 4\), received \(2, 3\)"
    ):
        restore_like(torch.nn.Linear(4, 2), tensors)
    with pytest.raises(FrameworkError, match="expected 2 tensors"):
        restore_like(torch.nn.Linear(3, 2), tensors[:1])


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(EncodeError, match=r"'w' is bfloat16.*pip install ml_dtypes"):
        flatten({"w": torch.zeros(2, dtype=torch.bfloat16)})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.zeros(2, 2).to_sparse(), "to_dense"),
        (lambda: torch.zeros(2, device="meta"), "meta device"),
        (lambda: torch.zeros(2, dtype=torch.complex32), "cannot be sent"),
    ],
    ids=["sparse", "meta", "complex32"],
)
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unsendable_tensors_are_refused_with_their_name(
    make: Callable[[], Any], message: str
) -> None:
    with pytest.raises(EncodeError, match=f"'layer.w'.*{message}"):
        flatten({"layer": {"w": make()}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_sent_from_the_cpu_and_come_back_on_their_device(lossless: str) -> None:
    tree = {"w": torch.randn(3, 3, device="cuda").to(torch.bfloat16)}
    back = round_trip(tree, lossless)
    assert back["w"].device == tree["w"].device
    assert bits(back["w"]) == bits(tree["w"])


@pytest.mark.parametrize(
    ("what", "hint"),
    [("parameters", "send model.state_dict()"), ("optimizer", "holds no model weights")],
)
def test_parameters_and_optimizers_are_refused_with_what_to_send(what: str, hint: str) -> None:
    model = torch.nn.Linear(2, 2)
    weights = model.parameters() if what == "parameters" else torch.optim.SGD(model.parameters())
    with pytest.raises(EncodeError, match="given as the weights") as refused:
        flatten(weights)
    assert hint in str(refused.value)
