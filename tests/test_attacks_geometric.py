"""Tests for the geometric attack families in tutorial_lib.attacks.spatial: affine_transform, Rotation, Translation,
ZoomShear (notebook 06's held-out geometric families), their pools and the evaluator's checks.

Independent references: numpy rolls and index arithmetic, scipy.ndimage.affine_transform, brute-force search over
each grid on a tiny model.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from tutorial_lib import adaptation, attacks, meta

SHAPE = (12, 12, 1)
N_CLASSES = 4
SPECS = {
    "rotation": attacks.Rotation(max_angle=30, angle_steps=7),
    "translation": attacks.Translation(max_shift=2, shift_steps=5),
    "zoom_shear": attacks.ZoomShear(max_zoom=0.2, max_shear=0.3, zoom_steps=3, shear_steps=3),
}


def tiny_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(6, 3, activation="relu"),
                             keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(N_CLASSES)])


def images(seed: int, n: int = 16, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Random images in [0, 1] with a blank border ring of 2 pixels."""
    x = np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)
    x[:, :2], x[:, -2:], x[:, :, :2], x[:, :, -2:] = 0, 0, 0, 0
    return x


def labels(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, N_CLASSES, n)


def transform(x: np.ndarray, row: np.ndarray, **kwargs) -> np.ndarray:
    """One row of a spec's ``affine_grid`` applied to x."""
    return attacks.affine_transform(x, **dict(zip(attacks.AFFINE_PARAMS, row)), **kwargs).numpy()


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_cnn()


# --------------------------------------------------------------------------------------------------
# The transform against hand-computed references
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_identity_leaves_images_unchanged(interpolation):
    x = images(0, n=3, shape=(9, 10, 2))
    np.testing.assert_array_equal(attacks.affine_transform(x, interpolation=interpolation).numpy(), x)
    np.testing.assert_array_equal(attacks.affine_transform(x, angle=0.0, zoom_x=1.0, zoom_y=1.0, shear=0.0).numpy(), x)


@pytest.mark.parametrize("dx, dy", [(1, 0), (-1, 0), (0, 1), (2, -3)])
def test_whole_pixel_shift_is_a_roll_with_zero_fill(dx, dy):
    x = images(1, n=2, shape=(9, 11, 1))
    x[:, 0, :] = x[:, :, 0] = 0.7  # content at the edges, so the fill matters
    expected = np.roll(x, (dy, dx), axis=(1, 2))
    if dy > 0:
        expected[:, :dy] = 0
    elif dy < 0:
        expected[:, dy:] = 0
    if dx > 0:
        expected[:, :, :dx] = 0
    elif dx < 0:
        expected[:, :, dx:] = 0
    np.testing.assert_array_equal(attacks.affine_transform(x, dx=dx, dy=dy).numpy(), expected)


@pytest.mark.parametrize("size", [8, 9])
def test_quarter_turn_is_rot90(size):
    x = images(2, n=2, shape=(size, size, 1))
    np.testing.assert_array_equal(attacks.affine_transform(x, angle=90.0).numpy(), np.rot90(x, 1, axes=(1, 2)))


@pytest.mark.parametrize("shear", [1.0, -2.0])
def test_shear_moves_each_row_by_shear_times_its_distance_below_the_centre(shear):
    size = 9  # odd: the centre row is a pixel row, so every shift is a whole number of pixels
    x = images(3, n=2, shape=(size, size, 1))
    x[:, :, 0] = x[:, :, -1] = 0.5
    expected = np.zeros_like(x)
    centre = (size - 1) // 2
    for row in range(size):
        shift = int(shear * (row - centre))
        for col in range(size):
            if 0 <= col - shift < size:
                expected[:, row, col] = x[:, row, col - shift]
    np.testing.assert_array_equal(attacks.affine_transform(x, shear=shear).numpy(), expected)


