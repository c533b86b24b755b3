"""Tests for tutorial_lib.attacks: independent references, properties over random inputs, errors, tracing."""

from __future__ import annotations

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import attacks

SHAPE = (8, 8, 1)
N_CLASSES = 5


def tiny_cnn(seed: int = 0, *, softmax: bool = False) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(N_CLASSES, activation="softmax" if softmax else None),
    ])


def random_batch(seed: int, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *SHAPE)).astype(np.float32)
    x[: n // 4] = np.round(x[: n // 4])  # pixels exactly on the range boundaries
    return x, rng.integers(0, N_CLASSES, n)


def ce(model: keras.Model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    logits = model(x, training=False)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits).numpy()


def probs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return tf.nn.softmax(model(x, training=False)).numpy()


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_cnn()


# --------------------------------------------------------------------------------------------------
# FGSM against an analytic numpy reference (softmax regression: grad_x = W (softmax(xW + b) - onehot(y)))
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_numpy_reference_on_softmax_regression(targeted):
    rng = np.random.default_rng(1)
    d, k, n, eps = 16, 3, 64, 0.1
    w = rng.normal(size=(d, k)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(k)])
    model.layers[-1].set_weights([w, b])
    x = rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, k, n)

    x64 = x.reshape(n, d).astype(np.float64)
    logits = x64 @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(k)[y]) @ w.T
    direction = -np.sign(grad) if targeted else np.sign(grad)
    expected = np.clip(x64 + eps * direction, 0, 1).reshape(x.shape)

    got = attacks.fgsm(model, x, y, eps, targeted=targeted)
    settled = np.abs(grad).reshape(x.shape) > 1e-5  # signs of rounding-level gradients may differ
    assert settled.mean() > 0.99
    np.testing.assert_allclose(got[settled], expected[settled], atol=1e-6)
    assert got.dtype == np.float32 and got.shape == x.shape


