"""WebClient over mocked HTTP: framework weights out, the same kind of weights back."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from fw_support import BASE, FakeFMA

from fma_connect import WebClient
from fma_connect.plugins import default_codec_registry

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")


def bits(tensor: Any) -> tuple[Any, tuple[int, ...], bytes]:
    flat = tensor.detach().contiguous().reshape(-1)
    return tensor.dtype, tuple(tensor.shape), flat.view(torch.uint8).numpy().tobytes()


def model() -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    net[2].to(torch.bfloat16)
    return net


def test_a_state_dict_sent_in_msgpack_comes_back_as_torch_tensors(fake_fma: FakeFMA) -> None:
    state = model().state_dict()
    client = WebClient(1, url=BASE, codec="msgpack")
    client.send_update(state, num_examples=10)
    content_type, body = fake_fma.updates[-1]
    assert content_type == "application/vnd.fma-connect.msgpack"
    sent = default_codec_registry().get("msgpack").decode(body)
    assert [name for name, _ in sent] == list(state)

    latest = client.check_for_latest_model()
    assert latest is not None and latest["aggregate"] == 1
    values = latest["values"]
    assert type(values) is OrderedDict and list(values) == list(state)
    for name, tensor in state.items():
        assert isinstance(values[name], torch.Tensor), name
        assert bits(values[name]) == bits(tensor), name
    assert values["2.weight"].dtype == torch.bfloat16
    assert values["1.num_batches_tracked"].dtype == torch.int64


def test_a_module_sent_in_plain_json_comes_back_as_its_state_dict(fake_fma: FakeFMA) -> None:
    net = model()
    client = WebClient(1, url=BASE)  # json, the stock service's format
    client.send_update(net)
    content_type, body = fake_fma.updates[-1]
    assert content_type == "application/json" and body.startswith(b'{"federated_model":1')
    latest = client.check_for_latest_model()
    assert latest is not None
    values = latest["values"]
    assert all(bits(values[n]) == bits(t) for n, t in net.state_dict().items())


def test_like_a_state_dict_restores_before_anything_was_sent(fake_fma: FakeFMA) -> None:
    sender = WebClient(1, url=BASE, codec="npz-b64")
    sender.send_update({"w": torch.arange(4.0).reshape(2, 2)})
    fresh = WebClient(1, url=BASE, codec="npz-b64")
    template = {"w": torch.zeros(2, 2, dtype=torch.float64)}
    latest = fresh.check_for_latest_model(like=template)
    assert latest is not None
    values = latest["values"]
    assert values["w"].dtype == torch.float64 and values["w"].tolist() == [[0, 1], [2, 3]]
    untyped = WebClient(1, url=BASE, codec="npz-b64").check_for_latest_model()
    assert untyped is not None
    assert isinstance(untyped["values"]["w"], np.ndarray)


def test_like_a_module_loads_the_aggregate_into_it(fake_fma: FakeFMA) -> None:
    sender, receiver = (
        model(),
        torch.nn.Sequential(
            torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2).to(torch.bfloat16)
        ),
    )
    client = WebClient(1, url=BASE, codec="msgpack")
    client.send_update(sender.state_dict())
    latest = client.check_for_latest_model(like=receiver)
    assert latest is not None and latest["values"] is receiver
    assert all(bits(receiver.state_dict()[n]) == bits(t) for n, t in sender.state_dict().items())
