"""Fitted scikit-learn linear models and MLPs round-trip, into a template estimator too."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from fw_support import round_trip

from fma_connect import EncodeError, FrameworkError
from fma_connect.spec import flatten, restore_like

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(60, 4))
    return features, (features[:, 0] + features[:, 1] > 0).astype(int) + (features[:, 2] > 1)


def fitted(estimator: Any, seed: int = 0) -> Any:
    features, labels = data(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(features, labels)


def bits(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    array = np.asarray(value)
    return array.dtype.name, array.shape, array.tobytes()


ESTIMATORS = {
    "logistic": lambda: LogisticRegression(max_iter=50),
    "sgd": lambda: SGDClassifier(max_iter=5, random_state=0),
    "linear-no-intercept": lambda: LinearRegression(fit_intercept=False),
    "mlp-classifier": lambda: MLPClassifier(hidden_layer_sizes=(5, 3), max_iter=5, random_state=0),
    "mlp-regressor": lambda: MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0),
}


@pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS.keys())
def test_weights_restore_into_a_template_estimator_bit_for_bit(make: Any, lossless: str) -> None:
    sender, receiver = fitted(make(), seed=1), fitted(make(), seed=2)
    features, _ = data(3)
    first = "coef_" if hasattr(sender, "coef_") else "coefs_"
    assert bits(np.asarray(getattr(receiver, first)[0])) != bits(getattr(sender, first)[0])
    back = round_trip(sender, lossless, like=receiver)
    assert back is receiver
    for attribute in ("coef_", "intercept_", "coefs_", "intercepts_"):
        if hasattr(sender, attribute):
            sent, got = getattr(sender, attribute), getattr(receiver, attribute)
            if isinstance(sent, list):
                assert [bits(a) for a in got] == [bits(a) for a in sent], attribute
            else:
                assert bits(got) == bits(sent) and type(got) is type(sent), attribute
    np.testing.assert_array_equal(receiver.predict(features), sender.predict(features))


def test_without_a_template_the_weights_come_back_as_a_dict_of_attributes(lossless: str) -> None:
    mlp = fitted(ESTIMATORS["mlp-classifier"]())
    _, spec = flatten(mlp)
    assert spec.names == [
        "coefs_.0",
        "coefs_.1",
        "coefs_.2",
        "intercepts_.0",
        "intercepts_.1",
        "intercepts_.2",
    ]
    back = round_trip(mlp, lossless)
    assert list(back) == ["coefs_", "intercepts_"]
    assert [bits(a) for a in back["coefs_"]] == [bits(a) for a in mlp.coefs_]


def test_a_linear_model_is_sent_as_coef_and_intercept() -> None:
    _, spec = flatten(fitted(LogisticRegression(max_iter=50)))
    assert spec.names == ["coef_", "intercept_"]
    assert spec.frameworks == ["sklearn", "numpy"]


def test_the_json_codec_carries_float64_weights_through_the_spec() -> None:
    sender, receiver = fitted(SGDClassifier(max_iter=5, random_state=0)), fitted(SGDClassifier())
    round_trip(sender, "json", like=receiver)
    assert bits(receiver.coef_) == bits(sender.coef_)


def test_an_unfitted_estimator_is_refused_saying_to_fit_it() -> None:
    with pytest.raises(EncodeError, match="'0'.*fit it first"):
        flatten(LogisticRegression())
    tensors, _ = flatten(fitted(LogisticRegression(max_iter=50)))
    with pytest.raises(FrameworkError, match="template.*fit it first"):
        restore_like(LogisticRegression(), tensors)


def test_a_template_with_other_shapes_names_the_first_difference(lossless: str) -> None:
    three_classes = fitted(LogisticRegression(max_iter=50))
    features, labels = data(0)
    two_classes = LogisticRegression(max_iter=50).fit(features, labels > 0)
    with pytest.raises(
        FrameworkError, match=r"'coef_': expected shape \(1, 4\), received \(3, 4\)"
    ):
        round_trip(three_classes, lossless, like=two_classes)