# --------------------------------------------------------------------------------------------------
# Properties over random inputs
# --------------------------------------------------------------------------------------------------
SPECS = [
    attacks.FGSM(eps=0.1),
    attacks.BIM(eps=0.1, steps=5, step_size=0.03),
    attacks.PGD(eps=0.2, steps=5, step_size=0.05),
    attacks.PGD(eps=0.2, steps=5, step_size=0.05, restarts=3, seed=3),
    attacks.PGD(eps=1.0, steps=5, step_size=0.3, norm=2),
    attacks.PGD(eps=1.0, steps=5, step_size=0.3, norm=2, restarts=2, seed=4),
    attacks.MIM(eps=0.15, steps=5, step_size=0.05),
    attacks.MIM(eps=1.0, steps=5, step_size=0.3, norm=2),
    attacks.PGD(eps=0.2, steps=3, step_size=0.1, targeted=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_attack_stays_in_ball_and_range(model, spec, seed):
    x, y = random_batch(seed)
    x_adv = spec(model, x, y)
    delta = (x_adv - x).reshape(len(x), -1)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if getattr(spec, "norm", "inf") == 2:
        assert np.linalg.norm(delta, axis=1).max() <= spec.eps * (1 + 1e-5)
    else:
        assert np.abs(delta).max() <= spec.eps + 1e-6
    assert np.abs(delta).max() > 0  # the attack did move
    # generate (tensor form) gives the same result for the deterministic attacks
    if not getattr(spec, "random_start", False):
        np.testing.assert_allclose(spec.generate(model, tf.constant(x), tf.constant(y)).numpy(), x_adv, atol=1e-6)


def test_clip_range_other_than_unit_interval(model):
    x, y = random_batch(0)
    x = x * 2 - 1
    x_adv = attacks.pgd(model, x, y, 0.3, step_size=0.1, steps=4, clip_min=-1.0, clip_max=1.0, seed=0)
    assert x_adv.min() >= -1 and x_adv.max() <= 1 and np.abs(x_adv - x).max() <= 0.3 + 1e-6
    assert x_adv.min() < 0


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_targeted_attacks_raise_target_probability(model, attack):
    x, _ = random_batch(5, n=64)
    target = np.random.default_rng(5).integers(0, N_CLASSES, len(x))
    if attack == "fgsm":
        x_adv = attacks.fgsm(model, x, target, 0.1, targeted=True)
    else:
        x_adv = attacks.pgd(model, x, target, 0.1, step_size=0.03, steps=5, targeted=True, seed=0)
    before = probs(model, x)[np.arange(len(x)), target]
    after = probs(model, x_adv)[np.arange(len(x)), target]
    assert after.mean() > before.mean()
    assert (after > before).mean() > 0.9


def test_pgd_loss_at_least_fgsm_on_average(model):
    x, y = random_batch(6, n=64)
    loss_fgsm = ce(model, attacks.fgsm(model, x, y, 0.1), y)
    loss_pgd = ce(model, attacks.pgd(model, x, y, 0.1, step_size=0.025, steps=10, seed=0), y)
    assert loss_pgd.mean() >= loss_fgsm.mean()
    assert loss_fgsm.mean() > ce(model, x, y).mean()


# --------------------------------------------------------------------------------------------------
# Restarts: an example is broken if any restart breaks it (not "the restart with the highest loss")
# --------------------------------------------------------------------------------------------------
def two_basin_model(mid, left, right) -> keras.Model:
    """Logits of a one-pixel image t in [0, 1]: ``mid`` at t = 0.5, linear out to ``left`` at t = 0 and
    ``right`` at t = 1 (Dense layers: h = (relu(0.5 - t), relu(t - 0.5)), logits = mid + 2 h0 (left - mid)
    + 2 h1 (right - mid))."""
    mid, left, right = (np.asarray(v, np.float32) for v in (mid, left, right))
    model = keras.Sequential([keras.Input((1, 1, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="relu"), keras.layers.Dense(len(mid))])
    model.layers[1].set_weights([np.array([[-1.0, 1.0]], np.float32), np.array([0.5, -0.5], np.float32)])
    model.layers[2].set_weights([np.stack([2 * (left - mid), 2 * (right - mid)]), mid])
    return model


def test_a_misclassified_restart_beats_a_higher_loss_correct_one():
    # label 0. t = 1: p = (0.34, 0.33, 0.33), still correct, loss 1.08; t = 0: p = (0.45, 0.55, ~0), wrong,
    # loss 0.80. The loss is lowest at t = 0.5, so one signed step of size 1 from a uniform random start in
    # the ball [0, 1] lands on t = 0 or t = 1, each with probability 1/2, independently per restart.
    model = two_basin_model([3.0, 0.0, -10.0], np.log([0.45, 0.55, 1e-6]), np.log([0.34, 0.33, 0.33]))
    y = np.zeros(64, np.int64)
    t = np.linspace(0, 1, 101, dtype=np.float32).reshape(-1, 1, 1, 1)
    loss_t = ce(model, t, np.zeros(101, np.int64))
    assert loss_t.argmin() == 50 and np.all(np.diff(loss_t[:51]) < 0) and np.all(np.diff(loss_t[50:]) > 0)
    assert loss_t[100] > loss_t[0]  # the correct endpoint has the higher loss
    x = np.full((64, 1, 1, 1), 0.5, np.float32)
    spec = attacks.PGD(eps=0.5, steps=1, step_size=1.0, restarts=8, seed=0)
    x_adv = spec(model, x, y)
    assert set(np.round(x_adv.ravel(), 6)) <= {0.0, 1.0}
    wrong = np.argmax(model(x_adv).numpy(), axis=1) != y
    # An example stays correct only if all 8 restarts land on t = 1 (probability 1/256 each); keeping the
    # highest-loss restart would leave it correct unless all 8 land on t = 0.
    assert wrong.mean() >= 0.9
    # generate (graph ops, used by training and meta code) follows the same rule
    x_gen = spec.generate(model, tf.constant(x), tf.constant(y), seed=tf.constant([1, 2], tf.int64)).numpy()
    assert (np.argmax(model(x_gen).numpy(), axis=1) != y).mean() >= 0.9


def test_a_restart_that_hits_the_target_beats_a_higher_loss_miss():
    # target 1. t = 0: p = (0.5, 0.45, 0.05), misses, log p_target = log 0.45; t = 1: p = (0.2, 0.41, 0.39),
    # hits with the lower log p_target = log 0.41.
    model = two_basin_model([0.0, -6.0, 0.0], np.log([0.5, 0.45, 0.05]), np.log([0.2, 0.41, 0.39]))
    target = np.ones(64, np.int64)
    t = np.linspace(0, 1, 101, dtype=np.float32).reshape(-1, 1, 1, 1)
    gain = -ce(model, t, np.ones(101, np.int64))  # what a targeted attack maximises
    assert gain.argmin() == 50 and gain[0] > gain[100]
    x = np.full((64, 1, 1, 1), 0.5, np.float32)
    x_adv = attacks.PGD(eps=0.5, steps=1, step_size=1.0, restarts=8, seed=0, targeted=True)(model, x, target)
    hit = np.argmax(model(x_adv).numpy(), axis=1) == target
    assert hit.mean() >= 0.9


def test_restarts_keep_the_best_restart_by_the_rule(model):
    # Reference: run each restart with gradient_ascent and its documented seed fold_in(seed, r), then pick per
    # example by hand: misclassified beats correct, then higher loss.
    x, y = random_batch(7, n=32)
    eps, step, steps, restarts = 0.1, 0.05, 3, 4
    seed = tf.constant([3, 4], tf.int64)
    got = attacks.PGD(eps=eps, steps=steps, step_size=step, restarts=restarts).generate(
        model, tf.constant(x), tf.constant(y), seed=seed).numpy()

    def loss_fn(xa):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(xa, training=False))

    cands = np.stack([attacks.gradient_ascent(loss_fn, x, eps=eps, step_size=step, steps=steps, random_start=True,
                                              seed=tf.random.experimental.stateless_fold_in(seed, r)).numpy()
                      for r in range(restarts)])
    losses = np.stack([ce(model, c, y) for c in cands])
    wrong = np.stack([np.argmax(model(c).numpy(), axis=1) != y for c in cands])
    pick = np.lexsort((losses, wrong), axis=0)[-1]  # sort by wrong, then by loss; take the last
    expected = cands[pick, np.arange(len(x))]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len(set(pick)) > 1  # different restarts won for different examples
    assert wrong.any(axis=0).sum() > wrong[0].sum()  # restarts broke examples the first run did not


def _softmax_regression(seed: int, d: int = 16, k: int = 3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(k)])
    model.layers[-1].set_weights([w, b])
    return model, w.astype(np.float64), b.astype(np.float64), rng


def test_mim_matches_two_momentum_steps_by_hand():
    model, w, b, rng = _softmax_regression(2)
    n, eps, step, mu = 32, 0.1, 0.06, 0.8
    x = rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, n)

    def grad(xf):  # d CE / dx for logits x W + b
        z = xf @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - np.eye(3)[y]) @ w.T

    x0 = x.reshape(n, -1).astype(np.float64)
    xa, g = x0.copy(), np.zeros_like(x0)
    for _ in range(2):
        gr = grad(xa)
        g = mu * g + gr / np.abs(gr).mean(axis=1, keepdims=True)
        xa = np.clip(np.clip(xa + step * np.sign(g), x0 - eps, x0 + eps), 0, 1)
    got = attacks.mim(model, x, y, eps, step_size=step, steps=2, decay=mu).reshape(n, -1)
    np.testing.assert_allclose(got, xa, atol=1e-5)
    # the momentum matters here: without it the second step differs for some pixels
    plain = attacks.bim(model, x, y, eps, step_size=step, steps=2).reshape(n, -1)
    assert np.abs(plain - got).max() > step / 2


