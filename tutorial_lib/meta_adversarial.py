"""Meta-adversarial training: meta-learn an initialisation whose *adapted* models resist attacks.

Built on :mod:`tutorial_lib.meta` (its inner loop, forward pass and ``MetaLearner``) and the attack specs of
:mod:`tutorial_lib.attacks` (run through ``.generate`` against a model evaluated at adapted weights). Holds
Adversarial Querying (AQ, with an eps ramp, a clean-query mix and a TRADES outer loss), AQ with an attack pool
(``PoolQuerying``), ADML, the seed's adversarial meta-step as written and corrected, and robust evaluation of
adapted learners.
Introduced in notebooks/05_meta_adversarial.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import attacks as _attacks
from . import evaluate as _evaluate
from . import meta as _meta
from .tasks import FewShotSampler, Tasks

LEARNERS = ("maml", "aq", "aq_trades", "adml", "seed_fgsm")
OUTER_LOSSES = ("ce", "trades")
SUPPORT_MODES = ("clean", "adversarial")


def default_attack(eps: float = 0.1) -> _attacks.PGD:
    """The training attack of Adversarial Querying: PGD-3, step 2.5 eps / 3, random start."""
    return _attacks.PGD(eps=eps, steps=3, step_size=2.5 * eps / 3, random_start=True)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def check_attack(attack: Any, name: str = "attack") -> _attacks.Attack:
    """Return ``attack`` if it is an attack spec whose eps makes sense for its threat model (``attack.family``).

    Every eps must be > 0: eps = 0 is no attack at all (use plain ``meta.MAML`` instead). L-inf: eps must also be
    smaller than the pixel range, since an L-inf ball as wide as the range contains every image (the attack can
    paint any picture) and no classifier can be robust in it. L2: eps > 0 is all (radii above 1 are common).
    Spatial: eps scales the rotation/shift grid, so it lies in (0, 1].
    """
    if not isinstance(attack, _attacks.Attack):
        raise TypeError(f"{name} must be an attack spec from tutorial_lib.attacks (e.g. attacks.PGD(eps=0.1, "
                        f"steps=3, step_size=0.083)), got {type(attack).__name__}")
    if not attack.eps > 0:
        raise ValueError(f"{name}.eps must be > 0, got {attack.eps}; for no attack use meta.MAML")
    if attack.family == "linf":
        span = attack.clip_max - attack.clip_min
        if attack.eps >= span:
            raise ValueError(f"{name}.eps = {attack.eps} is not smaller than the pixel range [{attack.clip_min}, "
                             f"{attack.clip_max}]: the L-inf eps ball would contain every image. Use eps well "
                             f"below {span} (0.1-0.3 for MNIST in [0, 1])")
    elif attack.family == "spatial" and attack.eps > 1:
        raise ValueError(f"{name}.eps = {attack.eps} scales the spatial grid (max_angle, max_shift) and must lie "
                         "in (0, 1]; for a larger budget raise max_angle / max_shift instead")
    return attack


def check_data_range(attack: _attacks.Attack, *arrays: np.ndarray, name: str = "attack") -> None:
    """Raise unless the images lie inside the attack's pixel range and, for an L-inf attack, its eps ball fits
    inside their range."""
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    tol = 1e-5  # float rounding, as the attacks allow
    if lo < attack.clip_min - tol or hi > attack.clip_max + tol:
        raise ValueError(f"the images lie in [{lo:.4g}, {hi:.4g}] but {name} clips to [{attack.clip_min}, "
                         f"{attack.clip_max}]: the attack would change even clean pixels. Rescale the images or "
                         "give the attack clip_min/clip_max matching the data")
    if attack.family == "linf" and hi > lo and attack.eps >= hi - lo:
        raise ValueError(f"{name}.eps = {attack.eps} is not smaller than the images' range [{lo:.4g}, {hi:.4g}]: "
                         "the L-inf eps ball would contain every image; use a smaller eps")


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (0 = adversarial queries only, 1 = clean queries only), "
                         f"got {value}")
    return float(value)


def _check_outer_loss(outer_loss: Any) -> str:
    if outer_loss not in OUTER_LOSSES:
        raise ValueError(f"outer_loss must be one of {OUTER_LOSSES}, got {outer_loss!r}")
    return outer_loss


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Attacks against adapted parameters: the one code path every method and the evaluation use
# --------------------------------------------------------------------------------------------------
def adapted_logits_fn(model: keras.Model, params: Sequence[tf.Tensor]) -> Callable[..., tf.Tensor]:
    """A callable ``f(x, training=False) -> logits``: ``model`` evaluated with weights ``params``.

    It is what an attack spec's ``.generate`` takes as its model, so any attack of :mod:`tutorial_lib.attacks`
    runs against adapted weights (``meta.forward``; the model itself is not changed).
    """
    params = list(params)

    def logits(x, training: bool = False):
        return _meta.forward(model, params, x)

    return logits


def attack_adapted(attack: _attacks.Attack, model: keras.Model, params: Sequence[Any], x: Any, y: Any, *,
                   eps: Any = None, seed: Any = None, step_size: Any = None) -> tf.Tensor:
    """Adversarial examples for ``model`` evaluated at the (adapted) weights ``params``.

    ``x``: float (n, H, W, C) in the attack's pixel range, ``y``: int labels (n,), numpy or tensors. ``eps``:
    optional float or scalar tensor overriding ``attack.eps`` (a tensor does not retrace: eps ramps);
    ``seed``: optional shape-(2,) int64 tensor for stateless random starts; ``step_size``: optional float or
    scalar tensor overriding the spec's step (see :func:`scaled_step`). Graph-compatible: inside a compiled
    meta-step the gradient is stopped at the attack (the weights are treated as constants while attacking and
    the examples carry no gradient), as in adversarial training. Returns x_adv, a tensor of x's dtype.
    """
    frozen = [tf.stop_gradient(tf.convert_to_tensor(p)) for p in params]
    extra = {} if step_size is None else {"step_size": step_size}
    return attack.generate(adapted_logits_fn(model, frozen), x, y, eps=eps, seed=seed, **extra)


def scaled_step(attack: Any, eps: Any) -> Any:
    """The attack's step size for radius ``eps``, proportional to it (``step_size * eps / attack.eps``), so PGD-20
    at step 2.5 eps / 20 keeps that shape at every eps of a ramp or a sweep; None for attacks without a
    ``step_size`` (FGSM steps by eps itself)."""
    if eps is None or not hasattr(attack, "step_size"):
        return None
    return attack.step_size * eps / attack.eps


def support_surrogate(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, *,
                      lr: float | Sequence[Any]) -> list[tf.Tensor]:
    """The weights after ONE clean SGD step on the support set (gradient stopped): the model that support-set
    attacks are crafted against.

    Why not ``params`` themselves: a learner that starts every task from a zero last layer (``zero_head``)
    gives every image the same logits before adaptation, so an attack on it has no gradient to follow and the
    "adversarial" support set would equal the clean one.
    """
    adapted = _meta.inner_loop(model, params, support_x, support_y, steps=1, lr=lr, first_order=True)
    return [tf.stop_gradient(p) for p in adapted]


def attack_support(attack: _attacks.Attack, model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, *,
                   lr: float | Sequence[Any], eps: Any = None, seed: Any = None, step_size: Any = None) -> tf.Tensor:
    """Adversarial support images, crafted against :func:`support_surrogate` (one clean step from ``params``)."""
    surrogate = support_surrogate(model, params, support_x, support_y, lr=lr)
    return attack_adapted(attack, model, surrogate, support_x, support_y, eps=eps, seed=seed, step_size=step_size)


def _fold(seed: Any, i: int) -> Any:
    return None if seed is None else tf.random.experimental.stateless_fold_in(seed, i)


def _start(params: Sequence[tf.Tensor], zero_head: bool) -> list[tf.Tensor]:
    params = list(params)
    return params[:-2] + [tf.zeros_like(p) for p in params[-2:]] if zero_head else params


def _grads_or_zeros(grads, params):
    return [tf.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# --------------------------------------------------------------------------------------------------
# One task's meta-gradient for each method (functional; used inside the compiled meta-step)
# --------------------------------------------------------------------------------------------------
def _kl(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """Per-example KL(softmax(p_logits) || softmax(q_logits))."""
    log_p = tf.nn.log_softmax(p_logits)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - tf.nn.log_softmax(q_logits)), axis=-1)


def query_loss(model: keras.Model, adapted: Sequence[tf.Tensor], query_x, query_x_adv, query_y, *,
               outer_loss: str = "ce", clean_weight: float = 0.0, trades_beta: float = 6.0) -> tuple[tf.Tensor, tf.Tensor]:
    """The outer (query) loss of Adversarial Querying and the accuracy on the attacked queries.

    ``"ce"``: ``(1 - clean_weight) * CE(adv queries) + clean_weight * CE(clean queries)``.
    ``"trades"``: ``CE(clean queries) + trades_beta * mean KL(p(clean) || p(adv))`` (the TRADES loss of
    Zhang et al. 2019 with the KL direction of their paper and of ``training``'s ``"trades"``).
    """
    adv_loss, adv_acc = _meta.loss_and_accuracy(model, adapted, query_x_adv, query_y)
    if outer_loss == "trades":
        clean_logits = _meta.forward(model, adapted, query_x)
        adv_logits = _meta.forward(model, adapted, query_x_adv)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(query_y, clean_logits, from_logits=True))
        return ce + trades_beta * tf.reduce_mean(_kl(clean_logits, adv_logits)), adv_acc
    if clean_weight == 0.0:
        return adv_loss, adv_acc
    clean_loss, _ = _meta.loss_and_accuracy(model, adapted, query_x, query_y)
    return (1.0 - clean_weight) * adv_loss + clean_weight * clean_loss, adv_acc


def aq_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, query_x, query_y, *,
                     attack: Any, steps: int, lr: float, eps: Any = None, seed: Any = None, step_size: Any = None,
                     clean_weight: float = 0.0,
                     outer_loss: str = "ce", trades_beta: float = 6.0, first_order: bool = False,
                     zero_head: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's Adversarial Querying meta-gradient (Goldblum, Fowl, Goldstein 2020).

    theta' = ``meta.inner_loop`` on the CLEAN support set; the queries are attacked against theta' (gradient
    stopped at the attack); the gradient of :func:`query_loss` flows through theta' back to ``params`` (second
    order unless ``first_order``). ``attack`` is anything with ``.generate(model_fn, x, y, eps=, seed=)``.
    Returns ``(grads, outer loss, accuracy on the attacked queries)``.
    """
    params = [tf.identity(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        adapted = _meta.inner_loop(model, _start(params, zero_head), support_x, support_y, steps=steps, lr=lr,
                                   first_order=first_order)
        query_adv = attack_adapted(attack, model, adapted, query_x, query_y, eps=eps, seed=seed, step_size=step_size)
        loss, acc = query_loss(model, adapted, query_x, query_adv, query_y, outer_loss=outer_loss,
                               clean_weight=clean_weight, trades_beta=trades_beta)
    return _grads_or_zeros(tape.gradient(loss, params), params), loss, acc


def adml_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, query_x, query_y, *,
                       attack: Any, steps: int, lr: float, eps: Any = None, seed: Any = None, step_size: Any = None,
                       first_order: bool = False, zero_head: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's ADML meta-gradient (Yin et al. 2018, as re-implemented by Goldblum et al. 2020).

    Two adaptations from theta: theta'_clean on the clean support set, theta'_adv on the attacked support set
    (crafted against :func:`support_surrogate`); outer loss
    ``0.5 * [CE(theta'_clean, queries attacked against theta'_clean) + CE(theta'_adv, clean queries)]``.
    Returns ``(grads, outer loss, accuracy of theta'_clean on the attacked queries)``.
    """
    params = [tf.identity(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        start = _start(params, zero_head)
        support_adv = attack_support(attack, model, start, support_x, support_y, lr=lr, eps=eps, seed=_fold(seed, 0),
                                     step_size=step_size)
        clean = _meta.inner_loop(model, start, support_x, support_y, steps=steps, lr=lr, first_order=first_order)
        adv = _meta.inner_loop(model, start, support_adv, support_y, steps=steps, lr=lr, first_order=first_order)
        query_adv = attack_adapted(attack, model, clean, query_x, query_y, eps=eps, seed=_fold(seed, 1),
                                   step_size=step_size)
        loss_a, acc = _meta.loss_and_accuracy(model, clean, query_adv, query_y)
        loss_b, _ = _meta.loss_and_accuracy(model, adv, query_x, query_y)
        loss = 0.5 * (loss_a + loss_b)
    return _grads_or_zeros(tape.gradient(loss, params), params), loss, acc


def adversarial_maml_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, query_x,
                                   query_y, *, attack: Any, steps: int, lr: float, eps: Any = None, seed: Any = None,
                                   step_size: Any = None, first_order: bool = False,
                                   zero_head: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's meta-gradient of MAML on attacked support AND query sets (the seed's idea done right).

    The support set is attacked against :func:`support_surrogate`, theta' adapts on it, the queries are attacked
    against theta', and the query loss is differentiated through the adaptation.
    Returns ``(grads, query loss, accuracy on the attacked queries)``.
    """
    params = [tf.identity(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        start = _start(params, zero_head)
        support_adv = attack_support(attack, model, start, support_x, support_y, lr=lr, eps=eps, seed=_fold(seed, 0),
                                     step_size=step_size)
        adapted = _meta.inner_loop(model, start, support_adv, support_y, steps=steps, lr=lr, first_order=first_order)
        query_adv = attack_adapted(attack, model, adapted, query_x, query_y, eps=eps, seed=_fold(seed, 1),
                                   step_size=step_size)
        loss, acc = _meta.loss_and_accuracy(model, adapted, query_adv, query_y)
    return _grads_or_zeros(tape.gradient(loss, params), params), loss, acc


# --------------------------------------------------------------------------------------------------
# The learners: one compiled meta-step each, tasks mapped inside it, split over tf.distribute replicas
# --------------------------------------------------------------------------------------------------
class AdversarialMetaLearner(_meta.MetaLearner):
    """Shared machinery of the adversarial meta-learners (subclass of ``meta.MetaLearner``: ``meta_fit``,
    ``meta_step``, ``adapt``, ``predict`` work as in notebook 04).

    Adds: the training ``attack`` (a spec), an eps ramp (``ramp_steps``: eps grows linearly from 0 to
    ``attack.eps`` over the first meta-steps, fed to the compiled step as a tensor so it never retraces),
    stateless seeds for the attacks' random starts (``seed`` and the meta-step count), and tf.distribute: the
    learner uses the strategy whose scope it is created in (or ``strategy``); the tasks of a meta-batch are
    split evenly across its replicas and their meta-gradients all-reduced (summed, divided by the meta-batch).
    """

    method = "meta_adversarial"

    def __init__(self, model: keras.Model, *, attack: _attacks.Attack | None, inner_lr: float = 0.4,
                 inner_steps: int = 1, test_steps: int | None = None, test_lr: float | None = None,
                 first_order: bool = False, zero_head: bool = False, ramp_steps: int = 0,
                 optimizer: keras.optimizers.Optimizer | None = None,
                 meta_optimizer: keras.optimizers.Optimizer | None = None, meta_lr: float = 1e-3,
                 strategy: Any = None, seed: int = 0) -> None:
        self.attack = check_attack(default_attack() if attack is None else attack)
        self.ramp_steps = _check_count("ramp_steps", ramp_steps)
        self.first_order = bool(first_order)
        self.zero_head = bool(zero_head)
        self.seed = _check_count("seed", seed)
        if optimizer is not None and meta_optimizer is not None:
            raise ValueError("pass the meta-optimizer once: optimizer= and meta_optimizer= are the same argument")
        meta_optimizer = meta_optimizer if meta_optimizer is not None else optimizer
        if not (isinstance(meta_lr, (int, float)) and not isinstance(meta_lr, bool) and meta_lr > 0):
            raise ValueError(f"meta_lr must be a positive number, got {meta_lr!r}")
        self.meta_lr = float(meta_lr)
        self.strategy = strategy if strategy is not None else tf.distribute.get_strategy()
        if self.strategy.num_replicas_in_sync > 1 and not all(
                self.strategy.extended.variable_created_in_scope(getattr(v, "value", v)) for v in model.trainable_variables):
            raise ValueError(f"model {model.name!r} was built outside the scope of the {type(self.strategy).__name__} "
                             "the learner uses; build the model (and the learner) inside `with strategy.scope():`")
        self.steps_done = 0
        with self.strategy.scope():
            super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, test_steps=test_steps,
                             test_lr=test_lr, meta_optimizer=meta_optimizer)
        if self.zero_head:
            for v in model.trainable_variables[-2:]:
                v.assign(np.zeros(v.shape, v.dtype))

    def _default_optimizer(self) -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(self.meta_lr)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model.name}, attack={self.attack!r}, inner_lr={self.inner_lr}, "
                f"inner_steps={self.inner_steps}, ramp_steps={self.ramp_steps})")

    # ---- the eps schedule ------------------------------------------------------------------------
    def eps_at(self, step: int) -> float:
        """The training eps at meta-step ``step`` (0-based): ``attack.eps * min(1, step / ramp_steps)``."""
        if self.ramp_steps == 0:
            return float(self.attack.eps)
        return float(self.attack.eps) * min(1.0, step / self.ramp_steps)

    # ---- one task -------------------------------------------------------------------------------
    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        raise NotImplementedError

    # ---- the compiled step ----------------------------------------------------------------------
    def _build_step(self):
        variables = self.meta_variables
        strategy = self.strategy
        replicas = strategy.num_replicas_in_sync

        def replica_step(sx, sy, qx, qy, eps, seed):
            total = int(sx.shape[0])
            local = total // replicas
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            mine = [tf.gather(tf.reshape(t, [replicas, local, *t.shape[1:]]), rid) for t in (sx, sy, qx, qy)]
            index = tf.range(local) + tf.cast(rid, tf.int32) * local
            params = [tf.convert_to_tensor(v) for v in self.model.trainable_variables]

            def body(task):
                *data, i = task
                return self._task_gradient(params, *data, eps=eps, seed=tf.random.experimental.stateless_fold_in(seed, i))

            dtype = variables[0].dtype
            signature = ([tf.TensorSpec(v.shape, v.dtype) for v in variables], tf.TensorSpec([], dtype),
                         tf.TensorSpec([], dtype))
            grads, losses, accs = tf.map_fn(body, (*mine, index), fn_output_signature=signature,
                                            parallel_iterations=local)
            grads = [tf.reduce_sum(g, axis=0) / total for g in grads]
            self.meta_optimizer.apply_gradients(zip(grads, variables))  # all-reduces (sums) across replicas
            return tf.reduce_sum(losses) / total, tf.reduce_sum(accs) / total

        @tf.function(reduce_retracing=True)
        def step(sx, sy, qx, qy, eps, seed):
            loss, acc = strategy.run(replica_step, args=(sx, sy, qx, qy, eps, seed))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, acc, axis=None))

        return step

    def meta_step(self, tasks: Tasks) -> tuple[float, float]:
        """One meta-update from a meta-batch of tasks (one compiled step); returns (outer loss, query accuracy
        under attack). The eps of this step is :meth:`eps_at` of the number of steps done so far."""
        if not isinstance(tasks, Tasks):
            raise TypeError(f"meta_step takes a Tasks batch from FewShotSampler.sample, got {type(tasks).__name__}")
        replicas = self.strategy.num_replicas_in_sync
        if len(tasks) % replicas:
            raise ValueError(f"the meta-batch of {len(tasks)} tasks does not split evenly over {replicas} replicas; "
                             f"use a meta-batch that is a multiple of {replicas}")
        check_data_range(self.attack, tasks.support_x, tasks.query_x)
        if self._step_fn is None:
            self._step_fn = self._build_step()
        dtype = self.model.trainable_variables[0].dtype
        eps = tf.constant(self.eps_at(self.steps_done), tf.float32)
        seed = tf.constant([self.seed, self.steps_done], tf.int64)
        with self.strategy.scope():
            loss, acc = self._step_fn(tf.constant(tasks.support_x, dtype), tf.constant(tasks.support_y, tf.int32),
                                      tf.constant(tasks.query_x, dtype), tf.constant(tasks.query_y, tf.int32), eps, seed)
        self.steps_done += 1
        return float(loss), float(acc)

    def meta_fit(self, sampler: FewShotSampler, meta_steps: int, meta_batch: int = 4, *, verbose: int = 1,
                 log_every: int | None = None) -> _meta.MetaHistory:
        """As ``meta.MetaLearner.meta_fit``; refuses an eps ramp longer than the meta-training it is part of."""
        if isinstance(meta_steps, int) and not isinstance(meta_steps, bool) and \
                self.ramp_steps > self.steps_done + meta_steps:
            raise ValueError(f"ramp_steps = {self.ramp_steps} is longer than meta-training ({self.steps_done} steps done "
                             f"+ {meta_steps} now): eps would never reach {self.attack.eps}. Use ramp_steps <= "
                             f"{self.steps_done + meta_steps} (e.g. half of the meta-steps)")
        return super().meta_fit(sampler, meta_steps, meta_batch, verbose=verbose, log_every=log_every)


class AdversarialQuerying(AdversarialMetaLearner):
    """Adversarial Querying (Goldblum, Fowl, Goldstein, NeurIPS 2020): MAML whose outer loss is taken on the
    query set attacked against the ADAPTED weights.

    Meta-objective: ``min_theta E_T [ max_{||delta|| <= eps} L(query_T + delta; theta'_T) ]`` with
    ``theta'_T = inner_loop(theta, clean support_T)``. Options: ``attack`` (default PGD-3, step 2.5 eps/3,
    random start, eps 0.1); ``clean_weight`` in [0, 1] mixes in the clean-query loss (0 = pure AQ);
    ``ramp_steps`` ramps eps from 0 over the first meta-steps; ``outer_loss="trades"`` uses clean CE +
    ``trades_beta`` * KL(p(clean) || p(adv)) on the queries (the robust meta-update of Wang et al., ICLR 2021).
    Other arguments as in ``meta.MAML`` (``zero_head`` defaults to False there and here); ``meta_lr`` sets the
    default Adam meta-optimizer. Introduced in notebooks/05_meta_adversarial.ipynb.
    """

    method = "aq"

    def __init__(self, model: keras.Model, *, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_steps: int | None = None, test_lr: float | None = None, attack: _attacks.Attack | None = None,
                 clean_weight: float = 0.0, ramp_steps: int = 0, outer_loss: str = "ce", trades_beta: float = 6.0,
                 first_order: bool = False, zero_head: bool = False,
                 optimizer: keras.optimizers.Optimizer | None = None,
                 meta_optimizer: keras.optimizers.Optimizer | None = None, meta_lr: float = 1e-3,
                 strategy: Any = None, seed: int = 0) -> None:
        self.outer_loss = _check_outer_loss(outer_loss)
        self.clean_weight = _check_fraction("clean_weight", clean_weight)
        if self.outer_loss == "trades" and self.clean_weight:
            raise ValueError("clean_weight applies to outer_loss='ce'; the TRADES loss already has its clean term "
                             "(trades_beta weighs the other one)")
        if isinstance(trades_beta, bool) or not isinstance(trades_beta, (int, float)) or trades_beta < 0:
            raise ValueError(f"trades_beta must be a number >= 0 (TRADES uses 1..6), got {trades_beta!r}")
        self.trades_beta = float(trades_beta)
        if self.outer_loss == "trades":
            self.method = "aq_trades"
        super().__init__(model, attack=attack, inner_lr=inner_lr, inner_steps=inner_steps, test_steps=test_steps,
                         test_lr=test_lr, first_order=first_order, zero_head=zero_head, ramp_steps=ramp_steps,
                         optimizer=optimizer, meta_optimizer=meta_optimizer, meta_lr=meta_lr, strategy=strategy,
                         seed=seed)

    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        return aq_task_gradient(self.model, params, sx, sy, qx, qy, attack=self.attack, steps=self.inner_steps,
                                lr=self.inner_lr, eps=eps, seed=seed, step_size=scaled_step(self.attack, eps),
                                clean_weight=self.clean_weight,
                                outer_loss=self.outer_loss, trades_beta=self.trades_beta, first_order=self.first_order,
                                zero_head=self.zero_head)


@dataclass(frozen=True)
class _DrawnAttack:
    """The pool's spec number ``index`` with its budget times ``scale``, behind the ``.generate`` of a spec."""

    pool: _attacks.AttackPool
    index: Any
    scale: Any

    def generate(self, model, x, y, *, eps=None, seed=None, step_size=None):
        return self.pool.generate(model, x, y, self.index, scale=self.scale, seed=seed)


class PoolQuerying(AdversarialQuerying):
    """Adversarial Querying whose every task draws its query attack from an :class:`~tutorial_lib.attacks.AttackPool`.

    ``PoolQuerying(model, pool=attacks.AttackPool([...]), ...)``: for each task of a meta-batch the pool draws one
    spec (from the task's seed, so a meta-batch mixes threat models: L-inf, L2, spatial), and the outer loss is
    taken on the queries attacked by that spec against the ADAPTED weights, as in :class:`AdversarialQuerying`.
    The ramp grows a scale 0 -> 1 over the first ``ramp_steps`` meta-steps that multiplies the drawn spec's
    budget (eps and step size; the spatial grid's angles and shifts). Other options as ``AdversarialQuerying``
    (``clean_weight`` mixes in the clean-query loss); ``attack=`` is refused (the attacks come from the pool).
    Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    method = "aq_pool"

    def __init__(self, model: keras.Model, *, pool: _attacks.AttackPool, **options) -> None:
        if not isinstance(pool, _attacks.AttackPool):
            raise TypeError(f"pool must be a tutorial_lib.attacks.AttackPool, got {type(pool).__name__}")
        if "attack" in options:
            raise ValueError("PoolQuerying draws its attacks from pool=; do not pass attack=")
        self.pool = pool
        # the base class keeps one spec for its checks of the pixel range; the attacks come from the pool
        super().__init__(model, attack=default_attack(), **options)

    def __repr__(self) -> str:
        return f"PoolQuerying({self.model.name}, pool={self.pool!r}, ramp_steps={self.ramp_steps})"

    def eps_at(self, step: int) -> float:
        """The budget scale at meta-step ``step`` (0-based): ``min(1, (step + 1) / ramp_steps)`` (1 without a ramp).

        The ramp starts at 1 / ramp_steps, not 0, so the first meta-step already attacks."""
        return 1.0 if self.ramp_steps == 0 else min(1.0, (step + 1) / self.ramp_steps)

    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        drawn = _DrawnAttack(self.pool, self.pool.draw(tf.random.experimental.stateless_fold_in(seed, 99)), eps)
        return aq_task_gradient(self.model, params, sx, sy, qx, qy, attack=drawn, steps=self.inner_steps,
                                lr=self.inner_lr, seed=seed, clean_weight=self.clean_weight,
                                first_order=self.first_order, zero_head=self.zero_head)


class ADML(AdversarialMetaLearner):
    """ADML (Yin et al. 2018) as re-implemented by Goldblum et al. 2020: see :func:`adml_task_gradient`.

    Default attack: FGSM at eps 0.1. Introduced in notebooks/05_meta_adversarial.ipynb.
    """

    method = "adml"

    def __init__(self, model: keras.Model, *, attack: _attacks.Attack | None = None, **options) -> None:
        super().__init__(model, attack=_attacks.FGSM(eps=0.1) if attack is None else attack, **options)

    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        return adml_task_gradient(self.model, params, sx, sy, qx, qy, attack=self.attack, steps=self.inner_steps,
                                  lr=self.inner_lr, eps=eps, seed=seed, step_size=scaled_step(self.attack, eps),
                                  first_order=self.first_order, zero_head=self.zero_head)


class AdversarialMAML(AdversarialMetaLearner):
    """MAML with attacked support and query sets (default FGSM at eps 0.1): what the seed's adversarial
    ``meta_train_step`` was reaching for, done right (see :func:`adversarial_maml_task_gradient`).

    Introduced in notebooks/05_meta_adversarial.ipynb.
    """

    method = "seed_fgsm"

    def __init__(self, model: keras.Model, *, attack: _attacks.Attack | None = None, **options) -> None:
        super().__init__(model, attack=_attacks.FGSM(eps=0.1) if attack is None else attack, **options)

    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        return adversarial_maml_task_gradient(self.model, params, sx, sy, qx, qy, attack=self.attack,
                                              steps=self.inner_steps, lr=self.inner_lr, eps=eps, seed=seed,
                                              step_size=scaled_step(self.attack, eps), first_order=self.first_order,
                                              zero_head=self.zero_head)


def make_learner(method: str, model: keras.Model, **options) -> _meta.MetaLearner:
    """A learner by name: ``"maml"`` (``meta.MAML``), ``"aq"``, ``"aq_trades"`` (AQ with the TRADES outer loss),
    ``"adml"``, ``"seed_fgsm"`` (:class:`AdversarialMAML`), with ``options`` passed on."""
    if method == "maml":
        return _meta.MAML(model, **options)
    if method == "aq":
        return AdversarialQuerying(model, **options)
    if method == "aq_trades":
        return AdversarialQuerying(model, **{"outer_loss": "trades", **options})
    if method == "adml":
        return ADML(model, **options)
    if method == "seed_fgsm":
        return AdversarialMAML(model, **options)
    raise ValueError(f"method must be one of {LEARNERS}, got {method!r}")


# --------------------------------------------------------------------------------------------------
# The seed article's adversarial step, as written (for teaching; do not train with it) and measured
# --------------------------------------------------------------------------------------------------
def seed_meta_adversarial_step(model: keras.Model, task_x, task_y, *, optimizer: keras.optimizers.Optimizer,
                               meta_optimizer: keras.optimizers.Optimizer,
                               eps: float) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """The seed article's ``meta_train_step`` with its FGSM, made to run on real task tensors (logits model).

    ``task_x``: float (tasks, n, H, W, C) in [0, 1]; ``task_y``: int (tasks, n). Under one outer tape, for each
    task in turn: FGSM at ``eps`` against the weights as they stand, a gradient step on those adversarial images
    applied *in place* with ``optimizer``; then the gradient of the mean task loss w.r.t. the (already moved)
    weights, applied again with ``meta_optimizer``. Returns ``(meta_loss, meta_grads)``; mutates ``model``.
    (The seed also shuffles the task order; here tasks run in the given order.)

    What it computes: the outer tape cannot see through the in-place updates, so ``meta_grads`` is the mean of
    plain adversarial-training gradients, each at the weights the previous tasks left: sequential FGSM
    adversarial training plus a second, mis-scaled step. No adapted weights theta', no query set, no gradient
    through an adaptation (compare :func:`adversarial_maml_task_gradient`).
    """
    fgsm = check_attack(_attacks.FGSM(eps=eps), "FGSM")
    return _meta.seed_meta_train_step(model, task_x, task_y, optimizer=optimizer, meta_optimizer=meta_optimizer,
                                      perturb=lambda m, x, y: fgsm.generate(m, x, y))


def compare_seed_step(model: keras.Model, tasks: Tasks, *, inner_lr: float, eps: float) -> dict[str, np.ndarray]:
    """Flattened "meta-gradients" on one meta-batch, for comparison (the model is not changed).

    ``seed``: :func:`seed_meta_adversarial_step` (inner SGD at ``inner_lr``, on each task's support set, run on
    a copy of the model); ``sequential_fgsm_sgd``: the mean of FGSM adversarial-training gradients on the
    support sets taken one task after another from the weights the previous task left (what the seed's step
    really computes); ``adversarial_maml``: the corrected step, the second-order MAML gradient on FGSM-attacked
    support and query sets (:func:`adversarial_maml_task_gradient`, one inner step); ``maml``: plain MAML on
    the clean sets. All averaged over the tasks.
    """
    if not isinstance(tasks, Tasks):
        raise TypeError(f"tasks must be a tutorial_lib.tasks.Tasks, got {type(tasks).__name__}")
    fgsm = check_attack(_attacks.FGSM(eps=eps), "FGSM")
    check_data_range(fgsm, tasks.support_x, tasks.query_x, name="FGSM")
    dtype = model.trainable_variables[0].dtype
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    sx, sy = tf.constant(tasks.support_x, dtype), tf.constant(tasks.support_y, tf.int32)
    qx, qy = tf.constant(tasks.query_x, dtype), tf.constant(tasks.query_y, tf.int32)
    _, seed_grads = seed_meta_adversarial_step(clone, sx, sy, optimizer=keras.optimizers.SGD(inner_lr),
                                               meta_optimizer=keras.optimizers.SGD(0.0), eps=eps)
    params, seq = _meta.params_of(model), []
    for i in range(len(tasks)):
        x_adv = attack_adapted(fgsm, model, params, sx[i], sy[i])
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, _ = _meta.loss_and_accuracy(model, params, x_adv, sy[i])
        grads = tape.gradient(loss, params)
        seq.append(grads)
        params = [p - inner_lr * g for p, g in zip(params, grads)]
    out = {"seed": seed_grads, "sequential_fgsm_sgd": [tf.add_n(list(g)) / len(tasks) for g in zip(*seq)]}
    theta = _meta.params_of(model)
    per_task = {"adversarial_maml": [], "maml": []}
    for i in range(len(tasks)):
        per_task["adversarial_maml"].append(adversarial_maml_task_gradient(
            model, theta, sx[i], sy[i], qx[i], qy[i], attack=fgsm, steps=1, lr=inner_lr)[0])
        per_task["maml"].append(_meta.maml_task_gradient(model, theta, sx[i], sy[i], qx[i], qy[i], steps=1,
                                                         lr=inner_lr)[0])
    for name, grads in per_task.items():
        out[name] = [tf.add_n(list(g)) / len(tasks) for g in zip(*grads)]
    return {k: np.concatenate([np.ravel(np.asarray(g)) for g in v]) for k, v in out.items()}


def gradient_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened gradients."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------------------------------
# Robust evaluation of adapted learners
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobustEvaluation:
    """Per-task query accuracies (fractions in [0, 1]) of adapted models, clean and under attack.

    ``clean`` (tasks,): accuracy on the clean queries; ``robust`` (tasks,): fraction of queries classified
    correctly both clean and attacked (one attack run); ``robust_restarts`` (tasks,) or None: the same when an
    example counts as broken if ANY of ``restarts`` runs (different random starts) breaks it.
    """

    clean: np.ndarray
    robust: np.ndarray
    robust_restarts: np.ndarray | None
    restarts: int
    attack: str
    eps: float
    steps: int
    lr: float
    support: str

    def summary(self) -> dict[str, dict[str, float]]:
        """``{"clean": {"mean", "ci95"}, "robust": {...}, "robust_restarts<k>": {...}}`` (1.96 std / sqrt(n))."""
        out = {"clean": _evaluate.mean_ci95_record(self.clean), "robust": _evaluate.mean_ci95_record(self.robust)}
        if self.robust_restarts is not None:
            out[f"robust_restarts{self.restarts}"] = _evaluate.mean_ci95_record(self.robust_restarts)
        return out

    def __str__(self) -> str:
        parts = [f"{k} {100 * v['mean']:.1f} +- {100 * v['ci95']:.1f}%" for k, v in self.summary().items()]
        return f"{', '.join(parts)} ({len(self.clean)} tasks, {self.attack} at eps {self.eps:g}, {self.support} support)"


_EVAL_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def _lr_list(model: keras.Model, lr: float, head_only: bool) -> float | list[float]:
    """Per-parameter inner rates: the same everywhere, or 0 except for the last layer (kernel and bias)."""
    if not head_only:
        return float(lr)
    n = len(model.trainable_variables)
    return [0.0] * (n - 2) + [float(lr)] * 2


def _robust_fn(model: keras.Model, attack: _attacks.Attack, steps: int, lr: float, head_only: bool, support: str,
               support_attack: _attacks.Attack | None, scale_step: bool = False):
    """Compiled fn(params, sx, sy, qx, qy, eps, support_seed, query_seed) -> (clean ok, attacked ok), each
    bool (tasks, queries), cached per model and settings. ``scale_step``: the query attack's step size follows
    eps (:func:`scaled_step`), so one graph serves a sweep over eps."""
    key = (attack, steps, lr, head_only, support, support_attack, scale_step)
    per_model = _EVAL_CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    lrs = _lr_list(model, lr, head_only)
    model_ref = weakref.ref(model)

    def run(params, sx, sy, qx, qy, eps, support_seed, query_seed):
        m = model_ref()

        def one(task):
            sx_t, sy_t, qx_t, qy_t, i = task
            if support == "adversarial":
                sx_t = attack_support(support_attack, m, params, sx_t, sy_t, lr=lrs,
                                      seed=tf.random.experimental.stateless_fold_in(support_seed, i))
            adapted = [tf.stop_gradient(p) for p in
                       _meta.inner_loop(m, params, sx_t, sy_t, steps=steps, lr=lrs, first_order=True)]
            clean_ok = tf.equal(tf.argmax(_meta.forward(m, adapted, qx_t), -1, output_type=tf.int32), qy_t)
            qx_adv = attack_adapted(attack, m, adapted, qx_t, qy_t, eps=eps,
                                    seed=tf.random.experimental.stateless_fold_in(query_seed, i),
                                    step_size=scaled_step(attack, eps) if scale_step else None)
            adv_ok = tf.equal(tf.argmax(_meta.forward(m, adapted, qx_adv), -1, output_type=tf.int32), qy_t)
            return clean_ok, adv_ok

        index = tf.range(tf.shape(sx)[0])
        return tf.map_fn(one, (sx, sy, qx, qy, index), fn_output_signature=(tf.bool, tf.bool),
                         parallel_iterations=8)

    # A partial (not the closure itself) gives each compiled function its own key in TF's retracing detector, so
    # one graph per model and settings (the point of this cache) does not read as retracing.
    per_model[key] = tf.function(functools.partial(run), reduce_retracing=True)
    return per_model[key]


def _check_tasks(tasks: Any) -> Tasks:
    if not isinstance(tasks, Tasks):
        raise TypeError(f"tasks must be a tutorial_lib.tasks.Tasks (from FewShotSampler.sample), got {type(tasks).__name__}")
    if len(tasks) < 2:
        raise ValueError(f"robust evaluation needs at least 2 tasks for a confidence interval, got {len(tasks)}")
    return tasks


def _correct_masks(model, tasks: Tasks, *, params, steps, lr, attack, eps, restarts, support, support_attack,
                   head_only, seed, chunk, scale_step: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clean-correct mask (tasks, queries) and one attacked-correct mask per restart."""
    fn = _robust_fn(model, attack, int(steps), float(lr), bool(head_only), support, support_attack, scale_step)
    dtype = params[0].dtype
    eps_t = tf.constant(attack.eps if eps is None else eps, tf.float32)
    support_seed = tf.constant([seed, 2**31], tf.int64)
    clean, attacked = [], [[] for _ in range(restarts)]
    for start in range(0, len(tasks), chunk):
        t = tasks[start:start + chunk]
        args = (tf.constant(t.support_x, dtype), tf.constant(t.support_y, tf.int32), tf.constant(t.query_x, dtype),
                tf.constant(t.query_y, tf.int32))
        for r in range(restarts):
            ok, adv_ok = fn(params, *args, eps_t, support_seed, tf.constant([seed, r], tf.int64))
            if r == 0:
                clean.append(ok.numpy())
            attacked[r].append(adv_ok.numpy())
    return np.concatenate(clean), [np.concatenate(a) for a in attacked]


def robust_evaluate(model: keras.Model, tasks: Tasks, *, params: Sequence[Any] | None = None, steps: int, lr: float,
                    attack: _attacks.Attack, restarts: int = 1, support: str = "clean",
                    support_attack: _attacks.Attack | None = None, head_only: bool = False, seed: int = 0,
                    chunk: int = 50) -> RobustEvaluation:
    """Adapt to each task's support set, then attack its queries against the ADAPTED weights (white-box).

    ``model`` (or ``params``, default the model's weights) is the initialisation; each task adapts with
    ``steps`` SGD steps at ``lr`` (``meta.inner_loop``; ``head_only`` adapts only the last layer).
    ``support="adversarial"`` adapts on support images attacked with ``support_attack`` (default ``attack``)
    crafted against the weights after ONE clean adaptation step (:func:`support_surrogate`), i.e. MAML with
    adversarial fine-tuning at test time. The queries are attacked with ``attack`` against the adapted weights.
    ``restarts`` > 1 runs the attack that many times with different random starts and counts a query broken if
    ANY run breaks it (``robust_restarts``); ``robust`` is the first run alone. A query counts as robust only
    if it is also classified correctly clean. ``seed`` fixes the random starts. Returns a
    :class:`RobustEvaluation`; ``.summary()`` gives mean and 95% CI over tasks.
    """
    _meta.check_meta_model(model)
    tasks = _check_tasks(tasks)
    attack = check_attack(attack)
    if support not in SUPPORT_MODES:
        raise ValueError(f"support must be one of {SUPPORT_MODES}, got {support!r}")
    support_attack = None if support == "clean" else check_attack(attack if support_attack is None else support_attack,
                                                                  "support_attack")
    restarts = _check_count("restarts", restarts, 1)
    steps = _check_count("steps", steps)
    if restarts > 1 and not getattr(attack, "random_start", False):
        raise ValueError(f"restarts={restarts} needs an attack with random_start=True ({attack.name} starts at x "
                         "every time, so every run would find the same examples)")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0):
        raise ValueError(f"lr must be a number >= 0, got {lr!r}")
    check_data_range(attack, tasks.support_x, tasks.query_x)
    if support_attack is not None:
        check_data_range(support_attack, tasks.support_x, name="support_attack")
    params = _meta.params_of(model) if params is None else [tf.convert_to_tensor(p) for p in params]
    clean_ok, runs = _correct_masks(model, tasks, params=params, steps=steps, lr=lr, attack=attack, eps=None,
                                    restarts=restarts, support=support, support_attack=support_attack,
                                    head_only=head_only, seed=seed, chunk=chunk)
    robust = (clean_ok & runs[0]).mean(axis=1)
    robust_restarts = (clean_ok & np.logical_and.reduce(runs)).mean(axis=1) if restarts > 1 else None
    return RobustEvaluation(clean=clean_ok.mean(axis=1), robust=robust, robust_restarts=robust_restarts,
                            restarts=restarts, attack=attack.name, eps=float(attack.eps), steps=steps, lr=float(lr),
                            support=support)


# --------------------------------------------------------------------------------------------------
# Accuracy against eps, and gradient-masking checks on adapted models
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpsilonCurve:
    """Robust query accuracy of adapted models against eps: ``eps`` (m,), per-task ``per_task`` (tasks, m),
    ``mean`` and ``ci95`` (m,) over tasks, and the clean per-task accuracy ``clean`` (tasks,)."""

    eps: np.ndarray
    per_task: np.ndarray
    clean: np.ndarray
    attack: str

    @property
    def mean(self) -> np.ndarray:
        return self.per_task.mean(axis=0)

    @property
    def ci95(self) -> np.ndarray:
        return _evaluate.mean_ci95(self.per_task)[1]

    def to_dict(self) -> dict[str, list[float]]:
        return {"eps": self.eps.tolist(), "mean": self.mean.tolist(), "ci95": self.ci95.tolist()}


def epsilon_curve(model: keras.Model, tasks: Tasks, eps_values: Sequence[float], *, params: Sequence[Any] | None = None,
                  steps: int, lr: float, attack: _attacks.Attack, seed: int = 0, chunk: int = 50) -> EpsilonCurve:
    """Robust accuracy of the adapted models (as :func:`robust_evaluate`, clean support) for each eps in
    ``eps_values`` (>= 0; eps 0 gives the clean accuracy). The attack's step size scales with eps (PGD-20 at
    step 2.5 eps / 20 stays that at every eps); one compiled graph serves every eps."""
    _meta.check_meta_model(model)
    tasks = _check_tasks(tasks)
    attack = check_attack(attack)
    eps_values = np.asarray(eps_values, dtype=np.float64)
    if eps_values.ndim != 1 or not len(eps_values) or np.any(~np.isfinite(eps_values)) or np.any(eps_values < 0):
        raise ValueError(f"eps_values must be a non-empty list of numbers >= 0, got {eps_values.tolist()}")
    span = attack.clip_max - attack.clip_min
    if np.any(eps_values >= span):
        raise ValueError(f"eps_values must be smaller than the pixel range {span}, got {eps_values.tolist()}")
    check_data_range(attack, tasks.support_x, tasks.query_x)
    params = _meta.params_of(model) if params is None else [tf.convert_to_tensor(p) for p in params]
    columns, clean = [], None
    for e in eps_values:
        clean_ok, runs = _correct_masks(model, tasks, params=params, steps=_check_count("steps", steps), lr=lr,
                                        attack=attack, eps=float(e), restarts=1, support="clean", support_attack=None,
                                        head_only=False, seed=seed, chunk=chunk, scale_step=True)
        clean = clean_ok.mean(axis=1)
        columns.append(clean if e == 0 else (clean_ok & runs[0]).mean(axis=1))
    return EpsilonCurve(eps=eps_values, per_task=np.stack(columns, axis=1), clean=clean, attack=attack.name)


@dataclass(frozen=True)
class _SignNoise:
    """Random signs of size eps (a corner of the L-inf ball), clipped: the baseline an attack must beat.

    Not an attack (it ignores the model); it has ``.generate`` so the evaluation code path can apply it.
    """

    eps: float
    clip_min: float = 0.0
    clip_max: float = 1.0
    name: str = "noise"

    def generate(self, model, x, y, *, eps=None, seed=None):
        x = tf.convert_to_tensor(x)
        unit = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, dtype=x.dtype)
        eps = tf.cast(self.eps if eps is None else eps, x.dtype)
        return tf.clip_by_value(x + eps * tf.sign(unit), self.clip_min, self.clip_max)


_GRAD_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def _zero_gradient_fraction(model, tasks: Tasks, params, *, steps: int, lr: float, chunk: int) -> float:
    """Fraction of queries whose input gradient (CE at the adapted weights) is all zero."""
    per_model = _GRAD_CACHE.setdefault(model, {})
    key = (steps, lr)
    if key not in per_model:
        model_ref = weakref.ref(model)

        @tf.function(reduce_retracing=True)
        def run(params, sx, sy, qx, qy):
            m = model_ref()

            def one(task):
                sx_t, sy_t, qx_t, qy_t = task
                adapted = _meta.inner_loop(m, params, sx_t, sy_t, steps=steps, lr=lr, first_order=True)
                with tf.GradientTape() as tape:
                    tape.watch(qx_t)
                    logits = _meta.forward(m, [tf.stop_gradient(p) for p in adapted], qx_t)
                    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=qy_t, logits=logits)
                g = tape.gradient(loss, qx_t)
                return tf.reduce_all(tf.equal(tf.reshape(g, [tf.shape(g)[0], -1]), 0.0), axis=1)

            return tf.map_fn(one, (sx, sy, qx, qy), fn_output_signature=tf.bool, parallel_iterations=8)

        per_model[key] = run
    dtype = params[0].dtype
    zero = []
    for start in range(0, len(tasks), chunk):
        t = tasks[start:start + chunk]
        zero.append(per_model[key](params, tf.constant(t.support_x, dtype), tf.constant(t.support_y, tf.int32),
                                   tf.constant(t.query_x, dtype), tf.constant(t.query_y, tf.int32)).numpy())
    return float(np.concatenate(zero).mean())


