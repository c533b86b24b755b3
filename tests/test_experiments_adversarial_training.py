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


def test_cyclic_rate_matches_their_np_interp_schedule():
    epochs, steps, lr_max = 10, 40, 5e-3
    schedule = exp.CyclicLearningRate(lr_max, epochs, steps)
    for step in (0, 1, 50, 159, 160, 161, 300, 399):
        t = epoch_progress = (step + 1) / steps   # their lr_schedule(epoch + (i + 1) / len(loader))
        expected = np.interp([epoch_progress], [0, epochs * 2 // 5, epochs], [0, lr_max, 0])[0]
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), t
    with pytest.raises(ValueError, match="lr_max"):
        exp.CyclicLearningRate(0.0, 10, 5)


def test_overfitting_summary_reads_peak_onset_and_the_largest_drop():
    pgd = [0.2, 0.3, 0.27, 0.22, 0.15, 0.1]
    fgsm = [0.4, 0.5, 0.55, 0.6, 0.7, 0.8]
    out = exp.overfitting_summary([{"pgd": p, "fgsm": f} for p, f in zip(pgd, fgsm)])
    assert out["peak"] == 1 and out["onset"] == 4          # 0.15 < 2/3 * 0.3 and FGSM above its value at the peak
    assert out["largest_drop"] == pytest.approx(0.07) and out["largest_drop_epoch"] == 3
    assert out["total_drop"] == pytest.approx(0.2) and out["sudden"] is False
    flat = exp.overfitting_summary([{"pgd": 0.5, "fgsm": 0.5}])
    assert flat["onset"] is None and flat["total_drop"] == 0
    with pytest.raises(ValueError, match="history is empty"):
        exp.overfitting_summary([])


def test_robustness_table_with_intervals():
    table = exp.robustness_table({"pgd": {"clean": 0.97, "pgd40": 0.815, "seconds_per_epoch": 2.5}}, n=1000)
    assert "97.0% ± 1.3" in table and "81.5% ± 2.5" in table   # Wilson, as notebook 03 prints them and "| 2.5 |" in table


def test_wong_recipe_trains_once_and_validates(mnist_subset):
    data = types.SimpleNamespace(source="subset", x_train=mnist_subset.x_train[::40], y_train=mnist_subset.y_train[::40])
    clf, info = exp.train_wong_recipe("03_test_wong", data, recipe_settings={"epochs": 2, "batch_size": 50},
                                      verbose=False)
    _, again = exp.train_wong_recipe("03_test_wong", data, recipe_settings={"epochs": 2, "batch_size": 50},
                                     verbose=False)
    assert not info["cached"] and again["cached"] and len(info["epoch_seconds"]) == 2
    with pytest.raises(ValueError, match="lr_type"):
        exp.train_wong_recipe("03_test_wong", data, recipe_settings={"lr_type": "cosine"}, verbose=False)
    with pytest.raises(ValueError, match="unknown recipe settings"):
        exp.train_wong_recipe("03_test_wong", data, recipe_settings={"lr": 1.0}, verbose=False)


def test_strong_evaluation_is_the_worst_case_over_the_profiles_strong_attacks(mnist_subset):
    import dataclasses

    from tutorial_lib import evaluate

    s = dataclasses.replace(runtime.get_profile("quick").adv_training, eval_strong_steps=3, strong_restarts=2)
    assert [a.name for a in exp.strong_attacks(s)] == ["APGD-CE-3", "APGD-DLR-3", "PGD-3 x2"]
    assert runtime.get_profile("quick").adv_training.strong_restarts == 1  # the quick profile runs PGD once
    assert runtime.get_profile("full").adv_training.strong_eval_size == runtime.get_profile("full").adv_training.eval_size
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    x, y = mnist_subset.x_test[:40], mnist_subset.y_test[:40]
    strong = exp.strong_evaluation({"none": model, "pgd": model}, x, y, s, methods=["pgd"])
    assert list(strong) == ["pgd"] and strong["pgd"].cumulative and strong["pgd"].attacks == ["APGD-CE-3", "APGD-DLR-3", "PGD-3 x2"]
    wc = strong["pgd"]
    np.testing.assert_array_equal(wc.per_attack["PGD-3 x2"], wc.correct)  # the last column of a cascade is the worst case
    assert wc.combined == evaluate.accuracy_ci95(wc.correct)
    table = exp.strong_table(strong)
    assert table.splitlines()[0] == ("| method (40 images) | clean | after APGD-CE-3 | + APGD-DLR-3 | "
                                     "+ PGD-3 x2 (worst case) | seconds |")
    assert "| PGD-AT |" in table and "±" in table
    with pytest.raises(ValueError, match="non-empty"):
        exp.strong_table({})