def test_l2_random_start_is_uniform_in_the_ball():
    # With a zero gradient every step stays put, so gradient_ascent returns its random start (no clipping:
    # pixels at 0.5 and radius 0.3). Uniform in the d-ball: (|delta| / eps)^d ~ U(0, 1), direction uniform.
    n, eps = 4000, 0.3
    x = tf.fill((n, 2, 2, 1), 0.5)
    d = 4
    out = attacks.gradient_ascent(lambda xa: 0.0 * tf.reduce_sum(xa, axis=[1, 2, 3]), x, eps=eps, step_size=0.1,
                                  steps=1, norm=2, random_start=True, seed=tf.constant([5, 6], tf.int64))
    delta = (out.numpy() - 0.5).reshape(n, d).astype(np.float64)
    radius = np.linalg.norm(delta, axis=1)
    assert radius.max() <= eps * (1 + 1e-5)
    u = np.sort((radius / eps) ** d)
    ks = np.max(np.abs(u - (np.arange(1, n + 1) - 0.5) / n))
    assert ks < 1.63 / np.sqrt(n)  # Kolmogorov-Smirnov at the 1 % level
    unit = delta / radius[:, None]
    assert np.abs(unit.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose((unit ** 2).mean(axis=0), 1 / d, atol=0.02)


@pytest.mark.parametrize("random_start", [False, True])
def test_l2_pgd_at_eps_zero_returns_the_input(model, random_start):
    # eps = 0 is the empty ball for every norm: the L2 projection and the L2 random start must not divide 0 by 0
    x, y = random_batch(12)
    spec = attacks.PGD(eps=0.0, norm=2, steps=3, step_size=0.1, random_start=random_start)
    for got in (spec(model, x, y),
                spec.generate(model, tf.constant(x), tf.constant(y), eps=tf.constant(0.0),
                              seed=tf.constant([1, 2], tf.int64)).numpy()):
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got, x)
    linf = attacks.PGD(eps=0.0, steps=3, step_size=0.1, random_start=random_start)(model, x, y)
    np.testing.assert_array_equal(linf, x)


