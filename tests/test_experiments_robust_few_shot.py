"""Tests for tutorial_lib.experiments.robust_few_shot (notebook 05's driver) on tiny runs, plus notebook 05's
exercise checks and figures: settings from the profile, caching, the results schema, the table, AT transfer's
training compute matched to AQ's and its fine-tuning chosen on validation tasks."""

from __future__ import annotations

import dataclasses
import json

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from tutorial_lib import adaptation as AD
from tutorial_lib import compute
from tutorial_lib import exercises as ex
from tutorial_lib import meta_adversarial as mad
from tutorial_lib import models, runtime, viz
from tutorial_lib.experiments import robust_few_shot as rfs

SCHEMA_FIELDS = {"clean", "robust", "robust_restarts5", "inner_lr", "test_steps", "train_seconds"}


@pytest.fixture(scope="module")
def tiny():
    """The quick profile's settings shrunk to a few meta-steps and tasks (5 restarts kept: the schema's key)."""
    return dataclasses.replace(runtime.get_profile("quick").meta_adv, meta_steps=4, maml_meta_steps=2, eval_tasks=3,
                               eval_pgd_steps=2, at_epochs=1, at_finetune_steps=2, collapse_steps=2)


@pytest.fixture(scope="module")
def trained(mnist_subset, tiny):
    return {m: rfs.meta_train(m, mnist_subset, tiny, verbose=0) for m in ("maml", "aq")}


def test_method_options_build_every_learner(tiny):
    for method in rfs.META_TRAINED:
        opts = rfs.method_options(method, tiny)
        learner = mad.make_learner(method, models.few_shot_cnn(tiny.n_way), **opts)
        assert learner.inner_lr == tiny.inner_lr and learner.inner_steps == tiny.train_steps
        if method == "maml":
            assert "attack" not in opts
        else:
            assert learner.ramp_steps == round(tiny.ramp_fraction * rfs.meta_steps(method, tiny))
    assert rfs.meta_steps("maml", tiny) == 2 and rfs.meta_steps("aq", tiny) == 4  # per-method override, default
    assert rfs.method_options("seed_fgsm", tiny)["attack"].name == "FGSM"
    assert rfs.method_options("aq_trades", tiny)["outer_loss"] == "trades"


def test_unknown_method_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="method must be one of"):
        rfs.method_options("reptile", tiny)
    with pytest.raises(ValueError, match="method must be one of"):
        rfs.adaptation("aq_pure", tiny)


def test_profile_sizes_and_attacks(tiny):
    for name in runtime.PROFILES:
        s = runtime.get_profile(name).meta_adv
        assert s.eps in s.curve_eps and s.curve_tasks <= s.eval_tasks and s.sanity_tasks <= s.eval_tasks
        assert 0 < s.ramp_fraction <= 1
    train, test = rfs.train_attack(tiny), rfs.eval_attack(tiny, restarts=5)
    assert (train.steps, train.random_start) == (tiny.train_pgd_steps, True)
    assert np.isclose(train.step_size, 2.5 * tiny.eps / tiny.train_pgd_steps)
    assert (test.steps, test.restarts, test.eps) == (tiny.eval_pgd_steps, 5, tiny.eps)
    assert np.isclose(rfs.eval_attack(tiny, eps=0.2).step_size, 2.5 * 0.2 / tiny.eval_pgd_steps)


def test_cache_key_changes_with_the_options(mnist_subset, tiny):
    base = rfs.meta_config("aq", tiny, mnist_subset)
    assert rfs.meta_config("aq", tiny, mnist_subset) == base
    assert rfs.meta_config("aq", tiny, mnist_subset, ramp_steps=0) != base
    assert rfs.meta_config("aq", tiny, mnist_subset, steps=3) != base
    assert rfs.meta_config("adml", tiny, mnist_subset) != base
    json.dumps(base)  # JSON-able, so it can key the cache


