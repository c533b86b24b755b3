"""Tests for tutorial_lib.experiments.unseen_attacks (notebook 06's driver) on tiny models and tasks: the six
attack families, equal compute of the union-AT baseline, the adaptation recipes and their selection on
validation tasks, the interval over seeds x tasks, paired verdicts, the results schema and the figures."""

from __future__ import annotations

import dataclasses

import keras
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from tutorial_lib import adaptation, attacks, compute, evaluate, models, runtime, viz
from tutorial_lib.experiments import unseen_attacks as ua
from tutorial_lib.tasks import Tasks


@pytest.fixture(scope="module")
def settings():
    return dataclasses.replace(runtime.get_profile("quick").unseen, eval_pgd_steps=2, train_pgd_steps=1,
                               rotation_steps=3, translation_steps=3, zoom_shear_steps=3, train_rotation_steps=3,
                               train_grid_steps=3, select_steps=(1, 2), curve_steps=(0, 1, 2), held_out=("linf",),
                               seeds=(0, 1), later_lrs=(0.1,), finetune_lrs=(0.05,))


def tiny_tasks(n_tasks=3, n_way=3, k=2, q=2, size=12, seed=0) -> Tasks:
    """Random tasks whose classes differ in brightness (learnable in a few steps)."""
    rng = np.random.default_rng(seed)

    def images(per_class):
        y = np.tile(np.repeat(np.arange(n_way), per_class), (n_tasks, 1)).astype(np.int32)
        x = rng.uniform(0, 0.3, (n_tasks, n_way * per_class, size, size, 1)) + 0.3 * y[..., None, None, None]
        return np.clip(x, 0, 1).astype(np.float32), y

    sx, sy = images(k)
    qx, qy = images(q)
    return Tasks(sx, sy, qx, qy, np.tile(np.arange(n_way, dtype=np.int32), (n_tasks, 1)))