def test_random_start_is_deterministic_for_a_seed(model):
    x, y = random_batch(8)
    a = attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=2, seed=5)
    b = attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=2, seed=5)
    c = attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=2, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batching_gives_the_same_result(model):
    x, y = random_batch(9, n=20)
    whole = attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=3, random_start=False)
    batched = attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=3, random_start=False, batch_size=7)
    np.testing.assert_allclose(batched, whole, atol=1e-6)


def test_gradient_ascent_reaches_the_projection_of_the_maximiser():
    # maximise -||x_adv - c||^2: the answer is c projected on the eps ball around x and the range
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.2, 0.8, (4, 3, 3, 1)), tf.float32)
    c = tf.constant(rng.uniform(-0.5, 1.5, (4, 3, 3, 1)), tf.float32)

    def loss_fn(x_adv):
        return -tf.reduce_sum((x_adv - c) ** 2, axis=[1, 2, 3])

    got = attacks.gradient_ascent(loss_fn, x, eps=0.3, step_size=0.01, steps=60)
    expected = np.clip(np.clip(c.numpy(), x.numpy() - 0.3, x.numpy() + 0.3), 0, 1)
    np.testing.assert_allclose(got.numpy(), expected, atol=0.011)
    got2 = attacks.gradient_ascent(loss_fn, x, eps=0.3, step_size=0.01, steps=60, norm=2)
    delta = (got2 - x).numpy().reshape(4, -1)
    assert np.linalg.norm(delta, axis=1).max() <= 0.3 * (1 + 1e-5)
    direction = (c - x).numpy().reshape(4, -1)  # with the range inactive, L2 projection is along c - x
    cos = (delta * direction).sum(1) / np.linalg.norm(delta, axis=1) / np.linalg.norm(direction, axis=1)
    assert cos.min() > 0.9


