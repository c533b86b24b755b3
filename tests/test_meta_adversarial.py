"""Tests for tutorial_lib.meta_adversarial against independent references: AQ's meta-gradient reduces to MAML's
(eps = 0, a fixed perturbation), TRADES and ADML losses by hand, attacks target the adapted weights, the restarts
rule, the eps ramp without retracing, tf.distribute on two logical CPUs, bad input, safe-mode saving."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras
from tutorial_lib import adaptation as AD
from tutorial_lib import attacks as A
from tutorial_lib import compiled as C
from tutorial_lib import meta as M
from tutorial_lib import meta_adversarial as MA
from tutorial_lib import tasks as T

PGD3 = A.PGD(eps=0.1, steps=3, step_size=0.05)


def tiny_mlp(dtype: str = "float64", seed: int = 0) -> keras.Model:
    """4 inputs in [0, 1] -> 3 tanh -> 2 logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype=dtype), keras.layers.Dense(3, activation="tanh", dtype=dtype),
                             keras.layers.Dense(2, dtype=dtype)])


def tiny_task(seed: int, n: int = 6, dtype=np.float64):
    """Support and query sets with pixels in [0.2, 0.8] (so small perturbations are never clipped), exactly
    representable in float32 (the attacks compute in float32)."""
    rng = np.random.default_rng(seed)

    def pixels():
        return rng.uniform(0.2, 0.8, size=(n, 4)).astype(np.float32).astype(dtype)

    return pixels(), rng.integers(0, 2, n).astype(np.int32), pixels(), rng.integers(0, 2, n).astype(np.int32)


def tiny_batch(n_tasks: int = 2, dtype=np.float64) -> T.Tasks:
    tasks = [tiny_task(s, dtype=dtype) for s in range(n_tasks)]
    return T.Tasks(*[np.stack([t[i] for t in tasks]) for i in range(4)], classes=np.zeros((n_tasks, 2), np.int32))


def flat(grads) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(g)) for g in grads])


class FixedPerturbation:
    """A stand-in attack that adds a fixed delta (so AQ's outer loss is MAML's on x + delta)."""

    def __init__(self, delta):
        self.delta = delta

    def generate(self, model_fn, x, y, *, eps=None, seed=None):
        return tf.stop_gradient(tf.convert_to_tensor(x) + tf.cast(self.delta, tf.convert_to_tensor(x).dtype))


# ----------------------------------------------------------------------------------------------
# AQ's meta-gradient against MAML's
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_order", [False, True])
def test_aq_gradient_with_eps_zero_equals_maml(first_order):
    model, task = tiny_mlp(), tiny_task(0)
    params = [v.numpy() for v in model.trainable_variables]
    maml, maml_loss, _ = M.maml_task_gradient(model, params, *task, steps=2, lr=0.5, first_order=first_order)
    aq, aq_loss, _ = MA.aq_task_gradient(model, params, *task, attack=PGD3, steps=2, lr=0.5, eps=0.0,
                                         first_order=first_order)
    np.testing.assert_allclose(flat(aq), flat(maml), rtol=1e-10, atol=1e-12)
    assert float(aq_loss) == pytest.approx(float(maml_loss), rel=1e-12)
    # and with eps > 0 it is a different gradient (the test can tell them apart)
    adv, _, _ = MA.aq_task_gradient(model, params, *task, attack=PGD3, steps=2, lr=0.5, first_order=first_order,
                                    seed=tf.constant([0, 1], tf.int64))
    assert np.linalg.norm(flat(adv) - flat(maml)) / np.linalg.norm(flat(maml)) > 1e-2


def test_aq_gradient_with_a_fixed_perturbation_equals_maml_on_perturbed_queries():
    model, (sx, sy, qx, qy) = tiny_mlp(), tiny_task(1)
    params = [v.numpy() for v in model.trainable_variables]
    delta = np.random.default_rng(2).choice([-0.1, 0.1], size=qx.shape)
    aq, _, _ = MA.aq_task_gradient(model, params, sx, sy, qx, qy, attack=FixedPerturbation(delta), steps=1, lr=0.7)
    maml, _, _ = M.maml_task_gradient(model, params, sx, sy, qx + delta, qy, steps=1, lr=0.7)
    np.testing.assert_allclose(flat(aq), flat(maml), rtol=1e-10, atol=1e-12)
    clean, _, _ = M.maml_task_gradient(model, params, sx, sy, qx, qy, steps=1, lr=0.7)
    assert np.linalg.norm(flat(aq) - flat(clean)) > 1e-3


