"""Adversarial training as a Keras citizen: a wrapper model whose ``train_step`` crafts the attack.

:class:`AdversarialTrainer` wraps a logits classifier (the user keeps the classifier; it is what gets
saved), so ``fit`` gives callbacks, metrics, history and progress bars. The training attack is an attack spec
from :mod:`tutorial_lib.attacks`; :class:`EpsilonRamp` and :class:`CatastrophicOverfittingMonitor` are callbacks.
Notebook 03's settings, caching and tables are in :mod:`tutorial_lib.experiments.adversarial_training`.
Introduced in notebooks/03_adversarial_training.ipynb.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import attacks, compiled, evaluate, models
from .checks import check_bool, check_count, check_eps, check_images_and_labels, check_number, check_positive_int

#: Methods that train against one threat model (notebook 03's comparison).
METHODS = ("none", "fgsm", "fgsm_rs", "n_fgsm", "pgd", "trades")
#: Methods that train against an :class:`~tutorial_lib.attacks.AttackPool` of threat models.
POOL_METHODS = ("union",)
METHOD_TITLES = {
    "none": "standard",
    "fgsm": "FGSM-AT",
    "fgsm_rs": "fast AT (FGSM-RS)",
    "n_fgsm": "N-FGSM",
    "pgd": "PGD-AT",
    "trades": "TRADES",
    "union": "union AT (worst of a pool)",
}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _check_method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {', '.join(METHODS + POOL_METHODS)}; got {type(method).__name__}")
    if method not in METHODS + POOL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS + POOL_METHODS)} (none = "
                         "standard training)")
    return method


def training_attack(method: str, eps: float, steps: int | None = None,
                    step_size: float | None = None) -> attacks.Attack | None:
    """The attack spec ``method`` trains against at radius ``eps`` (None for ``"none"``).

    ``fgsm``: ``FGSM(eps)``; ``fgsm_rs``: one step of ``step_size`` (default 1.25 eps) from a uniform random
    start, ``PGD(steps=1)``; ``pgd`` and ``trades``: ``PGD(steps, step_size)`` from a random start (default
    7 steps of 2.5 eps / steps; TRADES maximises the KL divergence instead of the cross-entropy with it).
    ``union`` trains against an :class:`~tutorial_lib.attacks.AttackPool` the caller builds (no default).
    ``n_fgsm``: no spec expresses N-FGSM (noise beyond the ball, no projection back onto it); the one-step spec
    ``PGD(steps=1, step_size, random_start=False)`` (default step eps) carries its radius and step, and the
    trainer crafts the batch with :func:`n_fgsm`.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    method = _check_method(method)
    if method == "none":
        return None
    if method == "union":
        raise TypeError("method='union' has no default attack: pass attack=tl.attacks.AttackPool([...]) with the "
                        "specs of every threat model to train against")
    eps = check_eps(eps, positive=True)
    if steps is not None and method in ("fgsm", "fgsm_rs", "n_fgsm") and steps != 1:
        raise ValueError(f"method {method!r} takes one step; got steps={steps}. Use method='pgd' for several steps.")
    if method == "fgsm":
        if step_size is not None and step_size != eps:
            raise ValueError(f"FGSM's step is eps ({eps}); got step_size={step_size}. Use method='fgsm_rs' for "
                             "another step size.")
        return attacks.FGSM(eps=eps)
    if method == "fgsm_rs":
        return attacks.PGD(eps=eps, steps=1, step_size=1.25 * eps if step_size is None else step_size)
    if method == "n_fgsm":
        return attacks.PGD(eps=eps, steps=1, step_size=eps if step_size is None else step_size, random_start=False)
    steps = 7 if steps is None else check_positive_int("steps", steps)
    return attacks.PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps if step_size is None else step_size)


