"""Meta-adversarial training: meta-learn an initialisation whose *adapted* models resist attacks.

Built on :mod:`tutorial_lib.meta` (its inner loop, forward pass and ``MetaLearner``) and the attack specs of
:mod:`tutorial_lib.attacks` (run through ``.generate`` against a model evaluated at adapted weights). Holds
Adversarial Querying (AQ, with an eps ramp, a clean-query mix and a TRADES outer loss), AQ with an attack pool
(``PoolQuerying``), ADML, this project's ``AttackAdaptiveMAML`` (adaptation practised on support sets attacked by
an attack drawn per task, learned per-step rates) and the article's adversarial meta-step as written and corrected. Evaluating adapted learners
(``robust_evaluate``, ``epsilon_curve``, masking checks) is :mod:`tutorial_lib.adaptation`'s; the names notebook 05
calls here are re-exported from there.
Introduced in notebooks/05_meta_adversarial.ipynb.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import adaptation as _adaptation
from . import attacks as _attacks
from . import meta as _meta
from . import training as _training
from .adaptation import (adapted_logits_fn, attack_adapted, attack_support, check_attack, check_data_range,
                         epsilon_curve, robust_evaluate, scaled_step, support_surrogate)
from .checks import check_count, check_number, check_positive_int
from .compiled import use_xla
from .tasks import FewShotSampler, Tasks

__all__ = ["LEARNERS", "OUTER_LOSSES", "SPATIAL_SUPPORTS", "default_attack", "query_loss", "aq_task_gradient", "adml_task_gradient",
           "adversarial_maml_task_gradient", "grid_support", "attacked_support_inner_loop", "attack_adaptive_task_gradient",
           "AdversarialMetaLearner", "AdversarialQuerying", "PoolQuerying", "ADML", "AdversarialMAML",
           "AttackAdaptiveMAML", "make_learner", "article_adversarial_meta_step", "compare_article_step", "gradient_cosine",
           # attacks on adapted weights and the evaluation of adapted learners, from tutorial_lib.adaptation
           "adapted_logits_fn", "attack_adapted", "attack_support", "check_attack", "check_data_range",
           "epsilon_curve", "robust_evaluate", "scaled_step", "support_surrogate"]

LEARNERS = ("maml", "aq", "aq_trades", "adml", "seed_fgsm", "attack_adaptive")
OUTER_LOSSES = ("ce", "trades")
#: How :class:`AttackAdaptiveMAML` builds the attacked support copies of a spatial pool: re-crafted (the worst grid
#: point per image against the current inner weights) or every grid transform of every image.
SPATIAL_SUPPORTS = ("recraft", "grid")


def default_attack(eps: float = 0.1) -> _attacks.PGD:
    """The training attack of Adversarial Querying: PGD-3, step 2.5 eps / 3, random start."""
    return _attacks.PGD(eps=eps, steps=3, step_size=2.5 * eps / 3, random_start=True)


# --------------------------------------------------------------------------------------------------
# Validation (the attack checks are adaptation.check_attack / check_data_range, re-exported here)
# --------------------------------------------------------------------------------------------------
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
        kl = _training.kl_divergence(tf.nn.softmax(clean_logits), adv_logits)
        return ce + trades_beta * tf.reduce_mean(kl), adv_acc
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
    """One task's meta-gradient of MAML on attacked support AND query sets (the article's idea done right).

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


