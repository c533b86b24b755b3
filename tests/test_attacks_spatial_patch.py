"""Tests for the spatial attack, attack pools and the adversarial patch in tutorial_lib.attacks.

Independent references: numpy/scipy rotations and shifts, brute-force search over the grid, hand-built models.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from tutorial_lib import attacks

SHAPE = (12, 12, 1)
N_CLASSES = 4


def tiny_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(N_CLASSES),
    ])


def images(seed: int, n: int = 16, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Random images with a blank border ring (so nothing useful is lost at the edges) and pixel range [0, 1]."""
    x = np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 0, 0, 0, 0
    return x


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_cnn()


class OneRotation(keras.Model):
    """Class 1 only for (nearly) exactly one image, the template; class 0 for everything else."""

    def __init__(self, template: np.ndarray):
        super().__init__()
        self.template = tf.constant(template)

    def call(self, x, training=False):
        distance = tf.reduce_mean(tf.square(x - self.template), axis=[1, 2, 3])
        return tf.stack([tf.zeros_like(distance), 100.0 * (1e-4 - distance)], axis=1)


# --------------------------------------------------------------------------------------------------
# The transform: exact rotations and shifts against numpy and scipy
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [12, 13])  # even and odd: centre between pixels and on a pixel
def test_quarter_turns_match_numpy_rot90(interpolation, size):
    x = images(0, n=3, shape=(size, size, 2))
    x[:, 0, -1] = 1.0  # a marker in the top-right corner
    for angle, k in ((90, 1), (180, 2), (-90, 3)):
        got = attacks.spatial_transform(x, angle, interpolation=interpolation).numpy()
        np.testing.assert_allclose(got, np.rot90(x, k, axes=(1, 2)), atol=1e-5 if interpolation == "bilinear" else 0)
    # counter-clockwise as displayed: the top-right corner goes to the top-left
    turned = attacks.spatial_transform(x, 90).numpy()
    np.testing.assert_array_equal(turned[:, 0, 0], x[:, 0, -1])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("dx, dy", [(2, 0), (0, -3), (-1, 2), (3, 3)])
def test_integer_shifts_match_scipy_with_zero_fill(interpolation, dx, dy):
    x = images(1, n=2, shape=(10, 11, 1))
    got = attacks.spatial_transform(x, 0.0, dx, dy, interpolation=interpolation).numpy()
    expected = scipy.ndimage.shift(x, (0, dy, dx, 0), order=0, mode="constant", cval=0.0)
    np.testing.assert_allclose(got, expected, atol=1e-6 if interpolation == "bilinear" else 0)


def test_rotation_then_shift_and_per_image_parameters():
    x = images(2, n=3)
    angles, dx, dy = np.array([90.0, 0.0, -90.0]), np.array([1.0, -2.0, 0.0]), np.array([0.0, 1.0, -1.0])
    got = attacks.spatial_transform(x, angles, dx, dy).numpy()
    for i in range(3):
        turned = np.rot90(x[i], {90.0: 1, 0.0: 0, -90.0: 3}[angles[i]], axes=(0, 1))
        expected = scipy.ndimage.shift(turned, (dy[i], dx[i], 0), order=0, mode="constant", cval=0.0)
        np.testing.assert_array_equal(got[i], expected)


def test_nearest_rotation_only_moves_pixels():
    x = images(3, n=4)
    got = attacks.spatial_transform(x, 17.0, 0.5, -1.3).numpy()
    for i in range(len(x)):
        assert np.isin(got[i], np.append(x[i].ravel(), 0.0)).all()  # every pixel an input pixel or the fill


def test_scipy_agrees_on_a_small_rotation_away_from_rounding_ties():
    x = images(4, n=1, shape=(15, 15, 1))
    got = attacks.spatial_transform(x, 10.0).numpy()
    # scipy.ndimage.rotate turns counter-clockwise for positive angles in (row, col) = (y down, x right) display
    expected = scipy.ndimage.rotate(x[0, :, :, 0], 10.0, reshape=False, order=0, mode="constant", cval=0.0)
    assert (got[0, :, :, 0] == expected).mean() > 0.97  # equal except where the nearest pixel is a near tie


