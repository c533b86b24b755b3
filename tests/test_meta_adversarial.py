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
from tutorial_lib import attacks as A
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
    wide = A.PGD(eps=0.1, steps=3, step_size=0.05, clip_min=0.0, clip_max=0.5)
    with pytest.raises(ValueError, match="clips to"):
        MA.robust_evaluate(cnn, te.sample(2, seed=0), steps=1, lr=0.4, attack=wide)