def n_fgsm(model: Any, x: Any, y: Any, *, eps: Any, step_size: Any = None, noise: float = 2.0,
           seed: Any = None) -> tf.Tensor:
    """N-FGSM's training images (de Jorge et al., NeurIPS 2022): strong noise, then one FGSM step, not projected.

    ``x_noisy = clip(x + eta, 0, 1)`` with ``eta ~ U[-noise * eps, noise * eps]`` per pixel, then
    ``x_adv = clip(x_noisy + step_size * sign(grad_x CE(model(x_noisy), y)), 0, 1)`` (``step_size`` default
    ``eps``). Nothing projects ``x_adv - x`` back onto the eps ball, so it can reach ``(noise + 1) * eps`` per
    pixel; as in the authors' code the noisy image is clipped to the pixel range before the gradient. The step is
    an FGSM step of size ``step_size`` from ``x_noisy``: FGSM's projection onto that radius around ``x_noisy``
    changes nothing, only the pixel clip acts. ``model``: callable ``f(x, training=False) -> logits``; ``x``:
    float (B, H, W, C) in [0, 1]; ``y``: int (B,); ``eps``/``step_size``: floats or scalar tensors; ``seed``:
    optional shape-(2,) int tensor for stateless noise (else TF's global generator, as
    ``tf.random.uniform(tf.shape(x), -1.0, 1.0)``). Graph-compatible, no validation (the trainer validates).
    Returns x_adv (dtype of x), gradient stopped. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    x = tf.convert_to_tensor(x)
    eps = tf.cast(eps, x.dtype)
    step_size = eps if step_size is None else tf.cast(step_size, x.dtype)
    shape = tf.shape(x)
    unit = (tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype) if seed is None
            else tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=x.dtype))
    x_noisy = tf.clip_by_value(x + tf.cast(noise, x.dtype) * eps * unit, 0.0, 1.0)
    return _FGSM_STEP.generate(model, x_noisy, y, eps=step_size, step_size=step_size)


_FGSM_STEP = attacks.FGSM(eps=0.1)  # its radius is always overridden by n_fgsm's step_size


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
    - ``"n_fgsm"``: N-FGSM (de Jorge et al., NeurIPS 2022): uniform noise of ``noise`` x eps (default 2),
      one step of ``step_size`` (default eps), not projected back onto the eps ball (:func:`n_fgsm`).
    - ``"pgd"``: PGD adversarial training (Madry et al. 2018): ``steps`` projected steps from a random start.
    - ``"trades"``: TRADES (Zhang et al. 2019): clean cross-entropy + ``beta`` x KL(p(x) || p(x')), with
      x' maximising that KL by ``steps`` projected steps.
    - ``"union"``: multi-perturbation adversarial training (the "max" strategy of Tramer & Boneh 2019 and
      Maini et al. 2020): ``attack`` is an :class:`~tutorial_lib.attacks.AttackPool`; every spec of the pool
      attacks every batch and each example trains on the attacked copy with the highest loss. Costs the sum of
      the specs' attack steps per batch. An :class:`EpsilonRamp` then ramps a budget *scale* from 0 to 1
      (``eps_max`` is 1.0), applied to every spec's budget (see ``AttackPool.generate``).

    The training attack is ``attack``, an FGSM or PGD spec (L-inf), or, when it is None, the spec
    :func:`training_attack` builds from ``eps`` (default 0.3), ``steps`` and ``step_size``; it is stored as
    ``self.attack``. Its ``step_size`` is the step at the full ``eps``; while an :class:`EpsilonRamp` lowers the
    current radius (the ``eps`` variable), the step shrinks in proportion. ``clean_weight`` in [0, 1] mixes the clean
    loss into fgsm/fgsm_rs/pgd: ``(1 - w) CE(x') + w CE(x)``. ``align_weight`` > 0 adds the GradAlign term
    (Andriushchenko & Flammarion 2020) ``lambda (1 - cos(grad_x CE(x), grad_x CE(x + eta)))``, eta uniform in the ball.
    ``noise`` (N-FGSM only; default 2.0) is the noise magnitude in units of the current eps, so a ramp scales it too.

    Inputs: images float32 (B, H, W, C) in [0, 1], integer labels (B,). ``call`` returns the classifier's
    logits. Metrics: ``loss`` and ``accuracy`` on the batch trained on (adversarial for the attack methods);
    ``evaluate``/validation report ``accuracy`` (clean) and, with ``eval_attack`` (a spec), ``robust_accuracy``
    (correct both clean and attacked, as :func:`tutorial_lib.evaluate.robust_accuracy`).
    Introduced in notebooks/03_adversarial_training.ipynb.
    """

    def __init__(
        self,
        classifier: keras.Model,
        *,
        method: str = "pgd",
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        attack: attacks.Attack | None = None,
        beta: float = 6.0,
        clean_weight: float = 0.0,
        align_weight: float = 0.0,
        noise: float | None = None,
        eval_attack: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        models.check_logits_model(classifier)
        self.method = _check_method(method)
        if method != "n_fgsm" and noise is not None:
            raise ValueError(f"noise only applies to method='n_fgsm' (N-FGSM's noise magnitude), not {method!r}")
        self.noise = 2.0 if noise is None else check_number(
            "noise", noise, low=0.0, hint="It is N-FGSM's noise magnitude in units of eps; de Jorge et al. use 2.")
        if method == "n_fgsm" and attack is not None:
            raise TypeError("method='n_fgsm' crafts its own batch (noise, then an unprojected step): pass eps, "
                            "step_size and noise instead of an attack spec")
        if method == "union":
            if isinstance(attack, dict):  # from get_config
                attack = _pool_from_config(attack)
            if not isinstance(attack, attacks.AttackPool):
                raise TypeError(f"method='union' needs attack=tl.attacks.AttackPool([...]) (the threat models to "
                                f"train against), got {type(attack).__name__}")
            if eps is not None or steps is not None or step_size is not None:
                raise ValueError("method='union' takes its budgets from the pool's specs; do not pass eps, steps or "
                                 "step_size")
        elif attack is None:
            attack = training_attack(method, 0.3 if eps is None else eps, steps, step_size)
        elif eps is not None or steps is not None or step_size is not None:
            raise ValueError("pass either attack (a spec) or eps/steps/step_size, not both")
        elif method == "none" or not isinstance(attack, (attacks.FGSM, attacks.PGD)) or attack.targeted \
                or getattr(attack, "norm", "inf") != "inf" or getattr(attack, "restarts", 1) != 1:
            raise TypeError(f"attack must be an untargeted L-inf FGSM or PGD spec with one restart (and method not "
                            f"'none'), got {attack!r}")
        self.attack = attack
        union = method == "union"
        self.eps_max = 0.0 if attack is None else 1.0 if union else attack.eps
        self.steps = 1 if attack is None or union else getattr(attack, "steps", 1)
        self.step_size = 0.0 if attack is None or union else float(attack._step_size(attack.eps))
        self.beta = check_number("beta", beta, low=0.0, hint="TRADES uses beta in 1..6.")
        self.clean_weight = check_number("clean_weight", clean_weight, low=0.0, high=1.0)
        self.align_weight = check_number("align_weight", align_weight, low=0.0)
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
        self._robust_acc = keras.metrics.Mean(name="robust_accuracy")

    # Keras plumbing --------------------------------------------------------------------------------
    def call(self, x: Any, training: bool = False) -> tf.Tensor:
        """The classifier's logits."""
        return self.classifier(x, training=training)

    def compile(self, *args: Any, jit_compile: bool | str = "auto", **kwargs: Any) -> None:
        """``keras.Model.compile``, where ``jit_compile="auto"`` (the default) first asks the package's one XLA
        decision, :func:`tutorial_lib.compiled.use_xla`: no XLA where it says no (a CPU, or op determinism on:
        XLA has no deterministic max-pooling gradient), else Keras' own "auto"."""
        if jit_compile == "auto" and not compiled.use_xla():
            jit_compile = False
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Loss and accuracy, and robust accuracy when there is an ``eval_attack`` (Keras resets them per epoch)."""
        return [self._loss_tracker, self._acc] + ([self._robust_acc] if self.eval_attack is not None else [])

    def get_config(self) -> dict[str, Any]:
        """The classifier (serialised), the method and its settings: enough for :meth:`from_config`."""
        config = super().get_config()
        attack = {} if self.attack is None else dict(eps=self.eps_max, steps=self.steps, step_size=self.step_size)
        if self.method == "union":
            attack = {"attack": _pool_config(self.attack)}
        if self.method == "n_fgsm":
            attack["noise"] = self.noise
        config.update(classifier=keras.saving.serialize_keras_object(self.classifier), method=self.method,
                      beta=self.beta, clean_weight=self.clean_weight, align_weight=self.align_weight, **attack)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AdversarialTrainer":
        """A trainer from :meth:`get_config`'s dictionary."""
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)

    def fit(self, x: Any = None, y: Any = None, *, batch_size: int | None = None,
            **kwargs: Any) -> keras.callbacks.History:
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

    def adversarial_batch(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """The batch this method trains on: ``x`` itself for ``none``, else the attacked images (stop-gradient).

        The step (and N-FGSM's noise) scale with the current radius ``self.eps`` (see :class:`EpsilonRamp`).
        """
        if self.method == "none":
            return x
        eps = tf.cast(self.eps, tf.float32)
        if self.method == "union":
            return self._worst_of_pool(x, y, scale=eps)
        step = self.step_size * eps / self.eps_max
        if self.method == "n_fgsm":
            return n_fgsm(self.classifier, x, y, eps=eps, step_size=step, noise=self.noise)
        if self.method != "trades":
            return self.attack.generate(self.classifier, x, y, eps=eps, step_size=step)
        p_clean = tf.stop_gradient(tf.nn.softmax(self._logits(x)))
        return attacks.gradient_ascent(lambda xa: kl_divergence(p_clean, self._logits(xa)), x, eps=eps, step_size=step,
                                       steps=self.steps, norm="inf", random_start=self.attack.random_start)

    def _worst_of_pool(self, x, y, *, scale):
        """Per example, the pool member's attacked copy with the highest cross-entropy (gradient stopped)."""
        best, best_loss = x, tf.fill(tf.shape(y), -float("inf"))
        for spec in self.attack:
            cand = tf.stop_gradient(tf.cast(spec.generate(self.classifier, x, y, **spec._scaled(scale)), x.dtype))
            loss = self._ce(y, self._logits(cand))
            higher = loss > best_loss
            best = tf.where(tf.reshape(higher, [-1, 1, 1, 1]), cand, best)
            best_loss = tf.where(higher, loss, best_loss)
        return best

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

    def training_loss(self, x: tf.Tensor, y: tf.Tensor, x_adv: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Mean loss of the batch and the logits of the inputs it scores (for the accuracy metric)."""
        if self.method == "trades":
            clean = self._logits(x, training=True)
            adv = self._logits(x_adv, training=True)
            loss = tf.reduce_mean(self._ce(y, clean)) + self.beta * tf.reduce_mean(kl_divergence(tf.nn.softmax(clean), adv))
            return loss, adv
        adv = self._logits(x_adv, training=True)
        loss = tf.reduce_mean(self._ce(y, adv))
        if self.clean_weight > 0:
            clean = self._logits(x, training=True)
            loss = (1.0 - self.clean_weight) * loss + self.clean_weight * tf.reduce_mean(self._ce(y, clean))
        if self.align_weight > 0:
            loss = loss + self.align_weight * self._grad_align(x, y)
        return loss, adv

    def train_step(self, data: tuple) -> dict[str, tf.Tensor]:
        """One optimiser step on the method's batch (Keras calls it inside its compiled train function)."""
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

    def test_step(self, data: tuple) -> dict[str, tf.Tensor]:
        """Clean loss and accuracy, and robust accuracy against ``eval_attack`` when given."""
        x, y = data[0], data[1]
        x = tf.cast(x, tf.float32)
        logits = self._logits(x)
        self._loss_tracker.update_state(tf.reduce_mean(self._ce(y, logits)))
        self._acc.update_state(y, logits)
        if self.eval_attack is not None:
            x_adv = self.eval_attack.generate(self.classifier, x, y)
            self._robust_acc.update_state(tf.cast(_correct(y, logits) & _correct(y, self._logits(x_adv)), tf.float32))
        return {m.name: m.result() for m in self.metrics}


def _pool_config(pool: attacks.AttackPool) -> dict[str, Any]:
    """A JSON-able description of ``pool``: each spec's class name and fields, the weights."""
    return {"specs": [{"class": type(spec).__name__, **dataclasses.asdict(spec)} for spec in pool],
            "weights": list(pool.weights), "held_out": pool.held_out}


def _pool_from_config(config: dict[str, Any]) -> attacks.AttackPool:
    """The pool of :func:`_pool_config` (classes looked up by name in ``tutorial_lib.attacks``; nothing unpickled)."""
    specs = []
    for entry in config["specs"]:
        fields = dict(entry)
        cls = getattr(attacks, fields.pop("class"), None)
        if not (isinstance(cls, type) and issubclass(cls, attacks.Attack)):
            raise ValueError(f"unknown attack class in a saved pool: {entry.get('class')!r}")
        specs.append(cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}))
    return attacks.AttackPool(specs, config["weights"], held_out=config["held_out"])