# --------------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------------
def test_grid_values_are_symmetric_and_contain_the_identity():
    grid = attacks.spatial_grid(30, 3, 7, 5)
    assert grid.shape == (7 * 5 * 5, 3)
    np.testing.assert_allclose(np.unique(grid[:, 0]), [-30, -20, -10, 0, 10, 20, 30])
    np.testing.assert_allclose(np.unique(grid[:, 1]), [-3, -1.5, 0, 1.5, 3])
    assert any((grid == 0).all(axis=1))


@pytest.mark.parametrize("targeted", [False, True])
def test_finds_the_one_rotation_a_model_responds_to(targeted):
    x = images(5, n=4)
    template = attacks.spatial_transform(x[:1], 20.0, 1.0, -2.0).numpy()[0]
    model = OneRotation(template)
    spec = attacks.Spatial(max_angle=30, max_shift=2, angle_steps=7, shift_steps=5, targeted=targeted)
    y = np.full(4, 1 if targeted else 0)
    x_adv = spec(model, x, y)
    np.testing.assert_array_equal(x_adv[0], template)
    assert np.argmax(model(x_adv).numpy(), 1)[0] == 1
    assert (np.argmax(model(x_adv[1:]).numpy(), 1) == 0).all()  # nothing else triggers it
    np.testing.assert_array_equal(spec.generate(model, tf.constant(x), tf.constant(y)).numpy(), x_adv)


@pytest.mark.parametrize("targeted", [False, True])
def test_per_example_choice_matches_a_brute_force_search(model, targeted):
    x = images(6, n=32)
    spec = attacks.Spatial(max_angle=20, max_shift=2, angle_steps=5, shift_steps=3, targeted=targeted)
    y = np.random.default_rng(6).integers(0, N_CLASSES, len(x))
    grid = spec.grid
    candidates = np.stack([attacks.spatial_transform(x, *point).numpy() for point in grid])  # (G, B, ...)
    logits = np.stack([model(c).numpy().astype(np.float64) for c in candidates])  # (G, B, K)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -log_p[:, np.arange(len(x)), y]
    hit = logits.argmax(-1) == y
    broken, score = (hit, -loss) if targeted else (~hit, loss)
    # per example: among breaking points the best score, else the best score overall
    choice = np.argmax(np.where(broken.any(0), np.where(broken, score, -np.inf), score), axis=0)
    expected = candidates[choice, np.arange(len(x))]
    got = spec(model, x, y)
    same = (got == expected).reshape(len(x), -1).all(1)
    # float ties between grid points can pick another point with the same score
    got_score = np.array([score[np.flatnonzero((candidates[:, i] == got[i]).reshape(len(grid), -1).all(1)), i].max()
                          for i in range(len(x))])
    assert same.mean() > 0.9
    np.testing.assert_allclose(got_score, score[choice, np.arange(len(x))], rtol=1e-4, atol=1e-5)
    assert broken.any(0).sum() == (got_broken := (np.argmax(model(got).numpy(), 1) == y) == targeted).sum()
    assert got_broken[broken.any(0)].all()


def test_outputs_are_grid_transforms_of_their_input(model):
    x = images(7, n=16)
    y = np.random.default_rng(7).integers(0, N_CLASSES, len(x))
    spec = attacks.Spatial(max_angle=30, max_shift=3, angle_steps=3, shift_steps=3)
    x_adv = spec(model, x, y)
    candidates = np.stack([attacks.spatial_transform(x, *p).numpy() for p in spec.grid])
    matches = (candidates == x_adv[None]).reshape(len(spec.grid), len(x), -1).all(-1)
    assert matches.any(0).all()  # every output is exactly one of the grid's rotations/shifts of its input


def test_single_point_grid_and_scale_zero_return_the_input(model):
    x = images(8)
    y = np.random.default_rng(8).integers(0, N_CLASSES, len(x))
    identity = attacks.Spatial(max_angle=0, max_shift=0, angle_steps=1, shift_steps=1)
    np.testing.assert_array_equal(identity(model, x, y), x)
    np.testing.assert_array_equal(attacks.Spatial().with_scale(0.0)(model, x, y), x)