def test_meta_train_caches_and_saves_a_safe_mode_model(mnist_subset, tiny, trained):
    model, info = trained["aq"]
    assert len(info["history"]["loss"]) == 4 and info["train_seconds"] > 0
    again, info2 = rfs.meta_train("aq", mnist_subset, tiny, verbose=0)
    assert info2["cached"] and not info.get("cached")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights()))
    saved = models.load_model(runtime.build_dir() / "models" / "05_aq.keras")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), saved.get_weights()))
    assert np.all(model.get_weights()[-2] == 0)  # zero head kept by the meta-learner


def test_results_follow_the_schema(mnist_subset, tiny, trained):
    _, test = rfs.samplers(mnist_subset, tiny)
    tasks = test.sample(tiny.eval_tasks, seed=0)
    at_model, at_info = rfs.at_classifier(mnist_subset, tiny, verbose=0)
    at_init = rfs.transfer_init(at_model, tiny.n_way)
    assert np.all(at_init.get_weights()[-1] == 0) and at_init.output_shape[-1] == tiny.n_way
    starts = {"maml": trained["maml"][0], "aq": trained["aq"][0], "maml_adv_finetune": trained["maml"][0],
              "at_transfer": at_init}
    evals = {m: rfs.evaluate(m, model, tasks, tiny) for m, model in starts.items()}
    seconds = {"maml": trained["maml"][1]["train_seconds"], "aq": None, "at_transfer": at_info["train_seconds"]}
    res = rfs.results(evals, seconds, tiny)
    assert set(res) == {"eps", "n_way", "k_shot", "tasks", "eval_attack", "methods"}
    assert (res["eps"], res["n_way"], res["k_shot"], res["tasks"]) == (tiny.eps, 5, tiny.k_shot, 3)
    assert list(res["methods"]) == [m for m in rfs.COMPARED if m in starts]  # table order
    for m, row in res["methods"].items():
        assert set(row) == SCHEMA_FIELDS
        for key in ("clean", "robust", "robust_restarts5"):
            assert set(row[key]) == {"mean", "ci95"} and 0 <= row[key]["mean"] <= 1
        assert row["robust_restarts5"]["mean"] <= row["robust"]["mean"] <= row["clean"]["mean"]
    assert res["methods"]["at_transfer"]["test_steps"] == tiny.at_finetune_steps  # no selection: the profile's
    assert res["methods"]["aq"]["train_seconds"] is None
    path = rfs.save(res)
    assert json.loads(path.read_text())["methods"]["aq"]["test_steps"] == tiny.train_steps
    table = rfs.results_table(res)
    assert table.count("\n") == 1 + len(starts) and "AT transfer" in table
    assert any(w in rfs.compare(res, "aq", "maml") for w in ("beats", "loses to", "ties with"))


def test_strong_column_attacks_the_adapted_weights_with_the_strong_list(mnist_subset, tiny, trained):
    s = dataclasses.replace(tiny, strong_tasks=2, strong_steps=3, strong_restarts=2)
    _, test = rfs.samplers(mnist_subset, s)
    tasks = test.sample(s.eval_tasks, seed=0)
    inits = {m: trained[m][0] for m in ("maml", "aq")}
    names = ("APGD-CE-3", "APGD-DLR-3", "PGD-3 x2")
    assert tuple(a.name for a in rfs.strong_attacks(s)) == names and rfs.strong_attacks(s)[0].eps == s.eps
    strong = rfs.strong_evaluation(inits, tasks, s)
    assert list(strong) == list(rfs.STRONG)
    for m, res in strong.items():
        assert res.clean.shape == (2, 1) and res.attacks == names and res.checkpoints == (s.train_steps,)
        ev = rfs.evaluate(m, inits[m], tasks[:2], s)  # the same adaptation as the results table
        np.testing.assert_allclose(res.clean[:, 0], ev.clean)
        assert np.all(res.robust[:, 0] <= res.per_attack[:, 0].min(axis=-1) + 1e-12)  # broken if any attack breaks it
    evals = {m: rfs.evaluate(m, inits[m], tasks, s) for m in inits}
    res = rfs.results(evals, {}, s, strong=strong)
    assert res["strong_eval"] == {"attacks": list(names), "tasks": 2, "methods": ["maml", "aq"]}
    field = res["methods"]["aq"]["worst_case"]
    assert set(field) == {"mean", "ci95", "per_attack"} and set(field["per_attack"]) == set(names)
    assert field["mean"] == pytest.approx(strong["aq"].robust[:, 0].mean())
    assert "worst_case" not in rfs.results(evals, {}, s)["methods"]["aq"]  # only added when given
    json.dumps(res)
    table = rfs.strong_table(strong, evals)
    assert table.count("\n") == 1 + len(strong) and "worst case" in table and "APGD-DLR-3" in table
    d = rfs.strong_paired(strong, "aq", "maml")
    assert d["mean"] == pytest.approx((strong["aq"].robust - strong["maml"].robust).mean())
    with pytest.raises(ValueError, match="clean support"):
        rfs.strong_evaluation({"maml_adv_finetune": inits["maml"]}, tasks, s, methods=("maml_adv_finetune",))


