"""Tests for tutorial_lib.evaluate: accuracy, robust accuracy, sweeps and the gradient-masking checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import evaluate


def _stand_in_fgsm(eps: float):
    """A minimal FGSM (logits, clipped) so these tests do not depend on tutorial_lib.attacks' internals."""

    def attack(model, x, y):
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
        return tf.clip_by_value(x + eps * tf.sign(tape.gradient(loss, x)), 0.0, 1.0).numpy()

    attack.name = "stand-in FGSM"
    return attack


@pytest.fixture(scope="module")
def small(mnist_subset):
    """A small MLP trained for a few seconds on 2,000 images, and 200 test images."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist_subset.x_train[:2000], mnist_subset.y_train[:2000], epochs=4, batch_size=64, verbose=0)
    return model, mnist_subset.x_test[:200], mnist_subset.y_test[:200]


def test_accuracy_matches_argmax_and_is_batch_independent(small):
    model, x, y = small
    expected = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    assert evaluate.accuracy(model, x, y) == pytest.approx(expected)
    assert evaluate.accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    assert 0.7 < expected <= 1.0


def test_robust_accuracy_is_at_most_clean_and_falls_with_eps(small):
    model, x, y = small
    clean = evaluate.accuracy(model, x, y)
    weak = evaluate.robust_accuracy(model, x, y, _stand_in_fgsm(0.05))
    strong = evaluate.robust_accuracy(model, x, y, _stand_in_fgsm(0.25), batch_size=64)
    assert strong < weak <= clean


def test_robust_accuracy_counts_only_examples_right_before_and_after(small):
    model, x, y = small
    right = evaluate.correct(model, x, y)
    prototype = {c: x[np.flatnonzero(right & (y == c))[0]] for c in np.unique(y)}  # a correctly classified image

    def repair(model, xb, yb):  # an "attack" that turns every answer right: each image becomes its prototype
        return np.stack([prototype[c] for c in yb])

    assert 0.5 < right.mean() < 1.0
    assert evaluate.accuracy(model, repair(model, x, y), y) == 1.0
    assert evaluate.robust_accuracy(model, x, y, repair, batch_size=64) == pytest.approx(right.mean())
    assert evaluate.accuracy_under(model, x, repair(model, x, y), y) == pytest.approx(right.mean())


def test_epsilon_sweep_shapes_label_and_monotone(small):
    model, x, y = small
    sweep = evaluate.epsilon_sweep(model, x, y, _stand_in_fgsm, [0.0, 0.05, 0.1, 0.2])
    assert sweep.eps.shape == sweep.accuracy.shape == (4,)
    assert sweep.label == "stand-in FGSM"
    assert sweep.accuracy[0] == pytest.approx(evaluate.accuracy(model, x, y))
    assert sweep.accuracy[-1] < sweep.accuracy[0]
    assert sweep.accuracy_at(0.1) == sweep.accuracy[2]
    assert set(sweep.to_dict("fgsm")) == {"fgsm_eps0", "fgsm_eps0.05", "fgsm_eps0.1", "fgsm_eps0.2"}
    assert "| 0.1 |" in sweep._repr_markdown_()
    with pytest.raises(ValueError, match="not a point"):
        sweep.accuracy_at(0.3)


@pytest.mark.parametrize("eps_values", [[0.1, 0.05], [-0.1, 0.1], []])
def test_epsilon_sweep_rejects_bad_eps(small, eps_values):
    model, x, y = small
    with pytest.raises(ValueError, match="eps_values"):
        evaluate.epsilon_sweep(model, x, y, _stand_in_fgsm, eps_values)


def test_bad_inputs_get_clear_errors(small):
    model, x, y = small
    with pytest.raises(ValueError, match="one-hot"):
        evaluate.accuracy(model, x, keras.utils.to_categorical(y, 10))
    with pytest.raises(ValueError, match="different batch sizes"):
        evaluate.accuracy(model, x, y[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.accuracy(model, x, y, batch_size=0)
    with pytest.raises(TypeError, match="attack spec"):
        evaluate.robust_accuracy(model, x, y, 0.1)


def test_probability_detector():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert evaluate.looks_like_probabilities(probs)
    assert not evaluate.looks_like_probabilities(logits)


def test_saturated_model_keeps_predictions_but_zeroes_gradients(small):
    model, x, y = small
    masked = evaluate.saturated_model(model, temperature=1000.0)
    np.testing.assert_array_equal(evaluate.correct(masked, x, y), evaluate.correct(model, x, y))
    zero = lambda m: np.mean(np.all(evaluate.input_gradients(m, x, y).reshape(len(x), -1) == 0, axis=1))
    assert zero(model) < 0.05 < 0.5 < zero(masked)
    # the stand-in FGSM looks far weaker against the masked copy, although the models are the same function
    assert (evaluate.robust_accuracy(masked, x, y, _stand_in_fgsm(0.2))
            > evaluate.robust_accuracy(model, x, y, _stand_in_fgsm(0.2)) + 0.3)


def test_article_fgsm_does_not_clip_and_loses_gradients_on_probabilities(small):
    model, x, y = small
    onehot = keras.utils.to_categorical(y, 10)
    x_adv = evaluate.article_fgsm(evaluate.softmax_model(model), x, onehot, 0.1)
    assert x_adv.shape == x.shape
    assert x_adv.min() < 0.0 or x_adv.max() > 1.0  # no clipping: invalid images
    # a confident model (logits x5): the probability-space loss is clipped and its gradient vanishes
    confident = evaluate.softmax_model(evaluate.saturated_model(model, temperature=5.0))
    unchanged = lambda xa: np.all(xa == x, axis=(1, 2, 3)).mean()
    plain = unchanged(evaluate.article_fgsm(confident, x, onehot, 0.1, keras_logits_rescue=False))
    rescued = unchanged(evaluate.article_fgsm(confident, x, onehot, 0.1))
    assert rescued < plain


def test_sanity_checks_pass_an_honest_model_and_flag_a_masked_one(small):
    model, x, y = small
    x, y = x[:100], y[:100]
    honest = evaluate.sanity_checks(model, x, y, 0.3, steps=10, restarts=2)
    assert honest.passed, str(honest)
    assert honest.numbers["pgd"] <= honest.numbers["fgsm"] <= honest.numbers["clean"]
    masked = evaluate.sanity_checks(evaluate.saturated_model(model), x, y, 0.3, steps=10, restarts=2)
    assert not masked.passed
    assert not masked.check("nonzero_gradients").passed
    assert not masked.check("large_eps_breaks_model").passed
    assert "FAIL" in str(masked) and "**FAIL**" in masked._repr_markdown_()
    assert masked.to_dict()["sanity_passed"] is False


def test_sanity_checks_flags_probability_outputs(small):
    model, x, y = small

    class Probabilities(keras.Model):  # a softmax hidden from check_logits_model inside a subclass
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return tf.nn.softmax(self.inner(x))

    wrapped = Probabilities(model)  # the attacks cannot see the softmax inside a subclass: the check must
    report = evaluate.sanity_checks(wrapped, x[:50], y[:50], 0.3, steps=5, restarts=1)
    assert not report.check("logits_not_probabilities").passed
    assert report.check("logits_not_probabilities").value == "rows sum to 1"
    assert not report.passed
    assert evaluate.sanity_checks(model, x[:50], y[:50], 0.3, steps=5, restarts=1).check("logits_not_probabilities").passed


def test_sanity_checks_rejects_bad_settings(small):
    model, x, y = small
    with pytest.raises(ValueError, match="eps"):
        evaluate.sanity_checks(model, x, y, 0.0)
    with pytest.raises(ValueError, match="large_eps"):
        evaluate.sanity_checks(model, x, y, 0.5, large_eps=0.4)


def test_eval_subset_interleaves_classes(mnist_subset):
    x, y = evaluate.eval_subset(mnist_subset, 30)
    assert x.shape == (30, 28, 28, 1) and np.bincount(y, minlength=10).tolist() == [3] * 10
    x2, y2 = evaluate.eval_subset(mnist_subset, 30)
    np.testing.assert_array_equal(y, y2)  # fixed by the seed
    full_x, full_y = evaluate.eval_subset(mnist_subset, len(mnist_subset.y_test))
    assert sorted(full_y.tolist()) == sorted(mnist_subset.y_test.tolist())  # a permutation of the whole split
    with pytest.raises(ValueError, match="n must be"):
        evaluate.eval_subset(mnist_subset, 0)


def test_pgd_sweep_is_monotone_and_below_fgsm(small):
    from tutorial_lib import attacks

    model, x, y = small
    x, y = x[:100], y[:100]
    eps = [0.0, 0.1, 0.2, 0.3]
    pgd = attacks.PGD(eps=0.3, steps=10, step_size=0.05, seed=0)
    p = evaluate.epsilon_sweep(model, x, y, pgd.with_eps, eps)
    f = evaluate.epsilon_sweep(model, x, y, lambda e: attacks.FGSM(eps=e), eps)
    assert p.label == pgd.name
    assert np.all(np.diff(p.accuracy) <= 0.02)  # monotone up to one or two examples
    assert np.all(p.accuracy <= f.accuracy + 0.02) and p.accuracy[-1] < 0.1
    assert evaluate.slug("PGD-40 L2 x5") == "pgd40_l2_x5"


# --------------------------------------------------------------------------------------------------
# Intervals and the robustness table
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hits, n, low, high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                                (81, 100, 0.7222, 0.8749)])
def test_accuracy_ci95_is_the_wilson_interval(hits, n, low, high):
    # Wilson score bounds worked out by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    correct = np.arange(n) < hits
    mean, half = evaluate.accuracy_ci95(correct)
    assert mean == pytest.approx(hits / n)
    assert half == pytest.approx(max(hits / n - low, high - hits / n), abs=1e-4)
    assert half > 0  # never zero width, even at 0 % or 100 %
    assert evaluate.accuracy_ci95(correct.astype(int)) == (mean, half)


def test_accuracy_ci95_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        evaluate.accuracy_ci95(np.array([]))
    with pytest.raises(TypeError, match="bools"):
        evaluate.accuracy_ci95(np.array([0.5, 1.0]))


def _two_basin_model() -> keras.Model:
    """One pixel t in [0, 1], label 0: correct at t = 0.5 and t = 1 (p = 0.34, the higher loss), wrong at t = 0
    (p = 0.45 against 0.55); the loss is lowest at t = 0.5, so PGD from a random start ends at t = 0 or t = 1."""
    mid, left, right = np.float32([3.0, 0.0, -10.0]), np.log([0.45, 0.55, 1e-6]), np.log([0.34, 0.33, 0.33])
    model = keras.Sequential([keras.Input((1, 1, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="relu"), keras.layers.Dense(3)])
    model.layers[1].set_weights([np.float32([[-1.0, 1.0]]), np.float32([0.5, -0.5])])
    model.layers[2].set_weights([np.float32(np.stack([2 * (left - mid), 2 * (right - mid)])), mid])
    return model


def test_robustness_summary_numbers_and_worst_case_over_restarts(small):
    from tutorial_lib import attacks

    model, x, y = small
    x, y = x[:60], y[:60]
    r = evaluate.robustness_summary(model, x, y, eps=0.1, pgd_steps=5, pgd_step_size=0.05, strong_steps=5,
                                    restarts=2, batch_size=16)
    assert list(r) == ["clean", "fgsm", "pgd5", "pgd5_restarts2"]
    assert r["clean"] == evaluate.accuracy(model, x, y)
    assert r["fgsm"] == evaluate.robust_accuracy(model, x, y, attacks.FGSM(eps=0.1))
    assert r["pgd5"] == evaluate.robust_accuracy(model, x, y, attacks.PGD(eps=0.1, steps=5, step_size=0.05, seed=0),
                                                 batch_size=16)
    assert "pgd5_restarts2" not in evaluate.robustness_summary(model, x, y, eps=0.1, pgd_steps=5, restarts=0)
    # Half of the single runs end on the wrong side; with 8 restarts nearly every example is broken by one.
    # (Keeping the highest-loss restart would leave about half of them standing.)
    basin, xb, yb = _two_basin_model(), np.full((64, 1, 1, 1), 0.5, np.float32), np.zeros(64, np.int64)
    r = evaluate.robustness_summary(basin, xb, yb, eps=0.5, pgd_steps=1, pgd_step_size=1.0, strong_steps=1,
                                    restarts=8)
    assert r["clean"] == 1.0 and 0.25 < r["pgd1"] < 0.75 and r["pgd1_restarts8"] < 0.05
    with pytest.raises(ValueError, match="restarts"):
        evaluate.robustness_summary(model, x, y, eps=0.1, restarts=-1)


def test_mean_loss_and_accuracy_matches_keras(small):
    model, x, y = small
    loss, acc = evaluate.mean_loss_and_accuracy(model, x, y, batch_size=64)
    logits = model.predict(x, verbose=0)
    assert loss == pytest.approx(float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))),
                                 rel=1e-5)
    assert acc == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)))


def test_mean_ci95():
    mean, ci = evaluate.mean_ci95(np.array([0.0, 1.0, 0.0, 1.0]))
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * np.std([0, 1, 0, 1], ddof=1) / 2)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate.mean_ci95(np.array([1.0]))
    record = evaluate.mean_ci95_record([0.0, 1.0, 0.0, 1.0])
    assert record == {"mean": pytest.approx(0.5), "ci95": pytest.approx(ci)} and set(record) == {"mean", "ci95"}


def test_masking_checks_build_the_rows_from_numbers_with_one_set_of_limits():
    numbers = {"zero_gradient_fraction": 0.0, "fgsm": 0.5, "pgd": 0.4, "pgd_restarts": 0.39,
               "pgd_large_eps": 0.0, "noise": 0.9}
    rows = evaluate.masking_checks(numbers, probabilities=False, restarts=5)
    assert [c.name for c in rows] == ["logits_not_probabilities", "nonzero_gradients", "pgd_beats_fgsm",
                                      "large_eps_breaks_model", "attack_beats_noise", "restarts_change_little"]
    assert all(c.passed for c in rows)
    limit = evaluate.MASKING_LIMITS["restart_gain_limit"]
    gained = dict(numbers, pgd_restarts=numbers["pgd"] - limit - 0.005)  # restarts gain more than the limit
    assert not evaluate.masking_checks(gained, probabilities=False, restarts=5)[-1].passed
    assert evaluate.masking_checks(gained, probabilities=False, restarts=5, restart_gain_limit=limit + 0.01)[-1].passed
    flagged = evaluate.masking_checks(dict(numbers, zero_gradient_fraction=0.5, pgd=0.95), probabilities=True,
                                      restarts=5, unit="queries")
    assert [c.name for c in flagged if not c.passed] == ["logits_not_probabilities", "nonzero_gradients",
                                                          "pgd_beats_fgsm", "attack_beats_noise", "restarts_change_little"]
    assert "of queries" in flagged[1].value
    with pytest.raises(ValueError, match="noise"):
        evaluate.masking_checks({k: v for k, v in numbers.items() if k != "noise"}, probabilities=False, restarts=5)


# --------------------------------------------------------------------------------------------------
# worst_case: the worst over a list of attacks
# --------------------------------------------------------------------------------------------------
def test_worst_case_is_the_and_of_the_per_attack_masks(small):
    from tutorial_lib import attacks

    model, x, y = small
    x, y = x[:120], y[:120]
    specs = [_stand_in_fgsm(0.1), attacks.BIM(eps=0.1, steps=5, step_size=0.03),
             attacks.PGD(eps=0.1, steps=5, step_size=0.03, seed=0), attacks.PGD(eps=0.1, steps=5, step_size=0.03, seed=1)]
    result = evaluate.worst_case(model, x, y, specs, batch_size=50)
    assert result.attacks == ["stand-in FGSM", "BIM-5", "PGD-5", "PGD-5 #2"]
    clean = evaluate.correct(model, x, y)
    np.testing.assert_array_equal(result.clean, clean)
    np.testing.assert_array_equal(result.correct, np.logical_and.reduce([clean, *result.per_attack.values()]))
    for name, spec in zip(result.attacks[:2], specs):  # each per-attack number is that attack's own (no random start)
        assert result.accuracy(name)[0] == pytest.approx(evaluate.robust_accuracy(model, x, y, spec))
    for name in result.attacks:
        assert result.combined[0] <= result.accuracy(name)[0]
    assert result.combined[0] < min(result.accuracy(n)[0] for n in result.attacks) + 1e-9
    assert result.combined == evaluate.accuracy_ci95(result.correct)
    record = result.to_dict()
    assert record["n"] == 120 and record["attacks"] == result.attacks
    assert record["combined"]["mean"] == pytest.approx(result.correct.mean())
    assert set(record["per_attack"]["PGD-5"]) == {"mean", "ci95", "seconds"}
    text = str(result)
    assert "worst case" in text and "PGD-5 #2" in text and "±" in text
    assert result._repr_markdown_().startswith("| attack (120 examples)")
    art = clean & (np.arange(len(y)) % 2 == 0)
    field = evaluate.worst_case_record(result, art)
    assert set(field) == {"attacks", "combined", "per_attack", "art_apgd"}
    assert field["art_apgd"] == {"mean": pytest.approx(art.mean()), "ci95": pytest.approx(evaluate.accuracy_ci95(art)[1])}
    assert evaluate.worst_case_record(result)["art_apgd"] is None
    json_ok = __import__("json").dumps(field)
    assert "PGD-5" in json_ok


def test_cascade_attacks_only_what_is_still_standing(small):
    from tutorial_lib import attacks

    model, x, y = small
    x, y = x[:120], y[:120]
    seen = []

    def counting(attack):
        def run(m, xs, ys):
            seen.append(len(xs))
            return attack(m, xs, ys)
        run.name = attack.name
        return run

    specs = [attacks.BIM(eps=0.1, steps=5, step_size=0.03), _stand_in_fgsm(0.1)]  # deterministic: same masks
    full = evaluate.worst_case(model, x, y, specs)
    cascade = evaluate.worst_case(model, x, y, [counting(a) for a in specs], cascade=True)
    assert not full.cumulative and cascade.cumulative
    np.testing.assert_array_equal(cascade.correct, full.correct)  # the same worst case
    bim = full.per_attack["BIM-5"]
    np.testing.assert_array_equal(cascade.per_attack["BIM-5"], bim)
    np.testing.assert_array_equal(cascade.per_attack["stand-in FGSM"], full.correct)  # cumulative: after both
    assert seen == [int(full.clean.sum()), int(bim.sum())]  # the second attack ran on BIM's survivors only
    assert "after BIM-5" in cascade.table() and cascade.to_dict()["cumulative"] is True
    with pytest.raises(TypeError, match="cascade"):
        evaluate.worst_case(model, x, y, specs, cascade="yes")


def test_worst_case_rejects_bad_input(small):
    from tutorial_lib import attacks

    model, x, y = small
    pgd = attacks.PGD(eps=0.1, steps=2, step_size=0.05)
    with pytest.raises(TypeError, match="list of attack specs"):
        evaluate.worst_case(model, x, y, pgd)
    with pytest.raises(ValueError, match="empty"):
        evaluate.worst_case(model, x, y, [])
    with pytest.raises(TypeError, match="every attack"):
        evaluate.worst_case(model, x, y, [pgd, 0.3])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.worst_case(model, x, y, [pgd], batch_size=0)
    with pytest.raises(ValueError):
        evaluate.worst_case(model, x, y[:10], [pgd])
    result = evaluate.worst_case(model, x[:20], y[:20], [pgd])
    with pytest.raises(ValueError, match="one bool per example"):
        evaluate.worst_case_record(result, np.ones(5, bool))
    with pytest.raises(TypeError, match="WorstCase"):
        evaluate.worst_case_record({"combined": 0.5})
    with pytest.raises(KeyError, match="attacks are"):
        result.accuracy("APGD")


def test_strong_attacks_is_the_series_standard_list():
    specs = evaluate.strong_attacks(0.3)
    assert [s.name for s in specs] == ["APGD-CE-100", "APGD-DLR-100", "PGD-100 x5"]  # AutoAttack's order
    assert specs[2].step_size == pytest.approx(2.5 * 0.3 / 100) and specs[2].random_start and specs[2].seed == 0
    assert all(s.eps == 0.3 for s in specs)
    assert [s.name for s in evaluate.strong_attacks(1.5, norm=2, steps=50, restarts=2)] == [
        "APGD-CE-50 L2", "APGD-DLR-50 L2", "PGD-50 L2 x2"]
    with pytest.raises(ValueError, match="eps"):
        evaluate.strong_attacks(0.0)
    with pytest.raises(ValueError, match="norm"):
        evaluate.strong_attacks(0.3, norm=1)