# --------------------------------------------------------------------------------------------------
# Specs, generate() inside a tf.function, tracing once
# --------------------------------------------------------------------------------------------------
def test_spec_repr_name_and_with_eps():
    spec = attacks.PGD(eps=0.3, steps=40, step_size=0.01)
    assert repr(spec) == "PGD(eps=0.3, steps=40, step_size=0.01)"
    assert spec.name == "PGD-40" and attacks.FGSM(eps=0.1).name == "FGSM"
    assert attacks.PGD(eps=2.0, norm="l2", restarts=5).name == "PGD-40 L2 x5"
    assert repr(attacks.FGSM(eps=0.1, targeted=True)) == "FGSM(eps=0.1, targeted=True)"
    other = spec.with_eps(0.2)
    assert other.eps == 0.2 and other.steps == 40 and spec.eps == 0.3
    assert attacks.BIM(eps=0.1).random_start is False
    with pytest.raises(ValueError, match="eps must be >= 0"):
        spec.with_eps(-1)


def test_generate_inside_tf_function_with_an_eps_variable(model):
    x, y = random_batch(11)
    spec = attacks.PGD(eps=0.3, steps=3, step_size=0.05)
    eps = tf.Variable(0.05)
    traces = []

    @tf.function
    def step(x, y):
        traces.append(1)
        return spec.generate(model, x, y, eps=eps)

    xt, yt = tf.constant(x), tf.constant(y)
    small = step(xt, yt).numpy()
    eps.assign(0.2)
    large = step(xt, yt).numpy()
    assert len(traces) == 1
    assert np.abs(small - x).max() <= 0.05 + 1e-6
    assert 0.05 + 1e-3 < np.abs(large - x).max() <= 0.2 + 1e-6


def test_attack_is_traced_once_per_model_shape_and_settings():
    model = tiny_cnn(1)
    x, y = random_batch(12, n=10)
    attacks.pgd(model, x, y, 0.1, step_size=0.02, steps=3, seed=0)
    assert attacks.trace_count(model) == 1
    # other eps, step size, seed, batch sizes (uneven last batch): same compiled function
    attacks.pgd(model, x, y, 0.2, step_size=0.05, steps=3, seed=1)
    attacks.pgd(model, x[:7], y[:7], 0.3, step_size=0.05, steps=3, batch_size=3)
    assert attacks.trace_count(model) == 1
    for eps in (0.0, 0.1, 0.2):
        attacks.fgsm(model, x, y, eps)
    assert attacks.trace_count(model) == 2  # FGSM is one new settings key
    attacks.pgd(model, x, y, 0.1, step_size=0.02, steps=4)
    assert attacks.trace_count(model) == 3  # steps are part of the graph


def test_clear_cache_drops_the_models_compiled_attacks():
    from tutorial_lib import compiled

    model = tiny_cnn(3)
    x, y = random_batch(16, n=4)
    attacks.fgsm(model, x, y, 0.1)
    attacks.pgd(model, x, y, 0.1, step_size=0.05, steps=2, seed=0)
    assert compiled.cache_size(model) == 2  # one per settings, in the package's one cache
    attacks.clear_cache(model)
    assert compiled.cache_size(model) == 0
    before = attacks.trace_count(model)
    attacks.fgsm(model, x, y, 0.1)
    assert attacks.trace_count(model) == before + 1  # rebuilt and traced again


