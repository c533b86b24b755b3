"""Tests for tutorial_lib.tasks: shapes, renumbering, determinism, disjoint splits, transformations, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tutorial_lib import tasks as T


@pytest.fixture(scope="module")
def toy():
    """30 distinct 'images' per digit 0..9 (each image unique, so we can trace where it came from)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 30)
    x = rng.random((len(y), 6, 6, 1), dtype=np.float32)
    return x, y


def _find(x, y, img):
    """(digit, index in x) of the image equal to img, searching the raw images."""
    hits = np.flatnonzero(np.all(x.reshape(len(x), -1) == img.reshape(1, -1), axis=1))
    assert len(hits) == 1
    return int(y[hits[0]]), int(hits[0])


def test_shapes_and_dtypes(toy):
    x, y = toy
    s = T.FewShotSampler(x, y, n_way=4, k_shot=2, q_queries=3, classes=range(6), seed=0)
    t = s.sample(7)
    assert t.support_x.shape == (7, 8, 6, 6, 1) and t.support_x.dtype == np.float32
    assert t.query_x.shape == (7, 12, 6, 6, 1)
    assert t.support_y.shape == (7, 8) and t.support_y.dtype == np.int32
    assert t.query_y.shape == (7, 12) and t.classes.shape == (7, 4)
    assert len(t) == 7 and len(t[2]) == 1 and len(t[1:4]) == 3


def test_labels_renumbered_and_images_from_the_right_class(toy):
    x, y = toy
    classes = [1, 3, 5, 7, 9]
    s = T.FewShotSampler(x, y, n_way=3, k_shot=2, q_queries=4, classes=classes, seed=1)
    t = s.sample(20)
    for i in range(len(t)):
        assert sorted(np.unique(t.support_y[i])) == [0, 1, 2]
        assert np.all(np.bincount(t.support_y[i]) == 2) and np.all(np.bincount(t.query_y[i]) == 4)
        assert len(set(t.classes[i])) == 3  # distinct classes per task
        used = set()
        for xs, ys in ((t.support_x[i], t.support_y[i]), (t.query_x[i], t.query_y[i])):
            for img, label in zip(xs, ys):
                digit, idx = _find(x, y, img)
                assert digit == classes[t.classes[i, label]]
                assert idx not in used  # support and query never share an image
                used.add(idx)
    # the renumbering is random: the class behind label 0 varies across tasks
    assert len(set(t.classes[:, 0])) > 1


def test_deterministic_for_a_seed(toy):
    x, y = toy
    make = lambda seed: T.FewShotSampler(x, y, n_way=3, k_shot=1, q_queries=2, classes=range(10), seed=seed)
    a, b, c = make(0), make(0), make(1)
    ta, tb, tc = a.sample(5), b.sample(5), c.sample(5)
    np.testing.assert_array_equal(ta.support_x, tb.support_x)
    np.testing.assert_array_equal(ta.classes, tb.classes)
    assert not np.array_equal(ta.support_x, tc.support_x)
    # successive calls advance; an explicit seed gives a fixed set and leaves the stream untouched
    assert not np.array_equal(a.sample(5).support_x, ta.support_x)
    fixed1 = a.sample(4, seed=3)
    nxt = a.sample(5)
    np.testing.assert_array_equal(fixed1.query_x, a.sample(4, seed=3).query_x)
    b.sample(5)
    b.sample(4, seed=3)
    np.testing.assert_array_equal(nxt.support_x, b.sample(5).support_x)


def test_all_classes_and_images_are_used(toy):
    x, y = toy
    s = T.FewShotSampler(x, y, n_way=2, k_shot=1, q_queries=1, classes=range(4), seed=0)
    t = s.sample(400)
    assert set(t.classes.ravel()) == {0, 1, 2, 3}
    idx = {_find(x, y, img)[1] for img in t.support_x[:, :, ...].reshape(-1, 6, 6, 1)}
    assert len(idx) > 100  # of the 120 images of digits 0-3


def test_unequal_class_sizes_never_pick_padding(toy):
    x, y = toy
    keep = (y != 2) | (np.arange(len(y)) % 30 < 5)  # digit 2 keeps only 5 images
    s = T.FewShotSampler(x[keep], y[keep], n_way=3, k_shot=2, q_queries=3, classes=[0, 1, 2], seed=0)
    t = s.sample(50)
    assert not np.any(np.all(t.query_x.reshape(-1, 36) == 0, axis=1))  # padding images are all-zero
    assert not np.any(np.all(t.support_x.reshape(-1, 36) == 0, axis=1))


def test_rotations_and_flips_are_classes():
    specs = T.transformed_classes(range(5), rotations=T.ROTATIONS)
    assert len(specs) == 20 and len({s.name for s in specs}) == 20
    assert len(T.transformed_classes(range(5), rotations=T.ROTATIONS, flips=True)) == 40
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4, 1)
    y = np.array([3, 3])
    s = T.FewShotSampler(x, y, n_way=2, k_shot=1, q_queries=1,
                         classes=[T.ClassSpec(3, 90), T.ClassSpec(3, 0, flip=True)], seed=0)
    t = s.sample(10)
    for i in range(10):
        for img, label in zip(t.support_x[i], t.support_y[i]):
            spec = s.specs[t.classes[i, label]]
            candidates = [np.rot90(x[j], 1) if spec.rotation == 90 else x[j][:, ::-1] for j in range(2)]
            assert any(np.array_equal(img, c) for c in candidates)