def test_results_refuse_different_task_sets(tiny):
    a = AD.RobustEvaluation(np.ones(3), np.ones(3), np.ones(3), 5, "PGD", 0.1, 1, 0.4, "clean")
    b = AD.RobustEvaluation(np.ones(4), np.ones(4), np.ones(4), 5, "PGD", 0.1, 1, 0.4, "clean")
    with pytest.raises(ValueError, match="same tasks"):
        rfs.results({"maml": a, "aq": b}, {}, tiny)


def test_paired_difference_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 0.7, 40), rng.uniform(0.2, 0.4, 40)
    ev = {m: AD.RobustEvaluation(v, v, None, 1, "PGD", 0.1, 1, 0.4, "clean") for m, v in (("aq", a), ("maml", b))}
    d = rfs.paired_difference(ev, "aq", "maml")
    assert np.isclose(d["mean"], (a - b).mean()) and np.isclose(d["ci95"], 1.96 * (a - b).std(ddof=1) / np.sqrt(40))
    assert "ahead of" in rfs.paired_verdict(ev, "aq", "maml") and "behind" in rfs.paired_verdict(ev, "maml", "aq")
    assert "not clearly different" in rfs.paired_verdict(ev, "aq", "aq")
    ev["short"] = AD.RobustEvaluation(a[:10], a[:10], None, 1, "PGD", 0.1, 1, 0.4, "clean")
    with pytest.raises(ValueError, match="different tasks"):
        rfs.paired_difference(ev, "aq", "short")


def test_uniform_loss_is_log_n():
    assert np.isclose(rfs.uniform_loss(5), np.log(5))


# ---- AT transfer: AQ's training compute, fine-tuning chosen on validation tasks ------------------------------
def test_training_compute_counts_every_meta_trained_method(tiny):
    learner = mad.make_learner("aq", models.few_shot_cnn(tiny.n_way), **rfs.method_options("aq", tiny))
    per_step = compute.meta_step_cost(learner, n_support=tiny.n_way * tiny.k_shot,
                                      n_query=tiny.n_way * tiny.q_queries, meta_batch=tiny.meta_batch)
    assert rfs.training_compute("aq", tiny) == round(rfs.meta_steps("aq", tiny) * per_step)
    # by hand: per task 25 support images x (1 + 2 second order) + 75 queries x (PGD-3 + 1), 4 tasks a step
    assert rfs.training_compute("aq", tiny) == 4 * 4 * (25 * 3 + 75 * 4)
    assert rfs.training_compute("maml_adv_finetune", tiny) == rfs.training_compute("maml", tiny) == 2 * 4 * 150
    # ADML: support attack against one clean step (25 x (1 + 3)), two inner loops (2 x 25 x 3), PGD-3 on the
    # queries (75 x 3) and two outer losses (2 x 75)
    assert rfs.training_compute("adml", tiny) == 4 * 4 * (25 * 4 + 2 * 25 * 3 + 75 * 3 + 2 * 75)
    # AQ + TRADES: AQ's step plus the clean queries
    assert rfs.training_compute("aq_trades", tiny) == 4 * 4 * (25 * 3 + 75 * 4 + 75)
    # the article's idea: FGSM on the support set against one clean step (25 x (1 + 1)), one inner loop, FGSM on
    # the queries, one outer loss
    assert rfs.training_compute("seed_fgsm", tiny) == 4 * 4 * (25 * 2 + 25 * 3 + 75 * 1 + 75)
    assert set(rfs.COUNTED) == set(rfs.COMPARED) - {"at_transfer"}
    with pytest.raises(ValueError, match="at_classifier"):
        rfs.training_compute("at_transfer", tiny)
    with pytest.raises(ValueError, match="method must be one of"):
        rfs.training_compute("reptile", tiny)


