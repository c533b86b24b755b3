"""Tests for tutorial_lib.experiments.unseen_attacks (notebook 06's driver) on tiny models and tasks: the attack
families, meta-training on an attack pool against a hand-computed reference, evaluation with attacked support
sets against the adapted weights, the results schema and the figures."""

from __future__ import annotations

import dataclasses

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf

matplotlib.use("Agg")

from tutorial_lib import attacks, meta, models, runtime, viz
from tutorial_lib import meta_adversarial as mad
from tutorial_lib.experiments import unseen_attacks as ua
from tutorial_lib.tasks import Tasks


@pytest.fixture(scope="module")
def settings():
    return dataclasses.replace(runtime.get_profile("quick").unseen, eval_tasks=3, eval_pgd_steps=2,
                               adapt_steps=(0, 1, 3), k_shots=(1, 2), meta_steps=2, sanity_tasks=3)


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
def test_eval_attacks_per_family(settings):
    linf = ua.eval_attacks("linf", settings)
    assert [type(a).__name__ for a in linf] == ["PGD"] and linf[0].eps == settings.linf_eps
    with_mim = ua.eval_attacks("linf", dataclasses.replace(settings, linf_mim=True))
    assert [type(a).__name__ for a in with_mim] == ["PGD", "MIM"]
    (l2,) = ua.eval_attacks("l2", settings, l2_eps=1.5)
    assert l2.norm == 2 and l2.eps == 1.5 and l2.family == "l2"
    (sp,) = ua.eval_attacks("spatial", settings)
    assert sp.family == "spatial" and sp.max_angle == settings.spatial_max_angle
    assert ua.eval_attacks("linf", settings, scale=5.0)[0].eps == pytest.approx(5 * settings.linf_eps)
    with pytest.raises(ValueError, match="l2_eps"):
        ua.eval_attacks("l2", settings)
    with pytest.raises(ValueError, match="family"):
        ua.eval_attacks("rotation", settings)


def test_train_pool_leaves_one_family_out(settings):
    pool = ua.train_pool(settings, 1.5)
    assert set(pool.families) == set(ua.FAMILIES)
    for family in ua.FAMILIES:
        kept = pool.without(family)
        assert family not in kept.families and kept.held_out == family
    # each family carries the same total weight
    probs = dict.fromkeys(ua.FAMILIES, 0.0)
    for fam, p in zip(pool.families, pool.probabilities):
        probs[fam] += p
    assert np.allclose(list(probs.values()), 1 / 3)
    described = ua.describe_families(settings, 1.5)
    assert set(described) == set(ua.FAMILIES) and described["l2"]["eps"] == 1.5


# ---- meta-training on a pool -----------------------------------------------------------------------
def test_pool_learner_gradient_equals_aq_with_the_drawn_spec():
    """A one-spec pool without ramp gives exactly AQ's task gradient with that spec (same seed)."""
    tasks = tiny_tasks()
    spec = attacks.PGD(eps=0.1, steps=2, step_size=0.05, random_start=True)
    model = tiny_model()
    learner = mad.PoolQuerying(model, pool=attacks.AttackPool([spec]), inner_lr=0.4, inner_steps=1, clean_weight=0.3,
                              zero_head=True)
    params = meta.params_of(model)
    seed = tf.constant([0, 5], tf.int64)
    args = [tf.constant(a) for a in (tasks.support_x[0], tasks.support_y[0], tasks.query_x[0], tasks.query_y[0])]
    got, loss, _ = learner._task_gradient(params, *args, eps=tf.constant(1.0), seed=seed)
    want, want_loss, _ = mad.aq_task_gradient(model, params, *args, attack=spec, steps=1, lr=0.4, seed=seed,
                                              clean_weight=0.3, zero_head=True)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-6)


def test_pool_learner_ramp_and_meta_step_changes_weights():
    pool = attacks.AttackPool([attacks.FGSM(eps=0.1), attacks.Spatial(max_angle=10, max_shift=1, angle_steps=3,
                                                                      shift_steps=3)])
    model = tiny_model()
    learner = mad.PoolQuerying(model, pool=pool, ramp_steps=4, zero_head=True)
    assert [learner.eps_at(i) for i in (0, 2, 3, 9)] == [0.25, 0.75, 1.0, 1.0]
    before = [w.copy() for w in model.get_weights()]
    loss, acc = learner.meta_step(tiny_tasks(n_tasks=2))
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert any(not np.allclose(a, b) for a, b in zip(before[:-2], model.get_weights()[:-2]))
    assert "PoolQuerying" in repr(learner)