def test_aq_gradient_stops_at_a_real_attack():
    """With PGD, AQ's meta-gradient is MAML's on the attacked queries held fixed: no gradient flows through the
    attack's dependence on the weights (as in adversarial training, by Danskin's theorem)."""
    model, (sx, sy, qx, qy) = tiny_mlp(), tiny_task(8)
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    seed = tf.constant([3, 4], tf.int64)
    aq, _, _ = MA.aq_task_gradient(model, params, sx, sy, qx, qy, attack=PGD3, steps=2, lr=0.5, seed=seed)
    adapted = M.inner_loop(model, params, sx, sy, steps=2, lr=0.5)
    attacked = MA.attack_adapted(PGD3, model, adapted, qx, qy, seed=seed).numpy()
    assert np.abs(attacked - qx).max() > 0.05
    maml, _, _ = M.maml_task_gradient(model, params, sx, sy, attacked, qy, steps=2, lr=0.5)
    np.testing.assert_allclose(flat(aq), flat(maml), rtol=1e-10, atol=1e-12)


def test_ramp_schedule_first_step_is_maml_and_no_retrace():
    batch = tiny_batch(2)
    ref_model, model = tiny_mlp(), tiny_mlp()
    maml = M.MAML(ref_model, inner_lr=0.5, meta_optimizer=keras.optimizers.SGD(1.0))
    aq = MA.AdversarialQuerying(model, inner_lr=0.5, attack=PGD3, ramp_steps=4, meta_optimizer=keras.optimizers.SGD(1.0))
    assert [aq.eps_at(s) for s in range(6)] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1])
    maml.meta_step(batch)
    aq.meta_step(batch)  # step 0 of the ramp: eps = 0, so exactly a MAML step
    for a, b in zip(model.trainable_variables, ref_model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
    for _ in range(5):
        aq.meta_step(batch)
    assert aq.steps_done == 6
    assert aq._step_fn.experimental_get_tracing_count() == 1  # eps changed every step without retracing


def test_compiled_aq_step_equals_mean_of_task_gradients_at_the_ramped_eps():
    batch = tiny_batch(3)
    model = tiny_mlp()
    aq = MA.AdversarialQuerying(model, inner_lr=0.5, inner_steps=2, attack=PGD3, ramp_steps=4, clean_weight=0.25,
                                meta_optimizer=keras.optimizers.SGD(1.0), seed=11)
    aq.meta_step(batch)
    before = [v.numpy() for v in model.trainable_variables]
    eps = aq.eps_at(1)  # the second step's eps, 0.025, with the PGD step scaled to match
    expected = []
    for i in range(3):
        seed = tf.random.experimental.stateless_fold_in(tf.constant([11, 1], tf.int64), i)
        g, _, _ = MA.aq_task_gradient(model, before, *(a[i] for a in (batch.support_x, batch.support_y, batch.query_x,
                                                                       batch.query_y)),
                                      attack=PGD3, steps=2, lr=0.5, eps=tf.constant(eps, tf.float32), seed=seed,
                                      step_size=MA.scaled_step(PGD3, tf.constant(eps, tf.float32)), clean_weight=0.25)
        expected.append(flat(g))
    aq.meta_step(batch)
    after = flat([v.numpy() for v in model.trainable_variables])
    np.testing.assert_allclose(flat(before) - after, np.mean(expected, axis=0), rtol=1e-6, atol=1e-9)
    assert eps == pytest.approx(0.025)


# ----------------------------------------------------------------------------------------------
# Robust evaluation on a tiny CNN
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits(mnist_subset):
    return T.digit_splits(mnist_subset, n_way=3, k_shot=2, q_queries=4, meta_train=range(3), meta_test=range(3, 6))


def test_aq_meta_trains_and_robust_evaluate_smoke(splits):
    from tutorial_lib import models

    tr, te = splits
    model = models.few_shot_cnn(3, filters=4, blocks=2)
    learner = MA.make_learner("aq", model, inner_lr=0.4, clean_weight=0.5, ramp_steps=2, zero_head=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = learner.meta_fit(tr, 3, 2, verbose=0)
    assert len(history.loss) == 3 and np.all(np.isfinite(history.loss))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    ev = MA.robust_evaluate(model, te.sample(4, seed=0), steps=1, lr=0.4, attack=PGD3, restarts=2)
    s = ev.summary()
    assert set(s) == {"clean", "robust", "robust_restarts2"}
    assert ev.clean.shape == (4,) and np.all(ev.robust <= ev.clean) and np.all(ev.robust_restarts <= ev.robust)
    # the clean part agrees with meta.evaluate_adaptation on the same tasks
    ref = M.evaluate_adaptation(model, te.sample(4, seed=0), steps=1, lr=0.4)
    np.testing.assert_allclose(ev.clean, ref.accuracies, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# PoolQuerying: AQ whose query attack is drawn per task from an AttackPool
# ----------------------------------------------------------------------------------------------
def test_pool_querying_equals_aq_with_the_spec_each_task_draws():
    model, task = tiny_mlp("float32"), tiny_task(2, dtype=np.float32)
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    args = [tf.constant(a) for a in task]
    specs = [A.PGD(eps=0.1, steps=2, step_size=0.05), A.PGD(eps=0.5, norm=2, steps=2, step_size=0.25)]
    options = dict(inner_lr=0.4, inner_steps=1, clean_weight=0.3)

    def aq_gradient(spec, seed):
        aq = MA.AdversarialQuerying(model, attack=spec, **options)
        return flat(aq._task_gradient(params, *args, eps=tf.constant(spec.eps), seed=seed)[0])

    # a one-spec pool at full budget (scale 1) is AQ with that spec at its eps, same seed
    one = MA.PoolQuerying(model, pool=A.AttackPool([specs[1]]), **options)
    seed = tf.constant([0, 5], tf.int64)
    np.testing.assert_allclose(flat(one._task_gradient(params, *args, eps=tf.constant(1.0), seed=seed)[0]),
                               aq_gradient(specs[1], seed), rtol=1e-4, atol=1e-6)
    # with two specs each task's seed picks one (as pool.draw says) and the gradient is AQ's with that one
    pool = A.AttackPool(specs)
    two = MA.PoolQuerying(model, pool=pool, **options)
    drawn = []
    for i in range(8):
        seed = tf.constant([1, i], tf.int64)
        index = int(pool.draw(tf.random.experimental.stateless_fold_in(seed, 99)))
        drawn.append(index)
        got = flat(two._task_gradient(params, *args, eps=tf.constant(1.0), seed=seed)[0])
        np.testing.assert_allclose(got, aq_gradient(specs[index], seed), rtol=1e-4, atol=1e-6)
        assert not np.allclose(got, aq_gradient(specs[1 - index], seed), rtol=1e-4, atol=1e-6)
    assert set(drawn) == {0, 1}, drawn  # both threat models are drawn over a meta-batch of 8
    assert two.eps_at(0) == 1.0 and MA.PoolQuerying(model, pool=pool, ramp_steps=4).eps_at(0) == 0.25


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_with_clear_errors(splits):
    tr, te = splits
    model = tiny_mlp("float32")
    with pytest.raises(ValueError, match="eps must be > 0"):
        MA.AdversarialQuerying(model, attack=A.PGD(eps=0.0, steps=3, step_size=0.1))
    with pytest.raises(ValueError, match="not smaller than the pixel range"):
        MA.AdversarialQuerying(model, attack=A.FGSM(eps=1.0))
    with pytest.raises(TypeError, match="attack spec"):
        MA.AdversarialQuerying(model, attack="pgd")
    with pytest.raises(ValueError, match="clean_weight must be in"):
        MA.AdversarialQuerying(model, clean_weight=1.5)
    with pytest.raises(ValueError, match="outer_loss must be one of"):
        MA.AdversarialQuerying(model, outer_loss="hinge")
    with pytest.raises(ValueError, match="method must be one of"):
        MA.make_learner("protonet", model)
    bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="non-trainable state"):
        MA.AdversarialQuerying(bn)
    from tutorial_lib import models

    cnn = models.few_shot_cnn(3, filters=4, blocks=2)
    with pytest.raises(ValueError, match="ramp_steps = 50 is longer than meta-training"):
        MA.AdversarialQuerying(cnn, ramp_steps=50).meta_fit(tr, 10, 2, verbose=0)
    batch = te.sample(2, seed=0)
    narrow = A.PGD(eps=0.1, steps=3, step_size=0.05, clip_min=0.0, clip_max=0.5)
    with pytest.raises(ValueError, match="clips to"):
        MA.robust_evaluate(cnn, batch, steps=1, lr=0.4, attack=narrow)
    dim = T.Tasks(batch.support_x * 0.05, batch.support_y, batch.query_x * 0.05, batch.query_y, batch.classes)
    with pytest.raises(ValueError, match="not smaller than the images' range"):
        MA.robust_evaluate(cnn, dim, steps=1, lr=0.4, attack=PGD3)
    with pytest.raises(ValueError, match="clean_weight applies to outer_loss='ce'"):
        MA.AdversarialQuerying(model, outer_loss="trades", clean_weight=0.5)
    with pytest.raises(ValueError, match="needs an attack with random_start=True"):
        MA.robust_evaluate(cnn, batch, steps=1, lr=0.4, attack=A.FGSM(eps=0.1), restarts=3)
    with pytest.raises(ValueError, match="support must be one of"):
        MA.robust_evaluate(cnn, batch, steps=1, lr=0.4, attack=PGD3, support="both")
    with pytest.raises(TypeError, match="Tasks"):
        MA.robust_evaluate(cnn, batch.query_x, steps=1, lr=0.4, attack=PGD3)
    with pytest.raises(ValueError, match="eps_values must be"):
        MA.epsilon_curve(cnn, batch, [-0.1, 0.1], steps=1, lr=0.4, attack=PGD3)
    with pytest.raises(ValueError, match="optimizer= and meta_optimizer="):
        MA.AdversarialQuerying(model, optimizer=keras.optimizers.SGD(), meta_optimizer=keras.optimizers.SGD())


# ----------------------------------------------------------------------------------------------
# Outer losses against hand computations (a linear model, numpy SGD, central differences)
# ----------------------------------------------------------------------------------------------
def linear_model(seed: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype="float64"), keras.layers.Dense(2, dtype="float64")])


