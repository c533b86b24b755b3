"""Tests for tutorial_lib/experiments/applications.py (notebook 07's driver): AQ digit relabelling, the patch curves
and their table, the CleverHans / ART cross-check with and without the peers extra, the cost table from results
files, and the results schema."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import keras
import numpy as np
import pytest

import tutorial_lib as tl
from tutorial_lib.experiments import applications as app

SETTINGS = replace(tl.runtime.get_profile("quick").applications, patch_sizes=(4, 7), patch_steps=3, patch_batch=8,
                   patch_eval_size=20, peer_size=12, peer_pgd_steps=5, peer_step_size=0.03, strong_steps=5,
                   strong_restarts=2, apgd_steps=5, apgd_restarts=1)


def tiny_model(classes: int = 10, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5, strides=3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(classes)])


def images(n: int = 40, seed: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32), rng.integers(0, classes, n).astype(np.int64)


def test_digit_subset_renumbers_in_the_given_order():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    xs, ys = app.digit_subset(x, y, digits=(7, 5))
    assert ys.tolist() == [1, 0] and xs.ravel().tolist() == [5.0, 7.0]


def test_target_label_maps_digits_for_the_aq_classifier():
    assert app.target_label("standard", 8) == 8
    assert app.target_label("aq", 8) == 3
    with pytest.raises(ValueError, match="digits"):
        app.target_label("aq", 2)


def test_patch_curves_schema_fractions_and_table():
    model = tiny_model()
    x, y = images(40)
    sets = {"standard": {"x_train": x, "y_train": y, "x_eval": x[:20], "y_eval": y[:20]}}
    out = app.patch_curves({"standard": model}, sets, SETTINGS, verbose=False)
    assert out["sizes"] == [4, 7] and out["target"] == SETTINGS.patch_target
    for kind in ("untargeted", "targeted", "random_patch"):
        values = out[kind]["standard"]
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    assert [p.shape for p in out["patches"]["standard"]["untargeted"]] == [(4, 4, 1), (7, 7, 1)]
    table = app.patch_table(out)
    assert "4 x 4" in table and "random (control)" in table and "±" in table


def test_patch_data_keeps_correct_images_and_drops_aq_support():
    model = tiny_model(classes=5)
    x, y = images(60)
    data = type("D", (), {"x_train": x, "y_train": y, "x_test": x, "y_test": y})()
    d = app.patch_data("aq", model, data, SETTINGS, support=np.arange(10))
    assert d["y_train"].max() < 5 and len(d["x_train"]) == np.isin(y[10:], app.AQ_DIGITS).sum()
    assert np.all(tl.evaluate.correct(model, d["x_eval"], d["y_eval"]))
    assert len(d["x_eval"]) <= SETTINGS.patch_eval_size


def test_peer_comparison_without_the_extra_runs_ours_only():
    model = tiny_model()
    x, y = images(12)
    comp = app.peer_comparison(model, x, y, SETTINGS, eps=0.1, use_peers=False)
    acc = comp["accuracy"]
    assert set(acc) == set(app.PEER_KEYS)
    assert acc["cleverhans_pgd"] is None and acc["art_pgd"] is None and acc["art_apgd"] is None
    assert 0.0 <= acc["ours_pgd100_restarts5"] <= comp["clean"]
    table = app.peers_table(comp, SETTINGS)
    assert "not installed" in table and "pip install" in table


def test_without_the_extra_the_comparison_runs_ours_only(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "art" else real(name, *a))
    assert app.peers_available() is False
    x, y = images(12)
    comp = app.peer_comparison(tiny_model(), x, y, SETTINGS, eps=0.1)  # use_peers=None: detects the absence
    assert comp["accuracy"]["art_apgd"] is None and comp["accuracy"]["ours_pgd"] is not None

    def blocked(name, *a):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", blocked)
    assert app.peers_available() is False


@pytest.mark.peers
@pytest.mark.skipif(not app.peers_available(), reason="the peers extra (cleverhans, ART) is not installed")
def test_cleverhans_art_and_ours_agree_on_the_same_pgd():
    model = tiny_model()
    x, y = images(12)
    comp = app.peer_comparison(model, x, y, SETTINGS, eps=0.1)
    acc = comp["accuracy"]
    assert abs(acc["cleverhans_pgd"] - acc["ours_pgd"]) <= 0.01 and abs(acc["art_pgd"] - acc["ours_pgd"]) <= 0.01
    assert max(comp["max_pixel_gap"].values()) < 1e-4
    # APGD is broken if either loss breaks it: never above either run
    assert acc["art_apgd"] <= min(np.mean(comp["correct"]["art_apgd_ce"]), np.mean(comp["correct"]["art_apgd_dlr"]))
    assert "TensorFlowV2Classifier" in type(app.art_classifier(model)).__name__


@pytest.mark.peers
@pytest.mark.skipif(not app.peers_available(), reason="the peers extra (cleverhans, ART) is not installed")
def test_pgd_agreement_on_a_five_class_learner():
    model = tiny_model(classes=5, seed=1)
    x, y = images(12, classes=5)
    agree = app.pgd_agreement(model, x, y, SETTINGS, eps=0.1)
    assert set(agree["accuracy"]) == {"ours_pgd", "cleverhans_pgd", "art_pgd"}
    assert max(agree["max_pixel_gap"].values()) < 1e-4
    assert all(0.0 <= v <= agree["clean"] for v in agree["accuracy"].values())
    assert app.art_classifier(model).nb_classes == 5
    table = app.peers_table(agree, SETTINGS, keys=("ours_pgd", "cleverhans_pgd", "art_pgd"))
    assert table.count("\n") == 4 and "not installed" not in table


def test_num_classes_of_rejects_a_model_without_class_logits():
    assert app.num_classes_of(tiny_model(classes=5)) == 5
    scalar = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="one logit per class"):
        app.num_classes_of(scalar)


def write(path, name, data):
    (path / f"{name}.json").write_text(json.dumps(data))


def test_cost_rows_missing_files_name_their_notebooks(tmp_path):
    rows, missing = app.cost_rows(tl.runtime.get_profile("quick"), results_dir=tmp_path)
    assert rows == [] and len(missing) == 4
    assert any("notebooks/06_unseen_attacks.ipynb" in m for m in missing)


def test_cost_rows_project_to_the_full_profile(tmp_path):
    quick, full = tl.runtime.get_profile("quick"), tl.runtime.get_profile("full")
    write(tmp_path, "00_setup_and_data", {"train_images": 4000})
    write(tmp_path, "03_adversarial_training", {"methods": {"pgd": {"seconds_per_epoch": 2.0}, "none": {"seconds_per_epoch": 1.0}}})
    write(tmp_path, "04_meta_learning", {"meta_steps": 500, "train_seconds": {"maml_1shot": 50.0}})
    rows, missing = app.cost_rows(quick, results_dir=tmp_path)
    by = {(r["notebook"], r["method"]): r for r in rows}
    pgd = by[("03", "pgd")]
    passes = (full.adv_training.train_pgd_steps + 1) / (quick.adv_training.train_pgd_steps + 1)
    assert pgd["full_seconds"] == pytest.approx(2.0 * 15 * passes * full.adv_training.epochs)
    assert by[("03", "none")]["full_seconds"] == pytest.approx(1.0 * 15 * full.adv_training.standard_epochs)
    maml = by[("04", "maml_1shot")]
    assert maml["seconds"] == pytest.approx(0.1)
    assert maml["full_seconds"] == pytest.approx(0.1 * full.meta.meta_batch / quick.meta.meta_batch * full.meta.meta_steps)
    assert len(missing) == 2 and "| 03 | pgd |" in app.cost_table(rows)
    write(tmp_path, "06_unseen_attacks", {"held_out": {}})
    assert any("records none" in m for m in app.cost_rows(quick, results_dir=tmp_path)[1])
    write(tmp_path, "06_unseen_attacks", {"compute": {"meta_adv": {"train_seconds": 50.0},
                                                      "oracle": {"train_seconds": None}}})
    rows, missing = app.cost_rows(quick, results_dir=tmp_path)
    ours = {(r["notebook"], r["method"]): r for r in rows}[("06", "meta_adv")]
    assert ours["seconds"] == pytest.approx(50.0 / quick.unseen.meta_steps) and ours["units"] == quick.unseen.meta_steps
    assert ("06", "oracle") not in {(r["notebook"], r["method"]) for r in rows}


def test_results_follow_the_schema():
    patch = {"sizes": [4], "target": 8, "untargeted": {"standard": [0.5]}, "targeted": {"standard": [0.1]},
             "random_patch": {"standard": [0.05]}, "n_eval": {"standard": 20}, "seconds": {"standard": 1.0},
             "patches": {"standard": {}}}
    comp = {"accuracy": {k: 0.5 for k in app.PEER_KEYS}, "correct": {"ours_pgd": np.ones(4, bool)},
            "max_pixel_gap": {}, "clean": 1.0}
    out = app.results(patch, comp, SETTINGS, eps=0.3)
    assert set(out["patch"]) >= {"sizes", "target", "untargeted", "targeted", "random_patch"}
    assert "patches" not in out["patch"]
    assert set(out["peers"]) == set(app.PEER_KEYS)
    assert out["peers_aq"] is None
    json.dumps(out)
    agree = {"accuracy": {"ours_pgd": 0.5, "cleverhans_pgd": 0.5, "art_pgd": 0.5},
             "correct": {"ours_pgd": np.ones(4, bool)}, "max_pixel_gap": {"art_pgd": 0.0}, "clean": 1.0}
    with_aq = app.results(patch, comp, SETTINGS, eps=0.3, aq_agreement=agree, aq_eps=0.1)
    assert with_aq["peers_aq"]["n_images"] == 4 and with_aq["peers_aq"]["eps"] == 0.1
    json.dumps(with_aq)
    with pytest.raises(ValueError, match="aq_eps"):
        app.results(patch, comp, SETTINGS, eps=0.3, aq_agreement=agree)
    assert "worst_case" not in out
    clean = np.array([True, True, True, False])
    half = np.array([True, True, False, False])
    wc = tl.evaluate.WorstCase(clean=clean, per_attack={"APGD-CE-100": clean & half, "PGD-100 x5": clean},
                               correct=clean & half, seconds={})
    field = tl.evaluate.worst_case_record(wc, np.array([True, False, False, False]))
    saved = app.results(patch, comp, SETTINGS, eps=0.3, worst_case=field)["worst_case"]
    assert set(saved) == {"attacks", "combined", "per_attack", "art_apgd"}
    assert saved["combined"]["mean"] == 0.5 and saved["art_apgd"]["mean"] == 0.25
    assert set(saved["combined"]) == {"mean", "ci95"} and saved["attacks"] == ["APGD-CE-100", "PGD-100 x5"]
    json.dumps(saved)
    with pytest.raises(ValueError, match="worst_case_record"):
        app.results(patch, comp, SETTINGS, eps=0.3, worst_case={"combined": 0.5})


def test_gradient_step_timings_cover_every_variant_and_restore_the_policy():
    x, y = images(8)
    out = app.gradient_step_timings(tiny_model, x, y, repeats=1)
    assert len(out) == 6 and "forward + backward, eager" in out and "forward, tf.function + XLA" in out
    assert all(v["seconds"] > 0 for v in out.values() if "error" not in v)
    assert "seconds" in out["forward + backward, tf.function"]
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "ms per call" in app.timings_table(out)


def test_bench_numbers_reads_the_meta_benchmark(tmp_path):
    assert app.bench_numbers(tmp_path) == {}
    (tmp_path / "meta.json").write_text(json.dumps({"speedup_compiled_vs_eager": 6.5}))
    assert app.bench_numbers(tmp_path) == {"compiled_vs_eager_meta_step": 6.5}


# Exercises of notebook 07 (tutorial_lib.exercises, 07.1-07.3): the answer key passes, wrong answers get a hint
def _solve(key: str, **names):
    scope = {"np": np, **names}
    exec(tl.exercises.SOLUTIONS[key], scope)  # noqa: S102 - our own answer key
    return scope


def test_exercises_07_answer_key_passes_and_wrong_answers_fail(capsys):
    ex = tl.exercises
    assert ex.check_patch_area(_solve("07.1", size=10)["answer_area"], size=10)
    weak = np.array([True, True, False, True])
    strong = np.array([True, False, False, True])
    assert ex.check_extra_breaks(_solve("07.2", weak=weak, strong=strong)["answer_extra"], weak, strong)
    kw = dict(seconds_per_epoch=2.0, data_scale=15.0, epochs=80)
    assert ex.check_projected_hours(_solve("07.3", **kw)["answer_hours"], **kw)
    assert not ex.check_patch_area(10, size=10) and not ex.check_extra_breaks(2, weak, strong)
    assert not ex.check_projected_hours(None, **kw)
    out = capsys.readouterr().out
    assert "Not yet" in out and "No answer yet" in out
    with pytest.raises(ValueError, match="same length"):
        ex.check_extra_breaks(1, weak, strong[:2])


def test_plot_patch_curves_draws_one_panel_per_model_and_rejects_empty_input():
    patch = {"sizes": [6, 10], "target": 8, "untargeted": {"a": [0.1, 0.4], "b": [0.2, 0.3]},
             "targeted": {"a": [0.0, 0.1]}, "random_patch": {"a": [0.05, 0.1]}, "n_eval": {"a": 100, "b": 50}}
    fig = tl.viz.plot_patch_curves(patch, labels={"a": "model A"})
    assert len(fig.axes) == 2 and "model A" in fig.axes[0].get_title()
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[1].lines) == 1
    with pytest.raises(ValueError, match="untargeted"):
        tl.viz.plot_patch_curves({"sizes": [6]})


def test_cost_rows_include_fast_at_remedies_and_lslr(tmp_path):
    quick, full = tl.runtime.get_profile("quick"), tl.runtime.get_profile("full")
    write(tmp_path, "00_setup_and_data", {"train_images": 4000})
    write(tmp_path, "03_adversarial_training", {"methods": {}, "fast_at_remedies": {
        "gradalign": {"train_seconds": 20.0}, "stop_restore": {"train_seconds": 5.0}}})
    write(tmp_path, "04_meta_learning", {"meta_steps": 500, "train_seconds": {},
                                         "lslr": {"5shot": {"train_seconds": 25.0}}})
    by = {(r["notebook"], r["method"]): r for r in app.cost_rows(quick, results_dir=tmp_path)[0]}
    epochs = quick.adv_training.fast_epochs
    assert by[("03", "gradalign")]["seconds"] == pytest.approx(20.0 / epochs)
    assert by[("03", "gradalign")]["full_seconds"] == pytest.approx(20.0 / epochs * 15 * full.adv_training.fast_epochs)
    assert ("03", "stop_restore") not in by   # fast AT's own run cut short: no cost of its own
    assert by[("04", "lslr_5shot")]["seconds"] == pytest.approx(0.05)


def test_patch_gaps_say_where_the_intervals_are_apart():
    patch = {"sizes": [6, 14], "untargeted": {"m": [0.11, 0.70]}, "random_patch": {"m": [0.07, 0.40]},
             "n_eval": {"m": 400}}
    gaps = app.patch_gaps(patch)["m"]
    assert [g["size"] for g in gaps] == [6, 14]
    assert gaps[0]["gap"] == pytest.approx(0.04) and not gaps[0]["apart"]
    assert gaps[1]["gap"] == pytest.approx(0.30) and gaps[1]["apart"]
