"""Tests for tutorial_lib.training: step correctness on a tiny model, callbacks, strategy, mixed precision, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import attacks, models, runtime, training

EPS = 0.1


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])


def tiny_data(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)


def ce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def clone(model: keras.Model) -> keras.Model:
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    return other


# ----------------------------------------------------------------------------------------------
# Training-step correctness
# ----------------------------------------------------------------------------------------------
def test_fgsm_train_step_equals_manual_tape_step():
    clf, (x, y) = tiny_model(), tiny_data()
    ref = clone(clf)
    trainer = training.AdversarialTrainer(clf, method="fgsm", eps=EPS)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    trainer.train_on_batch(x, y)

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(ce(y, ref(xt)))
    x_adv = tf.clip_by_value(xt + EPS * tf.sign(tape.gradient(loss, xt)), 0.0, 1.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(ce(y, ref(x_adv)))
    grads = tape.gradient(loss, ref.trainable_variables)
    expected = [w.numpy() - 0.5 * g.numpy() for w, g in zip(ref.trainable_variables, grads)]
    for got, want in zip(clf.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(clf.get_weights()[0], ref.get_weights()[0])  # the step did move the weights


def test_pgd_batch_is_inside_the_ball_and_raises_the_loss():
    clf, (x, y) = tiny_model(), tiny_data(64)
    trainer = training.AdversarialTrainer(clf, method="pgd", eps=EPS, steps=5)
    x_adv = trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy()
    assert np.abs(x_adv - x).max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > 0.5 * EPS
    assert float(np.mean(ce(y, clf(x_adv)))) > float(np.mean(ce(y, clf(x))))


def test_pgd_train_step_trains_on_inputs_inside_the_ball(monkeypatch):
    clf, (x, y) = tiny_model(), tiny_data()
    trainer = training.AdversarialTrainer(clf, method="pgd", eps=EPS, steps=3)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    seen = []
    original = trainer.training_loss

    def spy(xb, yb, x_adv):
        seen.append((xb.numpy(), x_adv.numpy()))
        return original(xb, yb, x_adv)

    monkeypatch.setattr(trainer, "training_loss", spy)
    trainer.train_on_batch(x, y)
    (xb, x_adv), = seen
    assert 0 < np.abs(x_adv - xb).max() <= EPS + 1e-6


def test_trades_loss_equals_its_formula():
    clf, (x, y) = tiny_model(), tiny_data()
    beta = 3.0
    trainer = training.AdversarialTrainer(clf, method="trades", eps=EPS, beta=beta)
    x_adv = np.clip(x + np.random.default_rng(1).uniform(-EPS, EPS, x.shape), 0, 1).astype(np.float32)
    loss, _ = trainer.training_loss(tf.constant(x), tf.constant(y), tf.constant(x_adv))
    p = tf.nn.softmax(clf(x)).numpy().astype(np.float64)
    q = tf.nn.softmax(clf(x_adv)).numpy().astype(np.float64)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    expected = np.mean(ce(y, clf(x))) + beta * np.mean(kl)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_clean_weight_mixes_the_losses():
    clf, (x, y) = tiny_model(), tiny_data()
    trainer = training.AdversarialTrainer(clf, method="fgsm", eps=EPS, clean_weight=0.25)
    x_adv = np.clip(x + EPS, 0, 1).astype(np.float32)
    loss, _ = trainer.training_loss(tf.constant(x), tf.constant(y), tf.constant(x_adv))
    expected = 0.75 * np.mean(ce(y, clf(x_adv))) + 0.25 * np.mean(ce(y, clf(x)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_grad_align_term_is_between_zero_and_two_lambda():
    clf, (x, y) = tiny_model(), tiny_data()
    plain = training.AdversarialTrainer(clf, method="fgsm_rs", eps=EPS)
    aligned = training.AdversarialTrainer(clf, method="fgsm_rs", eps=EPS, align_weight=0.5)
    x_adv = tf.constant(np.clip(x + EPS, 0, 1).astype(np.float32))
    base, _ = plain.training_loss(tf.constant(x), tf.constant(y), x_adv)
    total, _ = aligned.training_loss(tf.constant(x), tf.constant(y), x_adv)
    assert 0.0 < float(total) - float(base) <= 1.0 + 1e-6


def test_fast_at_default_step_is_one_and_a_quarter_eps():
    trainer = training.AdversarialTrainer(tiny_model(), method="fgsm_rs", eps=0.2)
    assert trainer.step_size == pytest.approx(0.25)
    assert training.AdversarialTrainer(tiny_model(), method="pgd", eps=0.2, steps=10).step_size == pytest.approx(0.05)


def test_evaluate_reports_clean_and_robust_accuracy():
    clf, (x, y) = tiny_model(), tiny_data(32)
    bim = attacks.BIM(eps=0.3, steps=5, step_size=0.1)  # deterministic, so the reference sees the same images
    trainer = training.AdversarialTrainer(clf, method="none", eval_attack=bim)
    trainer.compile(optimizer="adam")
    result = trainer.evaluate(x, y, verbose=0, return_dict=True, batch_size=32)
    right = np.argmax(clf.predict(x, verbose=0), -1) == y
    attacked = np.argmax(clf(bim(clf, x, y)).numpy(), -1) == y
    assert result["accuracy"] == pytest.approx(right.mean())
    assert result["robust_accuracy"] == pytest.approx(np.mean(right & attacked))  # correct clean AND attacked


def test_config_round_trip():
    trainer = training.AdversarialTrainer(tiny_model(), method="trades", eps=0.2, steps=3, beta=2.0)
    again = training.AdversarialTrainer.from_config(trainer.get_config())
    assert (again.method, again.eps_max, again.steps, again.beta) == ("trades", 0.2, 3, 2.0)


def _n_fgsm_reference(model, x, y, unit, *, eps, step, noise):
    """N-FGSM written out with numpy and one GradientTape, from a given unit noise in [-1, 1]."""
    x_noisy = np.clip(x + noise * eps * np.asarray(unit), 0.0, 1.0).astype(np.float32)
    xt = tf.constant(x_noisy)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(ce(y, model(xt)))
    return np.clip(x_noisy + step * np.sign(tape.gradient(loss, xt).numpy()), 0.0, 1.0)


def test_n_fgsm_equals_a_hand_written_reference():
    clf, (x, y) = tiny_model(), tiny_data(32)
    seed = tf.constant([3, 4])
    got = training.n_fgsm(clf, x, y, eps=0.1, noise=2.0, seed=seed).numpy()
    unit = tf.random.stateless_uniform(x.shape, seed, -1.0, 1.0).numpy()
    np.testing.assert_allclose(got, _n_fgsm_reference(clf, x, y, unit, eps=0.1, step=0.1, noise=2.0), atol=1e-6)
    other = training.n_fgsm(clf, x, y, eps=0.1, step_size=0.05, noise=0.5, seed=seed).numpy()
    np.testing.assert_allclose(other, _n_fgsm_reference(clf, x, y, unit, eps=0.1, step=0.05, noise=0.5), atol=1e-6)


def test_n_fgsm_trainer_batch_follows_the_ramped_eps():
    clf, (x, y) = tiny_model(), tiny_data(32)
    trainer = training.AdversarialTrainer(clf, method="n_fgsm", eps=0.1, step_size=0.15, noise=3.0)
    trainer.eps.assign(0.05)  # as EpsilonRamp does: noise and step shrink in proportion
    tf.random.set_seed(7)
    got = trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy()
    tf.random.set_seed(7)
    unit = tf.random.uniform(x.shape, -1.0, 1.0).numpy()  # the same draw from the global generator
    np.testing.assert_allclose(got, _n_fgsm_reference(clf, x, y, unit, eps=0.05, step=0.075, noise=3.0), atol=1e-6)


@pytest.mark.parametrize("noise", [2.0, 4.0])
def test_n_fgsm_perturbation_leaves_the_ball_but_not_the_pixel_range(noise):
    clf, (x, y) = tiny_model(), tiny_data(64)
    x = 0.25 + 0.5 * x  # pixels in [0.25, 0.75], so the clip to [0, 1] rarely binds
    trainer = training.AdversarialTrainer(clf, method="n_fgsm", eps=EPS, noise=noise)
    assert trainer.step_size == pytest.approx(EPS) and trainer.noise == noise
    x_adv = trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy()
    delta = np.abs(x_adv - x)
    assert delta.max() <= (noise + 1) * EPS + 1e-6  # noise plus one step, nothing more
    assert delta.max() > noise * EPS  # not projected back onto the eps ball
    assert np.mean(delta > EPS + 1e-6) > 0.3  # and not only a few pixels outside it
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    edge = trainer.adversarial_batch(tf.constant(np.zeros_like(x)), tf.constant(y)).numpy()
    assert edge.min() >= 0.0 and edge.max() <= (noise + 1) * EPS + 1e-6  # black images: clipped at 0


def test_n_fgsm_fit_ramps_eps_and_trains():
    x, y = tiny_data(16)
    clf = tiny_model()
    before = [w.copy() for w in clf.get_weights()]
    _, info = training.adversarial_fit(clf, x, y, method="n_fgsm", eps=0.3, epochs=3, batch_size=8, ramp_epochs=3,
                                       verbose=0)
    np.testing.assert_allclose(info["eps_per_epoch"], [0.1, 0.2, 0.3], atol=1e-7)
    assert np.all(np.isfinite(info["history"]["loss"]))
    assert any(not np.allclose(a, b) for a, b in zip(clf.get_weights(), before))


def test_n_fgsm_config_round_trip():
    trainer = training.AdversarialTrainer(tiny_model(), method="n_fgsm", eps=0.2, step_size=0.1, noise=3.0)
    again = training.AdversarialTrainer.from_config(trainer.get_config())
    assert (again.method, again.eps_max, again.step_size, again.noise) == ("n_fgsm", 0.2, 0.1, 3.0)
    assert "noise" not in training.AdversarialTrainer(tiny_model(), method="fgsm_rs", eps=0.2).get_config()


# ----------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------
class _EpsRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.values.append(float(self.model.eps.numpy()))


def test_eps_ramp_values_per_epoch():
    x, y = tiny_data(16)
    recorder = _EpsRecorder()
    clf, info = training.adversarial_fit(tiny_model(), x, y, method="pgd", eps=0.3, epochs=5, batch_size=8,
                                         steps=2, ramp_epochs=3, callbacks=[recorder], verbose=0)
    expected = [0.1, 0.2, 0.3, 0.3, 0.3]
    np.testing.assert_allclose(info["eps_per_epoch"], expected, atol=1e-7)
    np.testing.assert_allclose(recorder.values, expected, atol=1e-6)  # what the train steps actually used


def test_eps_ramp_scales_the_step_and_bounds_the_perturbation():
    clf, (x, y) = tiny_model(), tiny_data(32)
    trainer = training.AdversarialTrainer(clf, method="fgsm", eps=0.3)
    trainer.eps.assign(0.06)
    delta = np.abs(trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy() - x)
    assert delta.max() <= 0.06 + 1e-6 and delta.max() > 0.05


def _scripted_fit(script, **monitor_kwargs):
    x, y = tiny_data(16)
    clf = tiny_model()
    monitor = training.CatastrophicOverfittingMonitor(
        x, y, fgsm=attacks.FGSM(eps=EPS), pgd=attacks.PGD(eps=EPS, steps=2, step_size=0.05), verbose=False,
        **monitor_kwargs)
    measurements = iter(script)
    monitor.measure = lambda: next(measurements)
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([w.copy() for w in clf.get_weights()])

    with pytest.warns(RuntimeWarning, match="catastrophic overfitting"):
        training.adversarial_fit(clf, x, y, method="fgsm_rs", eps=EPS, epochs=len(script), batch_size=8,
                                 callbacks=[Snap(), monitor], verbose=0)
    return clf, monitor, snapshots


def test_monitor_flags_collapse_and_restores_best_weights():
    # (FGSM accuracy, PGD accuracy) per epoch: PGD collapses at epoch 2 while FGSM keeps climbing.
    script = [(0.50, 0.30), (0.70, 0.45), (0.90, 0.20), (0.95, 0.05)]
    clf, monitor, snaps = _scripted_fit(script)
    assert [h["flagged"] for h in monitor.history] == [False, False, True, True]
    assert monitor.onset_epoch == 2 and monitor.best_epoch == 1
    for got, want in zip(clf.get_weights(), snaps[1]):
        np.testing.assert_array_equal(got, want)


def test_monitor_stop_weights_equal_a_stopped_run():
    # PGD accuracy collapses at epoch 1 (flag), then peaks higher at epoch 2: a stopped run never sees that peak
    script = [(0.50, 0.30), (0.90, 0.10), (0.90, 0.50), (0.95, 0.05)]
    _, warned, snaps = _scripted_fit(script, on_overfit="warn", restore_best=False)
    assert warned.best_epoch == 2 and warned.stop_epoch == 0 and warned.onset_epoch == 1
    for got, want in zip(warned.stop_weights, snaps[0]):
        np.testing.assert_array_equal(got, want)
    stopped_clf, stopped, _ = _scripted_fit(script, on_overfit="stop", restore_best=True)
    assert len(stopped.history) == 2
    for got, want in zip(warned.stop_weights, stopped_clf.get_weights()):  # one warning run gives the stopped model
        np.testing.assert_array_equal(got, want)


def test_monitor_stop_ends_training_at_the_flagged_epoch():
    script = [(0.50, 0.30), (0.90, 0.05), (0.95, 0.05), (0.95, 0.05)]
    clf, monitor, snaps = _scripted_fit(script, on_overfit="stop")
    assert len(monitor.history) == 2 and monitor.onset_epoch == 1


def test_monitor_does_not_flag_when_both_accuracies_fall_or_pgd_rises():
    monitor = training.CatastrophicOverfittingMonitor(*tiny_data(4), fgsm=attacks.FGSM(eps=EPS),
                                                      pgd=attacks.PGD(eps=EPS, steps=2, step_size=0.05))
    monitor.history = [{"epoch": 0, "fgsm": 0.8, "pgd": 0.5, "flagged": False}]
    assert not monitor.is_overfit(0.5, 0.3)  # FGSM fell too: not the signature of catastrophic overfitting
    assert not monitor.is_overfit(0.9, 0.45)  # a small dip within `drop`
    assert monitor.is_overfit(0.9, 0.2)


def test_monitor_counts_correct_clean_and_attacked():
    clf = tiny_model()
    rng = np.random.default_rng(1)
    pool = rng.uniform(0, 1, (200, 8, 8, 1)).astype(np.float32)
    pred = np.argmax(clf(pool).numpy(), axis=1)
    prototype = {c: pool[np.flatnonzero(pred == c)[0]] for c in range(3)}
    x, y = tiny_data(32)
    right = np.argmax(clf(x).numpy(), axis=1) == y
    assert 0.0 < right.mean() < 1.0

    def identity(model, xb, yb):
        return xb

    def repair(model, xb, yb):  # turns every answer right: counting attacked-correct alone would give 100 %
        return np.stack([prototype[int(c)] for c in yb])

    monitor = training.CatastrophicOverfittingMonitor(x, y, fgsm=identity, pgd=repair)
    monitor.set_model(training.AdversarialTrainer(clf, method="fgsm", eps=EPS))
    fgsm_acc, pgd_acc = monitor.measure()
    assert fgsm_acc == pytest.approx(right.mean()) and pgd_acc == pytest.approx(right.mean())
    # with real attacks: the same rule, computed by hand
    pgd = attacks.PGD(eps=0.3, steps=3, step_size=0.1, seed=3)
    monitor = training.CatastrophicOverfittingMonitor(x, y, fgsm=attacks.FGSM(eps=0.3), pgd=pgd)
    monitor.set_model(clf)
    fgsm_acc, pgd_acc = monitor.measure()
    for got, spec in ((fgsm_acc, attacks.FGSM(eps=0.3)), (pgd_acc, pgd)):
        attacked = np.argmax(clf(spec(clf, x, y)).numpy(), axis=1) == y
        assert got == pytest.approx(np.mean(right & attacked))


# ----------------------------------------------------------------------------------------------
# tf.distribute on two logical CPUs (a subprocess: logical devices must be set before TF starts)
# ----------------------------------------------------------------------------------------------
DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import numpy as np
    from tutorial_lib import runtime
    devices = runtime.split_cpu(2)
    import keras, tensorflow as tf
    sys.path.insert(0, {tests!r})
    from test_training import tiny_model, tiny_data, clone
    from tutorial_lib import training
    x, y = tiny_data(16)
    ref_clf = tiny_model()
    strat = runtime.strategy(devices[:2])
    with strat.scope():
        clf = clone(ref_clf)
    training.adversarial_fit(clf, x, y, method="fgsm", eps=0.1, epochs=1, batch_size=16, strategy=strat, verbose=0)
    training.adversarial_fit(ref_clf, x, y, method="fgsm", eps=0.1, epochs=1, batch_size=16, verbose=0)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(clf.get_weights(), ref_clf.get_weights()))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(clf.get_weights(), tiny_model().get_weights()))
    try:
        with strat.scope():
            training.adversarial_fit(clone(ref_clf), x, y, method="fgsm", eps=0.1, epochs=1, batch_size=7,
                                     strategy=strat, verbose=0)
        error = ""
    except ValueError as err:
        error = str(err)
    print(json.dumps({{"replicas": strat.num_replicas_in_sync, "diff": diff, "moved": moved, "error": error}}))
""")


