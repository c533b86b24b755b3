"""Tests for tutorial_lib.attacks.apgd: Auto-PGD against a hand-written reference, bounds, strength, peers."""

from __future__ import annotations

import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import attacks
from tutorial_lib.attacks import apgd as apgd_module
from tutorial_lib.attacks import APGD

SEED = tf.constant([3, 4], tf.int64)


@pytest.fixture(scope="module")
def tiny():
    """A random tanh MLP with 5 classes on 4x4 images, and 6 random images: small enough for a per-example loop."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(5)])
    x = np.random.default_rng(0).uniform(0.0, 1.0, (6, 4, 4, 1)).astype(np.float32)
    return model, x, np.array([0, 1, 2, 3, 4, 0])


@pytest.fixture(scope="module")
def small(mnist_subset):
    """A small MLP trained for a few seconds on 3,000 images of every class, and 200 test images (~87 % clean)."""
    from tutorial_lib import evaluate

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pick = np.random.default_rng(0).permutation(len(mnist_subset.y_train))[:3000]  # the split is sorted by class
    model.fit(mnist_subset.x_train[pick], mnist_subset.y_train[pick], epochs=4, batch_size=64, verbose=0)
    return (model, *evaluate.eval_subset(mnist_subset, 200))


# --------------------------------------------------------------------------------------------------
# A hand-written reference: the paper's Algorithm 1, one example at a time, plain Python control flow
# --------------------------------------------------------------------------------------------------
def paper_checkpoints(steps: int) -> list[int]:
    """ceil(p_j * steps) with exact fractions: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [Fraction(0), Fraction(22, 100)]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100))
        if nxt > 1:
            break
        p.append(nxt)
    return sorted({math.ceil(q * steps) for q in p if q > 0})


def reference_loss(name: str, logits: tf.Tensor, label: int, target: int | None = None) -> tf.Tensor:
    """The loss of one example (logits of shape (classes,)) written from the paper's formulas."""
    z = logits
    if name == "ce":
        return -tf.nn.log_softmax(z)[label]
    ordered = tf.sort(z, direction="DESCENDING")
    if name == "dlr":
        others = tf.concat([z[:label], z[label + 1:]], 0)
        return -(z[label] - tf.reduce_max(others)) / (ordered[0] - ordered[2] + 1e-12)
    return -(z[label] - z[target]) / (ordered[0] - 0.5 * (ordered[2] + ordered[3]) + 1e-12)


