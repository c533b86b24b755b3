"""Tests for tutorial_lib.experiments.adversarial_training: recipes, caching, the monitor's sample, the table."""

from __future__ import annotations

import types
import warnings

import keras
import numpy as np
import pytest

from tutorial_lib import attacks, runtime, training
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


def test_train_cached_derives_the_early_stopped_model(mnist_subset):
    data = types.SimpleNamespace(source="subset", x_train=mnist_subset.x_train[::50], y_train=mnist_subset.y_train[::50])
    kw = {"method": "fgsm_rs", "eps": 0.3, "epochs": 3, "batch_size": 16}

    def monitor(on_overfit, restore_best):
        return training.CatastrophicOverfittingMonitor(
            data.x_train[:20], data.y_train[:20], fgsm=attacks.FGSM(eps=0.3), drop=0.01, verbose=False,
            pgd=attacks.PGD(eps=0.3, steps=3, step_size=0.2, seed=0), on_overfit=on_overfit, restore_best=restore_best)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, info = exp.train_cached("03_test_rs", data, kw, callbacks=[monitor("warn", False)], verbose=False,
                                   stop_restore_name="03_test_rs_stop")
        derived, derived_info = info["stop_restore"]
        stopped, stopped_info = exp.train_cached("03_test_rs_stopped", data, kw,
                                                 callbacks=[monitor("stop", True)], verbose=False)
        for a, b in zip(derived.get_weights(), stopped.get_weights()):  # the same as a second, stopped run
            np.testing.assert_array_equal(a, b)
        assert len(derived_info["epoch_seconds"]) == len(stopped_info["epoch_seconds"])
        assert (runtime.build_dir() / "models" / "03_test_rs_stop.keras").is_file()
        # cached: both load; with the derived entry gone, the monitored run is trained again to recover it
        _, again = exp.train_cached("03_test_rs", data, kw, callbacks=[monitor("warn", False)], verbose=False,
                                    stop_restore_name="03_test_rs_stop")
        assert again["cached"] and again["stop_restore"][1]["cached"]
        for path in (runtime.build_dir() / "cache").glob("03_test_rs_stop-*"):
            path.unlink()
        _, rebuilt = exp.train_cached("03_test_rs", data, kw, callbacks=[monitor("warn", False)], verbose=False,
                                      stop_restore_name="03_test_rs_stop")
    assert not rebuilt["stop_restore"][1]["cached"]
    for a, b in zip(rebuilt["stop_restore"][0].get_weights(), derived.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exactly one CatastrophicOverfittingMonitor"):
        exp.train_cached("03_test_rs", data, kw, verbose=False, stop_restore_name="x")


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
    assert set(remedies) == {"stop_restore", "eps_ramp", "gradalign", "n_fgsm", "n_fgsm_ramp"}
    assert all(kw["method"] == "fgsm_rs" for name, kw in remedies.items() if not name.startswith("n_fgsm"))
    assert remedies["gradalign"]["align_weight"] == s.align_weight
    assert remedies["eps_ramp"]["ramp_epochs"] == remedies["n_fgsm_ramp"]["ramp_epochs"] == s.remedy_ramp_epochs
    assert {k: v for k, v in remedies["n_fgsm_ramp"].items() if k != "ramp_epochs"} == remedies["n_fgsm"]


def test_n_fgsm_recipe_has_fast_at_budget_and_the_paper_defaults():
    s = runtime.get_profile("quick").adv_training
    kw = exp.recipe("n_fgsm", s)
    assert kw["epochs"] == exp.recipe("fgsm_rs", s)["epochs"] == s.fast_epochs and kw["decay_epochs"] == 0
    assert kw["noise"] == s.nfgsm_noise == 2.0 and kw["step_size"] == pytest.approx(s.eps)  # k = 2, alpha = eps
    assert exp.fast_at_remedies(s)["n_fgsm"] == kw