def test_digit_splits_are_disjoint_and_documented(mnist_subset):
    tr, te = T.digit_splits(mnist_subset, n_way=5, k_shot=1, q_queries=15)
    assert tr.num_classes == 20 and te.num_classes == 5
    assert {s.digit for s in tr.specs} == {0, 1, 2, 3, 4} and {s.digit for s in te.specs} == {5, 6, 7, 8, 9}
    assert all(s.rotation == 0 and not s.flip for s in te.specs)
    assert tr.counts.min() == 500  # train and test images pooled: 400 + 100 per digit
    with pytest.raises(ValueError, match="share digits \\[4\\]"):
        T.digit_splits(mnist_subset, n_way=5, k_shot=1, q_queries=1, meta_train=range(5), meta_test=range(4, 10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_way=6, k_shot=1, q_queries=1, classes=range(5)), "larger than the 5 classes"),
        (dict(n_way=2, k_shot=20, q_queries=11, classes=range(5)), "k_shot \\+ q_queries = 31"),
        (dict(n_way=1, k_shot=1, q_queries=1, classes=range(5)), "n_way must be >= 2"),
        (dict(n_way=2, k_shot=0, q_queries=1, classes=range(5)), "k_shot must be"),
        (dict(n_way=2, k_shot=1, q_queries=1, classes=[1, 1, 2]), "duplicates"),
    ],
)
def test_bad_inputs(toy, kwargs, match):
    x, y = toy
    with pytest.raises(ValueError, match=match):
        T.FewShotSampler(x, y, **kwargs)


def test_bad_types_and_rotations(toy):
    x, y = toy
    with pytest.raises(TypeError, match="float images"):
        T.FewShotSampler((x * 255).astype(np.uint8), y, n_way=2, k_shot=1, q_queries=1, classes=range(3))
    with pytest.raises(TypeError, match="digits \\(int\\) or ClassSpec"):
        T.FewShotSampler(x, y, n_way=2, k_shot=1, q_queries=1, classes=["a", "b"])
    with pytest.raises(ValueError, match="rotations must be taken from"):
        T.transformed_classes(range(3), rotations=(0, 45))
    s = T.FewShotSampler(x, y, n_way=2, k_shot=1, q_queries=1, classes=range(3))
    with pytest.raises(ValueError, match="tasks must be >= 1"):
        s.sample(0)


# --- validation split ------------------------------------------------------------------------------
def test_split_images_is_stratified_disjoint_and_deterministic(toy):
    x, y = toy
    (xa, ya), (xb, yb) = T.split_images(x, y, fraction=0.2, seed=3)
    assert len(xa) + len(xb) == len(x)
    assert np.bincount(yb, minlength=10).tolist() == [6] * 10  # 20 % of 30 per digit
    flat_a = {img.tobytes() for img in xa}
    assert not any(img.tobytes() in flat_a for img in xb)  # no image in both parts
    (xa2, _), (xb2, _) = T.split_images(x, y, fraction=0.2, seed=3)
    assert np.array_equal(xb, xb2) and np.array_equal(xa, xa2)
    (_, _), (xb3, _) = T.split_images(x, y, fraction=0.2, seed=4)
    assert not np.array_equal(xb, xb3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_images_refuses_bad_fraction(toy, fraction):
    x, y = toy
    with pytest.raises(ValueError, match="fraction"):
        T.split_images(x, y, fraction=fraction)


def test_split_images_refuses_bad_shapes(toy):
    x, y = toy
    with pytest.raises(ValueError, match="same n"):
        T.split_images(x, y[:-1], fraction=0.2)
    with pytest.raises(TypeError, match="fraction must be a number"):
        T.split_images(x, y, fraction="0.2")


def test_digit_splits_with_validation_shares_classes_not_images(toy):
    from types import SimpleNamespace

    x, y = toy
    data = SimpleNamespace(x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2])
    train, val, test = T.digit_splits_with_validation(data, n_way=3, k_shot=1, q_queries=2, validation=0.25, seed=0)
    assert train.class_names == val.class_names and len(train.class_names) == 20  # digits 0-4 x 4 rotations
    assert test.class_names == ["5", "6", "7", "8", "9"]
    upright = [i for i, s in enumerate(train.specs) if s.rotation == 0]
    seen_train = {img.tobytes() for i in upright for img in train.pool[i, :train.counts[i]]}
    seen_val = {img.tobytes() for i in upright for img in val.pool[i, :val.counts[i]]}
    assert seen_train and seen_val and not (seen_train & seen_val)
    assert val.counts.sum() + train.counts.sum() == 4 * 150  # 4 rotations x 150 images of digits 0-4
    t = val.sample(4, seed=0)
    assert t.support_x.shape == (4, 3, 6, 6, 1)