def test_keep_worst_rule_by_hand():
    """The one rule for restarts and grid points: success beats failure, then the higher loss wins."""
    from tutorial_lib.attacks._runner import keep_worst

    best = tf.zeros((4, 2, 2, 1))
    cand = tf.ones((4, 2, 2, 1))
    best_ok = tf.constant([False, True, False, True])
    ok = tf.constant([True, False, False, True])
    best_loss = tf.constant([5.0, 0.1, 1.0, 1.0])
    loss = tf.constant([0.1, 5.0, 2.0, 0.5])
    kept, kept_ok, kept_loss = keep_worst(best, best_ok, best_loss, cand, ok, loss)
    # 0: the candidate succeeds, the best does not (even at a lower loss); 1: the best succeeds, the candidate
    # does not (even at a higher loss); 2: both fail, the candidate's loss is higher; 3: both succeed, the best's
    np.testing.assert_array_equal(kept.numpy()[:, 0, 0, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(kept_ok.numpy(), [True, True, False, True])
    np.testing.assert_array_equal(kept_loss.numpy(), np.float32([0.1, 0.1, 2.0, 1.0]))


def test_cache_does_not_keep_models_alive():
    model = tiny_cnn(2)
    x, y = random_batch(13, n=4)
    attacks.fgsm(model, x, y, 0.1)
    ref = __import__("weakref").ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_mixed_precision_model():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, activation="relu"),
                                  keras.layers.Flatten(), keras.layers.Dense(N_CLASSES, dtype="float32")])
        x, y = random_batch(14)
        x_adv = attacks.pgd(model, x, y, 0.1, step_size=0.03, steps=4, seed=0)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert x_adv.dtype == np.float32
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert ce(model, x_adv, y).mean() > ce(model, x, y).mean()


