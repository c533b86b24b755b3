"""Tests for meta_adversarial.AttackAdaptiveMAML (adaptation practised on attacked support sets) against independent
references: the meta-gradient against an inner loop written by hand and against central differences, eps = 0 is
LSLR on the clean support, the attack is re-crafted at every inner step, evaluation adapts with the training
steps and rates, the grid alternative, bad input, determinism, save/load, one trace and flat memory,
tf.distribute on two logical CPUs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras
from tutorial_lib import attacks as A
from tutorial_lib import meta as M
from tutorial_lib import meta_adversarial as MA
from tutorial_lib import tasks as T

FGSM = A.FGSM(eps=0.1)
PGD2 = A.PGD(eps=0.1, steps=2, step_size=0.05, random_start=False)  # deterministic


def tiny_mlp(dtype: str = "float64", seed: int = 0) -> keras.Model:
    """4 inputs in [0, 1] -> 3 tanh -> 2 logits (tanh: the inner loss has a non-zero Hessian)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype=dtype), keras.layers.Dense(3, activation="tanh", dtype=dtype),
                             keras.layers.Dense(2, dtype=dtype)])


def tiny_task(seed: int, n: int = 6, dtype=np.float64):
    """Support and query sets with pixels in [0.2, 0.8] (eps 0.1 never clips), exactly representable in float32
    (the attacks compute in float32)."""
    rng = np.random.default_rng(seed)

    def pixels():
        return rng.uniform(0.2, 0.8, size=(n, 4)).astype(np.float32).astype(dtype)

    return pixels(), rng.integers(0, 2, n).astype(np.int32), pixels(), rng.integers(0, 2, n).astype(np.int32)


def tiny_batch(n_tasks: int = 2, dtype=np.float64) -> T.Tasks:
    tasks = [tiny_task(10 + s, dtype=dtype) for s in range(n_tasks)]
    return T.Tasks(*[np.stack([t[i] for t in tasks]) for i in range(4)], classes=np.zeros((n_tasks, 2), np.int32))


def flat(values) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v)) for v in values])


def uneven_rates(model, steps: int, seed: int = 0) -> list[np.ndarray]:
    """Per-layer per-step rates around 0.5, all different (so a mix-up of steps or layers shows)."""
    rng = np.random.default_rng(seed)
    return [0.5 + 0.2 * rng.uniform(-1, 1, steps) for _ in model.trainable_variables]


# ----------------------------------------------------------------------------------------------
# The reference: the whole inner loop written out by hand, with its own forward pass and FGSM
# ----------------------------------------------------------------------------------------------
def hand_logits(p, x):
    w1, b1, w2, b2 = p
    return tf.tanh(x @ w1 + b1) @ w2 + b2


def hand_ce(p, x, y):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=hand_logits(p, x)))


def hand_fgsm(p, x, y, eps):
    """FGSM against weights ``p`` held constant, computed as the attacks do (float32 images and loss)."""
    x32 = tf.cast(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x32)
        logits = tf.cast(hand_logits([tf.stop_gradient(w) for w in p], tf.cast(x32, tf.float64)), tf.float32)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    step = tf.constant(eps, tf.float32) * tf.sign(tape.gradient(loss, x32))
    return tf.cast(tf.clip_by_value(x32 + step, 0.0, 1.0), tf.float64)


def hand_meta_gradient(params, rates, task, *, eps, steps, clean_weight=0.0):
    sx, sy, qx, qy = (tf.constant(a) for a in task)
    params = [tf.constant(p) for p in params]
    rates = [tf.constant(r) for r in rates]
    with tf.GradientTape() as outer:
        outer.watch(params + rates)
        p = list(params)
        for t in range(steps):
            support_adv = hand_fgsm(p, sx, sy, eps)  # re-crafted against the current inner weights
            with tf.GradientTape() as inner:
                inner.watch(p)
                loss = 0.5 * (hand_ce(p, sx, sy) + hand_ce(p, support_adv, sy))
            grads = inner.gradient(loss, p)
            p = [w - r[t] * g for w, r, g in zip(p, rates, grads)]
        query_adv = hand_fgsm(p, qx, qy, eps)
        outer_loss = (1 - clean_weight) * hand_ce(p, query_adv, qy) + clean_weight * hand_ce(p, qx, qy)
    return outer.gradient(outer_loss, params + rates), outer_loss