def test_distributed_training_on_two_logical_cpus_matches_one_device():
    import pathlib

    code = DISTRIBUTED.format(tests=str(pathlib.Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 5e-4  # training did something (one Adam step moves weights by about lr = 1e-3)
    assert result["diff"] < 1e-4  # two replicas of 8 give the same step as one device with 16
    assert "does not split evenly over 2 replicas" in result["error"]


# ----------------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------------
def test_mixed_precision_training_runs_and_keeps_float32_logits():
    x, y = tiny_data(32)
    try:
        policy = runtime.set_mixed_precision(True)
        keras.utils.set_random_seed(0)
        clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                                keras.layers.Flatten(), keras.layers.Dense(3, dtype="float32")])
        assert clf.layers[0].compute_dtype != "float32"
        before = [w.copy() for w in clf.get_weights()]
        _, info = training.adversarial_fit(clf, x, y, method="pgd", eps=EPS, steps=2, epochs=2, batch_size=16,
                                           verbose=0)
    finally:
        runtime.set_mixed_precision(False)
    assert policy.startswith("mixed_")
    assert np.all(np.isfinite(info["history"]["loss"]))
    assert clf(x).dtype == tf.float32
    assert any(not np.allclose(a, b) for a, b in zip(clf.get_weights(), before))


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "madry"}, ValueError, "unknown method 'madry'"),
    ({"method": 3}, TypeError, "method must be a string"),
    ({"eps": -0.1}, ValueError, "eps must be"),
    ({"eps": 0.0}, ValueError, "eps must be"),
    ({"eps": "0.3"}, TypeError, "eps must be a number"),
    ({"step_size": 0.0}, ValueError, "step_size must be > 0"),
    ({"step_size": -0.1}, ValueError, "step_size must be > 0"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"method": "fgsm", "steps": 5}, ValueError, "takes one step"),
    ({"clean_weight": 1.5}, ValueError, "clean_weight"),
    ({"beta": -1.0}, ValueError, "beta"),
    ({"method": "none", "clean_weight": 0.5}, ValueError, "only apply to adversarial methods"),
    ({"eval_attack": "pgd"}, TypeError, "attack spec"),
    ({"method": "n_fgsm", "noise": -1.0}, ValueError, "noise must be >= 0"),
    ({"method": "n_fgsm", "noise": float("nan")}, ValueError, "noise must be >= 0"),
    ({"method": "n_fgsm", "noise": "2"}, TypeError, "noise must be a number"),
    ({"method": "pgd", "noise": 2.0}, ValueError, "noise only applies to method='n_fgsm'"),
    ({"method": "n_fgsm", "steps": 3}, ValueError, "takes one step"),
    ({"method": "n_fgsm", "attack": attacks.FGSM(eps=0.3)}, TypeError, "crafts its own batch"),
])
def test_trainer_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        training.AdversarialTrainer(tiny_model(), **kwargs)