def test_scale_scales_the_grid(model):
    x = images(9)
    y = np.random.default_rng(9).integers(0, N_CLASSES, len(x))
    half = attacks.Spatial(max_angle=30, max_shift=2, angle_steps=3, shift_steps=3).with_scale(0.5)
    same = attacks.Spatial(max_angle=15, max_shift=1, angle_steps=3, shift_steps=3)
    np.testing.assert_array_equal(half(model, x, y), same(model, x, y))
    np.testing.assert_array_equal(
        half.generate(model, tf.constant(x), tf.constant(y), scale=tf.constant(1.0)).numpy(),
        attacks.Spatial(max_angle=30, max_shift=2, angle_steps=3, shift_steps=3)(model, x, y))


def test_spatial_attack_lowers_accuracy_and_is_compiled_once(model):
    x = images(10, n=64)
    y = np.argmax(model(x).numpy(), 1)  # labels = clean predictions: clean accuracy 100 %
    spec = attacks.Spatial(max_angle=30, max_shift=3, angle_steps=5, shift_steps=3, batch_size=24)
    attacks.clear_cache(model)
    before = attacks.trace_count(model)
    x_adv = spec(model, x, y)
    spec(model, x[:10], y[:10])
    assert attacks.trace_count(model) - before == 1
    assert (np.argmax(model(x_adv).numpy(), 1) == y).mean() < 0.9


def test_generate_in_a_tf_function_with_a_plain_callable(model):
    """Usable against adapted weights: any f(x, training=False) -> logits inside a tf.function."""
    x = images(11)
    y = np.random.default_rng(11).integers(0, N_CLASSES, len(x))
    spec = attacks.Spatial(max_angle=20, max_shift=1, angle_steps=5, shift_steps=3)
    weights = [tf.identity(w) for w in model.weights]

    def logits_fn(images, training=False):  # a functional forward pass, not a keras.Model
        return model.stateless_call([w for w in weights], [], images, training=training)[0]

    # eps=None and step_size=None ("no override") are accepted so generic code can call any spec
    graph = tf.function(lambda a, b: spec.generate(logits_fn, a, b, scale=tf.constant(1.0), eps=None, step_size=None))
    np.testing.assert_array_equal(graph(tf.constant(x), tf.constant(y)).numpy(), spec(model, x, y))
    for option in ("eps", "step_size"):  # a spatial attack has no radius and takes no steps
        with pytest.raises(TypeError, match="no radius eps or step_size"):
            spec.generate(logits_fn, tf.constant(x), tf.constant(y), **{option: 0.5})
    with pytest.raises(TypeError, match="with_scale"):
        spec.with_eps(0.5)


def test_spatial_repr_name_and_family():
    spec = attacks.Spatial(max_angle=30, max_shift=3, angle_steps=7, shift_steps=5)
    assert repr(spec) == "Spatial(max_angle=30, max_shift=3, grid=(7, 5, 5))"
    assert repr(spec.with_scale(0.5)) == "Spatial(max_angle=30, max_shift=3, grid=(7, 5, 5), scale=0.5)"
    assert not hasattr(spec, "eps")  # eps is a radius, and a spatial attack has none
    assert spec.grid_points == 175 and spec.family == "spatial"
    assert "30" in spec.name and "3px" in spec.name
    assert attacks.PGD(eps=1.0, norm=2).family == "l2"
    assert {attacks.FGSM(eps=0.1).family, attacks.PGD(eps=0.1).family, attacks.MIM(eps=0.1).family} == {"linf"}


