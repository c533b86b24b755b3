"""Adversarial training as a Keras citizen: a wrapper model whose ``train_step`` crafts the attack.

:class:`AdversarialTrainer` wraps a logits classifier (the user keeps the classifier; it is what gets
saved), so ``fit`` gives callbacks, metrics, history and progress bars. Attacks come from
:mod:`tutorial_lib.attacks`; :class:`EpsilonRamp` and :class:`CatastrophicOverfittingMonitor` are callbacks.
Introduced in notebooks/03_adversarial_training.ipynb.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import attacks, models, runtime

METHODS = ("none", "fgsm", "fgsm_rs", "pgd", "trades")
METHOD_TITLES = {
    "none": "standard",
    "fgsm": "FGSM-AT",
    "fgsm_rs": "fast AT (FGSM-RS)",
    "pgd": "PGD-AT",
    "trades": "TRADES",
}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _check_method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {', '.join(METHODS)}; got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} (none = standard training)")
    return method


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, low_inclusive: bool = False,
                  hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    too_low = value < low if low_inclusive else value <= low
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {bound}, got {value}. {hint}".rstrip())
    return value


def _check_eps(eps: Any) -> float:
    return _check_number("eps", eps, low=0.0, high=1.0, hint="Pixels are in [0, 1], so an L-inf radius above 1 "
                         "means nothing; MNIST adversarial training uses 0.3 (Madry et al.).")


def _check_steps(name: str, steps: Any) -> int:
    return attacks.check_positive_int(name, steps)


# --------------------------------------------------------------------------------------------------
# The training wrapper
# --------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="tutorial_lib")
class AdversarialTrainer(keras.Model):
    """Wrap a logits ``classifier`` so ``fit`` trains it on attacked batches.

    Methods (``method``):

    - ``"none"``: standard training on clean images.
    - ``"fgsm"``: FGSM adversarial training (Goodfellow et al. 2015): one signed-gradient step of size eps.
    - ``"fgsm_rs"``: fast adversarial training (Wong et al. 2020): uniform random start in the eps-ball,
      one step of ``step_size`` (default 1.25 eps), projected back.
    - ``"pgd"``: PGD adversarial training (Madry et al. 2018): ``steps`` projected steps from a random start.
    - ``"trades"``: TRADES (Zhang et al. 2019): clean cross-entropy + ``beta`` x KL(p(x) || p(x')), with
      x' maximising that KL by ``steps`` projected steps.

    ``step_size`` is the step at the full ``eps``; while an :class:`EpsilonRamp` lowers the current radius
    (the ``eps`` variable), the step shrinks in proportion. ``clean_weight`` in [0, 1] mixes the clean
    loss into fgsm/fgsm_rs/pgd: ``(1 - w) CE(x') + w CE(x)``. ``align_weight`` > 0 adds the GradAlign term
    (Andriushchenko & Flammarion 2020) ``lambda (1 - cos(grad_x CE(x), grad_x CE(x + eta)))``, eta uniform in the ball.

    Inputs: images float32 (B, H, W, C) in [0, 1], integer labels (B,). ``call`` returns the classifier's
    logits. Metrics: ``loss`` and ``accuracy`` on the batch trained on (adversarial for the attack methods);
    ``evaluate``/validation report ``accuracy`` (clean) and, with ``eval_attack``, ``robust_accuracy``.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """

    def __init__(
        self,
        classifier: keras.Model,
        *,
        method: str = "pgd",
        eps: float = 0.3,
        steps: int | None = None,
        step_size: float | None = None,
        beta: float = 6.0,
        clean_weight: float = 0.0,
        align_weight: float = 0.0,
        eval_attack: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        models.check_logits_model(classifier)
        self.method = _check_method(method)
        self.eps_max = _check_eps(eps)
        default_steps = {"none": 1, "fgsm": 1, "fgsm_rs": 1, "pgd": 7, "trades": 7}[method]
        if steps is not None and method in ("none", "fgsm", "fgsm_rs") and steps != 1:
            raise ValueError(f"method {method!r} takes one step; got steps={steps}. Use method='pgd' for several steps.")
        self.steps = default_steps if steps is None else _check_steps("steps", steps)
        if step_size is None:
            step_size = {"none": self.eps_max, "fgsm": self.eps_max, "fgsm_rs": 1.25 * self.eps_max}.get(
                method, 2.5 * self.eps_max / self.steps)
        self.step_size = _check_number("step_size", step_size, low=0.0, hint="Use a positive step, e.g. 2.5 * eps / steps for PGD.") \
            if method != "none" else float(step_size)
        self.beta = _check_number("beta", beta, low=0.0, low_inclusive=True, hint="TRADES uses beta in 1..6.")
        self.clean_weight = _check_number("clean_weight", clean_weight, low=0.0, high=1.0, low_inclusive=True)
        self.align_weight = _check_number("align_weight", align_weight, low=0.0, low_inclusive=True)
        if method == "none" and (clean_weight or align_weight):
            raise ValueError("clean_weight and align_weight only apply to adversarial methods, not method='none'")
        if eval_attack is not None and not callable(getattr(eval_attack, "generate", None)):
            raise TypeError(f"eval_attack must be an attack spec from tutorial_lib.attacks (with .generate), "
                            f"got {type(eval_attack).__name__}")
        self.classifier = classifier
        self.eval_attack = eval_attack
        self.eps = self.add_weight(name="eps", shape=(), initializer=keras.initializers.Constant(self.eps_max),
                                   trainable=False, dtype="float32")
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._robust_acc = keras.metrics.SparseCategoricalAccuracy(name="robust_accuracy")

    # Keras plumbing --------------------------------------------------------------------------------
    def call(self, x, training: bool = False):
        return self.classifier(x, training=training)

    @property
    def metrics(self):
        return [self._loss_tracker, self._acc] + ([self._robust_acc] if self.eval_attack is not None else [])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(classifier=keras.saving.serialize_keras_object(self.classifier), method=self.method,
                      eps=self.eps_max, steps=self.steps, step_size=self.step_size, beta=self.beta,
                      clean_weight=self.clean_weight, align_weight=self.align_weight)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AdversarialTrainer":
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)

    def fit(self, x=None, y=None, *, batch_size: int | None = None, **kwargs: Any):
        """``keras.Model.fit``, after checking the batch splits evenly over the strategy's replicas."""
        replicas = self.distribute_strategy.num_replicas_in_sync
        size = 32 if batch_size is None else batch_size
        if replicas > 1 and size % replicas:
            raise ValueError(f"batch_size {size} does not split evenly over {replicas} replicas; use a multiple of "
                             f"{replicas} (e.g. {size - size % replicas or replicas})")
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    # The attacks -------------------------------------------------------------------------------------
    def _logits(self, x, training: bool = False):
        return tf.cast(self.classifier(x, training=training), tf.float32)

    def _ce(self, y, logits):
        return tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

    def adversarial_batch(self, x, y):
        """The batch this method trains on: ``x`` itself for ``none``, else the attacked images (stop-gradient)."""
        if self.method == "none":
            return x
        eps = tf.cast(self.eps, tf.float32)
        step = self.step_size * eps / self.eps_max
        if self.method == "trades":
            p_clean = tf.stop_gradient(tf.nn.softmax(self._logits(x)))

            def loss_fn(xa):
                return _kl(p_clean, self._logits(xa))
        else:
            def loss_fn(xa):
                return self._ce(y, self._logits(xa))
        return attacks.gradient_ascent(loss_fn, x, eps=eps, step_size=step, steps=self.steps, norm="inf",
                                       random_start=self.method in ("fgsm_rs", "pgd", "trades"))

    def _input_gradient(self, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(self._ce(y, self._logits(x, training=True)))
        return tape.gradient(loss, x)

    def _grad_align(self, x, y):
        eta = tf.random.uniform(tf.shape(x), -1.0, 1.0) * tf.cast(self.eps, tf.float32)
        # Both gradients are differentiated (double backprop); the GradAlign reference code detaches the clean
        # one, which is cheaper but did not train a more robust model in our quick-profile probes.
        g1 = tf.reshape(self._input_gradient(x, y), [tf.shape(x)[0], -1])
        g2 = tf.reshape(self._input_gradient(tf.clip_by_value(x + eta, 0.0, 1.0), y), [tf.shape(x)[0], -1])
        cos = tf.reduce_sum(g1 * g2, -1) / (tf.norm(g1, axis=-1) * tf.norm(g2, axis=-1) + 1e-12)
        return tf.reduce_mean(1.0 - cos)

    def training_loss(self, x, y, x_adv):
        """Mean loss of the batch and the logits of the inputs it scores (for the accuracy metric)."""
        if self.method == "trades":
            clean = self._logits(x, training=True)
            adv = self._logits(x_adv, training=True)
            loss = tf.reduce_mean(self._ce(y, clean)) + self.beta * tf.reduce_mean(_kl(tf.nn.softmax(clean), adv))
            return loss, adv
        adv = self._logits(x_adv, training=True)
        loss = tf.reduce_mean(self._ce(y, adv))
        if self.clean_weight > 0:
            clean = self._logits(x, training=True)
            loss = (1.0 - self.clean_weight) * loss + self.clean_weight * tf.reduce_mean(self._ce(y, clean))
        if self.align_weight > 0:
            loss = loss + self.align_weight * self._grad_align(x, y)
        return loss, adv

    def train_step(self, data):
        x, y = data[0], data[1]
        x = tf.cast(x, tf.float32)
        x_adv = self.adversarial_batch(x, y)
        with tf.GradientTape() as tape:
            loss, logits = self.training_loss(x, y, x_adv)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        variables = self.classifier.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self._loss_tracker.update_state(loss)
        self._acc.update_state(y, logits)
        return {m.name: m.result() for m in self.metrics if m.name != "robust_accuracy"}

    def test_step(self, data):
        x, y = data[0], data[1]
        x = tf.cast(x, tf.float32)
        logits = self._logits(x)
        self._loss_tracker.update_state(tf.reduce_mean(self._ce(y, logits)))
        self._acc.update_state(y, logits)
        if self.eval_attack is not None:
            x_adv = self.eval_attack.generate(self.classifier, x, y)
            self._robust_acc.update_state(y, self._logits(x_adv))
        return {m.name: m.result() for m in self.metrics}


def _kl(p, logits_q):
    """Per-example KL(p || softmax(logits_q)), (B,) float32; p are probabilities."""
    log_q = tf.nn.log_softmax(tf.cast(logits_q, tf.float32))
    return tf.reduce_sum(p * (tf.math.log(p + 1e-12) - log_q), axis=-1)


# --------------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------------
class EpsilonRamp(keras.callbacks.Callback):
    """Warm up the attack radius: eps grows linearly to ``eps`` over the first ``ramp_epochs`` epochs.

    Epoch ``e`` (0-based) trains at ``eps * min(1, (e + 1) / ramp_epochs)``; ``values`` records what was
    used. Works on any model with an ``eps`` variable (an :class:`AdversarialTrainer`).
    Introduced in notebooks/03_adversarial_training.ipynb.
    """

    def __init__(self, eps: float, ramp_epochs: int) -> None:
        super().__init__()
        self.eps_max = _check_eps(eps)
        self.ramp_epochs = _check_steps("ramp_epochs", ramp_epochs)
        self.values: list[float] = []

    def value(self, epoch: int) -> float:
        """The radius for 0-based ``epoch``."""
        return self.eps_max * min(1.0, (epoch + 1) / self.ramp_epochs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not hasattr(self.model, "eps"):
            raise TypeError("EpsilonRamp needs a model with an eps variable, e.g. tl.training.AdversarialTrainer")
        eps = self.value(epoch)
        self.model.eps.assign(eps)
        self.values.append(eps)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.model.eps.assign(self.eps_max)


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Watch for catastrophic overfitting: PGD accuracy collapses while FGSM accuracy holds or climbs.

    After each epoch it attacks a fixed batch ``(x, y)`` (held-out images, or a fixed sample of training
    images as in Wong et al.) with ``fgsm`` and ``pgd`` (attack specs) and records both accuracies in ``history``. An epoch is flagged when PGD accuracy falls more than ``drop``
    below the best PGD accuracy so far while FGSM accuracy is at least its value at that best epoch minus
    ``drop`` (the attack the model trains against still looks beaten). On a flag it warns
    (``on_overfit="warn"``) or also stops training (``"stop"``). With ``restore_best`` the classifier gets the
    weights of its best-PGD epoch back when training ends. ``onset_epoch`` is the first flagged epoch (0-based).
    Introduced in notebooks/03_adversarial_training.ipynb.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, fgsm: Any, pgd: Any, drop: float = 0.1,
                 on_overfit: str = "warn", restore_best: bool = True, verbose: bool = True) -> None:
        super().__init__()
        if on_overfit not in ("warn", "stop"):
            raise ValueError(f"on_overfit must be 'warn' or 'stop', got {on_overfit!r}")
        for name, spec in (("fgsm", fgsm), ("pgd", pgd)):
            if not callable(spec):
                raise TypeError(f"{name} must be an attack spec from tutorial_lib.attacks, got {type(spec).__name__}")
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x must be a non-empty batch of images (N, H, W, C) with N labels; got x {x.shape}, y {y.shape}")
        self.x, self.y = x.astype(np.float32), y
        self.fgsm, self.pgd = fgsm, pgd
        self.drop = _check_number("drop", drop, low=0.0, high=1.0)
        self.on_overfit, self.restore_best, self.verbose = on_overfit, restore_best, verbose
        self.history: list[dict[str, Any]] = []
        self.onset_epoch: int | None = None
        self.best_epoch: int | None = None
        self._best_weights: list[np.ndarray] | None = None

    def _classifier(self) -> keras.Model:
        return getattr(self.model, "classifier", self.model)

    def measure(self) -> tuple[float, float]:
        """(FGSM accuracy, PGD accuracy) of the current classifier on the monitor batch."""
        clf = self._classifier()
        acc = []
        for spec in (self.fgsm, self.pgd):
            x_adv = spec(clf, self.x, self.y)
            pred = np.argmax(_logits_numpy(clf, x_adv), axis=-1)
            acc.append(float(np.mean(pred == self.y)))
        return acc[0], acc[1]

    def is_overfit(self, fgsm_acc: float, pgd_acc: float) -> bool:
        """The flag rule, against the best epoch seen so far (see the class docstring)."""
        if not self.history:
            return False
        best = max(self.history, key=lambda h: h["pgd"])
        return pgd_acc < best["pgd"] - self.drop and fgsm_acc >= best["fgsm"] - self.drop

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        fgsm_acc, pgd_acc = self.measure()
        flagged = self.is_overfit(fgsm_acc, pgd_acc)
        self.history.append({"epoch": epoch, "fgsm": fgsm_acc, "pgd": pgd_acc, "flagged": flagged})
        if logs is not None:
            logs.update(monitor_fgsm=fgsm_acc, monitor_pgd=pgd_acc)
        if self.best_epoch is None or pgd_acc > self.history[self.best_epoch]["pgd"]:
            self.best_epoch = len(self.history) - 1
            self._best_weights = [np.array(w) for w in self._classifier().get_weights()]
        if flagged:
            if self.onset_epoch is None:
                self.onset_epoch = epoch
            best = self.history[self.best_epoch]
            message = (f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy {pgd_acc:.1%} (best {best['pgd']:.1%} "
                       f"at epoch {best['epoch'] + 1}) while FGSM accuracy is {fgsm_acc:.1%}")
            if self.verbose:
                print("CatastrophicOverfittingMonitor:", message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if self.on_overfit == "stop":
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best and self._best_weights is not None:
            self._classifier().set_weights(self._best_weights)
            if self.verbose and self.best_epoch != len(self.history) - 1:
                print(f"CatastrophicOverfittingMonitor: restored the weights of epoch "
                      f"{self.history[self.best_epoch]['epoch'] + 1} (PGD accuracy {self.history[self.best_epoch]['pgd']:.1%})")


class EpochTimer(keras.callbacks.Callback):
    """Record wall-clock seconds per epoch in ``seconds`` (training only, not the callbacks after it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


# --------------------------------------------------------------------------------------------------
# Training a classifier with one call, and caching it
# --------------------------------------------------------------------------------------------------
def adversarial_fit(
    classifier: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str,
    eps: float,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    decay_epochs: int = 0,
    ramp_epochs: int = 0,
    steps: int | None = None,
    step_size: float | None = None,
    beta: float = 6.0,
    clean_weight: float = 0.0,
    align_weight: float = 0.0,
    callbacks: list | None = None,
    strategy: Any = None,
    verbose: int | str = 2,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train ``classifier`` in place with ``method`` and return ``(classifier, info)``.

    ``x``: float32 images (N, H, W, C) in [0, 1]; ``y``: int labels (N,). Adam at ``learning_rate``, divided
    by 10 for the last ``decay_epochs`` epochs (a step schedule); with ``ramp_epochs`` > 0 an
    :class:`EpsilonRamp` warms eps up over that many epochs. ``strategy``: a tf.distribute strategy whose
    scope the classifier was built in (None: the current one). ``info`` holds the Keras history, the
    eps used per epoch and ``seconds_per_epoch`` (median wall-clock). The other options are those of
    :class:`AdversarialTrainer`. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    epochs = _check_steps("epochs", epochs)
    batch_size = _check_steps("batch_size", batch_size)
    _check_number("learning_rate", learning_rate, low=0.0)
    if isinstance(decay_epochs, bool) or not isinstance(decay_epochs, (int, np.integer)) or not 0 <= decay_epochs < epochs:
        raise ValueError(f"decay_epochs must be an int in [0, epochs) = [0, {epochs}), got {decay_epochs!r}")
    if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, (int, np.integer)) or not 0 <= ramp_epochs <= epochs:
        raise ValueError(f"ramp_epochs must be an int in [0, epochs] = [0, {epochs}], got {ramp_epochs!r}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or x.dtype.kind != "f" or len(x) != len(y):
        raise ValueError(f"x must be float images (N, H, W, C) with one label each; got x {x.shape} {x.dtype}, y {y.shape}")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"pixels must be in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; divide uint8 images by 255")
    strategy = strategy or tf.distribute.get_strategy()
    steps_per_epoch = math.ceil(len(x) / batch_size)
    lr: Any = learning_rate
    if decay_epochs:
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [steps_per_epoch * (epochs - decay_epochs)], [learning_rate, learning_rate / 10])
    with strategy.scope():
        trainer = AdversarialTrainer(classifier, method=method, eps=eps, steps=steps, step_size=step_size, beta=beta,
                                     clean_weight=clean_weight, align_weight=align_weight)
        trainer.compile(optimizer=keras.optimizers.Adam(lr))
    timer = EpochTimer()
    ramp = EpsilonRamp(eps, ramp_epochs) if ramp_epochs and method != "none" else None
    cbs = [timer] + ([ramp] if ramp else []) + list(callbacks or [])
    hist = trainer.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=cbs, shuffle=True, verbose=verbose)
    info = {
        "history": hist.history,
        "eps_per_epoch": ramp.values if ramp else [float(eps) if method != "none" else 0.0] * len(timer.seconds),
        "epoch_seconds": timer.seconds,
        "seconds_per_epoch": float(np.median(timer.seconds)),
    }
    return classifier, info


def recipe(method: str, settings: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`adversarial_fit` for ``method`` under a profile's ``adv_training`` settings.

    Everything that affects the weights is in here, so it doubles as the cache key.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    _check_method(method)
    s = settings
    kw: dict[str, Any] = {"method": method, "eps": s.eps, "epochs": s.epochs, "batch_size": s.batch_size,
                          "learning_rate": s.learning_rate, "decay_epochs": s.decay_epochs}
    if method == "none":
        kw.update(epochs=s.standard_epochs, decay_epochs=0)
    elif method == "fgsm":
        kw.update(epochs=s.fast_epochs, decay_epochs=0)
    elif method == "fgsm_rs":
        kw.update(epochs=s.fast_epochs, decay_epochs=0, step_size=s.fast_alpha * s.eps)
    elif method in ("pgd", "trades"):
        kw.update(steps=s.train_pgd_steps, step_size=s.train_step_scale * s.eps / s.train_pgd_steps,
                  ramp_epochs=s.ramp_epochs)
        if method == "trades":
            kw.update(beta=s.trades_beta)
    return kw


def overfitting_monitor(data: Any, settings: Any, *, seed: int = 0, **kwargs: Any) -> CatastrophicOverfittingMonitor:
    """A :class:`CatastrophicOverfittingMonitor` on ``settings.monitor_size`` training images drawn at random.

    The images are a fixed random sample (seed ``seed``; the bundled subset is sorted by class, so the first
    images would all be zeros). It attacks with FGSM and PGD-``settings.monitor_pgd_steps`` (step
    2.5 eps / steps, random start) at ``settings.eps``, like Wong et al.'s check on a training batch (test
    images stay unseen, so restoring the best epoch is not tuned on the test set). ``kwargs`` go to the
    monitor (``on_overfit``, ``restore_best``...). Introduced in notebooks/03_adversarial_training.ipynb.
    """
    n, steps = settings.monitor_size, settings.monitor_pgd_steps
    idx = np.random.default_rng(seed).choice(len(data.x_train), size=min(n, len(data.x_train)), replace=False)
    return CatastrophicOverfittingMonitor(
        data.x_train[idx], data.y_train[idx], fgsm=attacks.FGSM(eps=settings.eps),
        pgd=attacks.PGD(eps=settings.eps, steps=steps, step_size=2.5 * settings.eps / steps, seed=0), **kwargs)


def fast_at_remedies(settings: Any) -> dict[str, dict[str, Any]]:
    """Fast-AT variants against catastrophic overfitting: ``{name: adversarial_fit options}``.

    ``"stop_restore"`` is plain fast AT meant to run with an ``overfitting_monitor(on_overfit="stop")``
    (early stopping at the flag, best weights restored); ``"small_alpha"`` uses step ``remedy_alpha * eps``;
    ``"eps_ramp"`` warms eps up over ``remedy_ramp_epochs``; ``"gradalign"`` adds the GradAlign term.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    base = recipe("fgsm_rs", settings)
    s = settings
    return {
        "stop_restore": dict(base),
        "small_alpha": {**base, "step_size": s.remedy_alpha * s.eps},
        "eps_ramp": {**base, "ramp_epochs": s.remedy_ramp_epochs},
        "gradalign": {**base, "align_weight": s.align_weight},
    }


def train_cached(
    name: str,
    data: Any,
    fit_kwargs: dict[str, Any],
    *,
    seed: int = 0,
    callbacks: list | None = None,
    save: bool = True,
    verbose: bool = True,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh seed CNN with :func:`adversarial_fit` (``fit_kwargs``) on ``data``, cached by config hash.

    ``data``: an :class:`~tutorial_lib.data.MNIST`. ``callbacks`` are used only if training runs (the cache
    key includes their class names); a :class:`CatastrophicOverfittingMonitor`'s record lands in ``info["monitor"]``. With ``save`` the
    classifier is also written to ``build/models/<name>.keras`` (a plain Keras model: loads in safe mode
    with nothing beyond Keras). Returns ``(classifier, info)`` as :func:`tutorial_lib.models.load_or_train`.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not isinstance(fit_kwargs, dict) or "method" not in fit_kwargs:
        raise TypeError("fit_kwargs must be a dict of adversarial_fit options with at least 'method', e.g. recipe('pgd', profile.adv_training)")
    callbacks = list(callbacks or [])
    cb_names = [type(c).__name__ for c in callbacks]
    config = {"model": "seed_cnn", "data": f"{data.source}:{len(data.x_train)}", "seed": seed, **fit_kwargs,
              "callbacks": cb_names}

    def train() -> tuple[keras.Model, dict[str, Any]]:
        runtime.set_seed(seed)
        clf = models.seed_cnn()
        clf, info = adversarial_fit(clf, data.x_train, data.y_train, callbacks=callbacks,
                                    verbose=2 if verbose else 0, **fit_kwargs)
        for cb in callbacks:
            if isinstance(cb, CatastrophicOverfittingMonitor):
                info["monitor"] = {"history": cb.history, "onset_epoch": cb.onset_epoch, "best_epoch": cb.best_epoch}
        return clf, info

    model, info = models.load_or_train(name, config, train, verbose=verbose)
    if save:
        path = runtime.build_subdir("models") / f"{name}.keras"
        models.save_model(model, path)
        info["path"] = runtime.display_path(path)
    return model, info


# --------------------------------------------------------------------------------------------------
# Tables and figures for the notebook
# --------------------------------------------------------------------------------------------------
def results_markdown(results: dict[str, dict[str, float]], *, labels: dict[str, str] | None = None) -> str:
    """A Markdown table of :func:`robustness_summary` results (fractions shown as percents) keyed by row name.

    Columns are the union of the result keys in first-seen order; ``seconds_per_epoch`` and
    ``train_seconds`` are shown in seconds. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict {row name: {column: value}}")
    names = {"clean": "clean", "fgsm": "FGSM", "seconds_per_epoch": "s / epoch", "train_seconds": "train s"}
    columns: list[str] = []
    for row in results.values():
        columns += [c for c in row if c not in columns]
    def header(c: str) -> str:
        if c in names:
            return names[c]
        if c.startswith("pgd") and "_restarts" in c:
            steps, restarts = c[3:].split("_restarts")
            return f"PGD-{steps} x {restarts}"
        return f"PGD-{c[3:]}" if c.startswith("pgd") and c[3:].isdigit() else c
    def cell(c: str, v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.1f}" if c in ("seconds_per_epoch", "train_seconds") else f"{100 * v:.1f}%"
    lines = ["| method | " + " | ".join(header(c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, row in results.items():
        label = (labels or {}).get(key, METHOD_TITLES.get(key, key))
        lines.append(f"| {label} | " + " | ".join(cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def plot_robustness(results: dict[str, dict[str, float]], *, labels: dict[str, str] | None = None, ax: Any = None) -> Any:
    """Grouped bars: accuracy under each attack (columns that are fractions) per method; returns the Axes.

    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.2))
    keys = [k for k in next(iter(results.values())) if k not in ("seconds_per_epoch", "train_seconds")]
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ax.bar(np.arange(len(results)) + i * width, [100 * r[k] for r in results.values()], width,
               label=results_markdown({"_": {k: 0.0}}).split("|")[2].strip())
    ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2)
    ax.set_xticklabels([(labels or {}).get(m, METHOD_TITLES.get(m, m)) for m in results], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=len(keys), loc="upper right")
    return ax


def plot_monitor(history: list[dict[str, Any]], *, title: str = "", ax: Any = None) -> Any:
    """FGSM and PGD accuracy per epoch from a :class:`CatastrophicOverfittingMonitor`, flagged epochs marked.

    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    epochs = [h["epoch"] + 1 for h in history]
    ax.plot(epochs, [100 * h["fgsm"] for h in history], "o-", label="FGSM")
    ax.plot(epochs, [100 * h["pgd"] for h in history], "s-", label="PGD")
    flagged = [h for h in history if h["flagged"]]
    if flagged:
        ax.scatter([h["epoch"] + 1 for h in flagged], [100 * h["pgd"] for h in flagged], s=120, facecolors="none",
                   edgecolors="red", label="flagged", zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy on monitor batch (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def loss_and_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy (from logits) and accuracy of ``model`` on ``(x, y)``; x float32 in [0, 1].

    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    logits = _logits_numpy(model, x, batch_size)
    loss = keras.losses.sparse_categorical_crossentropy(np.asarray(y), logits, from_logits=True)
    return float(np.mean(loss)), float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


def _logits_numpy(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits as float32 numpy, batch by batch with direct calls (no ``predict``: no tf.data pipeline, no log noise)."""
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float32)
                           for i in range(0, len(x), batch_size)], axis=0)