def test_pool_learner_bad_input():
    with pytest.raises(TypeError, match="AttackPool"):
        mad.PoolQuerying(tiny_model(), pool=[attacks.FGSM(eps=0.1)])
    with pytest.raises(ValueError, match="attack="):
        mad.PoolQuerying(tiny_model(), pool=attacks.AttackPool([attacks.FGSM(eps=0.1)]), attack=attacks.FGSM(eps=0.1))


# ---- evaluation --------------------------------------------------------------------------------------
def _hand_accuracy(model, params, sx, sy, qx, qy, steps, lrs):
    adapted = meta.inner_loop(model, params, tf.constant(sx), tf.constant(sy), steps=steps, lr=lrs, first_order=True)
    pred = np.argmax(meta.forward(model, adapted, tf.constant(qx)).numpy(), -1)
    return float(np.mean(pred == qy)), adapted


def test_adapt_and_attack_clean_matches_hand_adaptation():
    tasks = tiny_tasks()
    model = tiny_model()
    params = meta.params_of(model)
    ev = ua.adapt_and_attack(model, tasks, params, query_attacks=[attacks.FGSM(eps=0.05)], steps=(0, 1, 3), lr=0.4,
                             later_lr=0.1)
    assert ev.clean.shape == (3, 3) and ev.robust.shape == (3, 3) and ev.per_attack.shape == (3, 3, 1)
    for t in range(3):
        sx, sy, qx, qy = tasks.support_x[t], tasks.support_y[t], tasks.query_x[t], tasks.query_y[t]
        want0, _ = _hand_accuracy(model, params, sx, sy, qx, qy, 0, 0.4)
        want1, after1 = _hand_accuracy(model, params, sx, sy, qx, qy, 1, 0.4)
        want3, _ = _hand_accuracy(model, after1, sx, sy, qx, qy, 2, 0.1)  # first step at 0.4, the next two at 0.1
        np.testing.assert_allclose(ev.clean[t], [want0, want1, want3])
    assert np.all(ev.robust <= ev.clean + 1e-9)


def test_adapt_and_attack_robust_matches_hand_attack_on_adapted_weights():
    """FGSM (deterministic) against the weights after 2 steps, by hand with a GradientTape."""
    tasks = tiny_tasks()
    model = tiny_model()
    params = meta.params_of(model)
    eps = 0.08
    ev = ua.adapt_and_attack(model, tasks, params, query_attacks=[attacks.FGSM(eps=eps)], steps=(2,), lr=0.4)
    for t in range(3):
        clean, adapted = _hand_accuracy(model, params, tasks.support_x[t], tasks.support_y[t], tasks.query_x[t],
                                        tasks.query_y[t], 2, 0.4)
        x = tf.constant(tasks.query_x[t])
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
                tasks.query_y[t], meta.forward(model, adapted, x), from_logits=True))
        x_adv = tf.clip_by_value(x + eps * tf.sign(tape.gradient(loss, x)), 0, 1)
        ok_clean = np.argmax(meta.forward(model, adapted, x).numpy(), -1) == tasks.query_y[t]
        ok_adv = np.argmax(meta.forward(model, adapted, x_adv).numpy(), -1) == tasks.query_y[t]
        assert ev.robust[t, 0] == pytest.approx(np.mean(ok_clean & ok_adv))