X = images(12, n=4)
Y = np.array([0, 1, 2, 3])
BAD = [
    ("even steps", lambda m: attacks.Spatial(angle_steps=6), ValueError, "must be odd"),
    ("one step, nonzero max", lambda m: attacks.Spatial(shift_steps=1), ValueError, "leaves only the value 0"),
    ("zero max, many steps", lambda m: attacks.Spatial(max_angle=0), ValueError, "use angle_steps=1"),
    ("negative angle", lambda m: attacks.Spatial(max_angle=-5), ValueError, "max_angle must be >= 0"),
    ("float steps", lambda m: attacks.Spatial(angle_steps=7.0), TypeError, "angle_steps must be an int"),
    ("interpolation", lambda m: attacks.Spatial(interpolation="cubic"), ValueError, "interpolation must be"),
    ("negative scale", lambda m: attacks.Spatial(scale=-1), ValueError, "scale must be >= 0"),
    ("batch_size 0", lambda m: attacks.Spatial(batch_size=0), ValueError, "batch_size must be >= 1"),
    ("x above range", lambda m: attacks.Spatial()(m, X * 255, Y), ValueError, "divide by 255"),
    ("one-hot labels", lambda m: attacks.Spatial()(m, X, np.eye(N_CLASSES)[Y]), ValueError, "argmax"),
    ("label too large", lambda m: attacks.Spatial()(m, X, Y + 1), ValueError, "labels must be in"),
    ("batch mismatch", lambda m: attacks.Spatial()(m, X, Y[:3]), ValueError, "different batch sizes"),
    ("no channel axis", lambda m: attacks.Spatial()(keras.Sequential([keras.Input((12, 12)), keras.layers.Flatten(),
                                                                      keras.layers.Dense(4)]), X[..., 0], Y),
     ValueError, "channels"),
    ("not a model", lambda m: attacks.Spatial()(lambda x: x, X, Y), TypeError, "keras.Model"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_spatial_bad_input_raises_a_helpful_error(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_spatial_rejects_a_softmax_model():
    softmax = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])
    with pytest.raises(ValueError, match="softmax"):
        attacks.Spatial()(softmax, X, Y)


# --------------------------------------------------------------------------------------------------
# Attack pools
# --------------------------------------------------------------------------------------------------
POOL_SPECS = [
    attacks.FGSM(eps=0.1),
    attacks.MIM(eps=0.1, steps=3, step_size=0.04),
    attacks.PGD(eps=1.0, steps=3, step_size=0.4, norm=2, random_start=False),
    attacks.Spatial(max_angle=20, max_shift=2, angle_steps=3, shift_steps=3),
]


def test_pool_families_without_and_repr():
    pool = attacks.AttackPool(POOL_SPECS, weights=[1, 1, 2, 4])
    assert pool.families == ("linf", "linf", "l2", "spatial")
    np.testing.assert_allclose(pool.probabilities, [0.125, 0.125, 0.25, 0.5])
    loo = pool.without("spatial")
    assert loo.held_out == "spatial" and loo.families == ("linf", "linf", "l2") and loo.weights == (1, 1, 2)
    assert pool.without("linf").attacks == tuple(POOL_SPECS[2:])
    assert repr(loo).startswith("AttackPool({FGSM(eps=0.1): 1, MIM(") and repr(loo).endswith("held_out='spatial')")
    assert len(pool) == 4 and pool[3] is POOL_SPECS[3] and list(pool) == POOL_SPECS
    assert (pool.clip_min, pool.clip_max) == (0.0, 1.0)


def test_pool_sample_follows_the_weights_and_the_seed():
    pool = attacks.AttackPool(POOL_SPECS, weights=[1, 1, 2, 4])
    draws = pool.sample(40_000, seed=3)
    assert draws.dtype == np.int64 and draws.shape == (40_000,)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), pool.probabilities, atol=0.01)
    np.testing.assert_array_equal(pool.sample(50, seed=3), draws[:50])
    assert (pool.sample(50, seed=4) != draws[:50]).any()


def test_pool_draw_in_graph_mode_follows_the_weights():
    pool = attacks.AttackPool(POOL_SPECS[:3], weights=[1, 3, 6])
    draw = tf.function(pool.draw)
    seeds = np.stack([np.arange(3000), np.full(3000, 7)], 1).astype(np.int64)
    draws = np.array([int(draw(tf.constant(s))) for s in seeds[:3000]])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), [0.1, 0.3, 0.6], atol=0.03)
    assert int(draw(tf.constant(seeds[5]))) == draws[5]  # stateless: the same seed, the same draw