def test_zoom_by_half_keeps_every_second_pixel_around_the_centre():
    size = 9
    x = images(4, n=2, shape=(size, size, 1))
    x[:, 0, :] = 0.9
    c = (size - 1) // 2
    expected = np.zeros_like(x)
    for row in range(size):
        for col in range(size):
            r, k = c + 2 * (row - c), c + 2 * (col - c)
            if 0 <= r < size and 0 <= k < size:
                expected[:, row, col] = x[:, r, k]
    np.testing.assert_array_equal(attacks.affine_transform(x, zoom_x=0.5, zoom_y=0.5).numpy(), expected)
    # uneven zoom: only the width halves
    wide = attacks.affine_transform(x, zoom_x=0.5).numpy()
    np.testing.assert_array_equal(wide[:, :, c], x[:, :, c])
    np.testing.assert_array_equal(wide[:, :, c + 1], x[:, :, c + 2])


def test_general_affine_map_matches_scipy_bilinear():
    x = images(5, n=1, shape=(15, 15, 1))
    angle, dx, dy, zx, zy, s = 17.0, 0.6, -1.2, 1.15, 0.9, 0.2
    got = attacks.affine_transform(x, angle=angle, dx=dx, dy=dy, zoom_x=zx, zoom_y=zy, shear=s,
                                   interpolation="bilinear").numpy()[0, :, :, 0]
    # forward map in (x right, y down) about the centre: q = c + R U (p - c) + t; scipy wants output -> input in
    # (row, col) = (y, x) order: p = c + (R U)^-1 (q - c - t)
    t = np.deg2rad(angle)
    rotate = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # counter-clockwise as displayed
    forward_xy = rotate @ np.array([[zx, s], [0.0, zy]])
    inverse_xy = np.linalg.inv(forward_xy)
    swap = np.array([[0, 1], [1, 0]])
    inverse_rc = swap @ inverse_xy @ swap
    c = np.array([7.0, 7.0])
    offset = c - inverse_rc @ (c + np.array([dy, dx]))
    expected = scipy.ndimage.affine_transform(x[0, :, :, 0].astype(np.float64), inverse_rc, offset=offset, order=1,
                                              mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rotation_direction_agrees_with_spatial_transform():
    x = images(6, n=2)
    np.testing.assert_array_equal(attacks.affine_transform(x, angle=23.0, dx=1.5, dy=-0.5).numpy(),
                                  attacks.spatial_transform(x, 23.0, 1.5, -0.5).numpy())


def test_per_image_parameters():
    x = images(7, n=3)
    got = attacks.affine_transform(x, shear=np.array([0.0, 0.2, -0.3]), zoom_x=np.array([1.0, 0.9, 1.2])).numpy()
    for i, (s, z) in enumerate([(0.0, 1.0), (0.2, 0.9), (-0.3, 1.2)]):
        np.testing.assert_array_equal(got[i], attacks.affine_transform(x[i:i + 1], shear=s, zoom_x=z).numpy()[0])


# --------------------------------------------------------------------------------------------------
# The grids and the attacks
# --------------------------------------------------------------------------------------------------
def test_grids_contain_the_identity_and_span_the_budget():
    rot, tr, zs = attacks.Rotation(), attacks.Translation(), attacks.ZoomShear()
    np.testing.assert_allclose(rot.grid, np.arange(-30, 31, 2))
    assert tr.grid.shape == (49, 2) and set(np.unique(tr.grid)) == {-3, -2, -1, 0, 1, 2, 3}
    assert zs.grid.shape == (125, 3)
    np.testing.assert_allclose(np.unique(zs.grid[:, 0]), [0.8, 0.9, 1.0, 1.1, 1.2])
    np.testing.assert_allclose(np.unique(zs.grid[:, 2]), [-0.3, -0.15, 0, 0.15, 0.3])
    identity = np.array([0, 0, 0, 1, 1, 0])
    for spec in (rot, tr, zs, attacks.Spatial()):
        grid = spec.affine_grid
        assert grid.shape == (spec.grid_points, 6)
        assert (np.abs(grid - identity) < 1e-12).all(1).sum() == 1
    np.testing.assert_allclose(zs.with_scale(0.5).affine_grid[:, 3:5].min(), 0.9)


@pytest.mark.parametrize("family", SPECS)
@pytest.mark.parametrize("targeted", [False, True])
def test_per_example_choice_is_the_worst_of_a_brute_force_search(model, family, targeted):
    spec = dataclasses.replace(SPECS[family], targeted=targeted)
    x = images(8, n=32)
    y = labels(8, len(x))
    grid = spec.affine_grid
    candidates = np.stack([transform(x, row) for row in grid])  # (G, B, ...)
    logits = np.stack([model(c).numpy().astype(np.float64) for c in candidates])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -log_p[:, np.arange(len(x)), y]
    hit = logits.argmax(-1) == y
    broken, score = (hit, -loss) if targeted else (~hit, loss)
    choice = np.argmax(np.where(broken.any(0), np.where(broken, score, -np.inf), score), axis=0)
    got = spec(model, x, y)
    matches = (candidates == got[None]).reshape(len(grid), len(x), -1).all(-1)
    assert matches.any(0).all()  # every output is one of the grid's transforms of its input
    got_score = np.array([score[matches[:, i], i].max() for i in range(len(x))])
    np.testing.assert_allclose(got_score, score[choice, np.arange(len(x))], rtol=1e-4, atol=1e-5)
    got_broken = (np.argmax(model(got).numpy(), 1) == y) == targeted
    np.testing.assert_array_equal(got_broken, broken.any(0))  # broken exactly where some grid point breaks it


@pytest.mark.parametrize("family", SPECS)
def test_scale_zero_and_single_point_grids_return_the_input(model, family):
    x = images(9)
    y = labels(9, len(x))
    np.testing.assert_array_equal(SPECS[family].with_scale(0.0)(model, x, y), x)
    for single in (attacks.Rotation(max_angle=0, angle_steps=1), attacks.Translation(max_shift=0, shift_steps=1),
                   attacks.ZoomShear(max_zoom=0, max_shear=0, zoom_steps=1, shear_steps=1)):
        np.testing.assert_array_equal(single(model, x, y), x)


def test_scale_multiplies_the_grid(model):
    x = images(10)
    y = labels(10, len(x))
    pairs = [(attacks.Rotation(max_angle=30, angle_steps=5).with_scale(0.5),
              attacks.Rotation(max_angle=15, angle_steps=5)),
             (attacks.Translation(max_shift=4, shift_steps=5).with_scale(0.5),
              attacks.Translation(max_shift=2, shift_steps=5)),
             (attacks.ZoomShear(max_zoom=0.4, max_shear=0.2, zoom_steps=3, shear_steps=3).with_scale(0.5),
              attacks.ZoomShear(max_zoom=0.2, max_shear=0.1, zoom_steps=3, shear_steps=3))]
    for half, same in pairs:
        np.testing.assert_allclose(half.affine_grid, same.affine_grid, atol=1e-12)
        np.testing.assert_array_equal(half(model, x, y), same(model, x, y))
        full = half.generate(model, tf.constant(x), tf.constant(y), scale=tf.constant(1.0)).numpy()
        np.testing.assert_array_equal(full, half.with_scale(1.0)(model, x, y))


@pytest.mark.parametrize("family", SPECS)
def test_lowers_accuracy_is_deterministic_and_compiled_once(model, family):
    x = images(11, n=64)
    y = np.argmax(model(x).numpy(), 1)  # clean accuracy 100 %
    spec = dataclasses.replace(SPECS[family], batch_size=24)
    attacks.clear_cache(model)
    before = attacks.trace_count(model)
    x_adv = spec(model, x, y)
    np.testing.assert_array_equal(spec(model, x, y), x_adv)
    spec(model, x[:10], y[:10])
    assert attacks.trace_count(model) - before == 1
    assert (np.argmax(model(x_adv).numpy(), 1) == y).mean() < 0.95


@pytest.mark.parametrize("family", SPECS)
def test_against_adapted_weights_inside_a_tf_function(model, family):
    """Usable against adapted weights: adaptation.attack_adapted and any f(x, training=False) -> logits."""
    spec = SPECS[family]
    x = images(12)
    y = labels(12, len(x))
    params = meta.params_of(model)
    graph = tf.function(lambda a, b: adaptation.attack_adapted(spec, model, params, a, b,
                                                               seed=tf.constant([0, 1], tf.int64)))
    np.testing.assert_array_equal(graph(tf.constant(x), tf.constant(y)).numpy(), spec(model, x, y))
    for option in ("eps", "step_size"):
        with pytest.raises(TypeError, match="no radius eps or step_size"):
            spec.generate(model, tf.constant(x), tf.constant(y), **{option: 0.5})
    with pytest.raises(TypeError, match="with_scale"):
        spec.with_eps(0.5)


def test_repr_name_and_family():
    assert repr(attacks.Rotation()) == "Rotation(max_angle=30, angle_steps=31)"
    assert repr(attacks.Translation(max_shift=2, shift_steps=5, scale=0.5)) == \
        "Translation(max_shift=2, shift_steps=5, scale=0.5)"
    assert repr(attacks.ZoomShear(targeted=True)) == \
        "ZoomShear(max_zoom=0.2, max_shear=0.3, grid=(5, 5, 5), targeted=True)"
    assert attacks.Rotation().name == "Rotation 30deg (31)"
    assert attacks.Translation().with_scale(0.5).name == "Translation 1.5px (7x7)"
    assert attacks.ZoomShear().name == "ZoomShear 20% shear 0.3 (5x5x5)"
    assert [s.family for s in (attacks.Rotation(), attacks.Translation(), attacks.ZoomShear(), attacks.Spatial())] == \
        ["rotation", "translation", "zoom_shear", "spatial"]
    assert set(attacks.GEOMETRIC_FAMILIES) <= set(attacks.FAMILIES)
    for spec in (attacks.Rotation(), attacks.Translation(), attacks.ZoomShear()):
        assert not hasattr(spec, "eps")  # eps is a radius, and a geometric attack has none
    assert (attacks.Rotation().grid_points, attacks.Translation().grid_points, attacks.ZoomShear().grid_points) == \
        (31, 49, 125)


X = images(13, n=4)
Y = np.array([0, 1, 2, 3])
BAD = [
    ("even angle steps", lambda m: attacks.Rotation(angle_steps=30), ValueError, "must be odd"),
    ("negative angle", lambda m: attacks.Rotation(max_angle=-5), ValueError, "max_angle must be >= 0"),
    ("float steps", lambda m: attacks.Translation(shift_steps=7.0), TypeError, "shift_steps must be an int"),
    ("one shift, nonzero max", lambda m: attacks.Translation(shift_steps=1), ValueError, "leaves only the value 0"),
    ("zero shear, many steps", lambda m: attacks.ZoomShear(max_shear=0), ValueError, "use shear_steps=1"),
    ("zoom too large", lambda m: attacks.ZoomShear(max_zoom=1.0), ValueError, "must be < 1"),
    ("zoom x scale too large", lambda m: attacks.ZoomShear(max_zoom=0.6, scale=2.0), ValueError, "must be < 1"),
    ("string zoom", lambda m: attacks.ZoomShear(max_zoom="0.2"), TypeError, "max_zoom must be a number"),
    ("interpolation", lambda m: attacks.Rotation(interpolation="cubic"), ValueError, "interpolation must be"),
    ("negative scale", lambda m: attacks.Translation(scale=-1), ValueError, "scale must be >= 0"),
    ("batch_size 0", lambda m: attacks.ZoomShear(batch_size=0), ValueError, "batch_size must be >= 1"),
    ("clip range", lambda m: attacks.Rotation(clip_min=1, clip_max=0), ValueError, "clip_min must be < clip_max"),
    ("x above range", lambda m: attacks.Rotation()(m, X * 255, Y), ValueError, "divide by 255"),
    ("one-hot labels", lambda m: attacks.Translation()(m, X, np.eye(N_CLASSES)[Y]), ValueError, "argmax"),
    ("label too large", lambda m: attacks.ZoomShear()(m, X, Y + 1), ValueError, "labels must be in"),
    ("no channel axis", lambda m: attacks.Rotation()(keras.Sequential([keras.Input((12, 12)), keras.layers.Flatten(),
                                                                       keras.layers.Dense(4)]), X[..., 0], Y),
     ValueError, "channels"),
    ("not a model", lambda m: attacks.Translation()(lambda x: x, X, Y), TypeError, "keras.Model"),
    ("affine bad interpolation", lambda m: attacks.affine_transform(X, interpolation="area"), ValueError,
     "interpolation must be"),
    ("affine not images", lambda m: attacks.affine_transform(X[..., 0], angle=3.0), ValueError,
     "height, width, channels"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_a_helpful_error(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


# --------------------------------------------------------------------------------------------------
# Pools and the evaluator's checks
# --------------------------------------------------------------------------------------------------
FAMILY_SPECS = [attacks.PGD(eps=0.1, steps=3, step_size=0.04), attacks.PGD(eps=1.0, steps=3, step_size=0.4, norm=2),
                attacks.SparseL1Descent(eps=3.0, steps=3, step_size=1.0, seed=0), *SPECS.values()]


def test_pool_of_every_family_leaves_each_one_out(model):
    pool = attacks.AttackPool(FAMILY_SPECS)
    assert pool.families == ("linf", "l2", "l1", "rotation", "translation", "zoom_shear")
    for family in pool.families:
        loo = pool.without(family)
        assert family not in loo.families and len(loo) == len(pool) - 1 and loo.held_out == family
    assert pool.without("rotation").families[-2:] == ("translation", "zoom_shear")  # geometry still in training
    with pytest.raises(ValueError, match="held-out family 'translation' is also in the pool"):
        attacks.AttackPool(FAMILY_SPECS, held_out="translation")
    x, y = images(14, n=8), labels(14, 8)
    geometric = attacks.AttackPool(list(SPECS.values()))  # the gradient families' pool branches: test_attacks_sparse
    seed = tf.constant([3, 4], tf.int64)
    run = tf.function(lambda a, b, i, s: geometric.generate(model, a, b, i, scale=s, seed=seed))
    xt, yt = tf.constant(x), tf.constant(y)
    for i, spec in enumerate(SPECS.values()):
        np.testing.assert_array_equal(run(xt, yt, tf.constant(i), tf.constant(0.5)).numpy(),
                                      spec.with_scale(0.5).generate(model, xt, yt).numpy())
        np.testing.assert_array_equal(run(xt, yt, tf.constant(i), tf.constant(0.0)).numpy(), x)


def test_the_evaluator_accepts_every_family_and_checks_the_grid_scale():
    for spec in FAMILY_SPECS:
        assert adaptation.check_attack(spec) is spec
        adaptation.check_data_range(spec, X)
    for spec in SPECS.values():
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            adaptation.check_attack(spec.with_scale(1.5))
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            adaptation.check_attack(spec.with_scale(0.0))


def test_robust_evaluate_of_adapted_learners_takes_every_family():
    """The evaluator of adapted learners (notebooks 05-06) runs each family against the adapted weights."""
    from tutorial_lib import models
    from tutorial_lib.tasks import Tasks

    tf.keras.utils.set_random_seed(0)
    learner = models.few_shot_cnn(3, filters=4, blocks=2, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    sy = np.tile(np.repeat(np.arange(3), 2), (4, 1)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(3), 3), (4, 1)).astype(np.int32)
    sx = np.clip(rng.random((4, 6, 8, 8, 1)) * 0.5 + sy[..., None, None, None] * 0.2, 0, 1).astype(np.float32)
    qx = np.clip(rng.random((4, 9, 8, 8, 1)) * 0.5 + qy[..., None, None, None] * 0.2, 0, 1).astype(np.float32)
    tasks = Tasks(sx, sy, qx, qy, np.tile(np.arange(3), (4, 1)))
    spec = attacks.SparseL1Descent(eps=3.0, steps=2, seed=0)  # the geometric specs share one code path: below
    res = adaptation.robust_evaluate(learner, tasks, steps=2, lr=0.1, attack=spec)
    assert res.robust.shape == (4,) and (res.robust <= res.clean).all() and res.attack == spec.name
    no_move = attacks.Rotation(max_angle=0, angle_steps=1)
    identity = adaptation.robust_evaluate(learner, tasks, steps=2, lr=0.1, attack=no_move)
    np.testing.assert_array_equal(identity.robust, identity.clean)