def _correct(y, logits):
    return tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))


def kl_divergence(p, logits_q):
    """Per-example KL(p || softmax(logits_q)), (B,) float32 (float64 for float64 inputs); ``p`` are probabilities (e.g. ``softmax`` of the
    clean logits). TRADES' regulariser, in adversarial training and in the TRADES outer loss of
    :class:`tutorial_lib.meta_adversarial.AdversarialQuerying`."""
    dtype = tf.float64 if p.dtype == tf.float64 else tf.float32  # float32 at least (mixed precision)
    p = tf.cast(p, dtype)
    log_q = tf.nn.log_softmax(tf.cast(logits_q, dtype))
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
        self.eps_max = check_eps(eps, positive=True)
        self.ramp_epochs = check_positive_int("ramp_epochs", ramp_epochs)
        self.values: list[float] = []

    def value(self, epoch: int) -> float:
        """The radius for 0-based ``epoch``."""
        return self.eps_max * min(1.0, (epoch + 1) / self.ramp_epochs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Set the trainer's radius for ``epoch``."""
        if not hasattr(self.model, "eps"):
            raise TypeError("EpsilonRamp needs a model with an eps variable, e.g. tl.training.AdversarialTrainer")
        eps = self.value(epoch)
        self.model.eps.assign(eps)
        self.values.append(eps)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Leave the trainer at the full radius."""
        self.model.eps.assign(self.eps_max)


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Watch for catastrophic overfitting: PGD accuracy collapses while FGSM accuracy holds or climbs.

    After each epoch it attacks a fixed batch ``(x, y)`` (held-out images, or a fixed sample of training
    images as in Wong et al.) with ``fgsm`` and ``pgd`` (attack specs) and records both robust accuracies
    (correct clean and attacked, :func:`tutorial_lib.evaluate.robust_accuracy`) in ``history``. An epoch is flagged when PGD accuracy falls more than ``drop``
    below the best PGD accuracy so far while FGSM accuracy is at least its value at that best epoch minus
    ``drop`` (the attack the model trains against still looks beaten). On a flag it warns
    (``on_overfit="warn"``) or also stops training (``"stop"``). With ``restore_best`` the classifier gets the
    weights of its best-PGD epoch back when training ends. ``onset_epoch`` is the first flagged epoch (0-based).
    ``stop_weights`` / ``stop_epoch`` are what ``on_overfit="stop"`` with ``restore_best`` would have left, whatever
    ``on_overfit`` is: the weights of the best-PGD epoch up to the first flag (of the whole run if none was
    flagged), so one warning run also gives the early-stopped model without a second run.
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
        x, y = check_images_and_labels(x, y)
        if x.ndim != 4:
            raise ValueError(f"x must be a batch of images (N, H, W, C), got shape {x.shape}")
        self.x, self.y = x, y
        self.fgsm, self.pgd = fgsm, pgd
        self.drop = check_number("drop", drop, low=0.0, high=1.0, low_inclusive=False)
        self.on_overfit, self.verbose = on_overfit, verbose
        self.restore_best = check_bool("restore_best", restore_best)
        self.history: list[dict[str, Any]] = []
        self.onset_epoch: int | None = None
        self.best_epoch: int | None = None
        self.stop_epoch: int | None = None
        self.stop_weights: list[np.ndarray] | None = None
        self._best_weights: list[np.ndarray] | None = None

    def _classifier(self) -> keras.Model:
        return getattr(self.model, "classifier", self.model)

    def measure(self) -> tuple[float, float]:
        """(FGSM accuracy, PGD accuracy) of the current classifier on the monitor batch (correct clean and attacked)."""
        clf = self._classifier()
        return (evaluate.robust_accuracy(clf, self.x, self.y, self.fgsm),
                evaluate.robust_accuracy(clf, self.x, self.y, self.pgd))

    def is_overfit(self, fgsm_acc: float, pgd_acc: float) -> bool:
        """The flag rule, against the best epoch seen so far (see the class docstring)."""
        if not self.history:
            return False
        best = max(self.history, key=lambda h: h["pgd"])
        return pgd_acc < best["pgd"] - self.drop and fgsm_acc >= best["fgsm"] - self.drop

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Measure, record, keep the best weights, and warn (or stop) on a flag."""
        fgsm_acc, pgd_acc = self.measure()
        flagged = self.is_overfit(fgsm_acc, pgd_acc)
        self.history.append({"epoch": epoch, "fgsm": fgsm_acc, "pgd": pgd_acc, "flagged": flagged})
        if logs is not None:
            logs.update(monitor_fgsm=fgsm_acc, monitor_pgd=pgd_acc)
        if self.best_epoch is None or pgd_acc > self.history[self.best_epoch]["pgd"]:
            self.best_epoch = len(self.history) - 1
            self._best_weights = [np.array(w) for w in self._classifier().get_weights()]
        if self.onset_epoch is None:  # until the first flag, "stop and restore" would restore the best so far
            self.stop_epoch, self.stop_weights = self.best_epoch, self._best_weights
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
        """Give the classifier its best-PGD weights back (with ``restore_best``)."""
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
        """Start the clock."""
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record the epoch's seconds."""
        self.seconds.append(time.perf_counter() - self._start)


# --------------------------------------------------------------------------------------------------
# Training a classifier with one call, and caching it
# --------------------------------------------------------------------------------------------------
def adversarial_fit(
    classifier: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    decay_epochs: int = 0,
    ramp_epochs: int = 0,
    callbacks: list | None = None,
    strategy: Any = None,
    verbose: int | str = 2,
    **trainer_options: Any,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train ``classifier`` in place with an :class:`AdversarialTrainer` and return ``(classifier, info)``.

    ``x``: float32 images (N, H, W, C) in [0, 1]; ``y``: int labels (N,). Adam at ``learning_rate``, divided
    by 10 for the last ``decay_epochs`` epochs (a step schedule); with ``ramp_epochs`` > 0 an
    :class:`EpsilonRamp` warms eps up over that many epochs. ``strategy``: a tf.distribute strategy whose
    scope the classifier was built in (None: the current one). ``info`` holds the Keras history, the
    eps used per epoch and ``seconds_per_epoch`` (median wall-clock). ``trainer_options`` are the
    :class:`AdversarialTrainer`'s (``method``, ``eps``, ``steps``, ``step_size`` or ``attack``, ``beta``,
    ``clean_weight``, ``align_weight``, ``noise``). Introduced in notebooks/03_adversarial_training.ipynb.
    """
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    check_count("decay_epochs", decay_epochs, high=epochs - 1, hint=" (fewer than epochs)")
    check_count("ramp_epochs", ramp_epochs, high=epochs, hint=" (at most epochs)")
    if np.asarray(x).dtype.kind != "f" or np.ndim(x) != 4:
        raise ValueError(f"x must be float images (N, H, W, C) in [0, 1]; got shape {np.shape(x)}, dtype {np.asarray(x).dtype}")
    x, y = check_images_and_labels(x, y)
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"pixels must be in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; divide uint8 images by 255")
    strategy = strategy or tf.distribute.get_strategy()
    steps_per_epoch = math.ceil(len(x) / batch_size)
    lr: Any = learning_rate
    if decay_epochs:
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [steps_per_epoch * (epochs - decay_epochs)], [learning_rate, learning_rate / 10])
    with strategy.scope():
        trainer = AdversarialTrainer(classifier, **trainer_options)
        trainer.compile(optimizer=keras.optimizers.Adam(lr))
    timer = EpochTimer()
    ramp = EpsilonRamp(trainer.eps_max, ramp_epochs) if ramp_epochs and trainer.attack is not None else None
    cbs = [timer] + ([ramp] if ramp else []) + list(callbacks or [])
    hist = trainer.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=cbs, shuffle=True, verbose=verbose)
    info = {
        "history": hist.history,
        "eps_per_epoch": ramp.values if ramp else [trainer.eps_max] * len(timer.seconds),
        "epoch_seconds": timer.seconds,
        "seconds_per_epoch": float(np.median(timer.seconds)),
    }
    return classifier, info