def np_logits(w, b, x):
    return x @ w + b


def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_ce(w, b, x, y):
    return float(-np.mean(np_log_softmax(np_logits(w, b, x))[np.arange(len(y)), y]))


def np_sgd(w, b, x, y, lr, steps=1):
    for _ in range(steps):
        p = np.exp(np_log_softmax(np_logits(w, b, x)))
        d = (p - np.eye(w.shape[1])[y]) / len(x)
        w, b = w - lr * x.T @ d, b - lr * d.sum(0)
    return w, b


def central_differences(loss, w, b, h=1e-6):
    theta = np.concatenate([w.ravel(), b.ravel()])

    def split(v):
        return v[:w.size].reshape(w.shape), v[w.size:]

    out = np.zeros_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        out[i] = (loss(*split(theta + e)) - loss(*split(theta - e))) / (2 * h)
    return out


def test_trades_outer_loss_matches_its_formula():
    model, (sx, sy, qx, qy), lr, beta = linear_model(), tiny_task(4), 0.6, 2.5
    w, b = [v.numpy() for v in model.trainable_variables]
    delta = np.random.default_rng(5).choice([-0.1, 0.1], size=qx.shape)

    def hand(w, b):
        wa, ba = np_sgd(w, b, sx, sy, lr)
        log_p = np_log_softmax(np_logits(wa, ba, qx))
        log_q = np_log_softmax(np_logits(wa, ba, qx + delta))
        kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=1)  # KL(p(clean) || p(adv)) per query
        return np_ce(wa, ba, qx, qy) + beta * float(np.mean(kl))

    grads, loss, _ = MA.aq_task_gradient(model, [w, b], sx, sy, qx, qy, attack=FixedPerturbation(delta), steps=1,
                                         lr=lr, outer_loss="trades", trades_beta=beta)
    assert float(loss) == pytest.approx(hand(w, b), rel=1e-10)
    fd = central_differences(hand, w, b)
    np.testing.assert_allclose(flat(grads), fd, rtol=1e-5, atol=1e-8)
    # the clean-mix CE loss too: (1 - c) CE(adv) + c CE(clean)
    _, mixed, _ = MA.aq_task_gradient(model, [w, b], sx, sy, qx, qy, attack=FixedPerturbation(delta), steps=1,
                                      lr=lr, clean_weight=0.3)
    wa, ba = np_sgd(w, b, sx, sy, lr)
    assert float(mixed) == pytest.approx(0.7 * np_ce(wa, ba, qx + delta, qy) + 0.3 * np_ce(wa, ba, qx, qy), rel=1e-10)