def adapted_sanity_checks(model: keras.Model, tasks: Tasks, *, eps: float, steps: int, lr: float,
                          params: Sequence[Any] | None = None, attack_steps: int = 20, restarts: int = 5,
                          large_eps: float = 0.5, chance_margin: float = 0.1, restart_gain_limit: float = 0.03,
                          fgsm_margin: float = 0.01, zero_grad_limit: float = 0.01,
                          transfer_params: Sequence[Any] | None = None, seed: int = 0,
                          chunk: int = 50) -> _evaluate.SanityReport:
    """The gradient-masking checks of ``evaluate.sanity_checks``, applied to adapted models.

    Each task adapts from ``model`` (or ``params``) with ``steps`` SGD steps at ``lr`` on its clean support
    set; every attack targets the adapted weights. Checks (accuracies are means over tasks; a query counts
    only if also correct clean):

    * ``logits_not_probabilities``: adapted outputs are not rows of probabilities;
    * ``nonzero_gradients``: at most ``zero_grad_limit`` of the queries have an all-zero input gradient;
    * ``pgd_beats_fgsm``: PGD-``attack_steps`` (step 2.5 eps / steps, random start) <= FGSM + ``fgsm_margin``;
    * ``large_eps_breaks_model``: PGD at ``large_eps`` <= ``chance_margin``;
    * ``attack_beats_noise``: PGD below random sign noise of size eps;
    * ``restarts_change_little``: ``restarts`` restarts (broken if any breaks it) lower PGD accuracy by at most
      ``restart_gain_limit``;
    * ``transfer_weaker_than_white_box`` (only with ``transfer_params``, e.g. plain MAML's weights): queries
      attacked against the *other* initialisation adapted on the same support set hurt less than white-box PGD.

    Returns an ``evaluate.SanityReport`` (``numbers`` hold the accuracies as fractions).
    """
    _meta.check_meta_model(model)
    tasks = _check_tasks(tasks)
    if not (isinstance(eps, (int, float)) and 0 < eps < large_eps):
        raise ValueError(f"need 0 < eps < large_eps, got eps={eps!r}, large_eps={large_eps!r}")
    params = _meta.params_of(model) if params is None else [tf.convert_to_tensor(p) for p in params]
    pgd = _attacks.PGD(eps=float(eps), steps=attack_steps, step_size=2.5 * eps / attack_steps, random_start=True)
    common = dict(params=params, steps=steps, lr=lr, seed=seed, chunk=chunk)
    report = _evaluate.SanityReport(eps=float(eps))
    num = report.numbers

    adapted = _meta.inner_loop(model, params, tf.constant(tasks.support_x[0], params[0].dtype),
                               tf.constant(tasks.support_y[0], tf.int32), steps=steps, lr=lr, first_order=True)
    probs = _evaluate.looks_like_probabilities(_meta.forward(model, adapted, tf.constant(tasks.query_x[0], params[0].dtype)).numpy())
    report.checks.append(_evaluate.Check("logits_not_probabilities", "rows sum to 1" if probs else "unnormalised logits",
                                         not probs, "the model returns a softmax: losses saturate and gradients vanish"))
    zero = _zero_gradient_fraction(model, tasks, params, steps=steps, lr=float(lr), chunk=chunk)
    num["zero_gradient_fraction"] = zero
    report.checks.append(_evaluate.Check("nonzero_gradients", f"{100 * zero:.1f}% of queries have an all-zero gradient",
                                         zero <= zero_grad_limit, "gradient attacks have nothing to follow (masking)"))
    main = robust_evaluate(model, tasks, attack=pgd, restarts=restarts, **common)
    num["clean"] = float(main.clean.mean())
    num["pgd"] = float(main.robust.mean())
    num["pgd_restarts"] = float(main.robust_restarts.mean()) if restarts > 1 else num["pgd"]
    num["fgsm"] = float(robust_evaluate(model, tasks, attack=_attacks.FGSM(eps=float(eps)), **common).robust.mean())
    big = dataclasses.replace(pgd, eps=float(large_eps), step_size=2.5 * large_eps / attack_steps)
    num["pgd_large_eps"] = float(robust_evaluate(model, tasks, attack=big, **common).robust.mean())
    clean_ok, noisy = _correct_masks(model, tasks, attack=_SignNoise(float(eps), pgd.clip_min, pgd.clip_max), eps=None,
                                     restarts=1, support="clean", support_attack=None, head_only=False, **common)
    num["noise"] = float((clean_ok & noisy[0]).mean(axis=1).mean())
    pct = lambda a: f"{100 * a:.1f}%"  # noqa: E731
    report.checks += [
        _evaluate.Check("pgd_beats_fgsm", f"PGD {pct(num['pgd'])} vs FGSM {pct(num['fgsm'])}",
                        num["pgd"] <= num["fgsm"] + fgsm_margin + 1e-9,
                        "the iterative attack is stuck (masked or broken gradients)"),
        _evaluate.Check("large_eps_breaks_model", f"PGD at eps {large_eps:g}: {pct(num['pgd_large_eps'])}",
                        num["pgd_large_eps"] <= chance_margin + 1e-9,
                        "the attack cannot succeed even when it could erase the digit"),
        _evaluate.Check("attack_beats_noise", f"PGD {pct(num['pgd'])} vs random noise {pct(num['noise'])}",
                        num["pgd"] < num["noise"], "the gradient is no better a direction than a random one"),
        _evaluate.Check("restarts_change_little",
                        f"1 restart {pct(num['pgd'])} vs {restarts} restarts {pct(num['pgd_restarts'])}",
                        num["pgd"] - num["pgd_restarts"] <= restart_gain_limit + 1e-9,
                        "single-run numbers depend on luck: report restarts"),
    ]
    if transfer_params is not None:
        num["transfer"] = transfer_accuracy(model, tasks, [tf.convert_to_tensor(p) for p in transfer_params],
                                            attack=pgd, **common)
        report.checks.append(_evaluate.Check(
            "transfer_weaker_than_white_box", f"transfer {pct(num['transfer'])} vs white-box PGD {pct(num['pgd'])}",
            num["transfer"] >= num["pgd"], "an attack on another model beats the attack on this one: its gradients mislead"))
    return report