def test_jit_compile_option_agrees(model):
    x, y = random_batch(15)
    plain = attacks.fgsm(model, x, y, 0.1, jit_compile=False)
    xla = attacks.fgsm(model, x, y, 0.1, jit_compile=True)
    assert (plain == xla).mean() > 0.99


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error that says what to do
# --------------------------------------------------------------------------------------------------
X, Y = random_batch(0, n=4)
BAD_CALLS = [
    ("negative eps", lambda m: attacks.fgsm(m, X, Y, -0.1), ValueError, "eps must be >= 0"),
    ("clip range", lambda m: attacks.fgsm(m, X, Y, 0.1, clip_min=1.0, clip_max=0.0), ValueError, "clip_min must be < clip_max"),
    ("x above range", lambda m: attacks.fgsm(m, X * 255, Y, 0.1), ValueError, "divide by 255"),
    ("x below range", lambda m: attacks.fgsm(m, X - 0.5, Y, 0.1), ValueError, "outside the valid range"),
    ("batch mismatch", lambda m: attacks.fgsm(m, X, Y[:3], 0.1), ValueError, "different batch sizes"),
    ("label too large", lambda m: attacks.fgsm(m, X, np.full(4, N_CLASSES), 0.1), ValueError, r"labels must be in 0\.\.4"),
    ("negative label", lambda m: attacks.fgsm(m, X, -np.ones(4, int), 0.1), ValueError, "labels must be in"),
    ("one-hot labels", lambda m: attacks.fgsm(m, X, np.eye(N_CLASSES)[Y], 0.1), ValueError, "argmax"),
    ("float labels", lambda m: attacks.fgsm(m, X, Y.astype(float), 0.1), TypeError, "astype"),
    ("steps < 1", lambda m: attacks.pgd(m, X, Y, 0.1, step_size=0.01, steps=0), ValueError, "steps must be >= 1"),
    ("float steps", lambda m: attacks.pgd(m, X, Y, 0.1, step_size=0.01, steps=2.5), TypeError, "steps must be an int"),
    ("step_size 0", lambda m: attacks.pgd(m, X, Y, 0.1, step_size=0.0, steps=2), ValueError, "step_size must be > 0"),
    ("unknown norm", lambda m: attacks.pgd(m, X, Y, 0.1, step_size=0.01, steps=2, norm=1), ValueError, "unknown norm"),
    ("restarts w/o start", lambda m: attacks.pgd(m, X, Y, 0.1, step_size=0.01, steps=2, random_start=False, restarts=3), ValueError, "random_start=True"),
    ("batch_size 0", lambda m: attacks.fgsm(m, X, Y, 0.1, batch_size=0), ValueError, "batch_size must be >= 1"),
    ("eps string", lambda m: attacks.fgsm(m, X, Y, "0.1"), TypeError, "eps must be a number"),
    ("nan pixels", lambda m: attacks.fgsm(m, np.full_like(X, np.nan), Y, 0.1), ValueError, "NaN"),
    ("not a model", lambda m: attacks.fgsm(lambda x: x, X, Y, 0.1), TypeError, "keras.Model"),
    ("spec steps", lambda m: attacks.PGD(eps=0.1, steps=0), ValueError, "steps must be >= 1"),
    ("spec norm", lambda m: attacks.MIM(eps=0.1, norm="l1"), ValueError, "unknown norm"),
    ("spec decay", lambda m: attacks.MIM(eps=0.1, decay=-1), ValueError, "decay must be >= 0"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_a_helpful_error(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_softmax_model_is_rejected():
    with pytest.raises(ValueError, match="softmax"):
        attacks.pgd(tiny_cnn(softmax=True), X, Y, 0.1, step_size=0.01, steps=2)


def test_inputs_at_rounding_distance_outside_the_range_are_accepted(model):
    x = X.copy()
    x[0, 0, 0, 0] = 1.0 + 1e-7
    assert attacks.fgsm(model, x, Y, 0.1).max() <= 1.0


# --------------------------------------------------------------------------------------------------
# Optional cross-check against CleverHans (pip install -e '.[peers]')
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_mnist_model(mnist_subset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist_subset.x_train[:2000], mnist_subset.y_train[:2000], epochs=1, batch_size=64, verbose=0)
    return model, mnist_subset.x_test[:500], mnist_subset.y_test[:500].astype(np.int64)


def _cleverhans():
    pytest.importorskip("cleverhans", reason="CleverHans not installed (pip install -e '.[peers]')")
    try:
        from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    except Exception as err:  # e.g. incompatible with this TF/Keras
        pytest.skip(f"CleverHans is installed but cannot be imported with this TensorFlow: {err}")
    return fast_gradient_method, projected_gradient_descent


@pytest.mark.peers
def test_fgsm_matches_cleverhans(trained_mnist_model):
    fast_gradient_method, _ = _cleverhans()
    model, x, y = trained_mnist_model
    ours = attacks.fgsm(model, x, y, 0.1)
    theirs = fast_gradient_method(model, tf.constant(x), 0.1, np.inf, clip_min=0.0, clip_max=1.0,
                                  y=tf.constant(y)).numpy()
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(xt))
    grad = np.abs(tape.gradient(loss, xt).numpy())
    differ = ours != theirs
    assert differ.mean() < 1e-3
    # where they differ, the gradient is at rounding level (or zero, where both may legitimately differ)
    assert np.all(grad[differ] <= 1e-6 * grad.max())


@pytest.mark.peers
def test_pgd_agrees_with_cleverhans(trained_mnist_model):
    _, projected_gradient_descent = _cleverhans()
    model, x, y = trained_mnist_model
    ours = attacks.pgd(model, x, y, 0.3, step_size=0.01, steps=40, random_start=False)
    theirs = projected_gradient_descent(model, tf.constant(x), 0.3, 0.01, 40, np.inf, clip_min=0.0, clip_max=1.0,
                                        y=tf.constant(y), rand_init=False, sanity_checks=False).numpy()
    assert np.isclose(ours, theirs, atol=1e-6).mean() >= 0.999
    acc_ours = (np.argmax(model(ours), 1) == y).mean()
    acc_theirs = (np.argmax(model(theirs), 1) == y).mean()
    assert abs(acc_ours - acc_theirs) <= 0.005