def reference_apgd(model, x, y, *, eps, steps, norm, loss, rho=0.75, alpha=0.75, target=None):
    """Per example: (x_adv, final step size). No random start: x^(0) = x."""
    marks = paper_checkpoints(steps)
    outs, etas = [], []
    for b in range(len(x)):
        x_nat = tf.constant(x[b:b + 1])
        label = int(y[b])
        tgt = None if target is None else int(target[b])

        def project(v):
            if norm == "inf":
                v = tf.clip_by_value(v, x_nat - eps, x_nat + eps)
            else:
                delta = v - x_nat
                length = float(tf.norm(delta))
                if length > eps:
                    v = x_nat + delta * (eps / length)
            return tf.clip_by_value(v, 0.0, 1.0)

        def direction(g):
            return tf.sign(g) if norm == "inf" else g / (tf.norm(g) + 1e-12)  # a zero gradient stays zero

        def value_and_grad(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                logits = model(v, training=False)[0]
                f = reference_loss(loss, logits, label, tgt)
            return float(f), tape.gradient(f, v), int(tf.argmax(logits)) != label

        eta = 2.0 * eps
        x_k = x_prev = x_nat
        f_k, g_k, fooled = value_and_grad(x_k)
        found = x_k if fooled else None
        f_max, x_max, g_max = f_k, x_k, g_k
        eta_last, f_max_last, last, ups = eta, f_k, 0, 0
        for k in range(steps):
            a = 1.0 if k == 0 else alpha
            z = project(x_k + eta * direction(g_k))
            x_new = project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
            f_new, g_new, fooled = value_and_grad(x_new)
            if fooled:
                found = x_new
            ups += f_new > f_k
            if f_new > f_max:
                f_max, x_max, g_max = f_new, x_new, g_new
            x_prev, x_k, g_k, f_k = x_k, x_new, g_new, f_new
            if k + 1 in marks:
                halve = ups < rho * (k + 1 - last) or (eta == eta_last and f_max <= f_max_last)
                eta_last, f_max_last, last, ups = eta, f_max, k + 1, 0
                if halve:
                    eta /= 2
                    x_k, g_k, f_k = x_max, g_max, f_max
        outs.append((x_max if found is None else found).numpy()[0])
        etas.append(eta)
    return np.stack(outs), np.array(etas)


def test_checkpoints_follow_the_paper():
    assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # auto-attack's for 100 steps
    for steps in range(1, 160):
        assert apgd_module.checkpoints(steps) == paper_checkpoints(steps), steps


def test_losses_match_their_formulas(tiny):
    model, x, y = tiny
    logits = model(x, training=False)
    target = np.array([1, 2, 3, 4, 0, 2])
    for b in range(len(x)):
        for name, fn in (("ce", lambda: apgd_module.ce_loss(logits, y)), ("dlr", lambda: apgd_module.dlr_loss(logits, y)),
                         ("dlr-targeted", lambda: apgd_module.targeted_dlr_loss(logits, y, target))):
            want = float(reference_loss(name, logits[b], int(y[b]), int(target[b])))
            assert float(fn()[b]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # DLR does not change when the logits are shifted and scaled (so large logits cannot hide a weak model)
    np.testing.assert_allclose(apgd_module.dlr_loss(7.0 * logits + 3.0, y), apgd_module.dlr_loss(logits, y), rtol=1e-4)


@pytest.mark.parametrize("loss,norm,eps", [("ce", "inf", 0.1), ("dlr", "inf", 0.1), ("ce", 2, 0.4), ("dlr", 2, 0.4)])
def test_steps_match_the_hand_written_reference(tiny, loss, norm, eps):
    model, x, y = tiny
    steps = 30  # checkpoints 7, 13, 18, 21, 24, 27, 28, 30: both halving rules get exercised
    want_x, want_eta = reference_apgd(model, x, y, eps=eps, steps=steps, norm=norm, loss=loss)
    fn = {"ce": apgd_module.ce_loss, "dlr": apgd_module.dlr_loss}[loss]

    def loss_fn(v):
        logits = model(v, training=False)
        return fn(logits, tf.constant(y, tf.int32)), tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)

    got_x, _, _, got_eta = apgd_module.apgd_ascent(loss_fn, tf.constant(x), tf.constant(x), eps=eps, step_size=2 * eps,
                                                   steps=steps, norm=norm)
    np.testing.assert_allclose(got_eta.numpy(), want_eta, rtol=1e-6)
    assert np.any(want_eta < 2 * eps)  # the case does halve
    # sign steps (L-inf) absorb the last-bit differences between one example's gradient and a batch's; L2 steps
    # carry them along the 30 steps (measured: up to 1.3e-4)
    atol = 1e-5 if norm == "inf" else 1e-3
    np.testing.assert_allclose(got_x.numpy(), want_x, atol=atol)
    spec = APGD(eps=eps, steps=steps, loss=loss, norm=norm, random_start=False)
    np.testing.assert_allclose(spec.generate(model, x, y).numpy(), want_x, atol=atol)


def test_targeted_dlr_matches_the_reference_for_each_target(tiny):
    model, x, y = tiny
    ranked = np.argsort(-model(x, training=False).numpy(), axis=1)
    want = [reference_apgd(model, x, y, eps=0.05, steps=12, norm="inf", loss="dlr-targeted", target=ranked[:, t])[0]
            for t in (1, 2)]
    got = APGD(eps=0.05, steps=12, loss="dlr-targeted", target_classes=2, random_start=False).generate(model, x, y).numpy()
    fooled = [np.argmax(model(w).numpy(), axis=1) != y for w in want]
    for b in range(len(x)):  # per example: the run that fooled the model; when both did or neither, one of the two
        if fooled[0][b] != fooled[1][b]:
            np.testing.assert_allclose(got[b], want[0][b] if fooled[0][b] else want[1][b], atol=1e-5)
        else:
            assert min(np.abs(got[b] - w[b]).max() for w in want) <= 1e-5
    assert any(f.any() for f in fooled)


def _two_class_linear():
    """Logits W x + b with two classes: the cross-entropy's input gradient has the same sign everywhere in the ball."""
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    w = np.random.default_rng(1).normal(size=(9, 2)).astype(np.float32)
    gap = w[:, 1] - w[:, 0]  # class 0 wins by at least 2 everywhere in the ball of radius 0.1 around 0.5
    model.layers[-1].set_weights([w, np.array([2.0 + 0.5 * gap.sum() + 0.1 * np.abs(gap).sum(), 0.0], np.float32)])
    return model, np.full((2, 3, 3, 1), 0.5, np.float32), np.zeros(2, np.int64), w


@pytest.mark.parametrize("rho,halvings", [(0.75, 8), (0.0, 4)])
def test_step_halves_at_the_checkpoints_on_a_crafted_case(rho, halvings):
    # The first step reaches the corner x + eps sign(w_1 - w_0) and every later step stays there, so the loss
    # never rises again. rho = 0.75: rule 1 halves at all 8 checkpoints of 100 steps. rho = 0: rule 1 never
    # fires and rule 2 ("not halved last time, no better loss since") halves at every second checkpoint.
    model, x, y, w = _two_class_linear()

    def loss_fn(v):
        logits = model(v, training=False)
        return apgd_module.ce_loss(logits, y), tf.not_equal(tf.argmax(logits, axis=-1), y)

    x_adv, fooled, _, eta = apgd_module.apgd_ascent(loss_fn, x, x, eps=0.1, step_size=0.2, steps=100, rho=rho)
    np.testing.assert_allclose(eta.numpy(), 0.2 / 2 ** halvings)
    assert not fooled.numpy().any()
    corner = 0.5 + 0.1 * np.sign(w[:, 1] - w[:, 0]).reshape(3, 3, 1)
    np.testing.assert_allclose(x_adv.numpy(), np.broadcast_to(corner, x.shape), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# The spec: bounds, strength, restarts, adapted weights, settings
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
@pytest.mark.parametrize("norm,eps", [("inf", 0.1), (2, 1.5)])
def test_stays_in_the_ball_and_the_pixel_range(small, loss, norm, eps):
    model, x, y = small
    spec = APGD(eps=eps, steps=10, loss=loss, norm=norm, target_classes=2, restarts=2, seed=0)
    x_adv = spec(model, x[:40], y[:40])
    assert x_adv.shape == x[:40].shape and x_adv.dtype == np.float32
    delta = (x_adv - x[:40]).reshape(40, -1)
    if norm == "inf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    fooled = np.argmax(model(x_adv).numpy(), axis=1) != y[:40]
    assert fooled.mean() > 0.3  # it does attack


def test_apgd_ce_is_at_least_as_strong_as_pgd_with_the_same_steps(small):
    from tutorial_lib import evaluate

    model, x, y = small
    eps, steps = 0.05, 20
    pgd = evaluate.robust_accuracy(model, x, y, attacks.PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps, seed=0))
    ours = evaluate.robust_accuracy(model, x, y, APGD(eps=eps, steps=steps, seed=0))
    clean = evaluate.accuracy(model, x, y)
    assert 0.1 < pgd < clean - 0.2  # a case where the attack matters and does not break everything
    assert ours <= pgd + 0.01  # two images of 200 for float luck


def test_same_seed_same_result_and_restarts_only_add_breaks(small):
    from tutorial_lib import evaluate

    model, x, y = small
    spec = APGD(eps=0.05, steps=10, loss="dlr", seed=3)
    np.testing.assert_array_equal(spec(model, x, y), spec(model, x, y))
    one = evaluate.correct(model, spec(model, x, y), y)
    three = evaluate.correct(model, APGD(eps=0.05, steps=10, loss="dlr", seed=3, restarts=3)(model, x, y), y)
    assert not np.any(three & ~one)  # run 0 is the single run: an example it breaks stays broken
    assert three.sum() <= one.sum()


def test_runs_against_adapted_weights(small):
    from tutorial_lib import meta, meta_adversarial

    model, x, y = small
    spec = APGD(eps=0.05, steps=8, loss="dlr", random_start=False)
    want = spec.generate(model, x[:20], y[:20]).numpy()
    as_function = spec.generate(lambda v, training=False: model(v, training=training), x[:20], y[:20]).numpy()
    np.testing.assert_allclose(as_function, want, atol=1e-6)
    adapted = meta_adversarial.attack_adapted(spec, model, meta.params_of(model), x[:20], y[:20]).numpy()
    np.testing.assert_allclose(adapted, want, atol=1e-5)


def test_repr_name_and_settings():
    spec = APGD(eps=0.3)
    assert repr(spec) == "APGD(eps=0.3, steps=100, loss='ce')"
    assert spec.name == "APGD-CE-100"
    assert APGD(eps=0.3, steps=50, loss="dlr", norm=2, restarts=2).name == "APGD-DLR-50 L2 x2"
    assert APGD(eps=0.3, loss="dlr-targeted").name == "APGD-T-100"
    assert APGD(eps=0.3, targeted=True).name == "APGD-CE-100 targeted"
    assert spec.with_eps(0.1).eps == 0.1 and spec.family == "linf"


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(loss="cw"), ValueError, "loss must be one of"),
    (dict(loss="dlr", targeted=True), ValueError, "targeted=True"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(norm=3), ValueError, "norm"),
    (dict(restarts=2, random_start=False), ValueError, "random_start"),
    (dict(target_classes=0), ValueError, "target_classes"),
    (dict(rho=1.5), ValueError, "rho"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        APGD(**{"eps": 0.1, **kwargs})


def test_bad_inputs_are_refused(small):
    model, x, y = small
    with pytest.raises(ValueError, match="labels must be in"):
        APGD(eps=0.1, steps=2)(model, x[:4], np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="outside the valid range"):
        APGD(eps=0.1, steps=2)(model, x[:4] * 255, y[:4])
    two = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="3 or more classes"):
        APGD(eps=0.1, steps=2, loss="dlr")(two, x[:4], y[:4] % 2)
    with pytest.raises(ValueError, match="target_classes=9 needs 10"):
        APGD(eps=0.1, steps=2, loss="dlr-targeted")(two, x[:4], y[:4] % 2)
    assert APGD(eps=0.1, steps=2)(two, x[:4], y[:4] % 2).shape == x[:4].shape  # the cross-entropy works


# --------------------------------------------------------------------------------------------------
# Peers: ART's AutoProjectedGradientDescent on the same images
# --------------------------------------------------------------------------------------------------
@pytest.mark.peers
def test_agrees_with_art_apgd_on_a_small_trained_model(small):
    pytest.importorskip("art")
    from tutorial_lib import evaluate
    from tutorial_lib.experiments import applications as app

    model, x, y = small
    eps, steps = 0.05, 20
    clean = evaluate.correct(model, x, y)
    with app._quiet_tf():
        theirs = app.apgd_examples(model, x, y, eps=eps, steps=steps, restarts=1)
    for key, loss in (("ce", "ce"), ("dlr", "dlr")):
        ours = (clean & evaluate.correct(model, APGD(eps=eps, steps=steps, loss=loss, seed=0)(model, x, y), y)).mean()
        art = (clean & evaluate.correct(model, theirs[key], y)).mean()
        # ours keeps any point that fooled the model along the way (as the authors' code); ART keeps the last one
        assert ours <= art + 0.03, (loss, ours, art)
        assert abs(ours - art) <= 0.06, (loss, ours, art)
