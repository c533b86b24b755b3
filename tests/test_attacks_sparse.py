"""Tests for the L1 family in tutorial_lib.attacks.sparse: project_l1_box, sparse_l1_ascent (SLIDE) and
SparseL1Descent.

Independent references: an exact float64 soft threshold from every break of the budget's piecewise-linear sum,
the variational inequality that characterises a projection onto a convex set, random sparse noise of the same L1
norm, a small model trained on real MNIST.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import adaptation, attacks, meta


def reference_projection(v: np.ndarray, eps: float, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Projection of a flat vector onto {||d||_1 <= eps, lower <= d <= upper}, in float64: the soft threshold lam
    from the piecewise-linear budget sum evaluated at every break and interpolated on the piece crossing eps."""
    v, lower, upper = (np.asarray(a, np.float64) for a in (v, lower, upper))
    a, cap = np.abs(v), np.where(v >= 0, upper, -lower)

    def total(lam: float) -> float:
        return np.clip(a - lam, 0, cap).sum()

    lam = 0.0
    if total(0.0) > eps:
        breaks = np.unique(np.concatenate([a, a - cap, [0.0]]))
        breaks = breaks[breaks >= 0]
        values = np.array([total(b) for b in breaks])  # decreasing
        j = np.flatnonzero(values >= eps).max()
        if j == len(breaks) - 1:  # eps = 0: everything goes
            lam = breaks[-1]
        else:
            lam = breaks[j] + (values[j] - eps) / (values[j] - values[j + 1]) * (breaks[j + 1] - breaks[j])
    return np.sign(v) * np.clip(a - lam, 0, cap)


def mnist_like(rng: np.random.Generator, n: int, shape=(6, 6, 1)) -> np.ndarray:
    """Images with most pixels exactly 0 and some exactly 1, like MNIST digits (the box matters there)."""
    x = rng.uniform(0, 1, (n, *shape)).astype(np.float32)
    x[rng.uniform(size=x.shape) < 0.6] = 0.0
    x[rng.uniform(size=x.shape) < 0.1] = 1.0
    return x


# --------------------------------------------------------------------------------------------------
# The projection
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.3, 2.0, 6.0, 1000.0])
def test_projection_matches_an_exact_reference(eps):
    rng = np.random.default_rng(int(eps * 10))
    x = mnist_like(rng, 12)
    v = (rng.normal(size=x.shape) * rng.choice([0.05, 0.5, 2.0], size=(12, 1, 1, 1))).astype(np.float32)
    v[:, 0, 0] = 0.0  # zeros in v: no direction, never moved
    got = attacks.project_l1_box(v, eps, -x, 1.0 - x).numpy()
    for i in range(len(x)):
        expected = reference_projection(v[i].ravel(), eps, -x[i].ravel(), 1.0 - x[i].ravel())
        np.testing.assert_allclose(got[i].ravel(), expected, atol=2e-5, rtol=1e-4)
    assert (np.abs(got).reshape(12, -1).sum(1) <= eps * (1 + 1e-6) + 1e-7).all()
    assert (x + got >= -1e-7).all() and (x + got <= 1 + 1e-7).all()


def test_projection_matches_the_reference_at_mnist_size():
    rng = np.random.default_rng(7)
    x = mnist_like(rng, 4, shape=(28, 28, 1))
    v = rng.normal(size=x.shape).astype(np.float32) * 0.05
    v.reshape(4, -1)[:, rng.choice(784, 10, replace=False)] += 0.8  # a sparse step on top of a dense start
    got = attacks.project_l1_box(v, 10.0, -x, 1.0 - x).numpy()
    for i in range(len(x)):
        expected = reference_projection(v[i].ravel(), 10.0, -x[i].ravel(), 1.0 - x[i].ravel())
        np.testing.assert_allclose(got[i].ravel(), expected, atol=2e-5, rtol=1e-4)


def test_projection_satisfies_the_variational_inequality():
    """p is the projection of v onto a convex set C iff <v - p, z - p> <= 0 for every z in C."""
    rng = np.random.default_rng(1)
    x = mnist_like(rng, 8, shape=(5, 5, 1))
    v = rng.normal(size=x.shape).astype(np.float32)
    eps = 1.5
    p = attacks.project_l1_box(v, eps, -x, 1.0 - x).numpy().reshape(8, -1).astype(np.float64)
    v, x = v.reshape(8, -1).astype(np.float64), x.reshape(8, -1)
    for _ in range(200):
        z = rng.uniform(-x, 1.0 - x)  # a point of the box; shrinking towards 0 keeps it there
        z *= np.minimum(1.0, eps / np.abs(z).sum(1, keepdims=True)) * rng.uniform(0, 1, (8, 1))
        assert (((v - p) * (z - p)).sum(1) <= 1e-4).all()