def test_pool_generate_runs_the_drawn_spec_in_graph_mode(model):
    x = images(13, n=8)
    y = np.random.default_rng(13).integers(0, N_CLASSES, len(x))
    pool = attacks.AttackPool(POOL_SPECS)
    run = tf.function(lambda a, b, i, s: pool.generate(model, a, b, i, scale=s))
    xt, yt = tf.constant(x), tf.constant(y)
    for i, spec in enumerate(POOL_SPECS):
        got = run(xt, yt, tf.constant(i), tf.constant(1.0)).numpy()
        np.testing.assert_allclose(got, spec.generate(model, xt, yt).numpy(), atol=1e-6)
        half = run(xt, yt, tf.constant(i), tf.constant(0.5)).numpy()
        if isinstance(spec, attacks.Spatial):  # the grid's scale, its budget
            smaller = spec.with_scale(spec.scale * 0.5)
        else:  # the radius and the step
            smaller = dataclasses.replace(spec, eps=spec.eps * 0.5, **({"step_size": spec.step_size * 0.5}
                                                                      if hasattr(spec, "step_size") else {}))
        np.testing.assert_allclose(half, smaller.generate(model, xt, yt).numpy(), atol=1e-6)
    np.testing.assert_array_equal(run(xt, yt, tf.constant(0), tf.constant(0.0)).numpy(), x)  # scale 0: no attack
    np.testing.assert_allclose(pool.generate(model, xt, yt, 2).numpy(), POOL_SPECS[2].generate(model, xt, yt).numpy(),
                               atol=1e-6)


POOL_BAD = [
    ("empty", lambda: attacks.AttackPool([]), ValueError, "at least one attack spec"),
    ("single spec", lambda: attacks.AttackPool(attacks.FGSM(eps=0.1)), TypeError, r"wrap it: \[spec\]"),
    ("not a spec", lambda: attacks.AttackPool([attacks.FGSM(eps=0.1), "pgd"]), TypeError, "must be an attack spec"),
    ("weights length", lambda: attacks.AttackPool(POOL_SPECS, weights=[1, 2]), ValueError, "2 weights for 4 attacks"),
    ("zero weight", lambda: attacks.AttackPool(POOL_SPECS, weights=[1, 0, 1, 1]), ValueError, "weights must be > 0"),
    ("negative weight", lambda: attacks.AttackPool(POOL_SPECS, weights=[1, -1, 1, 1]), ValueError, "weights must be > 0"),
    ("nan weight", lambda: attacks.AttackPool(POOL_SPECS, weights=[1, np.nan, 1, 1]), ValueError, "finite"),
    ("string weight", lambda: attacks.AttackPool(POOL_SPECS, weights=[1, "2", 1, 1]), TypeError, "weight must be a number"),
    ("held out in pool", lambda: attacks.AttackPool(POOL_SPECS, held_out="spatial"), ValueError,
     "held-out family 'spatial' is also in the pool"),
    ("held out l2 in pool", lambda: attacks.AttackPool(POOL_SPECS[:3], held_out="l2"), ValueError, "without"),
    ("unknown family", lambda: attacks.AttackPool(POOL_SPECS[:1], held_out="patch"), ValueError, "held_out must be one of"),
    ("clip ranges", lambda: attacks.AttackPool([attacks.FGSM(eps=0.1), attacks.PGD(eps=0.1, clip_min=-1.0)]),
     ValueError, "disagree on the pixel range"),
    ("without everything", lambda: attacks.AttackPool(POOL_SPECS[:2]).without("linf"), ValueError, "nothing would be left"),
    ("without unknown", lambda: attacks.AttackPool(POOL_SPECS).without("L2"), ValueError, "family must be one of"),
    ("sample 0 tasks", lambda: attacks.AttackPool(POOL_SPECS).sample(0, seed=0), ValueError, "n_tasks must be >= 1"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in POOL_BAD], ids=[c[0] for c in POOL_BAD])
