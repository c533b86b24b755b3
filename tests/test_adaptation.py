"""Tests of tutorial_lib.adaptation: the one evaluator of adapted learners, against hand-written references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import adaptation as AD
from tutorial_lib import attacks as A
from tutorial_lib import meta as M
from tutorial_lib import models
from tutorial_lib.tasks import Tasks

N_WAY = 3


def tiny_cnn(seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    return models.few_shot_cnn(N_WAY, filters=4, blocks=2, input_shape=(8, 8, 1))


def tiny_tasks(n: int, seed: int = 0, shots: int = 2, queries: int = 3) -> Tasks:
    rng = np.random.default_rng(seed)
    sy = np.tile(np.repeat(np.arange(N_WAY), shots), (n, 1)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(N_WAY), queries), (n, 1)).astype(np.int32)
    # class-dependent brightness so adaptation has something to learn
    sx = np.clip(rng.random((n, N_WAY * shots, 8, 8, 1)) * 0.5 + sy[..., None, None, None] * 0.2, 0, 1)
    qx = np.clip(rng.random((n, N_WAY * queries, 8, 8, 1)) * 0.5 + qy[..., None, None, None] * 0.2, 0, 1)
    return Tasks(sx.astype(np.float32), sy, qx.astype(np.float32), qy, np.tile(np.arange(N_WAY), (n, 1)))


PGD = A.PGD(eps=0.1, steps=3, step_size=0.05, random_start=True)
FGSM = A.FGSM(eps=0.1)


def _reference(model, tasks, *, checkpoints, lrs, support, support_attack, recraft, query_attacks, restarts, seed,
               head_only=False):
    """One task at a time, eagerly, from meta.inner_loop and attack.generate with the documented seeds."""
    params0 = M.params_of(model)
    n = len(params0)
    first = n - 2 if head_only else 0
    seeds = AD.task_seeds(seed, len(tasks))
    fold = tf.random.experimental.stateless_fold_in
    clean_all, att_all = [], []
    for t in range(len(tasks)):
        sx, sy = tf.constant(tasks.support_x[t]), tf.constant(tasks.support_y[t])
        qx, qy = tf.constant(tasks.query_x[t]), tf.constant(tasks.query_y[t])
        s_seed = fold(tf.constant(seeds[t]), 0)

        def rate(i):
            return [0.0] * first + [lrs[min(i, len(lrs) - 1)]] * (n - first)

        def fit(p, seed_):
            adv = AD.attack_adapted(support_attack, model, p, sx, sy, seed=seed_)
            if support == "attacked":
                return adv, sy
            return tf.concat([sx, adv], 0), tf.concat([sy, sy], 0)

        p = list(params0)
        if support != "clean" and not recraft:
            x_fit, y_fit = fit(M.inner_loop(model, p, sx, sy, steps=1, lr=rate(0), first_order=True), s_seed)
        else:
            x_fit, y_fit = sx, sy
        done, cleans, atts = 0, [], []
        for c in checkpoints:
            for i in range(done, c):
                if recraft:
                    x_fit, y_fit = fit(p, fold(s_seed, i))
                p = M.inner_loop(model, p, x_fit, y_fit, steps=1, lr=rate(i), first_order=True)
            done = c
            ok = np.argmax(M.forward(model, p, qx).numpy(), -1) == tasks.query_y[t]
            cleans.append(ok)
            rows = []
            for j, a in enumerate(query_attacks):
                runs = []
                for r in range(restarts):
                    q_seed = fold(fold(tf.constant(seeds[t]), 1 + j), r)
                    x_adv = AD.attack_adapted(a, model, p, qx, qy, seed=q_seed)
                    runs.append(np.argmax(M.forward(model, p, x_adv).numpy(), -1) == tasks.query_y[t])
                rows.append(runs)
            atts.append(rows)
        clean_all.append(cleans)
        att_all.append(atts)
    return np.array(clean_all), np.array(att_all, dtype=bool)


@pytest.mark.parametrize("support,recraft", [("clean", False), ("clean+attacked", False), ("attacked", True)])
def test_matches_one_task_at_a_time_reference(support, recraft):
    model, tasks = tiny_cnn(), tiny_tasks(4)
    options = dict(checkpoints=(0, 1, 3), support=support, recraft=recraft, query_attacks=(PGD, FGSM), restarts=1,
                   seed=5)
    support_attack = None if support == "clean" else PGD
    res = AD.adapt_and_evaluate(model, tasks, lr=0.5, later_lr=0.2, support_attack=support_attack, chunk=3, **options)
    clean, att = _reference(model, tasks, lrs=[0.5, 0.2], support_attack=support_attack, **options)
    assert res.clean_mask.shape == (4, 3, 9) and res.attacked_runs.shape == (4, 3, 2, 1, 9)
    assert np.array_equal(res.clean_mask, clean)
    assert np.array_equal(res.attacked_runs, att)
    # the summaries follow from the masks: broken if any attack breaks it
    assert np.allclose(res.robust, (clean & att.all(axis=(2, 3))).mean(-1))


def test_chunk_size_does_not_change_results():
    model, tasks = tiny_cnn(1), tiny_tasks(5, seed=1)
    options = dict(checkpoints=(1, 2), lr=0.4, support="clean+attacked", support_attack=PGD, query_attacks=(PGD,),
                   restarts=2, seed=3)
    one = AD.adapt_and_evaluate(model, tasks, chunk=1, **options)
    many = AD.adapt_and_evaluate(model, tasks, chunk=5, parallel_tasks=2, **options)
    assert np.array_equal(one.clean_mask, many.clean_mask)
    assert np.array_equal(one.attacked_runs, many.attacked_runs)
    # a robust query survives every restart: more restarts can only lower robust accuracy
    assert np.all(one.robust_under([0], restarts=2) <= one.robust_under([0], restarts=1))


def test_learned_rates_and_head_only_match_hand_steps():
    model, tasks = tiny_cnn(2), tiny_tasks(3, seed=2)
    n = len(model.trainable_variables)
    schedule = [tf.constant([0.3, 0.1, 0.05])] * n  # LSLR shapes: one rate per weight tensor and step
    res = AD.adapt_and_evaluate(model, tasks, checkpoints=(0, 2, 4), rates=schedule)
    clean, _ = _reference(model, tasks, checkpoints=(0, 2, 4), lrs=[0.3, 0.1, 0.05], support="clean",
                          support_attack=None, recraft=False, query_attacks=(), restarts=1, seed=0)
    assert np.array_equal(res.clean_mask, clean)
    head = AD.adapt_and_evaluate(model, tasks, checkpoints=(3,), lr=0.5, head_only=True, query_attacks=(FGSM,))
    clean, att = _reference(model, tasks, checkpoints=(3,), lrs=[0.5], support="clean", support_attack=None,
                            recraft=False, query_attacks=(FGSM,), restarts=1, seed=0, head_only=True)
    assert np.array_equal(head.clean_mask, clean) and np.array_equal(head.attacked_runs, att)


def test_zero_head_at_zero_steps_is_a_constant_predictor():
    model, tasks = tiny_cnn(3), tiny_tasks(3, seed=3)
    for v in model.trainable_variables[-2:]:
        v.assign(tf.zeros_like(v))
    res = AD.adapt_and_evaluate(model, tasks, checkpoints=(0, 1), lr=0.5, query_attacks=(PGD,))
    assert np.allclose(res.clean[:, 0], 1 / N_WAY)  # every image gets label 0: one class in three is right
    assert np.array_equal(res.robust[:, 0], res.clean[:, 0])  # logits ignore the image: no attack changes them
    assert res.at(1)["robust"]["mean"] <= res.at(1)["clean"]["mean"]


def test_bad_input_is_refused_with_clear_errors():
    model, tasks = tiny_cnn(), tiny_tasks(2)
    with pytest.raises(ValueError, match="increasing"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(3, 1), lr=0.1)
    with pytest.raises(ValueError, match="either lr"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,))
    with pytest.raises(ValueError, match="support_attack"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,), lr=0.1, support="attacked")
    with pytest.raises(ValueError, match="support must be"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,), lr=0.1, support="adversarial", support_attack=PGD)
    with pytest.raises(ValueError, match="random_start"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,), lr=0.1, query_attacks=(FGSM,), restarts=2)
    with pytest.raises(TypeError, match="Tasks"):
        AD.adapt_and_evaluate(model, tasks.support_x, checkpoints=(1,), lr=0.1)
    with pytest.raises(ValueError, match="not 2"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,), lr=0.1).at(2)


# --- the prototype head (nearest class mean as a linear head) --------------------------------------
def _features(model, x):
    body = tf.keras.Sequential(model.layers[:-1])
    return body(x).numpy().astype(np.float64)


def test_prototype_head_is_the_nearest_class_mean_classifier():
    model, tasks = tiny_cnn(4), tiny_tasks(1, seed=4, shots=3)
    sx, sy, qx = tasks.support_x[0], tasks.support_y[0], tasks.query_x[0]
    kernel, bias = AD.prototype_head(model, M.params_of(model), tf.constant(sx), tf.constant(sy))
    f = _features(model, sx)
    mu = np.stack([f[sy == c].mean(0) for c in range(N_WAY)])  # (classes, features)
    temperature = ((mu - mu.mean(0)) ** 2).sum(1).mean()  # mean squared distance of the means from their average
    np.testing.assert_allclose(kernel.numpy(), 2 * mu.T / temperature, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias.numpy(), -(mu ** 2).sum(1) / temperature, rtol=1e-4, atol=1e-6)
    fq = _features(model, qx)
    logits = fq @ kernel.numpy() + bias.numpy()
    dist = ((fq[:, None, :] - mu[None]) ** 2).sum(-1) / temperature
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True), -dist + dist.mean(1, keepdims=True),
                               rtol=1e-4, atol=1e-5)  # -|f - mu_c|^2 / T up to a per-image shift
    assert np.array_equal(np.argmax(logits, 1), np.argmin(dist, 1))  # the nearest class mean


def test_head_init_prototype_matches_hand_steps_from_the_prototype_head():
    model, tasks = tiny_cnn(5), tiny_tasks(3, seed=5)
    res = AD.adapt_and_evaluate(model, tasks, checkpoints=(0, 2), lr=0.3, head_only=True, head_init="prototype")
    for t in range(len(tasks)):
        params = M.params_of(model)
        sx, sy = tf.constant(tasks.support_x[t]), tf.constant(tasks.support_y[t])
        params = params[:-2] + AD.prototype_head(model, params, sx, sy)
        ok0 = np.argmax(M.forward(model, params, tasks.query_x[t]).numpy(), -1) == tasks.query_y[t]
        lrs = [0.0] * (len(params) - 2) + [0.3, 0.3]
        adapted = M.inner_loop(model, params, sx, sy, steps=2, lr=lrs)
        ok2 = np.argmax(M.forward(model, adapted, tasks.query_x[t]).numpy(), -1) == tasks.query_y[t]
        assert np.array_equal(res.clean_mask[t, 0], ok0) and np.array_equal(res.clean_mask[t, 1], ok2)
    with pytest.raises(ValueError, match="head_init"):
        AD.adapt_and_evaluate(model, tasks, checkpoints=(1,), lr=0.3, head_init="mean")


def test_apgd_and_the_strong_list_run_against_adapted_weights():
    """APGD (CE and DLR) and evaluate.strong_attacks work as query attacks of the evaluator, against the ADAPTED
    weights: the masks equal the one-task-at-a-time reference, and the list breaks at least what its PGD does."""
    from tutorial_lib import evaluate as E

    model, tasks = tiny_cnn(4), tiny_tasks(3, seed=4)
    strong = E.strong_attacks(0.15, steps=6, restarts=2)
    assert [type(a).__name__ for a in strong] == ["APGD", "APGD", "PGD"]
    options = dict(checkpoints=(1, 3), support="clean", recraft=False, query_attacks=tuple(strong), restarts=1, seed=2)
    res = AD.adapt_and_evaluate(model, tasks, lr=0.5, chunk=2, **options)
    clean, att = _reference(model, tasks, lrs=[0.5], support_attack=None, **options)
    assert res.attacks == tuple(a.name for a in strong)
    assert np.array_equal(res.clean_mask, clean)
    assert np.array_equal(res.attacked_runs, att)
    assert np.all(res.robust <= res.per_attack[:, :, 2] + 1e-12)  # the worst case is at most each attack's own
    assert np.all(res.robust <= res.clean)
    assert res.robust.mean() < res.clean.mean()  # the attacks do attack the adapted model