def tiny_model(n_way=3, size=12, seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return models.few_shot_cnn(n_way, filters=4, blocks=2, input_shape=(size, size, 1))


# ---- families ------------------------------------------------------------------------------------
def test_six_families_three_geometric(settings):
    assert len(ua.FAMILIES) == 6 and set(ua.GEOMETRIC) <= set(ua.FAMILIES) and len(ua.GEOMETRIC) == 3
    for family in ua.FAMILIES:
        test, train = ua.family_attack(family, settings), ua.family_attack(family, settings, train=True)
        assert test.family == train.family == family
        assert compute.attack_cost(train) <= compute.attack_cost(test)
    linf = ua.family_attack("linf", settings)
    assert isinstance(linf, attacks.PGD) and linf.eps == settings.linf_eps and linf.random_start
    assert ua.family_attack("l2", settings).eps == settings.l2_eps
    assert isinstance(ua.family_attack("l1", settings), attacks.SparseL1Descent)
    rot = ua.family_attack("rotation", settings)
    assert rot.max_angle == settings.rotation_max_angle and rot.grid_points == settings.rotation_steps
    assert ua.family_attack("rotation", settings, finer=True).grid_points == 2 * settings.rotation_steps - 1
    assert ua.family_attack("translation", settings).interpolation == "bilinear"
    assert ua.family_attack("l2", settings, scale=5.0).eps == pytest.approx(5 * settings.l2_eps)
    assert ua.family_attack("zoom_shear", settings, scale=2.0).max_zoom == pytest.approx(2 * settings.max_zoom)
    mim = ua.eval_attacks("linf", dataclasses.replace(settings, linf_mim=True))
    assert [type(a).__name__ for a in mim] == ["PGD", "MIM"]
    with pytest.raises(ValueError, match="family must be one of"):
        ua.family_attack("elastic", settings)


def test_train_pool_holds_out_each_family(settings):
    pool = ua.train_pool(settings)
    assert pool.families == ua.FAMILIES
    for family in ua.FAMILIES:
        left = pool.without(family)
        assert family not in left.families and len(left) == 5 and left.held_out == family
    assert ua.model_name("meta_adv", "rotation", 2) == "06_meta_adv_without_rotation_seed2"
    assert ua.model_name("oracle", None, 0) == "06_oracle_seed0"
    with pytest.raises(ValueError):
        ua.model_name("maml", "linf", 0)


def test_union_at_gets_the_meta_learners_compute(settings):
    ms = runtime.get_profile("quick").meta_adv
    s = runtime.get_profile("quick").unseen
    for family in ua.FAMILIES:
        epochs, per_epoch = ua.union_steps(s, ms, family)
        union = compute.adversarial_training_cost(ua.train_pool(s).without(family),
                                                  epochs * per_epoch * s.union_batch_size)
        ours = s.meta_steps * ua.meta_step_cost(s, ms, family)
        assert abs(union / ours - 1) <= 0.10, (family, union, ours)


# ---- recipes, adaptation and selection -----------------------------------------------------------------
def test_candidates_and_options(settings):
    for method in ua.METHODS:
        cands = ua.candidates(method, settings)
        assert cands and all({"steps", "recipe", "lr"} <= set(c) for c in cands)
    assert ua.candidates("meta_adv", settings) == [{"steps": settings.inner_steps, "recipe": "learned", "lr": None}]
    assert {c["steps"] for c in ua.candidates("union_at_finetune", settings)} == {0, *settings.select_steps}
    learner = ua.Learner("union_at_finetune", tiny_model(), None, {})
    opts = ua.adapt_options(learner, {"steps": 1, "recipe": "prototype+head", "lr": 0.05}, settings)
    assert opts == {"lr": 0.05, "head_only": True, "head_init": "prototype"}
    opts = ua.adapt_options(learner, {"steps": 1, "recipe": "full_after_first", "lr": 0.1}, settings)
    assert opts == {"lr": settings.adapt_lr, "later_lr": 0.1}
    with pytest.raises(ValueError, match="method must be one of"):
        ua.candidates("reptile", settings)
    with pytest.raises(ValueError, match="unknown recipe"):
        ua.adapt_options(learner, {"steps": 1, "recipe": "magic", "lr": 0.1}, settings)


def test_adapt_and_attack_is_the_evaluator_with_attacked_support(settings):
    """The shared architecture gives exactly what adapt_and_evaluate gives on the learner's own model."""
    tasks = tiny_tasks()
    learner = ua.Learner("maml", tiny_model(seed=3), None, {})
    recipe = {"steps": 2, "recipe": "full_after_first", "lr": 0.1}
    got = ua.adapt_and_attack(learner, "linf", tasks, recipe, settings, checkpoints=(0, 2))
    want = adaptation.adapt_and_evaluate(learner.init, tasks, checkpoints=(0, 2), lr=settings.adapt_lr, later_lr=0.1,
                                         support="clean+attacked", support_attack=ua.family_attack("linf", settings),
                                         recraft=True, query_attacks=ua.eval_attacks("linf", settings))
    np.testing.assert_array_equal(got.clean_mask, want.clean_mask)
    np.testing.assert_array_equal(got.attacked_runs, want.attacked_runs)
    geometric = ua.adapt_and_attack(learner, "rotation", tasks, recipe, settings, checkpoints=(2,), restarts=3)
    assert geometric.attacked_runs.shape[3] == 1  # a grid is deterministic: one run, not three equal ones


def test_select_scores_on_validation_tasks_and_keeps_every_candidate(settings):
    tasks = tiny_tasks(n_tasks=4, seed=1)
    learners = {"maml": {None: ua.Learner("maml", tiny_model(seed=1), None, {})}}
    sel = ua.select("maml", learners, tasks, settings)
    cands = ua.candidates("maml", settings)
    assert len(sel.candidates) == len(cands)
    best = max(c["validation_robust"] for c in sel.candidates)
    chosen = next(c for c in sel.candidates if all(c[k] == sel.chosen[k] for k in ("steps", "recipe", "lr")))
    assert chosen["validation_robust"] >= best - settings.select_tolerance
    record = sel.to_dict()
    assert record["chosen_on"] == "validation" and {"steps", "recipe", "lr", "candidates"} <= set(record)
    # the score is the robust accuracy of that recipe on those tasks
    c = sel.candidates[0]
    res = ua.adapt_and_attack(learners["maml"][None], "linf", tasks, c, settings, checkpoints=(c["steps"],), restarts=1)
    assert c["validation_robust"] == pytest.approx(float(res.robust[:, -1].mean()))


# ---- intervals, paired verdicts, results ----------------------------------------------------------------
def test_crossed_interval():
    rng = np.random.default_rng(0)
    one = rng.uniform(size=(1, 30))
    assert ua.crossed_ci95(one) == evaluate.mean_ci95_record(one[0])
    tasks_only = np.tile(rng.uniform(size=30), (3, 1))  # seeds agree exactly: the task interval
    assert ua.crossed_ci95(tasks_only)["ci95"] == pytest.approx(evaluate.mean_ci95_record(tasks_only[0])["ci95"])
    shifted = tasks_only + np.array([[0.0], [0.2], [0.4]])  # seeds disagree: wider
    assert ua.crossed_ci95(shifted)["ci95"] > ua.crossed_ci95(tasks_only)["ci95"]
    assert ua.crossed_ci95(shifted)["mean"] == pytest.approx(shifted.mean())
    with pytest.raises(ValueError, match="seeds, tasks"):
        ua.crossed_ci95(np.zeros(5))


def _result(robust: np.ndarray, checkpoints=(0, 1, 2)) -> adaptation.AdaptationResult:
    """An AdaptationResult whose robust accuracy is ``robust`` (tasks,) at every checkpoint (2 queries)."""
    t = len(robust)
    q = np.stack([robust >= 0.5, robust >= 1.0], -1)  # per-task fraction in {0, .5, 1}
    clean = np.ones((t, len(checkpoints), 2), bool)
    attacked = np.broadcast_to(q[:, None, None, None, :], (t, len(checkpoints), 1, 1, 2)).copy()
    return adaptation.AdaptationResult(tuple(checkpoints), clean, attacked, ("PGD-2",))


def test_cells_paired_verdicts_and_results_schema(settings):
    rng = np.random.default_rng(1)
    hi = [_result(rng.choice([0.5, 1.0], 20)) for _ in range(2)]
    lo = [_result(np.zeros(20))]
    cells = {"linf": {}}
    for m in ua.METHODS:
        res = hi if m in ("meta_adv", "oracle", "union_at_finetune") else lo
        seeds = ua.method_seeds(m, settings)
        cells["linf"][m] = {k: ua.Cell(m, "linf", k, 1, seeds, res[: len(seeds)]) for k in settings.shots}
    d = ua.paired(cells["linf"]["meta_adv"][5], cells["linf"]["maml"][5])
    assert d["verdict"] == "ahead" and d["mean"] > 0
    assert ua.paired(cells["linf"]["maml"][5], cells["linf"]["meta_adv"][5])["verdict"] == "behind"
    assert ua.verdict({"mean": 0.01, "ci95": 0.02}) == "tied"
    sel = {m: adaptation.Selection(ua.candidates(m, settings)[0],
                                   [dict(c, validation_robust=0.5) for c in ua.candidates(m, settings)])
           for m in ua.METHODS}
    learners = {m: {None: ua.Learner(m, tiny_model(), None, {"gradient_evaluations": 10, "train_seconds": 1.0})}
                for m in ua.METHODS}
    probe = {f: {"mean": 0.3, "ci95": 0.05} for f in ua.FAMILIES}
    result = ua.results(settings=settings, probe=probe, selections=sel, learners=learners, cells=cells)
    assert set(result) >= {"families", "k_shots", "seeds", "selection", "compute", "held_out", "paired"}
    assert result["families"]["rotation"]["geometric"] and not result["families"]["l1"]["geometric"]
    assert result["families"]["linf"]["maml_robust"] == probe["linf"]
    entry = result["held_out"]["linf"]["meta_adv"]["5shot"]
    assert {"clean", "robust", "per_seed", "curve"} <= set(entry)
    assert [p["seed"] for p in entry["per_seed"]] == list(settings.seeds)
    assert set(entry["curve"]) == {"0", "1", "2"}
    assert result["paired"]["linf"]["meta_adv_vs_union_at_finetune"]["verdict"] == "tied"
    assert result["selection"]["maml"]["chosen_on"] == "validation"
    assert result["compute"]["maml"]["gradient_evaluations"] == 10
    for text in (ua.held_out_table(result, 5), ua.selection_table(result), ua.paired_table(result)):
        assert text.startswith("|") and "attack-adaptive MAML" in text
    fig = viz.plot_adaptation_by_family(result["held_out"], list(settings.curve_steps), labels=ua.LABELS)
    assert len(fig.axes) == 1
    fig = viz.plot_attack_matrix({"maml": {f: probe[f] for f in ua.FAMILIES}}, row_labels={"maml": "MAML"})
    assert fig is not None


# ---- exercises ------------------------------------------------------------------------------------
def test_exercise_checks_and_answer_key():
    from tutorial_lib import exercises as ex

    scope = {"np": np}
    exec(ex.SOLUTIONS["06.1"], scope)  # noqa: S102 - our own answer key
    assert ex.check_grid_points(scope["answer_points"], angle_steps=9, shift_steps=5)
    acc = np.random.default_rng(2).uniform(0, 1, 30)
    scope = {"np": np, "acc": acc}
    exec(ex.SOLUTIONS["06.2"], scope)  # noqa: S102
    assert ex.check_ci95(scope["answer_ci"], acc)
    runs = np.random.default_rng(3).uniform(size=(3, 10)) > 0.3
    scope = {"np": np, "runs": runs}
    exec(ex.SOLUTIONS["06.3"], scope)  # noqa: S102
    assert ex.check_worst_case_accuracy(scope["answer_all"], runs)