def test_trainer_rejects_a_softmax_classifier():
    clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="softmax"):
        training.AdversarialTrainer(clf)


@pytest.mark.parametrize("change, match", [
    ({"x": "uint8"}, "float images"),
    ({"x": "range"}, r"pixels must be in \[0, 1\]"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"decay_epochs": 2}, "decay_epochs"),
    ({"ramp_epochs": 3}, "ramp_epochs"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_adversarial_fit_rejects_bad_input(change, match):
    x, y = tiny_data(8)
    if change.get("x") == "uint8":
        x = (x * 255).astype(np.uint8)
    elif change.get("x") == "range":
        x = x * 255
    kw = {"method": "fgsm", "eps": EPS, "epochs": 2, "verbose": 0}
    kw.update({k: v for k, v in change.items() if k != "x"})
    with pytest.raises(ValueError, match=match):
        training.adversarial_fit(tiny_model(), x, y, **kw)


def test_callbacks_reject_bad_input():
    x, y = tiny_data(4)
    specs = {"fgsm": attacks.FGSM(eps=EPS), "pgd": attacks.PGD(eps=EPS, steps=2, step_size=0.05)}
    with pytest.raises(ValueError, match="on_overfit"):
        training.CatastrophicOverfittingMonitor(x, y, on_overfit="panic", **specs)
    with pytest.raises(ValueError, match="images"):
        training.CatastrophicOverfittingMonitor(x[:, :, :, 0], y, **specs)
    with pytest.raises(ValueError, match="eps must be"):
        training.EpsilonRamp(-0.3, 3)
    with pytest.raises(ValueError, match="ramp_epochs must be >= 1"):
        training.EpsilonRamp(0.3, 0)
    plain = tiny_model()
    plain.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(TypeError, match="eps variable"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[training.EpsilonRamp(0.3, 2)])


# ----------------------------------------------------------------------------------------------
# Union (multi-perturbation) adversarial training: each example trains on the pool member with the highest loss
# ----------------------------------------------------------------------------------------------
def _union_pool():
    return attacks.AttackPool([attacks.FGSM(eps=EPS),
                               attacks.PGD(eps=0.5, steps=3, step_size=0.3, norm=2, random_start=False)])


def test_union_batch_is_the_highest_loss_member_per_example():
    clf, (x, y) = tiny_model(), tiny_data(64)
    pool = _union_pool()
    trainer = training.AdversarialTrainer(clf, method="union", attack=pool)
    got = trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy()
    cands = [spec(clf, x, y) for spec in pool]
    losses = np.stack([ce(y, clf(c)).numpy() for c in cands])  # (members, n)
    pick = np.argmax(losses, axis=0)
    want = np.stack([cands[k][i] for i, k in enumerate(pick)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert 0 < (pick == 0).sum() < len(pick)  # both members win somewhere, so the test tells them apart


def test_union_train_step_equals_manual_step_on_the_worst_batch():
    clf, (x, y) = tiny_model(), tiny_data()
    ref = clone(clf)
    trainer = training.AdversarialTrainer(clf, method="union", attack=_union_pool())
    x_worst = trainer.adversarial_batch(tf.constant(x), tf.constant(y))
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    trainer.train_on_batch(x, y)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(ce(y, ref(x_worst)))
    grads = tape.gradient(loss, ref.trainable_variables)
    for got, w, g in zip(clf.get_weights(), ref.get_weights(), grads):
        np.testing.assert_allclose(got, w - 0.5 * g.numpy(), atol=1e-5)


def test_union_ramp_scales_every_budget():
    clf, (x, y) = tiny_model(), tiny_data()
    trainer = training.AdversarialTrainer(clf, method="union", attack=attacks.AttackPool([attacks.FGSM(eps=EPS)]))
    assert trainer.eps_max == 1.0
    trainer.eps.assign(0.5)
    got = trainer.adversarial_batch(tf.constant(x), tf.constant(y)).numpy()
    np.testing.assert_allclose(got, attacks.FGSM(eps=EPS / 2)(clf, x, y), atol=1e-6)


def test_union_config_round_trip_keeps_the_pool():
    pool = attacks.AttackPool([attacks.FGSM(eps=EPS), attacks.Spatial(max_angle=10.0, max_shift=1.0, angle_steps=3, shift_steps=3)],
                              weights=[1.0, 2.0])
    trainer = training.AdversarialTrainer(tiny_model(), method="union", attack=pool)
    config = json.loads(json.dumps(trainer.get_config()))  # JSON-able
    again = training.AdversarialTrainer.from_config(config)
    assert again.method == "union" and again.attack == pool


def test_union_refuses_bad_input():
    with pytest.raises(TypeError, match="AttackPool"):
        training.AdversarialTrainer(tiny_model(), method="union")
    with pytest.raises(TypeError, match="AttackPool"):
        training.AdversarialTrainer(tiny_model(), method="union", attack=attacks.FGSM(eps=EPS))
    with pytest.raises(ValueError, match="budgets from the pool"):
        training.AdversarialTrainer(tiny_model(), method="union", attack=_union_pool(), eps=0.1)
    with pytest.raises(TypeError, match="no default attack"):
        training.training_attack("union", 0.1)


def test_union_fit_with_a_spatial_member_trains_in_the_compiled_step():
    clf, (x, y) = tiny_model(), tiny_data(32)
    pool = attacks.AttackPool([attacks.FGSM(eps=EPS), attacks.Spatial(max_angle=10.0, max_shift=1.0, angle_steps=3,
                                                                      shift_steps=3)])
    before = clf.get_weights()[0].copy()
    _, info = training.adversarial_fit(clf, x, y, epochs=2, batch_size=16, ramp_epochs=1, verbose=0,
                                       method="union", attack=pool)
    assert info["eps_per_epoch"] == [1.0, 1.0] and np.isfinite(info["history"]["loss"]).all()
    assert not np.allclose(clf.get_weights()[0], before)
