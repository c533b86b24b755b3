"""tutorial_lib.models: logits, softmax rejection, the trained-model cache."""

from __future__ import annotations

import numpy as np
import pytest
import keras

from tutorial_lib import models, runtime


def test_article_cnn_shape_and_logits():
    m = models.article_cnn()
    out = m(np.zeros((2, 28, 28, 1), np.float32))
    assert out.shape == (2, 10)
    assert m.layers[-1].activation is keras.activations.linear
    assert [type(layer).__name__ for layer in m.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    models.check_logits_model(m)  # no error


@pytest.mark.parametrize(
    "last",
    [lambda: keras.layers.Dense(10, activation="softmax"), lambda: keras.layers.Softmax(),
     lambda: keras.layers.Activation("softmax")],
)
def test_softmax_model_rejected_with_fix(last):
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), last()])
    with pytest.raises(ValueError, match=r"from_logits=True"):
        models.check_logits_model(m)


def test_not_a_model():
    with pytest.raises(TypeError, match="expected a keras.Model"):
        models.check_logits_model(np.zeros(3))


def test_mixed_precision_keeps_float32_logits():
    try:
        runtime.set_mixed_precision(True)
        m = models.article_cnn()
        assert m(np.zeros((1, 28, 28, 1), np.float32)).dtype == "float32"
    finally:
        runtime.set_mixed_precision(False)


def _tiny_train(counter):
    def train():
        counter.append(1)
        runtime.set_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(np.ones((8, 4), np.float32), np.zeros(8, np.int64), epochs=1, verbose=0)
        return m, {"note": "tiny"}
    return train


def test_cache_round_trip():
    calls: list[int] = []
    m1, info1 = models.load_or_train("tiny", {"a": 1}, _tiny_train(calls), verbose=False)
    m2, info2 = models.load_or_train("tiny", {"a": 1}, _tiny_train(calls), verbose=False)
    assert calls == [1] and not info1["cached"] and info2["cached"] and info2["note"] == "tiny"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(m1(x), m2(x))
    models.load_or_train("tiny", {"a": 2}, _tiny_train(calls), verbose=False)  # new config: trains again
    assert calls == [1, 1]


def test_corrupt_cache_is_detected_and_retrained():
    calls: list[int] = []
    models.load_or_train("tiny_corrupt", {"a": 1}, _tiny_train(calls), verbose=False)
    path, _ = models.cache_paths("tiny_corrupt", {"a": 1})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="unusable.*retraining"):
        _, info = models.load_or_train("tiny_corrupt", {"a": 1}, _tiny_train(calls), verbose=False)
    assert calls == [1, 1] and not info["cached"]


def test_cached_model_loads_in_safe_mode():
    calls: list[int] = []
    models.load_or_train("tiny_safe", {"a": 1}, _tiny_train(calls), verbose=False)
    path, _ = models.cache_paths("tiny_safe", {"a": 1})
    keras.saving.load_model(path, safe_mode=True, compile=False)  # no custom objects, no unsafe lambdas