def test_head_only_and_attacked_support():
    tasks = tiny_tasks()
    model = tiny_model()
    params = meta.params_of(model)
    spatial = attacks.Spatial(max_angle=20, max_shift=2, angle_steps=3, shift_steps=3)
    head = ua.adapt_and_attack(model, tasks, params, query_attacks=[spatial], steps=(3,), lr=0.4, head_only=True)
    lrs = [0.0] * (len(params) - 2) + [0.4, 0.4]
    for t in range(3):
        want, _ = _hand_accuracy(model, params, tasks.support_x[t], tasks.support_y[t], tasks.query_x[t],
                                 tasks.query_y[t], 3, lrs)
        assert head.clean[t, 0] == pytest.approx(want)
    # with attacked support the adaptation sees 2K images per class: equal to adapting on support + its attacked copy
    fgsm = attacks.FGSM(eps=0.1)
    both = ua.adapt_and_attack(model, tasks, params, query_attacks=[fgsm], steps=(3,), lr=0.4, support_attack=fgsm)
    for t in range(3):
        sx, sy = tf.constant(tasks.support_x[t]), tf.constant(tasks.support_y[t])
        adv = mad.attack_support(fgsm, model, params, sx, sy, lr=0.4).numpy()
        want, _ = _hand_accuracy(model, params, np.concatenate([tasks.support_x[t], adv]),
                                 np.concatenate([tasks.support_y[t]] * 2), tasks.query_x[t], tasks.query_y[t], 3, 0.4)
        assert both.clean[t, 0] == pytest.approx(want)


def test_robust_is_worst_case_over_the_family():
    tasks = tiny_tasks()
    model = tiny_model()
    atks = [attacks.FGSM(eps=0.1), attacks.Spatial(max_angle=20, max_shift=2, angle_steps=3, shift_steps=3)]
    ev = ua.adapt_and_attack(model, tasks, meta.params_of(model), query_attacks=atks, steps=(1,), lr=0.4)
    assert np.all(ev.robust <= ev.per_attack.min(axis=2) + 1e-9)
    np.testing.assert_allclose(ev.robust, ev.robust_under([0, 1]))
    np.testing.assert_allclose(ev.per_attack[:, :, 0], ev.robust_under([0]))


def test_adapt_and_attack_bad_input():
    tasks, model = tiny_tasks(), tiny_model()
    params = meta.params_of(model)
    with pytest.raises(ValueError, match="increasing"):
        ua.adapt_and_attack(model, tasks, params, query_attacks=[attacks.FGSM(eps=0.1)], steps=(5, 1), lr=0.4)
    with pytest.raises(TypeError, match="query_attacks"):
        ua.adapt_and_attack(model, tasks, params, query_attacks=[], steps=(1,), lr=0.4)
    with pytest.raises(TypeError, match="Tasks"):
        ua.adapt_and_attack(model, tasks.support_x, params, query_attacks=[attacks.FGSM(eps=0.1)], steps=(1,), lr=0.4)
    with pytest.raises(ValueError, match="2 tasks"):
        ua.adapt_and_attack(model, tasks[0], params, query_attacks=[attacks.FGSM(eps=0.1)], steps=(1,), lr=0.4)


# ---- results ------------------------------------------------------------------------------------------
def _fake_adaptation(rng, steps=(0, 1, 3), n=4, queries=10):
    clean = rng.uniform(size=(n, len(steps), queries)) < 0.8
    attacked = rng.uniform(size=(n, len(steps), 1, 1, queries)) < 0.5
    return ua.Adaptation(checkpoints=steps, clean_mask=clean, attacked_runs=attacked, attacks=("x",))


def test_results_schema_table_and_figures(settings, rng):
    held_out = {f: {m: {k: _fake_adaptation(rng) for k in settings.k_shots} for m in ua.COMPARED} for f in ua.FAMILIES}
    matrix = {r: {f: {"mean": 0.5, "ci95": 0.05} for f in ua.FAMILIES} for r in ua.matrix_rows()}
    result = ua.results(held_out, matrix, settings, l2_eps=1.5)
    assert {"families", "k_shots", "steps", "held_out"} <= set(result)
    assert result["k_shots"] == [1, 2] and result["steps"] == [0, 1, 3]
    for f in ua.FAMILIES:
        assert set(result["families"][f]) == {"attacks", "eps"}
        for m in ua.COMPARED:
            cell = result["held_out"][f][m]["2shot"]
            assert set(cell) == {"clean", "robust"} and set(cell["robust"]) == {"0", "1", "3"}
            assert cell["robust"]["3"]["mean"] == pytest.approx(held_out[f][m][2].robust[:, 2].mean())
            assert cell["clean"]["mean"] == pytest.approx(held_out[f][m][2].clean[:, -1].mean())
    table = ua.held_out_table(result)
    assert table.count("\n") == 1 + 3 * 4 * 2 and "leave-one-out AQ" in table
    order = ua.ordering(result, "l2", 2, 3)
    assert [o[1] for o in order] == sorted((o[1] for o in order), reverse=True)
    d = ua.paired(held_out, "l2", "maml", "aq_linf", 2, 3)
    assert d["mean"] == pytest.approx((held_out["l2"]["maml"][2].robust[:, 2] - held_out["l2"]["aq_linf"][2].robust[:, 2]).mean())
    assert ua.verdict({"mean": 0.1, "ci95": 0.05}) == "ahead" and ua.verdict({"mean": 0.0, "ci95": 0.05}) == "tied"
    fig = viz.plot_adaptation_by_family(result["held_out"], result["steps"], labels=ua.LABELS,
                                        family_labels=ua.FAMILY_LABELS)
    assert len(fig.axes) == 3
    fig2 = viz.plot_attack_matrix(matrix, row_labels={r: ua.matrix_label(r) for r in matrix})
    assert isinstance(fig2, matplotlib.figure.Figure)
    with pytest.raises(ValueError):
        viz.plot_attack_matrix({})


