"""Tests for tutorial_lib.experiments.adversarial_training: recipes, caching, the monitor's sample, the table."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest

from tutorial_lib import runtime
from tutorial_lib.experiments import adversarial_training as exp


def test_train_cached_reuses_and_saves_a_safe_mode_model(mnist_subset):
    data = types.SimpleNamespace(source="subset", x_train=mnist_subset.x_train[:64], y_train=mnist_subset.y_train[:64])
    kw = {"method": "fgsm", "eps": 0.3, "epochs": 1, "batch_size": 32}
    clf, info = exp.train_cached("03_test_fgsm", data, kw, verbose=False)
    again, info2 = exp.train_cached("03_test_fgsm", data, kw, verbose=False)
    assert info["cached"] is False and info2["cached"] is True
    for a, b in zip(clf.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    path = runtime.build_dir() / "models" / "03_test_fgsm.keras"
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(data.x_train[:8], verbose=0), clf.predict(data.x_train[:8], verbose=0),
                               atol=1e-6)


def test_recipe_reads_the_profile():
    s = runtime.get_profile("quick").adv_training
    kw = exp.recipe("pgd", s)
    assert kw["steps"] == s.train_pgd_steps and kw["eps"] == s.eps and kw["epochs"] == s.epochs
    assert exp.recipe("fgsm_rs", s)["step_size"] == pytest.approx(s.fast_alpha * s.eps)
    assert exp.recipe("none", s)["method"] == "none"


def test_train_cached_rejects_bad_kwargs(mnist_subset):
    with pytest.raises(TypeError, match="fit_kwargs"):
        exp.train_cached("03_bad", mnist_subset, {"eps": 0.3})


def test_overfitting_monitor_samples_every_class(mnist_subset):
    settings = runtime.get_profile("quick").adv_training
    monitor = exp.overfitting_monitor(mnist_subset, settings)
    assert len(monitor.x) == settings.monitor_size
    assert len(np.unique(monitor.y)) == 10  # the subset is sorted by class: the first images would all be zeros
    assert monitor.pgd.steps == settings.monitor_pgd_steps and monitor.pgd.eps == settings.eps


def test_robustness_table_and_remedies():
    table = exp.robustness_table({"pgd": {"clean": 0.95, "pgd40": 0.8, "pgd100_restarts5": 0.79,
                                          "seconds_per_epoch": 12.34}, "mine": {"clean": 0.5, "fgsm": None}},
                                 labels={"mine": "my model"})
    assert "| PGD-AT | 95.0% | 80.0% | 79.0% | 12.3 | - |" in table and "PGD-100 x 5" in table
    assert "| my model | 50.0% | - | - | - | - |" in table and "| FGSM |" in table
    with pytest.raises(ValueError, match="non-empty dict"):
        exp.robustness_table({})
    s = runtime.get_profile("quick").adv_training
    remedies = exp.fast_at_remedies(s)
    assert set(remedies) == {"stop_restore", "small_alpha", "eps_ramp", "gradalign"}
    assert all(kw["method"] == "fgsm_rs" for kw in remedies.values())
    assert remedies["gradalign"]["align_weight"] == s.align_weight