def test_projection_per_example_radius_and_points_already_inside():
    rng = np.random.default_rng(2)
    x = mnist_like(rng, 3)
    v = rng.normal(size=x.shape).astype(np.float32)
    eps = np.array([0.5, 2.0, 4.0], np.float32)
    got = attacks.project_l1_box(v, eps, -x, 1.0 - x).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i].ravel(), reference_projection(v[i].ravel(), eps[i], -x[i].ravel(),
                                                                        1 - x[i].ravel()), atol=2e-5, rtol=1e-4)
    inside = np.clip(x + 0.01 * v, 0, 1) - x
    np.testing.assert_allclose(attacks.project_l1_box(inside, 100.0, -x, 1.0 - x).numpy(), inside, atol=1e-7)


def test_projection_beats_clipping_after_the_ball():
    """Projecting onto the ball and then clipping (the older recipe) wastes budget on pixels that cannot move."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    v = np.full_like(x, -1.0)
    v[0, 0, 0] = 0.5  # only this pixel can move (the rest are at 0 and pushed below it)
    got = attacks.project_l1_box(v, 2.0, -x, 1.0 - x).numpy()
    np.testing.assert_allclose(got[0, 0, 0], 0.5)
    assert np.abs(got).sum() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# The attack on a small model trained on real MNIST
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(mnist_subset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist_subset.x_train[:2000], mnist_subset.y_train[:2000], epochs=1, batch_size=64, verbose=0)
    return model, mnist_subset.x_test[:300], mnist_subset.y_test[:300].astype(np.int64)


def accuracy(model, x, y) -> float:
    return float((np.argmax(model(x).numpy(), 1) == y).mean())


@pytest.fixture(scope="module")
def slide_20(trained):
    model, x, y = trained
    return attacks.SparseL1Descent(eps=8.0, steps=20, step_size=1.0, seed=0)(model, x, y)


def test_stays_in_the_ball_and_the_pixel_range(trained, slide_20):
    _, x, _ = trained
    l1 = np.abs(slide_20 - x).reshape(len(x), -1).sum(1)
    assert l1.max() <= 8.0 * (1 + 1e-5)
    assert l1.mean() > 7.0  # it uses its budget
    assert slide_20.min() >= 0.0 and slide_20.max() <= 1.0 and slide_20.dtype == np.float32
    moved = (np.abs(slide_20 - x) > 0.05).reshape(len(x), -1).sum(1)
    assert np.median(moved) < 40  # few pixels changed a lot, not all a little


def test_beats_random_sparse_noise_of_the_same_norm(trained, slide_20):
    model, x, y = trained
    rng = np.random.default_rng(0)
    delta = (slide_20 - x).reshape(len(x), -1)
    shuffled = np.stack([rng.permutation(d) * rng.choice([-1, 1], d.size) for d in delta]).reshape(x.shape)
    noise = attacks.project_l1_box(shuffled.astype(np.float32), 8.0, -x, 1.0 - x).numpy()
    clean, attacked, random = accuracy(model, x, y), accuracy(model, slide_20, y), accuracy(model, x + noise, y)
    assert attacked < random - 0.2, (clean, attacked, random)
    assert random > clean - 0.1


def test_more_steps_are_stronger(trained, slide_20):
    model, x, y = trained
    five = attacks.SparseL1Descent(eps=8.0, steps=5, step_size=1.0, seed=0)(model, x, y)
    assert accuracy(model, slide_20, y) < accuracy(model, five, y) - 0.1


def test_restarts_break_every_example_one_restart_breaks(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    one = attacks.SparseL1Descent(eps=6.0, steps=5, seed=3)
    three = dataclasses.replace(one, restarts=3)
    broken_one = np.argmax(model(one(model, x, y)).numpy(), 1) != y
    broken_three = np.argmax(model(three(model, x, y)).numpy(), 1) != y
    assert broken_three[broken_one].all() and broken_three.sum() >= broken_one.sum()


def test_targeted_moves_predictions_to_the_target(trained):
    model, x, y = trained
    x, y = x[:100], y[:100]
    target = (y + 1) % 10
    x_adv = attacks.SparseL1Descent(eps=40.0, steps=20, step_size=4.0, targeted=True, seed=0)(model, x, target)
    hits, before = (np.argmax(model(images).numpy(), 1) == target for images in (x_adv, x))
    assert hits.mean() > before.mean() + 0.15

    def target_loss(images):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(target, model(images)).numpy().mean()

    assert target_loss(x_adv) < target_loss(x) - 1.0  # descends the loss on the target (a targeted L1 attack needs
    # a larger budget than an untargeted one: 2 % of targets hit at eps 10, 31 % at eps 40 on this model)


def test_one_step_moves_the_top_percentile(trained):
    model, x, y = trained
    spec = attacks.SparseL1Descent(eps=100.0, steps=1, step_size=1.0, random_start=False)
    moved = (spec(model, x, y) != x).reshape(len(x), -1).sum(1)
    assert moved.max() <= 8 and moved.min() >= 1  # the top 1 % of 784 pixels is 8 of them (fewer where blocked)
    dense = dataclasses.replace(spec, percentile=0.0)(model, x, y)
    assert (dense != x).reshape(len(x), -1).sum(1).mean() > 100


def test_repeatable_compiled_once_and_the_function_form(trained):
    model, x, y = trained
    spec = attacks.SparseL1Descent(eps=5.0, steps=4, seed=1, batch_size=128)
    attacks.clear_cache(model)
    before = attacks.trace_count(model)
    first = spec(model, x, y)
    np.testing.assert_array_equal(spec(model, x, y), first)
    assert attacks.trace_count(model) - before == 1
    assert not np.array_equal(dataclasses.replace(spec, seed=2)(model, x, y), first)
    np.testing.assert_array_equal(attacks.sparse_l1_descent(model, x, y, 5.0, steps=4, seed=1, batch_size=128), first)
    np.random.seed(5)
    unseeded = dataclasses.replace(spec, seed=None)(model, x, y)
    np.random.seed(5)
    np.testing.assert_array_equal(dataclasses.replace(spec, seed=None)(model, x, y), unseeded)


def test_against_adapted_weights_in_a_tf_function_and_in_a_pool(trained):
    model, x, y = trained
    x, y = x[:32], y[:32]
    spec = attacks.SparseL1Descent(eps=4.0, steps=3, random_start=False)
    params = meta.params_of(model)
    graph = tf.function(lambda a, b: adaptation.attack_adapted(spec, model, params, a, b))
    np.testing.assert_allclose(graph(tf.constant(x), tf.constant(y)).numpy(), spec(model, x, y), atol=1e-6)
    assert adaptation.check_attack(spec) is spec
    pool = attacks.AttackPool([attacks.PGD(eps=0.1, steps=2, step_size=0.05), spec])
    assert pool.families == ("linf", "l1") and pool.without("l1").families == ("linf",)
    seed = tf.constant([1, 2], tf.int64)
    run = tf.function(lambda a, b, s: pool.generate(model, a, b, 1, scale=s, seed=seed))
    half = dataclasses.replace(spec, eps=2.0, step_size=0.5)
    np.testing.assert_allclose(run(tf.constant(x), tf.constant(y), tf.constant(0.5)).numpy(),
                               half.generate(model, tf.constant(x), tf.constant(y), seed=seed).numpy(), atol=1e-6)


def test_repr_name_family_and_with_eps():
    spec = attacks.SparseL1Descent(eps=10)
    assert repr(spec) == "SparseL1Descent(eps=10.0, steps=20, step_size=1.0)"
    assert repr(attacks.SparseL1Descent(eps=5, percentile=95, restarts=2)) == \
        "SparseL1Descent(eps=5.0, steps=20, step_size=1.0, percentile=95.0, restarts=2)"
    assert spec.name == "SLIDE-20" and attacks.SparseL1Descent(eps=5, restarts=3).name == "SLIDE-20 x3"
    assert spec.family == "l1" and "l1" in attacks.FAMILIES
    assert spec.with_eps(5.0).eps == 5.0 and spec.with_eps(5.0).step_size == 1.0


BAD = [
    ("no eps", lambda: attacks.SparseL1Descent(), TypeError, "eps"),
    ("negative eps", lambda: attacks.SparseL1Descent(eps=-1), ValueError, "eps must be >= 0"),
    ("percentile 100", lambda: attacks.SparseL1Descent(eps=1, percentile=100), ValueError, "percentile must be < 100"),
    ("percentile negative", lambda: attacks.SparseL1Descent(eps=1, percentile=-1), ValueError,
     "percentile must be >= 0"),
    ("percentile string", lambda: attacks.SparseL1Descent(eps=1, percentile="99"), TypeError, "must be a number"),
    ("steps 0", lambda: attacks.SparseL1Descent(eps=1, steps=0), ValueError, "steps must be >= 1"),
    ("step size 0", lambda: attacks.SparseL1Descent(eps=1, step_size=0), ValueError, "step_size must be > 0"),
    ("restarts without start", lambda: attacks.SparseL1Descent(eps=1, restarts=2, random_start=False), ValueError,
     "needs random_start=True"),
    ("PGD norm 1", lambda: attacks.PGD(eps=1, norm=1), ValueError, "SparseL1Descent"),
    ("PGD norm l1", lambda: attacks.PGD(eps=1, norm="l1"), ValueError, "SparseL1Descent"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_settings_raise_a_helpful_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_inputs_raise_a_helpful_error(trained):
    model, x, y = trained
    spec = attacks.SparseL1Descent(eps=1)
    with pytest.raises(ValueError, match="divide by 255"):
        spec(model, x[:4] * 255, y[:4])
    with pytest.raises(ValueError, match="argmax"):
        spec(model, x[:4], np.eye(10)[y[:4]])