def test_pool_bad_input_raises_a_helpful_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# Adversarial patch
# --------------------------------------------------------------------------------------------------
def max_pool_cnn(seed: int = 0) -> keras.Model:
    """Global max pooling: a feature anywhere in the image counts, so one patch can work at every position."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(8, 3, activation="relu"),
                             keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(N_CLASSES)])


@pytest.fixture(scope="module")
def patch_setup():
    model = max_pool_cnn()
    x = images(20, n=256)
    return model, x, np.argmax(model(x).numpy(), 1)  # labels = clean predictions: every image starts correct


def test_apply_pastes_the_patch_in_its_square_and_nowhere_else():
    x = images(21, n=6)
    spec = attacks.AdversarialPatch(size=4)
    patch = spec.random_patch(1, seed=3)
    positions = spec.random_positions(6, x.shape[1:], seed=2)
    positions[0], positions[1] = (0, 0), (SHAPE[0] - 4, SHAPE[1] - 4)  # the corners of the allowed range
    got = spec.apply(x, patch, positions)
    expected = x.copy()
    for i, (r, c) in enumerate(positions):
        expected[i, r:r + 4, c:c + 4] = patch
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", [4, 5])
def test_turned_patch_stays_in_its_square(size):
    x = images(22, n=3)
    spec = attacks.AdversarialPatch(size=size)
    patch = spec.random_patch(1, seed=4)
    positions = np.array([[2, 3], [5, 1], [0, 7]])
    quarter = spec.apply(x, patch, positions, angles=[90, 90, -90])
    for i, (r, c) in enumerate(positions):
        k = 1 if i < 2 else 3
        np.testing.assert_allclose(quarter[i, r:r + size, c:c + size], np.rot90(patch, k, axes=(0, 1)))
    tilted = spec.apply(x, patch, positions, angles=[30, -20, 45])
    for i, (r, c) in enumerate(positions):
        outside = np.ones(SHAPE, bool)
        outside[r:r + size, c:c + size] = False
        np.testing.assert_array_equal(tilted[i][outside], x[i][outside])  # the rest of the image untouched
        square = tilted[i, r:r + size, c:c + size]
        assert np.isin(square, np.append(patch.ravel(), x[i, r:r + size, c:c + size].ravel())).all()
        assert np.isin(square, patch).mean() > 0.5


@pytest.mark.parametrize("kwargs", [{"learning_rate": 0.2}, {"optimizer": "sign", "learning_rate": 0.05}, {"max_angle": 30.0},
                                    {"target": 1}], ids=["adam", "sign", "turns", "targeted"])
def test_training_beats_a_random_patch(patch_setup, kwargs):
    model, x, y = patch_setup
    spec = attacks.AdversarialPatch(**{"size": 4, "steps": 100, "batch_size": 32, **kwargs})
    before = attacks.trace_count(model)
    patch = spec.fit(model, x, y)
    assert attacks.trace_count(model) - before == 1  # one compiled step, traced once for all 100 steps
    assert patch.shape == (4, 4, 1) and patch.dtype == np.float32
    assert patch.min() >= 0.0 and patch.max() <= 1.0
    trained = spec.success_rate(model, x, y, patch, placements=4)
    control = spec.success_rate(model, x, y, spec.random_patch(1), placements=4)
    assert trained > control + 0.15, (trained, control)
    # the success rate counts what it says: recompute it for one placement by hand
    positions = spec.random_positions(len(x), x.shape[1:], seed=9)
    pred = np.argmax(model(spec.apply(x, patch, positions)).numpy(), 1)
    if spec.targeted:
        assert 0 < (pred[y != 1] == 1).mean()
    else:
        assert 0 < (pred != y).mean()


def test_fit_is_repeatable_and_the_call_pastes_the_fitted_patch(patch_setup):
    model, x, y = patch_setup
    spec = attacks.AdversarialPatch(size=3, steps=5, batch_size=8, seed=2)
    first = spec.fit(model, x[:32], y[:32])
    np.testing.assert_array_equal(spec.fit(model, x[:32], y[:32]), first)
    assert not np.array_equal(first, spec.random_patch(1))  # training moved it
    x_adv = spec(model, x[:32], y[:32])
    changed = (x_adv != x[:32]).reshape(32, -1).sum(1)
    assert changed.max() <= 9 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_patch_repr_and_name():
    assert repr(attacks.AdversarialPatch(9)) == "AdversarialPatch(size=9, target=None, steps=500)"
    assert repr(attacks.AdversarialPatch(9, target=3, max_angle=10)) == \
        "AdversarialPatch(size=9, target=3, steps=500, max_angle=10.0)"
    assert attacks.AdversarialPatch(9, target=3).name == "Patch 9x9 -> 3"
    assert attacks.AdversarialPatch(9).family == "patch" and not attacks.AdversarialPatch(9).targeted


PX = images(23, n=4)
PATCH_BAD = [
    ("size 0", lambda m: attacks.AdversarialPatch(0), ValueError, "size must be >= 1"),
    ("negative target", lambda m: attacks.AdversarialPatch(3, target=-1), ValueError, "target must be None"),
    ("optimizer", lambda m: attacks.AdversarialPatch(3, optimizer="sgd"), ValueError, "optimizer must be one of"),
    ("rate", lambda m: attacks.AdversarialPatch(3, learning_rate=0), ValueError, "learning_rate must be > 0"),
    ("angle", lambda m: attacks.AdversarialPatch(3, max_angle=200), ValueError, r"max_angle must be in \[0, 180\]"),
    ("clip", lambda m: attacks.AdversarialPatch(3, clip_min=1, clip_max=0), ValueError, "clip_min must be < clip_max"),
    ("too big", lambda m: attacks.AdversarialPatch(13).fit(m, PX, Y), ValueError, "does not fit"),
    ("target too big", lambda m: attacks.AdversarialPatch(3, target=4).fit(m, PX, Y), ValueError, r"target must be in 0\.\.3"),
    ("one-hot", lambda m: attacks.AdversarialPatch(3).fit(m, PX, np.eye(4)[Y]), ValueError, "argmax"),
    ("x range", lambda m: attacks.AdversarialPatch(3).fit(m, PX * 255, Y), ValueError, "divide by 255"),
    ("patch shape", lambda m: attacks.AdversarialPatch(3).apply(PX, np.zeros((4, 4, 1)), np.zeros((4, 2), int)),
     ValueError, r"patch must have shape \(3, 3, 1\)"),
    ("patch range", lambda m: attacks.AdversarialPatch(3).apply(PX, np.full((3, 3, 1), 2.0), np.zeros((4, 2), int)),
     ValueError, r"in \[0.0, 1.0\]"),
    ("apply x range", lambda m: attacks.AdversarialPatch(3).apply(PX + 1, np.zeros((3, 3, 1)), np.zeros((4, 2), int)),
     ValueError, "outside"),
    ("positions out", lambda m: attacks.AdversarialPatch(3).apply(PX, np.zeros((3, 3, 1)), np.full((4, 2), 10)),
     ValueError, "inside the image"),
    ("positions float", lambda m: attacks.AdversarialPatch(3).apply(PX, np.zeros((3, 3, 1)), np.zeros((4, 2))),
     ValueError, "integer"),
    ("all target", lambda m: attacks.AdversarialPatch(3, target=0).success_rate(m, PX, np.zeros(4, int),
                                                                              np.zeros((3, 3, 1))),
     ValueError, "nothing to measure"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in PATCH_BAD], ids=[c[0] for c in PATCH_BAD])
def test_patch_bad_input_raises_a_helpful_error(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_spatial_and_pool_run_against_adapted_weights(model):
    """Through meta_adversarial.attack_adapted: the attack sees the model at the given (adapted) weights."""
    from tutorial_lib import meta, meta_adversarial

    x = images(24)
    y = np.random.default_rng(24).integers(0, N_CLASSES, len(x))
    spec = attacks.Spatial(max_angle=20, max_shift=1, angle_steps=5, shift_steps=3)
    params = meta.params_of(model)
    got = meta_adversarial.attack_adapted(spec, model, params, x, y)
    np.testing.assert_array_equal(got.numpy(), spec(model, x, y))
    other = tiny_cnn(seed=5)  # other weights, same architecture: the attack must follow the weights it is given
    shifted = meta_adversarial.attack_adapted(spec, model, meta.params_of(other), x, y)
    np.testing.assert_array_equal(shifted.numpy(), spec(other, x, y))
    assert not np.array_equal(shifted.numpy(), got.numpy())
    pool = attacks.AttackPool([attacks.FGSM(eps=0.1), spec])  # a pool takes the adapted forward pass the same way
    adapted = meta_adversarial.adapted_logits_fn(model, meta.params_of(other))
    drawn = tf.function(lambda a, b, i: pool.generate(adapted, a, b, i))(tf.constant(x), tf.constant(y), tf.constant(1))
    np.testing.assert_array_equal(drawn.numpy(), spec(other, x, y))