@pytest.mark.parametrize("n_images", [37, 1000, 8000, 10_000, 123_457])
def test_at_plan_spends_aqs_compute_within_ten_percent(n_images):
    s = runtime.get_profile("quick").meta_adv
    plan = rfs.at_training_plan(s, n_images)
    budget = rfs.training_compute("aq", s)
    assert plan["budget"] == budget and abs(plan["gradient_evaluations"] / budget - 1) <= 0.10
    assert plan["gradient_evaluations"] == compute.adversarial_training_cost(
        rfs.train_attack(s), plan["epochs"] * plan["images_per_epoch"])
    assert 1 <= plan["images_per_epoch"] <= n_images and plan["ramp_epochs"] == round(s.ramp_fraction * plan["epochs"])
    fixed = rfs.at_training_plan(dataclasses.replace(s, at_epochs=2), n_images)  # an explicit count is kept
    assert (fixed["epochs"], fixed["images_per_epoch"]) == (2, n_images)
    with pytest.raises(ValueError, match="n_images"):
        rfs.at_training_plan(s, 0)


@pytest.fixture(scope="module")
def at_tiny(mnist_subset, tiny):
    """The tiny AT classifier trained with AQ's (tiny) compute, and its transfer initialisation."""
    s = dataclasses.replace(tiny, at_epochs=None, at_select_tasks=3, at_select_steps=(0, 2), at_select_lrs=(0.1,))
    model, info = rfs.at_classifier(mnist_subset, s, verbose=0)
    return s, model, info, rfs.transfer_init(model, s.n_way)


def test_at_classifier_trains_on_training_images_with_aqs_compute(mnist_subset, at_tiny):
    s, model, info, init = at_tiny
    train, val = rfs.validation_samplers(mnist_subset, s)
    n = len(train.labelled_images()[0])
    assert info["plan"] == rfs.at_training_plan(s, n)
    assert abs(info["plan"]["gradient_evaluations"] / rfs.training_compute("aq", s) - 1) <= 0.10
    assert len(info["history"]["loss"]) == info["plan"]["epochs"] and model.output_shape[-1] == train.num_classes
    assert rfs.at_classifier(mnist_subset, s, verbose=0)[1]["cached"]
    assert {c.digit for c in val.specs}.isdisjoint({c.digit for c in rfs.samplers(mnist_subset, s)[1].specs})
    assert np.all(init.get_weights()[-1] == 0)