def transfer_accuracy(model: keras.Model, tasks: Tasks, source_params: Sequence[Any], *,
                      params: Sequence[Any] | None = None, steps: int, lr: float, attack: _attacks.Attack,
                      seed: int = 0, chunk: int = 50) -> float:
    """Robust query accuracy of the adapted ``model`` (or ``params``) when each task's queries are attacked
    against ANOTHER initialisation, ``source_params``, adapted on the same support set (a transfer attack).
    Mean over tasks; a query counts only if also correct clean."""
    _meta.check_meta_model(model)
    tasks = _check_tasks(tasks)
    attack = check_attack(attack)
    params = _meta.params_of(model) if params is None else [tf.convert_to_tensor(p) for p in params]
    source = [tf.convert_to_tensor(p, params[0].dtype) for p in source_params]
    if [tuple(p.shape) for p in source] != [tuple(p.shape) for p in params]:
        raise ValueError("source_params must have the shapes of the model's weights (the same architecture)")

    @tf.function(reduce_retracing=True)
    def run(params, source, sx, sy, qx, qy, query_seed):
        def one(task):
            sx_t, sy_t, qx_t, qy_t, i = task
            adapted = _meta.inner_loop(model, params, sx_t, sy_t, steps=steps, lr=lr, first_order=True)
            adapted_source = _meta.inner_loop(model, source, sx_t, sy_t, steps=steps, lr=lr, first_order=True)
            qx_adv = attack_adapted(attack, model, adapted_source, qx_t, qy_t,
                                    seed=tf.random.experimental.stateless_fold_in(query_seed, i))
            ok = [tf.equal(tf.argmax(_meta.forward(model, adapted, q), -1, output_type=tf.int32), qy_t)
                  for q in (qx_t, qx_adv)]
            return tf.reduce_mean(tf.cast(ok[0] & ok[1], tf.float32))

        return tf.map_fn(one, (sx, sy, qx, qy, tf.range(tf.shape(sx)[0])), fn_output_signature=tf.float32)

    dtype = params[0].dtype
    accs = []
    for start in range(0, len(tasks), chunk):
        t = tasks[start:start + chunk]
        accs.append(run(params, source, tf.constant(t.support_x, dtype), tf.constant(t.support_y, tf.int32),
                        tf.constant(t.query_x, dtype), tf.constant(t.query_y, tf.int32),
                        tf.constant([seed, 0], tf.int64)).numpy())
    return float(np.concatenate(accs).mean())