@pytest.mark.parametrize("steps, clean_weight", [(1, 0.0), (3, 0.3)])
def test_meta_gradient_matches_the_inner_loop_written_by_hand(steps, clean_weight):
    model, task = tiny_mlp(), tiny_task(0)
    params = [v.numpy() for v in model.trainable_variables]
    rates = uneven_rates(model, steps)
    grads, loss, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=FGSM, steps=steps,
                                                      clean_weight=clean_weight)
    expected, expected_loss = hand_meta_gradient(params, rates, task, eps=0.1, steps=steps, clean_weight=clean_weight)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
    np.testing.assert_allclose(flat(grads), flat(expected), rtol=1e-9, atol=1e-12)
    # first order drops the second-order term: a measurably different gradient
    fo, _, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=FGSM, steps=steps,
                                                clean_weight=clean_weight, first_order=True)
    assert np.linalg.norm(flat(fo) - flat(expected)) > 1e-3 * np.linalg.norm(flat(expected))


def test_meta_gradient_matches_central_differences():
    """FGSM's examples are piecewise constant in the weights (a sign), so the meta-gradient with the attack held
    constant is the true derivative of the meta-loss: central differences of the whole computation, attacks
    re-crafted at every perturbed point, must agree (weights and rates)."""
    model, task, steps = tiny_mlp(), tiny_task(1), 2
    sx, sy, qx, qy = (tf.constant(a) for a in task)
    params = [v.numpy() for v in model.trainable_variables]
    rates = uneven_rates(model, steps, seed=1)
    grads, _, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=FGSM, steps=steps,
                                                   clean_weight=0.2)
    shapes = [p.shape for p in params + rates]

    def meta_loss(theta):
        values, i = [], 0
        for s in shapes:
            values.append(tf.constant(theta[i:i + int(np.prod(s))].reshape(s)))
            i += int(np.prod(s))
        adapted = MA.attacked_support_inner_loop(model, values[:4], sx, sy, attack=FGSM, rates=values[4:], steps=steps)
        query_adv = MA.attack_adapted(FGSM, model, adapted, qx, qy)
        return float(MA.query_loss(model, adapted, qx, query_adv, qy, clean_weight=0.2)[0])

    theta, h = flat(params + rates), 1e-6
    fd = np.array([(meta_loss(theta + h * e) - meta_loss(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
    assert np.linalg.norm(flat(grads) - fd) <= 1e-6 * np.linalg.norm(fd), np.abs(flat(grads) - fd).max()
    assert np.linalg.norm(fd[-4 * steps:]) > 1e-3  # the rates matter on this task


# ----------------------------------------------------------------------------------------------
# eps = 0: the attacked copies are the clean images, and the learner is LSLR on the clean support
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_order", [False, True])
def test_with_eps_zero_the_task_gradient_is_lslr_on_the_clean_support(first_order):
    model, task = tiny_mlp(), tiny_task(2)
    params = [v.numpy() for v in model.trainable_variables]
    rates = uneven_rates(model, 3, seed=2)
    for attack in (FGSM, PGD2):
        assert np.array_equal(MA.attack_adapted(attack, model, params, task[0], task[1], eps=0.0).numpy(), task[0])
        got, loss, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=attack, steps=3, eps=0.0,
                                                        step_size=0.0, first_order=first_order)
        ref, ref_loss, _ = M.learned_rate_task_gradient(model, params, rates, *task, steps=3, first_order=first_order)
        np.testing.assert_allclose(flat(got), flat(ref), rtol=1e-12, atol=1e-15)
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-13)
    attacked, _, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=FGSM, steps=3)
    assert np.linalg.norm(flat(attacked) - flat(ref)) > 1e-2 * np.linalg.norm(flat(ref))  # eps > 0 differs


def test_first_meta_step_of_a_ramp_is_exactly_an_lslr_step():
    """With ramp_steps the budget scale starts at 0 (as AQ's eps ramp): the first meta-step moves the weights AND the
    rates exactly as meta.LSLR's step on the clean support sets does."""
    batch = tiny_batch(3)
    lslr_model, model = tiny_mlp(), tiny_mlp()
    lslr = M.LSLR(lslr_model, inner_lr=0.5, inner_steps=3, meta_optimizer=keras.optimizers.SGD(1.0))
    pool = A.AttackPool([FGSM, A.PGD(eps=0.1, steps=2, step_size=0.05, random_start=True)])
    learner = MA.AttackAdaptiveMAML(model, pool=pool, inner_lr=0.5, inner_steps=3, ramp_steps=4,
                                    meta_optimizer=keras.optimizers.SGD(1.0))
    assert [learner.eps_at(s) for s in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    lslr.meta_step(batch)
    learner.meta_step(batch)
    np.testing.assert_allclose(flat(learner.meta_variables), flat(lslr.meta_variables), rtol=1e-12, atol=1e-14)
    assert not np.allclose(flat(learner.rates), 0.5)  # the rates are meta-variables and moved
    learner.meta_step(batch)
    lslr.meta_step(batch)  # the second step attacks (scale 0.25): different from LSLR's
    assert not np.allclose(flat(learner.meta_variables), flat(lslr.meta_variables), rtol=1e-6)


def test_compiled_step_is_the_mean_of_task_gradients_each_with_its_drawn_attack():
    batch, seed = tiny_batch(4), 4  # a seed whose four tasks draw both specs
    model = tiny_mlp()
    specs = [FGSM, A.PGD(eps=0.3, norm=2, steps=2, step_size=0.15, random_start=False)]
    pool = A.AttackPool(specs)
    learner = MA.AttackAdaptiveMAML(model, pool=pool, inner_lr=0.5, inner_steps=2, clean_weight=0.25, seed=seed,
                                    meta_optimizer=keras.optimizers.SGD(1.0))
    before = flat(learner.meta_variables)
    params, rates = [v.numpy() for v in model.trainable_variables], [r.numpy() for r in learner.rates]
    expected, drawn = [], []
    for i in range(len(batch)):
        task_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), i)
        drawn.append(int(pool.draw(tf.random.experimental.stateless_fold_in(task_seed, 99))))
        task = [a[i] for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)]
        g, _, _ = MA.attack_adaptive_task_gradient(model, params, rates, *task, attack=specs[drawn[-1]], steps=2,
                                                   seed=task_seed, clean_weight=0.25)
        expected.append(flat(g))
    assert set(drawn) == {0, 1}, drawn  # the meta-batch mixes both threat models
    learner.meta_step(batch)
    np.testing.assert_allclose(before - flat(learner.meta_variables), np.mean(expected, axis=0), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# The attack is re-crafted against the current inner weights at every step
# ----------------------------------------------------------------------------------------------
class Recording:
    """An attack that runs ``attack`` and records the weights it was aimed at and the images it returned."""

    def __init__(self, attack):
        self.attack, self.weights, self.images = attack, [], []

    def generate(self, model_fn, x, y, *, eps=None, seed=None, step_size=None):
        out = self.attack.generate(model_fn, x, y, eps=eps, seed=seed)
        self.images.append(out.numpy())
        return out


def test_the_support_attack_is_recrafted_against_the_current_inner_weights():
    model, (sx, sy, _, _) = tiny_mlp(seed=3), tiny_task(3)
    params = M.params_of(model)
    rates = [tf.constant([1.5, 1.5, 1.5], tf.float64)] * 4  # large steps, so the weights move a lot
    recording = Recording(PGD2)
    adapted = MA.attacked_support_inner_loop(model, params, tf.constant(sx), tf.constant(sy), attack=recording,
                                             rates=rates, steps=3)
    assert len(recording.images) == 3  # one crafting per inner step
    # step t's copies are PGD against the weights after t steps, whatever produced them
    p = params
    for t in range(3):
        np.testing.assert_array_equal(recording.images[t], MA.attack_adapted(PGD2, model, p, sx, sy).numpy())
        p = MA.attacked_support_inner_loop(model, p, tf.constant(sx), tf.constant(sy), attack=PGD2,
                                           rates=[r[t:t + 1] for r in rates], steps=1)
    np.testing.assert_allclose(flat(adapted), flat(p), rtol=1e-12)
    assert not np.array_equal(recording.images[0], recording.images[2])  # the copies change as the weights move
    # crafted once against the starting weights would be another adaptation
    once = FixedImages(recording.images[0])
    other = MA.attacked_support_inner_loop(model, params, tf.constant(sx), tf.constant(sy), attack=once, rates=rates,
                                           steps=3)
    assert not np.allclose(flat(other), flat(adapted))


class FixedImages:
    """A stand-in attack that always returns the same images."""

    def __init__(self, images):
        self.images = images

    def generate(self, model_fn, x, y, *, eps=None, seed=None, step_size=None):
        return tf.constant(self.images)


# ----------------------------------------------------------------------------------------------
# The grid alternative for a spatial pool: every grid transform of each support image
# ----------------------------------------------------------------------------------------------
def test_grid_support_holds_every_transform_of_every_image(mnist_subset):
    spec = A.Spatial(max_angle=15, max_shift=2, angle_steps=3, shift_steps=3)
    x, y = mnist_subset.x_test[:4], mnist_subset.y_test[:4].astype(np.int32)
    images, labels = MA.grid_support(spec, x, y)
    assert images.shape == (27 * 4, 28, 28, 1) and labels.numpy().tolist() == y.tolist() * 27
    for g, (angle, dx, dy) in enumerate(spec.grid):
        np.testing.assert_array_equal(images[4 * g:4 * (g + 1)].numpy(), A.spatial_transform(x, angle, dx, dy).numpy())
    np.testing.assert_array_equal(MA.grid_support(spec, x, y, scale=0.0)[0].numpy(), np.tile(x, (27, 1, 1, 1)))
    # identical copies are the clean support: the inner steps are LSLR's
    model, (sx, sy, _, _) = tiny_mlp(), tiny_task(4)
    params, rates = M.params_of(model), [tf.constant(r) for r in uneven_rates(model, 2)]
    same = MA.attacked_support_inner_loop(model, params, sx, sy, attack=None, rates=rates, steps=2,
                                          support_copies=(np.tile(sx, (3, 1)), np.tile(sy, 3)))
    ref = M.learned_rate_inner_loop(model, params, sx, sy, rates=rates, steps=2)
    np.testing.assert_allclose(flat(same), flat(ref), rtol=1e-12)


def test_grid_learner_steps_and_refuses_what_it_cannot_do(splits):
    tr, te = splits
    spec = A.Spatial(max_angle=10, max_shift=1, angle_steps=3, shift_steps=3)
    model = cnn(7)
    learner = MA.AttackAdaptiveMAML(model, pool=spec, spatial_support="grid", inner_steps=2)
    before = flat(learner.meta_variables)
    loss, _ = learner.meta_step(tr.sample(2, seed=0))
    assert np.isfinite(loss) and not np.allclose(before, flat(learner.meta_variables))
    t = te.sample(2, seed=0)
    adapted = learner.adapt(t.support_x[0], t.support_y[0], attack=spec)
    by_hand = MA.attacked_support_inner_loop(model, M.params_of(model), tf.constant(t.support_x[0]),
                                             tf.constant(t.support_y[0]), attack=None, rates=learner.rate_schedule(),
                                             steps=2, support_copies=MA.grid_support(spec, t.support_x[0],
                                                                                     t.support_y[0]))
    np.testing.assert_allclose(flat(adapted), flat(by_hand), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="no grid mode"):
        learner.adapt_and_evaluate(t, support_attack=spec)
    with pytest.raises(ValueError, match="spatial specs only"):
        MA.AttackAdaptiveMAML(cnn(7), pool=A.AttackPool([spec, FGSM]), spatial_support="grid")
    with pytest.raises(ValueError, match="share one grid size"):
        MA.AttackAdaptiveMAML(cnn(7), pool=A.AttackPool([spec, A.Spatial(max_angle=10, max_shift=1, angle_steps=5,
                                                                          shift_steps=3)]), spatial_support="grid")
    with pytest.raises(ValueError, match="spatial_support must be one of"):
        MA.AttackAdaptiveMAML(cnn(7), pool=spec, spatial_support="all")


# ----------------------------------------------------------------------------------------------
# Evaluation adapts as training does: inner_steps steps, learned rates, attacked support re-crafted
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits(mnist_subset):
    return T.digit_splits(mnist_subset, n_way=3, k_shot=2, q_queries=3, meta_train=range(3), meta_test=range(3, 6))


def cnn(seed: int = 0):
    from tutorial_lib import models

    keras.utils.set_random_seed(seed)
    return models.few_shot_cnn(3, filters=4, blocks=2)


def test_evaluation_uses_the_training_steps_rates_and_recrafted_support(splits):
    tr, te = splits
    model = cnn(1)
    learner = MA.AttackAdaptiveMAML(model, pool=A.AttackPool([FGSM, PGD2]), inner_steps=3, inner_lr=0.3)
    learner.meta_fit(tr, 2, 2, verbose=0)
    assert [tuple(r.shape) for r in learner.rate_schedule()] == [(3,)] * len(model.trainable_variables)
    batch = te.sample(3, seed=0)
    result = learner.adapt_and_evaluate(batch, support_attack=FGSM, query_attacks=[FGSM], checkpoints=(0, 3))
    assert result.checkpoints == (0, 3)
    for i in range(len(batch)):
        adapted = learner.adapt(batch.support_x[i], batch.support_y[i], attack=FGSM)
        by_hand = MA.attacked_support_inner_loop(model, M.params_of(model), tf.constant(batch.support_x[i]),
                                                 tf.constant(batch.support_y[i]), attack=FGSM,
                                                 rates=learner.rate_schedule(), steps=3)
        np.testing.assert_allclose(flat(adapted), flat(by_hand), rtol=1e-6, atol=1e-7)
        qx, qy = batch.query_x[i], batch.query_y[i]
        clean = np.argmax(learner.predict(adapted, qx), -1) == qy
        attacked = np.argmax(learner.predict(adapted, MA.attack_adapted(FGSM, model, adapted, qx, qy)), -1) == qy
        np.testing.assert_array_equal(result.clean_mask[i, 1], clean)
        np.testing.assert_array_equal(result.attacked_mask[i, 1, 0], attacked)
    # the clean-support path is meta.LSLR's evaluation with the learned rates
    ev = learner.meta_evaluate(te, tasks=3)
    ref = M.evaluate_adaptation(model, te.sample(3, seed=0), steps=3, lr=None, rates=learner.rate_schedule())
    assert ev.steps == 3 and np.array_equal(ev.per_task, ref.per_task)
    with pytest.raises(ValueError, match="last checkpoint must be 3"):
        learner.adapt_and_evaluate(batch, checkpoints=(0, 5))
    with pytest.raises(ValueError, match="inner_steps = 3"):
        learner.meta_evaluate(te, tasks=3, steps=5)


# ----------------------------------------------------------------------------------------------
# Bad input, determinism, saving, tracing
# ----------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_with_clear_errors(splits):
    tr, te = splits
    model = tiny_mlp("float32")
    with pytest.raises(TypeError, match="AttackPool or one attack spec"):
        MA.AttackAdaptiveMAML(model, pool="pgd")
    with pytest.raises(TypeError, match="AttackPool or one attack spec"):
        MA.AttackAdaptiveMAML(model, pool=[FGSM])
    with pytest.raises(ValueError, match=r"pool\[1\].eps must be > 0"):
        MA.AttackAdaptiveMAML(model, pool=A.AttackPool([FGSM, A.FGSM(eps=0.0)]))
    with pytest.raises(ValueError, match="clean_weight must be in"):
        MA.AttackAdaptiveMAML(model, clean_weight=1.5)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        MA.AttackAdaptiveMAML(model, inner_steps=0)
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        MA.AttackAdaptiveMAML(model, inner_lr=0.0)
    with pytest.raises(ValueError, match="seed"):
        MA.AttackAdaptiveMAML(model, seed=-1)
    learner = MA.make_learner("attack_adaptive", cnn(2), pool=FGSM, ramp_steps=50)
    assert isinstance(learner, MA.AttackAdaptiveMAML) and learner.method == "attack_adaptive"
    with pytest.raises(ValueError, match="ramp_steps = 50 is longer than meta-training.*full budget"):
        learner.meta_fit(tr, 10, 2, verbose=0)
    batch = te.sample(2, seed=0)
    narrow = MA.AttackAdaptiveMAML(cnn(2), pool=A.FGSM(eps=0.1, clip_min=0.0, clip_max=0.5))
    with pytest.raises(ValueError, match=r"pool\[0\] clips to"):
        narrow.meta_step(batch)
    with pytest.raises(TypeError, match="Tasks"):
        learner.meta_step(batch.support_x)
    with pytest.raises(ValueError, match="adapt takes one task"):
        learner.adapt(batch.support_x, batch.support_y)
    with pytest.raises(TypeError, match="attack spec"):
        learner.adapt(batch.support_x[0], batch.support_y[0], attack="fgsm")
    with pytest.raises(TypeError, match="attack spec"):
        learner.adapt_and_evaluate(batch, support_attack="fgsm")
    with pytest.raises(ValueError, match="optimizer= and meta_optimizer="):
        MA.AttackAdaptiveMAML(model, optimizer=keras.optimizers.SGD(), meta_optimizer=keras.optimizers.SGD())


def test_same_seed_same_weights_other_seed_other_weights(splits):
    """Random starts and per-task pool draws come from the seed: two runs with one seed agree to the bit."""
    tr, _ = splits
    pool = A.AttackPool([A.PGD(eps=0.1, steps=2, step_size=0.05, random_start=True),
                         A.PGD(eps=1.0, norm=2, steps=2, step_size=0.5, random_start=True)])
    batches = [tr.sample(2, seed=s) for s in range(2)]

    def run(seed):
        learner = MA.AttackAdaptiveMAML(cnn(4), pool=pool, inner_steps=2, seed=seed)
        for b in batches:
            learner.meta_step(b)
        return flat(learner.meta_variables)

    first, again, other = run(5), run(5), run(6)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_meta_fit_traces_once_memory_stays_flat_and_the_learner_saves_and_loads(splits, tmp_path):
    from tutorial_lib import models

    tr, te = splits
    model = cnn(6)
    learner = MA.AttackAdaptiveMAML(model, pool=A.AttackPool([FGSM, PGD2]), inner_steps=2, ramp_steps=3,
                                    zero_head=True)
    learner.meta_fit(tr, 5, 2, verbose=0)
    start = _rss_mib()
    learner.meta_fit(tr, 60, 2, verbose=0)
    grown = _rss_mib() - start
    assert learner._step_fn.experimental_get_tracing_count() == 1  # through the ramp and beyond
    assert grown < 30, f"resident memory grew by {grown:.1f} MiB over 60 meta-steps"
    models.save_model(model, tmp_path / "adaptive.keras")
    learner.save_rates(tmp_path / "adaptive.rates.npz")
    loaded = MA.AttackAdaptiveMAML(models.load_model(tmp_path / "adaptive.keras"), inner_steps=2)
    loaded.load_rates(tmp_path / "adaptive.rates.npz")
    np.testing.assert_array_equal(flat(loaded.meta_variables), flat(learner.meta_variables))
    t = te.sample(1, seed=1)
    a = learner.adapt(t.support_x[0], t.support_y[0], attack=FGSM)
    b = loaded.adapt(t.support_x[0], t.support_y[0], attack=FGSM)
    np.testing.assert_array_equal(flat(a), flat(b))
    with pytest.raises(ValueError, match="shape"):
        MA.AttackAdaptiveMAML(cnn(6), inner_steps=3).load_rates(tmp_path / "adaptive.rates.npz")


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
    from test_meta_adaptive import tiny_mlp, tiny_batch, flat
    from tutorial_lib import attacks as A, meta_adversarial as MA
    batch = tiny_batch(4, dtype=np.float32)
    pool = A.AttackPool([A.FGSM(eps=0.1), A.PGD(eps=0.1, steps=2, step_size=0.05, random_start=True)])
    options = dict(pool=pool, inner_lr=0.5, inner_steps=2, meta_optimizer=keras.optimizers.SGD(1.0))
    ref = tiny_mlp("float32")
    strat = runtime.strategy(devices[:2])
    with strat.scope():
        learner = MA.AttackAdaptiveMAML(tiny_mlp("float32"), **options)
    one = MA.AttackAdaptiveMAML(ref, **{{**options, "meta_optimizer": keras.optimizers.SGD(1.0)}})
    start = flat(one.meta_variables)
    losses = []
    for _ in range(2):
        losses.append([learner.meta_step(batch)[0], one.meta_step(batch)[0]])
    diff = float(np.abs(flat(learner.meta_variables) - flat(one.meta_variables)).max())
    moved = float(np.abs(flat(one.meta_variables) - start).max())
    rates_moved = float(np.abs(flat(one.rates) - 0.5).max())
    print(json.dumps({{"replicas": strat.num_replicas_in_sync, "diff": diff, "moved": moved,
                      "rates_moved": rates_moved, "losses": losses}}))
""")


def test_distributed_meta_step_on_two_logical_cpus_matches_one_device():
    code = DISTRIBUTED.format(tests=str(pathlib.Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-2 and result["rates_moved"] > 1e-6
    assert result["diff"] < 1e-5  # 2 tasks per replica, all-reduced = 4 tasks on one device (weights and rates)
    for dist, single in result["losses"]:
        assert dist == pytest.approx(single, rel=1e-5)
