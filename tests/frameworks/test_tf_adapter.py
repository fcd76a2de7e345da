"""TensorFlow tensors and variables, and Keras 3 models, round-trip bit for bit."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from fw_support import round_trip

from fma_connect import FrameworkError
from fma_connect.spec import flatten, restore_like

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
ml_dtypes = pytest.importorskip("ml_dtypes")


def bits(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    array = np.asarray(value)
    return array.dtype.name, array.shape, np.ascontiguousarray(array).view(np.uint8).tobytes()


def model(seed: int, dtype: str = "float32") -> Any:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Dense(2, dtype=dtype),
        ]
    )


def tensors() -> dict[str, Any]:
    bf16 = np.array([0x7FC1, 0x8000, 0x7F80, 0x3F80], np.uint16).view(ml_dtypes.bfloat16)
    f32 = np.array([0x7FC00001, 0x80000000, 0xFF800000], np.uint32).view(np.float32)
    return {
        "bf16": tf.constant(bf16),
        "f32": tf.constant(f32),
        "f16": tf.constant([0.1, -0.0], tf.float16),
        "f64": tf.constant([[1e-310, -2.5]], tf.float64),
        "i8": tf.constant([-128, 127], tf.int8),
        "u8": tf.constant([0, 255], tf.uint8),
        "bool": tf.constant([True, False]),
        "c64": tf.constant([1 + 2j], tf.complex64),
        "scalar": tf.constant(2, tf.int64),
        "empty": tf.zeros((0, 3)),
    }


def test_get_weights_lists_round_trip_and_set_weights_takes_them(lossless: str) -> None:
    sender, receiver = model(1), model(2)
    weights = sender.get_weights()
    back = round_trip(weights, lossless)
    assert type(back) is list and [bits(a) for a in back] == [bits(a) for a in weights]
    receiver.set_weights(back)
    assert [bits(a) for a in receiver.get_weights()] == [bits(a) for a in weights]


def test_tensors_of_every_dtype_round_trip_as_tensors(lossless: str) -> None:
    tree = tensors()
    back = round_trip(tree, lossless)
    for name, tensor in tree.items():
        assert isinstance(back[name], tf.Tensor) and not isinstance(back[name], tf.Variable)
        assert back[name].dtype == tensor.dtype and back[name].device == tensor.device, name
        assert bits(back[name]) == bits(tensor), name


def test_variables_keep_their_kind_trainable_flag_and_name(lossless: str) -> None:
    tree = [
        tf.Variable(np.arange(6.0).reshape(2, 3), name="kernel"),
        tf.Variable(tf.constant([1.5], tf.bfloat16), trainable=False, name="scale"),
        keras.Variable(np.ones(2, ml_dtypes.bfloat16), dtype="bfloat16", name="gamma"),
        keras.Variable(np.zeros(2, np.float32), trainable=False, name="moving_mean"),
    ]
    back = round_trip(tree, lossless)
    for sent, got in zip(tree, back, strict=True):
        assert type(got) is type(sent)
        assert (got.trainable, got.name, got.dtype) == (sent.trainable, sent.name, sent.dtype)
        assert bits(got) == bits(sent)


# Keras' own predict() converts tensors with np.array(), which numpy 2 warns about.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't:DeprecationWarning")
def test_a_model_is_sent_as_its_weights_and_loaded_into_a_template_model(lossless: str) -> None:
    sender, receiver = model(3, "bfloat16"), model(4, "bfloat16")
    _, spec = flatten(sender)
    assert spec.names[:3] == ["0.kernel", "1.bias", "2.gamma"]
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert not np.array_equal(
        receiver.predict(features, verbose=0), sender.predict(features, verbose=0)
    )
    assert round_trip(sender, lossless, like=receiver) is receiver
    assert [bits(a) for a in receiver.get_weights()] == [bits(a) for a in sender.get_weights()]
    assert receiver.get_weights()[0].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        receiver.predict(features, verbose=0), sender.predict(features, verbose=0)
    )


def test_a_model_without_a_template_comes_back_as_its_weight_list(lossless: str) -> None:
    sender = model(5)
    back = round_trip(sender, lossless)
    assert type(back) is list
    assert [bits(a) for a in back] == [bits(a) for a in sender.get_weights()]


def test_the_json_codec_carries_float32_and_bfloat16_through_the_spec() -> None:
    sender, receiver = model(6, "bfloat16"), model(7, "bfloat16")
    round_trip(sender, "json", like=receiver)
    assert [bits(a) for a in receiver.get_weights()] == [bits(a) for a in sender.get_weights()]


def test_a_template_model_of_another_shape_names_the_first_difference() -> None:
    wider = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    narrow = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    tensors_sent, _ = flatten(wider)
    with pytest.raises(
        FrameworkError, match=r"'0.kernel': expected shape \(4, 3\), received \(5, 3\)"
    ):
        restore_like(narrow, tensors_sent)