def grid_support(spec: _attacks.Spatial, support_x, support_y, *, scale: Any = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Every transform of a spatial spec's grid applied to every support image, for a defender who knows the family.

    Returns images (G * n, H, W, C), grid point major (the n images under the first grid point, then the next...),
    and the labels tiled (G * n,), G = ``spec.grid_points``. ``scale`` (float or scalar tensor, e.g. a ramp)
    multiplies the spec's own ``scale``, as ``AttackPool.generate`` does. The transforms do not depend on any
    weights, so they are computed once per task, not at every inner step; gradient stopped.
    """
    x = tf.convert_to_tensor(support_x)
    y = tf.convert_to_tensor(support_y)
    factor = spec.scale if scale is None else spec.scale * tf.cast(scale, tf.float64)
    points = tf.constant(spec.grid, tf.float64) * factor
    n = tf.shape(x)[0]
    angle, dx, dy = (tf.repeat(points[:, i], n) for i in range(3))
    images = _attacks.spatial_transform(tf.tile(x, [spec.grid_points, 1, 1, 1]), angle, dx, dy,
                                        interpolation=spec.interpolation, fill_value=spec.clip_min)
    return tf.stop_gradient(images), tf.tile(y, [spec.grid_points])


def attacked_support_inner_loop(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, *,
                                attack: Any, rates: Sequence[tf.Tensor], steps: int, eps: Any = None,
                                step_size: Any = None, seed: Any = None, first_order: bool = False,
                                support_copies: tuple[Any, Any] | None = None) -> list[tf.Tensor]:
    """``steps`` inner steps on the support set together with its copy attacked against the CURRENT inner weights.

    Step ``t`` crafts ``support_adv = attack(support_x)`` against the weights after ``t`` steps (gradient stopped
    at the attack, as in :func:`attack_adapted`; random starts from ``stateless_fold_in(seed, t)``), then steps
    ``p - rates[i][t] * grad`` on ``0.5 * (CE(support) + CE(support_adv))``: the mean loss over the clean and
    attacked images together, written so that an attack that changes nothing (eps = 0) gives exactly the clean
    loss and :func:`meta.learned_rate_inner_loop`'s steps. ``attack=None``: the clean support alone.
    ``support_copies``: fixed ``(images, labels)`` used in place of the attacked copy at every step (e.g.
    :func:`grid_support`; ``attack`` is then not run). ``rates``: a rate schedule (shapes of
    :func:`meta.step_rates`); second order unless ``first_order``. Returns the adapted parameters.
    """
    params = list(params)
    for t in range(int(steps)):
        if attack is None and support_copies is None:
            params = _meta.inner_loop(model, params, support_x, support_y, steps=1, lr=_meta.step_rates(rates, t),
                                      first_order=first_order)
            continue
        if support_copies is None:
            copies_x = attack_adapted(attack, model, params, support_x, support_y, eps=eps, seed=_fold(seed, t),
                                      step_size=step_size)
            copies_y = support_y
        else:
            copies_x, copies_y = support_copies
        with tf.GradientTape() as tape:
            tape.watch(params)
            clean, _ = _meta.loss_and_accuracy(model, params, support_x, support_y)
            attacked, _ = _meta.loss_and_accuracy(model, params, copies_x, copies_y)
            loss = 0.5 * (clean + attacked)
        grads = tape.gradient(loss, params)
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        params = [p - a * g for p, a, g in zip(params, _meta.step_rates(rates, t), grads)]
    return params


def attack_adaptive_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], rates: Sequence[tf.Tensor],
                                  support_x, support_y, query_x, query_y, *, attack: Any, steps: int, eps: Any = None,
                                  step_size: Any = None, seed: Any = None, clean_weight: float = 0.0,
                                  first_order: bool = False, zero_head: bool = False,
                                  support_copies: tuple[Any, Any] | None = None,
                                  ) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's meta-gradient of :class:`AttackAdaptiveMAML`, w.r.t. the initialisation and the inner rates.

    theta' = :func:`attacked_support_inner_loop` (clean support + support attacked against the current inner
    weights at every step, learned rates); the queries are attacked by the same ``attack`` against theta'; the
    outer loss is :func:`query_loss` (``(1 - clean_weight) * CE(attacked queries) + clean_weight * CE(clean
    queries)``), differentiated through the inner steps (second order unless ``first_order``) and never through
    the attacks. Seeds: the support attack of step ``t`` folds ``t`` into ``fold(seed, 0)``, the query attack
    uses ``fold(seed, 1)``. ``support_copies``: fixed images in place of the re-crafted support copies (see
    :func:`attacked_support_inner_loop`). Returns ``(grads, outer loss, accuracy on the attacked queries)`` with
    ``grads`` for ``params`` followed by ``rates`` (as :func:`meta.learned_rate_task_gradient`).
    """
    params = [tf.identity(p) for p in params]
    rates = [tf.identity(r) for r in rates]
    with tf.GradientTape() as tape:
        tape.watch(params + rates)
        adapted = attacked_support_inner_loop(model, _start(params, zero_head), support_x, support_y, attack=attack,
                                              rates=rates, steps=steps, eps=eps, step_size=step_size,
                                              seed=_fold(seed, 0), first_order=first_order,
                                              support_copies=support_copies)
        query_adv = attack_adapted(attack, model, adapted, query_x, query_y, eps=eps, seed=_fold(seed, 1),
                                   step_size=step_size)
        loss, acc = query_loss(model, adapted, query_x, query_adv, query_y, clean_weight=clean_weight)
    return _grads_or_zeros(tape.gradient(loss, params + rates), params + rates), loss, acc


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
        self.ramp_steps = check_count("ramp_steps", ramp_steps)
        self.first_order = bool(first_order)
        self.zero_head = bool(zero_head)
        self.seed = check_count("seed", seed)
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
        me = weakref.proxy(self)  # the cache holds its owner weakly: the function must not keep the learner alive
        variables = self.meta_variables
        strategy = self.strategy
        replicas = strategy.num_replicas_in_sync

        def replica_step(sx, sy, qx, qy, eps, seed):
            total = int(sx.shape[0])
            local = total // replicas
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            mine = [tf.gather(tf.reshape(t, [replicas, local, *t.shape[1:]]), rid) for t in (sx, sy, qx, qy)]
            index = tf.range(local) + tf.cast(rid, tf.int32) * local
            params = [tf.convert_to_tensor(v) for v in me.model.trainable_variables]

            def body(task):
                *data, i = task
                return me._task_gradient(params, *data, eps=eps, seed=tf.random.experimental.stateless_fold_in(seed, i))

            dtype = variables[0].dtype
            signature = ([tf.TensorSpec(v.shape, v.dtype) for v in variables], tf.TensorSpec([], dtype),
                         tf.TensorSpec([], dtype))
            grads, losses, accs = tf.map_fn(body, (*mine, index), fn_output_signature=signature,
                                            parallel_iterations=local)
            grads = [tf.reduce_sum(g, axis=0) / total for g in grads]
            me.meta_optimizer.apply_gradients(zip(grads, variables))  # all-reduces (sums) across replicas
            return tf.reduce_sum(losses) / total, tf.reduce_sum(accs) / total

        @tf.function(reduce_retracing=True, jit_compile=use_xla())
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
        self._check_data(tasks)
        dtype = self.model.trainable_variables[0].dtype
        eps = tf.constant(self.eps_at(self.steps_done), tf.float32)
        seed = tf.constant([self.seed, self.steps_done], tf.int64)
        with self.strategy.scope():
            loss, acc = self._step_fn(tf.constant(tasks.support_x, dtype), tf.constant(tasks.support_y, tf.int32),
                                      tf.constant(tasks.query_x, dtype), tf.constant(tasks.query_y, tf.int32), eps, seed)
        self.steps_done += 1
        return float(loss), float(acc)

    def _check_data(self, tasks: Tasks) -> None:
        """Raise unless the tasks' images suit the training attack (its pixel range and radius)."""
        check_data_range(self.attack, tasks.support_x, tasks.query_x)

    def _full_budget(self) -> str:
        """What the ramp grows to, for messages."""
        return f"eps would never reach {self.attack.eps}"

    def meta_fit(self, sampler: FewShotSampler, meta_steps: int, meta_batch: int = 4, *, verbose: int = 1,
                 log_every: int | None = None) -> _meta.MetaHistory:
        """As ``meta.MetaLearner.meta_fit``; refuses an eps ramp longer than the meta-training it is part of."""
        if isinstance(meta_steps, int) and not isinstance(meta_steps, bool) and \
                self.ramp_steps > self.steps_done + meta_steps:
            raise ValueError(f"ramp_steps = {self.ramp_steps} is longer than meta-training ({self.steps_done} steps done "
                             f"+ {meta_steps} now): {self._full_budget()}. Use ramp_steps <= "
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
    It adapts on the clean support set only; :class:`AttackAdaptiveMAML` (notebook 06) also practises adapting on
    attacked support images.
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
    """MAML with attacked support and query sets (default FGSM at eps 0.1): what the article's adversarial
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


def _check_pool(pool: Any) -> _attacks.AttackPool:
    """``pool`` as an AttackPool (a single spec becomes a pool of one) whose every spec passes :func:`check_attack`."""
    if isinstance(pool, _attacks.Attack):
        pool = _attacks.AttackPool([pool])
    if not isinstance(pool, _attacks.AttackPool):
        raise TypeError(f"pool must be a tutorial_lib.attacks.AttackPool or one attack spec, got {type(pool).__name__}")
    for i, spec in enumerate(pool):
        check_attack(spec, f"pool[{i}]")
    return pool


def _check_spatial_support(spatial_support: Any, pool: _attacks.AttackPool) -> str:
    if spatial_support not in SPATIAL_SUPPORTS:
        raise ValueError(f"spatial_support must be one of {SPATIAL_SUPPORTS}, got {spatial_support!r}")
    if spatial_support == "grid":
        if any(spec.family != "spatial" for spec in pool):
            raise ValueError(f"spatial_support='grid' adds every grid transform of the support images, so it needs a "
                             f"pool of spatial specs only; this pool holds {list(pool.families)} (use 'recraft')")
        if len({spec.grid_points for spec in pool}) > 1:
            raise ValueError("spatial_support='grid' needs the pool's spatial specs to share one grid size "
                             f"(angle_steps x shift_steps**2), got {[spec.grid_points for spec in pool]}")
    return spatial_support


class AttackAdaptiveMAML(_meta.LearnedRates, AdversarialMetaLearner):
    """This project's meta-adversarial learner: MAML that practises adapting to an attack.

    Each meta-training task draws an attack (family and spec) from ``pool`` (an
    :class:`~tutorial_lib.attacks.AttackPool`, or one spec). The inner loop adapts on the task's support set
    together with that support attacked by the drawn attack, re-crafted against the current inner weights at
    every one of the ``inner_steps`` steps (:func:`attacked_support_inner_loop`); the outer loss is taken on the
    queries attacked by the same attack against the adapted weights, plus Adversarial Querying's clean-query
    share ``clean_weight`` (:func:`attack_adaptive_task_gradient`). The inner rates are MAML++'s per-layer
    per-step rates (``meta.LSLR``), meta-learned with the initialisation; adaptation and evaluation use the
    same ``inner_steps`` and the learned rates (:meth:`adapt`, :meth:`adapt_and_evaluate`). The attacks are
    treated as constants w.r.t. the weights (gradient stopped, as in AQ); the gradient is second order through
    the inner steps unless ``first_order``.

    It builds on Adversarial Querying (Goldblum, Fowl and Goldstein, "Adversarially Robust Few-Shot Learning: A
    Meta-Learning Approach", NeurIPS 2020: attacked queries against the adapted weights) and ADML (Yin et al.,
    "Adversarial Meta-Learning", 2018: adaptation on attacked support images); combining them with a per-task
    attack pool, re-crafting at every inner step and learned per-step rates is this project's choice, not a
    published method. ``ramp_steps`` grows a scale 0 -> 1 of the drawn spec's budget (eps and step size; a
    spatial grid's angles and shifts) over the first meta-steps, starting at 0 as AQ's ramp does (the first
    step is then exactly ``meta.LSLR``'s on the clean support). With ``zero_head`` the first inner step's
    attack sees logits that ignore the image (no gradient to follow), so only later steps are attacked.
    ``spatial_support="grid"`` (a pool of spatial specs only, sharing a grid size): the defender who knows the
    family adds every grid transform of each support image (:func:`grid_support`, computed once per task)
    instead of re-crafting the worst one at every step. Defaults: PGD-3 at eps 0.1 (AQ's training attack), 3
    inner steps (3 to 5 recommended) with rates starting at 0.3, Adam(meta_lr). The rates are saved beside the
    model with :meth:`save_rates` (``.npz``, no pickle).
    """

    method = "attack_adaptive"

    def __init__(self, model: keras.Model, *, pool: _attacks.AttackPool | _attacks.Attack | None = None,
                 inner_lr: float = 0.3, inner_steps: int = 3, clean_weight: float = 0.0, ramp_steps: int = 0,
                 spatial_support: str = "recraft", first_order: bool = False, zero_head: bool = False,
                 optimizer: keras.optimizers.Optimizer | None = None,
                 meta_optimizer: keras.optimizers.Optimizer | None = None, meta_lr: float = 1e-3,
                 strategy: Any = None, seed: int = 0) -> None:
        self.pool = _check_pool(default_attack() if pool is None else pool)
        self.spatial_support = _check_spatial_support(spatial_support, self.pool)
        self.clean_weight = _check_fraction("clean_weight", clean_weight)
        _meta.check_meta_model(model)
        inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_inclusive=False)
        inner_steps = check_positive_int("inner_steps", inner_steps)
        with (strategy if strategy is not None else tf.distribute.get_strategy()).scope():
            self.rates = self.make_rates(model, [(inner_steps,)] * len(model.trainable_variables), inner_lr)
        # the base class keeps one spec for its checks; the attacks come from the pool
        super().__init__(model, attack=self.pool[0], inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order,
                         zero_head=zero_head, ramp_steps=ramp_steps, optimizer=optimizer,
                         meta_optimizer=meta_optimizer, meta_lr=meta_lr, strategy=strategy, seed=seed)
        self.method = type(self).method + ("_fo" if self.first_order else "")

    def __repr__(self) -> str:
        grid = ", spatial_support='grid'" if self.spatial_support == "grid" else ""
        return (f"AttackAdaptiveMAML({self.model.name}, pool={self.pool!r}, inner_steps={self.inner_steps}, "
                f"clean_weight={self.clean_weight}, ramp_steps={self.ramp_steps}{grid})")

    # ---- the budget schedule and the data checks ---------------------------------------------------
    def eps_at(self, step: int) -> float:
        """The budget scale at meta-step ``step`` (0-based): ``min(1, step / ramp_steps)`` (1 without a ramp)."""
        return 1.0 if self.ramp_steps == 0 else min(1.0, step / self.ramp_steps)

    def _full_budget(self) -> str:
        return "the pool's attacks would never reach their full budget"

    def _check_data(self, tasks: Tasks) -> None:
        for i, spec in enumerate(self.pool):
            check_data_range(spec, tasks.support_x, tasks.query_x, name=f"pool[{i}]")

    # ---- one task ---------------------------------------------------------------------------------
    def _task_gradient(self, params, sx, sy, qx, qy, *, eps, seed):
        index = self.pool.draw(tf.random.experimental.stateless_fold_in(seed, 99))
        copies = self._grid_copies(sx, sy, index, eps) if self.spatial_support == "grid" else None
        return attack_adaptive_task_gradient(self.model, params, self.rate_schedule(), sx, sy, qx, qy,
                                             attack=_DrawnAttack(self.pool, index, eps), steps=self.inner_steps,
                                             seed=seed, clean_weight=self.clean_weight, first_order=self.first_order,
                                             zero_head=self.zero_head, support_copies=copies)

    def _grid_copies(self, sx, sy, index, scale):
        """:func:`grid_support` of the drawn spatial spec (``tf.switch_case`` over the pool's specs)."""
        if len(self.pool) == 1:
            return grid_support(self.pool[0], sx, sy, scale=scale)
        return tf.switch_case(index, [lambda spec=spec: grid_support(spec, sx, sy, scale=scale) for spec in self.pool])

    # ---- adaptation and evaluation: the learned rates, inner_steps steps --------------------------
    def adapt(self, support_x, support_y, *, attack: _attacks.Attack | None = None, seed: int = 0) -> list[tf.Tensor]:
        """Adapted parameters for one task: ``inner_steps`` steps with the learned rates on the support set, together
        with its copy attacked by ``attack`` re-crafted before every step (clean support alone when None).

        With ``spatial_support="grid"`` and a spatial ``attack``, every grid transform of each image instead
        (:func:`grid_support`). ``support_x``: float (n, H, W, C) in the attack's pixel range; ``support_y``: int
        (n,). ``seed`` fixes a random start as :func:`tutorial_lib.adaptation.adapt_and_evaluate` does for the
        first task of a batch with the same seed. Returns tensors in ``model.trainable_variables`` order; the
        model is unchanged.
        """
        dtype = self.model.trainable_variables[0].dtype
        sx = tf.convert_to_tensor(support_x, dtype)
        sy = tf.convert_to_tensor(support_y, tf.int32)
        if sx.shape.rank != len(self.model.input_shape) or sy.shape.rank != 1 or sx.shape[0] != sy.shape[0]:
            raise ValueError(f"adapt takes one task: support_x (n, *image) and support_y (n,), got {sx.shape}, "
                             f"{sy.shape}")
        copies = None
        if attack is not None:
            check_data_range(check_attack(attack), np.asarray(sx), name="attack")
            if self.spatial_support == "grid" and attack.family == "spatial":
                copies = grid_support(attack, sx, sy)
        task_seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(tf.constant([check_count("seed", seed), 0], tf.int64), 0), 0)
        return attacked_support_inner_loop(self.model, _meta.params_of(self.model), sx, sy, attack=attack,
                                           rates=self.rate_schedule(), steps=self.inner_steps, seed=task_seed,
                                           first_order=True, support_copies=copies)

    def evaluation_options(self, support_attack: _attacks.Attack | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`tutorial_lib.adaptation.adapt_and_evaluate` that adapt as this learner
        does: its learned rates (``lr=None``) and, with ``support_attack``, the clean + attacked support set
        re-crafted before every step. The step count is the caller's ``checkpoints``; the rates were learned for
        ``inner_steps`` steps (:meth:`adapt_and_evaluate` holds to that)."""
        options: dict[str, Any] = {"lr": None, "rates": self.rate_schedule()}
        if support_attack is not None:
            options.update(support="clean+attacked", support_attack=check_attack(support_attack, "support_attack"),
                           recraft=True)
        return options

    def adapt_and_evaluate(self, tasks: Tasks, *, support_attack: _attacks.Attack | None = None,
                           query_attacks: Sequence[_attacks.Attack] = (), checkpoints: Sequence[int] | None = None,
                           restarts: int = 1, seed: int = 0, chunk: int = 50) -> _adaptation.AdaptationResult:
        """:func:`tutorial_lib.adaptation.adapt_and_evaluate` with this learner's adaptation: ``inner_steps`` steps
        (the last checkpoint; default ``checkpoints=(inner_steps,)``) at the learned rates, on the clean support
        plus its copy attacked by ``support_attack`` re-crafted before every step (clean support alone when
        None); ``query_attacks`` against the adapted weights. Returns an ``AdaptationResult``."""
        if self.spatial_support == "grid" and getattr(support_attack, "family", None) == "spatial":
            raise ValueError("the evaluator re-crafts the support copies; it has no grid mode. Adapt this "
                             "spatial_support='grid' learner task by task with adapt(), or evaluate it with "
                             "re-crafted copies through adaptation.adapt_and_evaluate(**evaluation_options(...))")
        checkpoints = (self.inner_steps,) if checkpoints is None else tuple(checkpoints)
        if not checkpoints or checkpoints[-1] != self.inner_steps:
            raise ValueError(f"this learner adapts with inner_steps = {self.inner_steps} steps (its rates were learned "
                             f"for them), so the last checkpoint must be {self.inner_steps}; got {checkpoints}")
        return _adaptation.adapt_and_evaluate(self.model, tasks, checkpoints=checkpoints, query_attacks=query_attacks,
                                              restarts=restarts, seed=seed, chunk=chunk,
                                              **self.evaluation_options(support_attack))

    def meta_evaluate(self, sampler: FewShotSampler, tasks: int = 200, *, steps: int | None = None,
                      lr: float | None = None, seed: int = 0) -> _meta.Evaluation:
        """Clean query accuracy after adapting on the clean support sets with the learned rates for ``inner_steps``
        steps (as ``meta.LSLR.meta_evaluate``); other step counts or a fixed ``lr`` are refused."""
        if (steps is not None and steps != self.inner_steps) or lr is not None:
            raise ValueError(f"this learner adapts with its learned rates for inner_steps = {self.inner_steps} steps; "
                             "do not pass steps= or lr=")
        return _meta.evaluate_adaptation(self.model, sampler.sample(tasks, seed=seed), steps=self.inner_steps, lr=None,
                                         rates=self.rate_schedule())


def make_learner(method: str, model: keras.Model, **options) -> _meta.MetaLearner:
    """A learner by name: ``"maml"`` (``meta.MAML``), ``"aq"``, ``"aq_trades"`` (AQ with the TRADES outer loss),
    ``"adml"``, ``"seed_fgsm"`` (:class:`AdversarialMAML`), ``"attack_adaptive"`` (:class:`AttackAdaptiveMAML`), with
    ``options`` passed on."""
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
    if method == "attack_adaptive":
        return AttackAdaptiveMAML(model, **options)
    raise ValueError(f"method must be one of {LEARNERS}, got {method!r}")


# --------------------------------------------------------------------------------------------------
# The article's adversarial step, as written (for teaching; do not train with it) and measured
# --------------------------------------------------------------------------------------------------
def article_adversarial_meta_step(model: keras.Model, task_x, task_y, *, optimizer: keras.optimizers.Optimizer,
                               meta_optimizer: keras.optimizers.Optimizer,
                               eps: float) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """The article's ``meta_train_step`` with its FGSM, made to run on real task tensors (logits model).

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
    return _meta.article_meta_step(model, task_x, task_y, optimizer=optimizer, meta_optimizer=meta_optimizer,
                                      perturb=lambda m, x, y: fgsm.generate(m, x, y))


def compare_article_step(model: keras.Model, tasks: Tasks, *, inner_lr: float, eps: float) -> dict[str, np.ndarray]:
    """Flattened "meta-gradients" on one meta-batch, for comparison (the model is not changed).

    ``seed``: :func:`article_adversarial_meta_step` (inner SGD at ``inner_lr``, on each task's support set, run on
    a copy of the model); ``sequential_fgsm_sgd``: the mean of FGSM adversarial-training gradients on the
    support sets taken one task after another from the weights the previous task left (what the article's step
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
    _, article_grads = article_adversarial_meta_step(clone, sx, sy, optimizer=keras.optimizers.SGD(inner_lr),
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
    out = {"article": article_grads, "sequential_fgsm_sgd": [tf.add_n(list(g)) / len(tasks) for g in zip(*seq)]}
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