def test_adml_outer_loss_and_gradient_match_a_hand_computation():
    model, (sx, sy, qx, qy), lr = linear_model(), tiny_task(6), 0.8
    w, b = [v.numpy() for v in model.trainable_variables]
    delta = np.random.default_rng(7).choice([-0.1, 0.1], size=qx.shape)  # support and query sets have one shape

    def hand(w, b):
        clean = np_sgd(w, b, sx, sy, lr, steps=2)
        adv = np_sgd(w, b, sx + delta, sy, lr, steps=2)
        return 0.5 * (np_ce(*clean, qx + delta, qy) + np_ce(*adv, qx, qy))

    grads, loss, _ = MA.adml_task_gradient(model, [w, b], sx, sy, qx, qy, attack=FixedPerturbation(delta), steps=2,
                                           lr=lr)
    assert float(loss) == pytest.approx(hand(w, b), rel=1e-10)
    np.testing.assert_allclose(flat(grads), central_differences(hand, w, b), rtol=1e-5, atol=1e-8)


def test_article_step_is_sequential_fgsm_training_not_the_corrected_meta_gradient():
    model = tiny_mlp()
    before = [w.copy() for w in model.get_weights()]
    grads = MA.compare_article_step(model, tiny_batch(3), inner_lr=0.5, eps=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the model is not changed
    # what the article's step really computes: plain FGSM training gradients at sequentially moved weights
    np.testing.assert_allclose(grads["article"], grads["sequential_fgsm_sgd"], rtol=1e-5, atol=1e-9)
    cosine = MA.gradient_cosine(grads["article"], grads["adversarial_maml"])
    rel = np.linalg.norm(grads["article"] - grads["adversarial_maml"]) / np.linalg.norm(grads["adversarial_maml"])
    assert cosine < 0.9 and rel > 0.1, (cosine, rel)
    # and the corrected step is not plain MAML either (the attacks matter)
    assert MA.gradient_cosine(grads["adversarial_maml"], grads["maml"]) < 0.999


# ----------------------------------------------------------------------------------------------
# Attacks against adapted weights
# ----------------------------------------------------------------------------------------------
def cnn(seed: int = 0, zero_head: bool = False):
    from tutorial_lib import models

    keras.utils.set_random_seed(seed)
    model = models.few_shot_cnn(3, filters=8, blocks=2)
    if zero_head:
        for v in model.trainable_variables[-2:]:
            v.assign(np.zeros(v.shape, v.dtype))
    return model


def ce_and_acc(model, params, x, y):
    loss, acc = M.loss_and_accuracy(model, params, tf.constant(x), tf.constant(y))
    return float(loss), float(acc)


def test_attack_against_adapted_weights_differs_from_unadapted_and_hurts_more(splits):
    _, te = splits
    model, batch = cnn(1), te.sample(3, seed=1)
    params = M.params_of(model)
    attack = A.PGD(eps=0.1, steps=5, step_size=0.05)
    totals = np.zeros(3)
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        adapted = M.inner_loop(model, params, tf.constant(sx), tf.constant(sy), steps=5, lr=0.4)
        seed = tf.constant([0, i], tf.int64)
        x_adapted = MA.attack_adapted(attack, model, adapted, qx, qy, seed=seed).numpy()  # from numpy, eagerly
        x_unadapted = MA.attack_adapted(attack, model, params, qx, qy, seed=seed).numpy()
        assert np.abs(x_adapted - qx).max() <= 0.1 + 1e-6 and np.abs(x_adapted - x_unadapted).max() > 0.05
        clean, on_unadapted, on_adapted = (ce_and_acc(model, adapted, x, qy) for x in (qx, x_unadapted, x_adapted))
        assert on_adapted[0] > on_unadapted[0] and on_adapted[0] > clean[0]  # losses of the adapted model
        totals += [clean[1], on_unadapted[1], on_adapted[1]]
        # the same code path in graph mode gives the same examples
        graph = tf.function(lambda a, x, y, s: MA.attack_adapted(attack, model, a, x, y, seed=s))
        np.testing.assert_allclose(graph(adapted, tf.constant(qx), tf.constant(qy), seed).numpy(), x_adapted, atol=1e-6)
    assert totals[2] < totals[0] and totals[2] <= totals[1], totals


def test_attacked_support_sets_differ_from_clean_ones_for_a_zero_head_learner(splits):
    _, te = splits
    model, batch = cnn(2, zero_head=True), te.sample(1, seed=3)
    sx, sy = batch.support_x[0], batch.support_y[0]
    params = M.params_of(model)
    fgsm = A.FGSM(eps=0.1)
    # against the unadapted zero-head weights the logits ignore the image: FGSM changes nothing
    np.testing.assert_array_equal(MA.attack_adapted(fgsm, model, params, sx, sy).numpy(), sx)
    # against the weights after one clean step it does
    attacked = MA.attack_support(fgsm, model, params, tf.constant(sx), tf.constant(sy), lr=0.4).numpy()
    assert np.mean(attacked != sx) > 0.3 and np.abs(attacked - sx).max() == pytest.approx(0.1, abs=1e-6)
    ev_clean = MA.robust_evaluate(model, te.sample(3, seed=4), steps=2, lr=0.4, attack=fgsm)
    ev_adv = MA.robust_evaluate(model, te.sample(3, seed=4), steps=2, lr=0.4, attack=fgsm, support="adversarial")
    assert ev_adv.support == "adversarial" and not np.array_equal(ev_adv.clean, ev_clean.clean)


def test_robust_evaluate_takes_l2_and_spatial_attacks_with_their_own_budget_rules(splits):
    # the L-inf rule "eps below the pixel range" is not theirs: L2 radii above 1 are common, Spatial has no
    # radius, its scale multiplies the grid (1 = the grid as given)
    _, te = splits
    model, batch = cnn(5), te.sample(2, seed=5)
    l2 = A.PGD(eps=1.5, norm=2, steps=3, step_size=0.5)
    spatial = A.Spatial(max_angle=15, max_shift=2, angle_steps=5, shift_steps=3)
    for attack in (l2, spatial):
        assert MA.check_attack(attack) is attack
        ev = MA.robust_evaluate(model, batch, steps=1, lr=0.4, attack=attack)
        assert ev.clean.shape == (2,) and np.all(ev.robust <= ev.clean) and np.all(np.isfinite(ev.robust))
    with pytest.raises(ValueError, match="eps must be > 0"):
        MA.check_attack(A.PGD(eps=0.0, norm=2, steps=3, step_size=0.5))
    with pytest.raises(ValueError, match="must lie in \\(0, 1\\]"):
        MA.check_attack(spatial.with_scale(1.5))
    with pytest.raises(ValueError, match="scale"):
        MA.robust_evaluate(model, batch, steps=1, lr=0.4, attack=spatial.with_scale(0.0))
    with pytest.raises(ValueError, match="not smaller than the pixel range"):
        MA.robust_evaluate(model, batch, steps=1, lr=0.4, attack=A.PGD(eps=1.5, steps=3, step_size=0.5))


def test_restarts_count_a_query_broken_if_any_run_breaks_it(splits):
    _, te = splits
    model, batch = cnn(3), te.sample(4, seed=5)
    weak = A.PGD(eps=0.1, steps=1, step_size=0.02, random_start=True)  # weak, so the random start matters
    k, steps, lr = 4, 3, 0.4
    ev = MA.robust_evaluate(model, batch, steps=steps, lr=lr, attack=weak, restarts=k, seed=7)
    # by hand, eagerly: each run's attacked-correct mask, seeds as documented (run r, task i)
    params = M.params_of(model)
    clean, runs = [], [[] for _ in range(k)]
    for i in range(len(batch)):
        adapted = M.inner_loop(model, params, tf.constant(batch.support_x[i]), tf.constant(batch.support_y[i]),
                               steps=steps, lr=lr, first_order=True)
        qx, qy = batch.query_x[i], batch.query_y[i]
        clean.append(np.argmax(M.forward(model, adapted, tf.constant(qx)).numpy(), -1) == qy)
        for r in range(k):
            seed = tf.random.experimental.stateless_fold_in(tf.constant([7, r], tf.int64), i)
            x_adv = MA.attack_adapted(weak, model, adapted, qx, qy, seed=seed)
            runs[r].append(np.argmax(M.forward(model, adapted, x_adv).numpy(), -1) == qy)
    clean, runs = np.array(clean), np.array(runs)  # (tasks, q), (k, tasks, q)
    assert len({r.tobytes() for r in runs}) > 1  # the runs differ, so the rule matters
    np.testing.assert_allclose(ev.robust, (clean & runs[0]).mean(1))
    np.testing.assert_allclose(ev.robust_restarts, (clean & runs.all(axis=0)).mean(1))
    assert ev.robust_restarts.mean() <= min((clean & r).mean() for r in runs)
    assert "robust_restarts4" in ev.summary()


def test_head_only_adaptation_matches_meta_evaluate_adaptation(splits):
    _, te = splits
    model, batch = cnn(9), te.sample(3, seed=10)
    ev = MA.robust_evaluate(model, batch, steps=3, lr=0.4, attack=PGD3, head_only=True)
    ref = M.evaluate_adaptation(model, batch, steps=3, lr=0.4, head_only=True)
    full = M.evaluate_adaptation(model, batch, steps=3, lr=0.4)
    np.testing.assert_allclose(ev.clean, ref.accuracies, atol=1e-6)
    assert not np.allclose(ref.accuracies, full.accuracies)  # head-only really is a different adaptation


def test_epsilon_curve_uses_one_graph_and_agrees_with_robust_evaluate(splits):
    _, te = splits
    model, batch = cnn(4), te.sample(3, seed=6)
    attack = A.PGD(eps=0.1, steps=4, step_size=0.04)
    C.clear_cache(model)
    curve = MA.epsilon_curve(model, batch, [0.0, 0.1, 0.3], steps=2, lr=0.4, attack=attack)
    assert C.cache_size(model) == 1 and C.trace_count(model) == 1  # one compiled graph for every eps
    ev = MA.robust_evaluate(model, batch, steps=2, lr=0.4, attack=attack)
    np.testing.assert_allclose(curve.per_task[:, 0], ev.clean)
    np.testing.assert_allclose(curve.per_task[:, 1], ev.robust)
    assert curve.mean[2] <= curve.mean[1] <= curve.mean[0] and curve.ci95.shape == (3,)


def test_adapted_sanity_checks_report(splits):
    _, te = splits
    model, batch = cnn(5), te.sample(3, seed=8)
    report = AD.adapted_sanity_checks(model, batch, eps=0.1, steps=2, lr=0.4, attack_steps=4, restarts=2,
                                      transfer_params=cnn(6).get_weights())
    names = [c.name for c in report.checks]
    assert names == ["logits_not_probabilities", "nonzero_gradients", "pgd_beats_fgsm", "large_eps_breaks_model",
                     "attack_beats_noise", "restarts_change_little", "transfer_weaker_than_white_box"]
    num = report.numbers
    assert 0 <= num["pgd_restarts"] <= num["pgd"] <= num["clean"] <= 1 and num["noise"] <= num["clean"]
    assert report.check("logits_not_probabilities").passed and report.check("nonzero_gradients").passed


# ----------------------------------------------------------------------------------------------
# Learners: every method steps; save and load the initialisation in safe mode
# ----------------------------------------------------------------------------------------------
def test_every_method_takes_a_meta_step(splits):
    tr, _ = splits
    batch = tr.sample(2, seed=0)
    for method in MA.LEARNERS:
        model = cnn(7, zero_head=True)
        learner = MA.make_learner(method, model, inner_lr=0.4, zero_head=True)
        before = [v.numpy().copy() for v in model.trainable_variables]
        loss, acc = learner.meta_step(batch)
        assert np.isfinite(loss) and 0 <= acc <= 1 and learner.method == method
        assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_aq_meta_fit_traces_once_and_memory_does_not_grow(splits):
    """As test_meta's memory test (after learn2learn's test_memory_consumption): many steps, flat memory."""
    tr, _ = splits
    learner = MA.AdversarialQuerying(cnn(10), ramp_steps=10, zero_head=True)
    learner.meta_fit(tr, 20, 2, verbose=0)
    start = _rss_mib()
    learner.meta_fit(tr, 100, 2, verbose=0)
    grown = _rss_mib() - start
    assert learner._step_fn.experimental_get_tracing_count() == 1  # through the ramp and beyond
    assert grown < 30, f"resident memory grew by {grown:.1f} MiB over 100 meta-steps"


def test_meta_trained_initialisation_saves_and_loads_in_safe_mode(splits, tmp_path):
    from tutorial_lib import models

    tr, te = splits
    model = cnn(8, zero_head=True)
    MA.AdversarialQuerying(model, zero_head=True, ramp_steps=2).meta_fit(tr, 3, 2, verbose=0)
    path = tmp_path / "05_aq.keras"
    models.save_model(model, path)
    loaded = models.load_model(path)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), loaded.get_weights()))
    batch = te.sample(3, seed=9)
    a = MA.robust_evaluate(model, batch, steps=1, lr=0.4, attack=PGD3).summary()
    b = MA.robust_evaluate(loaded, batch, steps=1, lr=0.4, attack=PGD3).summary()
    assert a == b