def test_fine_tuning_is_chosen_on_validation_and_recorded(mnist_subset, at_tiny, trained, monkeypatch):
    s, _, info, init = at_tiny
    _, val = rfs.validation_samplers(mnist_subset, s)
    val_tasks = val.sample(s.at_select_tasks, seed=0)
    selection, runs = rfs.select_at_finetuning(init, val_tasks, s, cache=False)
    cands = rfs.at_candidates(s)
    assert cands[0] == {"steps": 0, "recipe": "head", "head_init": "prototype", "lr": 0.0}
    assert len(cands) == 1 + len(rfs.AT_RECIPES) * len(rfs.AT_HEAD_INITS)  # one rate, one step count > 0
    assert selection.chosen in cands and selection.chosen in [
        {k: v for k, v in c.items() if k != "validation_robust"} for c in selection.candidates]
    best = max(c["validation_robust"] for c in selection.candidates)
    assert all(0 <= c["validation_robust"] <= 1 for c in selection.candidates)
    first_ok = next(c for c in selection.candidates if c["validation_robust"] >= best - s.at_select_tolerance)
    assert {k: v for k, v in first_ok.items() if k != "validation_robust"} == selection.chosen  # cheapest near-best
    for c in selection.candidates:  # eligible: the test attack is not masked for it
        assert rfs.masking_gap(c, runs)["mean"] <= s.at_masking_tolerance
    again, _ = rfs.select_at_finetuning(init, val_tasks, s)  # cached evaluations give the same choice
    assert rfs.select_at_finetuning(init, val_tasks, s)[0] == again
    # the cache key names the prototype head's version: a selection made with another head is never loaded
    stored = set(runtime.build_subdir("cache").glob("05_at_selection-*.npz"))
    monkeypatch.setattr(rfs, "PROTOTYPE_HEAD_VERSION", "another head")
    rfs.select_at_finetuning(init, val_tasks, s)
    assert len(set(runtime.build_subdir("cache").glob("05_at_selection-*.npz")) - stored) == 1
    monkeypatch.undo()
    record = rfs.selection_record(selection, runs, s, len(val_tasks))
    assert record["chosen_on"] == "validation" and record["validation_tasks"] == 3
    assert len(record["candidates"]) + len(record["excluded"]) == len(cands)
    table = rfs.selection_table(selection, runs, s)
    assert table.count("\n") == 1 + len(cands) and "APGD-DLR" in table
    # the test tasks: the chosen recipe, and a prototype head through the other evaluator
    _, test = rfs.samplers(mnist_subset, s)
    tasks = test.sample(s.eval_tasks, seed=0)
    evals = {"maml": rfs.evaluate("maml", trained["maml"][0], tasks, s),
             "aq": rfs.evaluate("aq", trained["aq"][0], tasks, s),
             "at_transfer": rfs.evaluate("at_transfer", init, tasks, s, recipe=selection.chosen)}
    proto = rfs.evaluate("at_transfer", init, tasks, s, recipe={**cands[0]})
    assert proto.robust_restarts.shape == (3,) and np.all(proto.robust_restarts <= proto.robust + 1e-12)
    grads = {"aq": rfs.training_compute("aq", s), "at_transfer": info["plan"]["gradient_evaluations"]}
    res = rfs.results(evals, {}, s, gradient_evaluations=grads, at_selection=selection, at_selection_record=record)
    row = res["methods"]["at_transfer"]
    assert row["selection"]["chosen_on"] == "validation" and row["gradient_evaluations"] == grads["at_transfer"]
    assert (row["test_steps"], row["inner_lr"]) == (selection.chosen["steps"], selection.chosen["lr"])
    assert SCHEMA_FIELDS <= set(row) and set(res["methods"]["maml"]) == SCHEMA_FIELDS
    assert set(res["methods"]["aq"]) == SCHEMA_FIELDS | {"gradient_evaluations"}
    json.dumps(res)
    assert "from a" in rfs.results_table(res) or "prototype head" in rfs.results_table(res)
    shots = rfs.shot_check(init, mnist_subset, s, selection.chosen, shots=(1, 2), tasks=2)
    assert set(shots) == {1, 2} and all(0 <= r["mean"] <= 1 for r in shots.values())