def test_exercise_checks_and_answer_key(capsys):
    from tutorial_lib import exercises as ex

    scope = {"np": np}
    exec(ex.SOLUTIONS["06.1"], scope)  # noqa: S102 - our own answer key
    assert scope["answer_points"] == attacks.Spatial(angle_steps=9, shift_steps=5).grid_points
    assert ex.check_grid_points(scope["answer_points"], angle_steps=9, shift_steps=5)
    assert not ex.check_grid_points(9 * 5, angle_steps=9, shift_steps=5)
    acc = np.random.default_rng(2).uniform(0, 1, 30)
    scope = {"np": np, "acc": acc}
    exec(ex.SOLUTIONS["06.2"], scope)  # noqa: S102
    assert ex.check_ci95(scope["answer_ci"], acc)
    runs = np.random.default_rng(3).uniform(size=(3, 10)) > 0.3
    scope = {"np": np, "runs": runs}
    exec(ex.SOLUTIONS["06.3"], scope)  # noqa: S102
    assert ex.check_worst_case_accuracy(scope["answer_all"], runs)


def test_strong_column_attacks_the_tables_adapted_weights(settings):
    s = dataclasses.replace(settings, strong_tasks=2, strong_steps=3, strong_restarts=2, matrix_k=2)
    tasks = tiny_tasks(n_tasks=3)
    inits = {f: {"maml": tiny_model(seed=1), "meta_adv_pool": tiny_model(seed=2)} for f in ua.STRONG_FAMILIES}
    assert [a.name for a in ua.strong_attacks("l2", s, l2_eps=0.5)] == ["APGD-CE-3 L2", "APGD-DLR-3 L2", "PGD-3 L2 x2"]
    assert ua.strong_attacks("linf", s, l2_eps=0.5)[0].eps == s.linf_eps
    strong = ua.strong_column(inits, tasks, s, l2_eps=0.5)
    held_out = {f: {m: {2: ua.evaluate_method(m, init, f, tasks, s, l2_eps=0.5)} for m, init in inits[f].items()}
                for f in ua.STRONG_FAMILIES}
    for f, per in strong.items():
        for m, ev in per.items():
            assert ev.clean.shape == (2, 1) and ev.steps == (3,)
            # the same support sets, seeds and adaptation as the table: the same adapted weights
            np.testing.assert_array_equal(ev.clean_mask[:, 0], held_out[f][m][2].clean_mask[:2, -1])
            assert np.all(ev.robust[:, 0] <= ev.per_attack[:, 0].min(axis=-1) + 1e-12)
    record = ua.strong_record(strong, s)
    assert (record["tasks"], record["k_shot"], record["steps"]) == (2, 2, 3)
    assert set(record["families"]) == {"linf", "l2"}
    assert set(record["families"]["l2"]["methods"]["maml"]) == {"mean", "ci95"}
    assert record["families"]["l2"]["attacks"] == ["APGD-CE-3 L2", "APGD-DLR-3 L2", "PGD-3 L2 x2"]
    table = ua.strong_table(strong, held_out, s)
    assert table.count("\n") == 1 + 4 and "worst case" in table
    with pytest.raises(ValueError, match="gradient families"):
        ua.strong_attacks("spatial", s, l2_eps=0.5)