# ----------------------------------------------------------------------------------------------
# tf.distribute on two logical CPUs (a subprocess: logical devices must be set before TF starts)
# ----------------------------------------------------------------------------------------------
DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tutorial_lib import runtime
    devices = runtime.split_cpu(2)
    import keras
    sys.path.insert(0, {tests!r})
    from test_meta_adversarial import tiny_mlp, tiny_batch, PGD3
    from tutorial_lib import meta_adversarial as MA
    batch = tiny_batch(4, dtype=np.float32)
    ref = tiny_mlp("float32")
    start = [w.copy() for w in ref.get_weights()]
    strat = runtime.strategy(devices[:2])
    with strat.scope():
        model = tiny_mlp("float32")
        learner = MA.AdversarialQuerying(model, inner_lr=0.5, attack=PGD3, meta_optimizer=keras.optimizers.SGD(1.0))
    one = MA.AdversarialQuerying(ref, inner_lr=0.5, attack=PGD3, meta_optimizer=keras.optimizers.SGD(1.0))
    losses = []
    for _ in range(2):
        losses.append([learner.meta_step(batch)[0], one.meta_step(batch)[0]])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), ref.get_weights()))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(ref.get_weights(), start))
    errors = []
    for bad in (lambda: learner.meta_step(batch[:3]), lambda: MA.AdversarialQuerying(tiny_mlp("float32"), strategy=strat)):
        try:
            bad()
            errors.append("")
        except ValueError as err:
            errors.append(str(err))
    print(json.dumps({{"replicas": strat.num_replicas_in_sync, "diff": diff, "moved": moved, "losses": losses,
                      "errors": errors}}))
""")


def test_distributed_meta_step_on_two_logical_cpus_matches_one_device():
    import pathlib

    code = DISTRIBUTED.format(tests=str(pathlib.Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-2  # two SGD(1.0) steps on the meta-gradient moved the weights
    assert result["diff"] < 1e-5  # 2 tasks per replica, all-reduced = 4 tasks on one device
    for dist, single in result["losses"]:
        assert dist == pytest.approx(single, rel=1e-5)
    assert "does not split evenly over 2 replicas" in result["errors"][0]
    assert "built outside the scope" in result["errors"][1]