def test_bad_recipes_and_selection_inputs_are_clear_errors(tiny, at_tiny):
    good = {"steps": 5, "lr": 0.1, "recipe": "head", "head_init": "zero"}
    assert rfs.adaptation("at_transfer", tiny, recipe=good) == dict(steps=5, lr=0.1, head_only=True, head_init="given")
    assert rfs.adaptation("at_transfer", tiny)["steps"] == tiny.at_finetune_steps  # the profile's default
    for bad, match in (({**good, "recipe": "last"}, "recipe\\['recipe'\\]"),
                       ({**good, "head_init": "random"}, "head_init"),
                       ({**good, "steps": -1}, "steps"), ({**good, "steps": 0}, "zero head"),
                       ({**good, "lr": -0.1}, "lr"), ({"steps": 5}, "lacks")):
        with pytest.raises(ValueError, match=match):
            rfs.adaptation("at_transfer", tiny, recipe=bad)
    with pytest.raises(TypeError, match="dict"):
        rfs.check_at_recipe([5, 0.1])
    with pytest.raises(ValueError, match="applies to at_transfer"):
        rfs.adaptation("aq", tiny, recipe=good)
    s, _, _, init = at_tiny
    with pytest.raises(ValueError, match="at least 2 validation tasks"):
        rfs.select_at_finetuning(init, rfs.samplers(_subset_data(), s)[1].sample(1, seed=0), s)
    with pytest.raises(ValueError, match="at_epochs"):
        rfs.at_training_plan(dataclasses.replace(s, at_epochs=0), 100)


def _subset_data():
    from tutorial_lib import data

    return data.load_subset()


# ---- notebook 05's exercise checks ------------------------------------------------------------------------
def test_chapter_05_answer_key_passes_and_wrong_answers_get_hints(capsys):
    runs = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], bool)
    scope = {"np": np, "runs": runs}
    for key in ("05.1", "05.2", "05.3", "05.4"):
        exec(ex.SOLUTIONS[key], scope)  # noqa: S102 - our own answer key
    assert ex.check_uniform_loss(scope["answer_loss"], n_way=5)
    assert ex.check_worst_case_accuracy(scope["answer_robust"], runs)
    assert ex.check_meta_eps_ramp(scope["answer_eps"], eps=0.1, ramp_steps=300, step=150)
    assert ex.check_attacked_set(scope["answer_set"])
    assert "Not yet" not in capsys.readouterr().out
    assert not ex.check_uniform_loss(1.0) and not ex.check_worst_case_accuracy(runs.mean(), runs)
    assert not ex.check_meta_eps_ramp(0.1, eps=0.1, ramp_steps=300, step=150) and not ex.check_attacked_set("both")
    assert not ex.check_uniform_loss(None)
    out = capsys.readouterr().out
    assert "Not yet" in out and "No answer yet" in out and "1.6094" not in out
    with pytest.raises(ValueError, match="restarts, queries"):
        ex.check_worst_case_accuracy(0.5, [1, 0])


# ---- notebook 05's figures -------------------------------------------------------------------------------
def test_figures_return_figures_and_refuse_empty_input():
    methods = {"maml": {"clean": {"mean": 0.75, "ci95": 0.01}, "robust": {"mean": 0.3, "ci95": 0.02}},
               "aq": {"clean": {"mean": 0.74, "ci95": 0.01}, "robust": {"mean": 0.55, "ci95": 0.02}}}
    fig = viz.plot_clean_vs_robust(methods, labels={"aq": "AQ"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["maml", "AQ"]
    fig = viz.plot_accuracy_vs_eps({"AQ": ([0, 0.1], [0.7, 0.5], [0.01, 0.02])}, train_eps=0.1)
    assert len(fig.axes) == 1
    fig = viz.plot_meta_losses({"pure": np.full(30, np.log(5))}, window=5, reference=np.log(5))
    assert len(fig.axes[0].lines) == 2
    for call in (lambda: viz.plot_clean_vs_robust({}), lambda: viz.plot_accuracy_vs_eps({}),
                 lambda: viz.plot_meta_losses({})):
        with pytest.raises(ValueError, match="empty"):
            call()
    with pytest.raises(ValueError, match="same length"):
        viz.plot_accuracy_vs_eps({"x": ([0, 0.1], [0.5], [0.1])})
    with pytest.raises(ValueError, match="window"):
        viz.plot_meta_losses({"x": [1.0]}, window=0)
