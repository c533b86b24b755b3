"""Meta-learning done right: MAML (true second order), first-order MAML and Reptile, and evaluation by adaptation.
Meta-SGD and MAML++'s per-layer per-step rates (learned inner learning rates) build on the same inner loop.

The learner wraps a Keras model the user keeps (as in learn2learn): the inner loop is functional over the
model's parameter list (``model.stateless_call``), never mutating the model; the meta-gradient of a whole
meta-batch of tasks (from :mod:`tutorial_lib.tasks`) is computed in one compiled ``tf.function``. The seed
article's step is kept for comparison. Notebook 04's settings, caching, baselines and tables are in
:mod:`tutorial_lib.experiments.meta_learning`. Introduced in notebooks/04_meta_learning.ipynb.
"""

from __future__ import annotations

import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import models as _models
from .checks import check_count, check_number, check_positive_int
from .compiled import compiled, use_xla
from .evaluate import mean_ci95
from .tasks import FewShotSampler, Tasks

#: The learners :func:`make_learner` builds.
LEARNERS = ("maml", "fomaml", "reptile")
#: Learners with meta-learned inner learning rates (:class:`MetaSGD`, :class:`LSLR`); :func:`make_learner` builds them too.
LEARNED_RATE_LEARNERS = ("metasgd", "lslr")


# --------------------------------------------------------------------------------------------------
# Functional pieces: loss for a parameter list, the inner loop, one task's meta-gradient
# --------------------------------------------------------------------------------------------------
def check_meta_model(model: Any) -> None:
    """Raise unless ``model`` is a built Keras model returning logits with no non-trainable state.

    Batch norm keeps moving averages and dropout keeps a random-generator state in non-trainable variables;
    a functional inner loop would have to thread them through every adapted copy of the weights, and batch
    statistics computed on a 5-image support set make predictions depend on the batch. We refuse them.
    """
    _models.check_logits_model(model)
    if not model.built or not model.trainable_variables:
        raise ValueError(f"model {model.name!r} has no weights yet; build it (give it a keras.Input) first")
    if model.non_trainable_variables:
        names = sorted({v.path.split("/")[0] for v in model.non_trainable_variables})
        raise ValueError(
            f"model {model.name!r} has non-trainable state in layers {names} (batch norm statistics, dropout "
            "seeds or frozen weights). The meta-learners here adapt every weight functionally and do not carry "
            "such state through the inner loop. Fix: remove BatchNormalization/Dropout (use "
            "LayerNormalization or GroupNormalization, which have no running statistics) and unfreeze layers."
        )


def params_of(model: keras.Model) -> list[tf.Tensor]:
    """The model's trainable weights as a list of tensors (a snapshot, in ``model.trainable_variables`` order)."""
    return [tf.convert_to_tensor(v) for v in model.trainable_variables]


def resolve_params(model: keras.Model, params: Sequence[Any] | None = None) -> list[tf.Tensor]:
    """``params`` as a list of float tensors, or the model's own weights (:func:`params_of`) when None."""
    return params_of(model) if params is None else [tf.convert_to_tensor(p) for p in params]


def forward(model: keras.Model, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """Logits (batch, n_way) of ``model`` evaluated with weights ``params`` instead of its own (nothing mutated)."""
    logits, _ = model.stateless_call(list(params), [], x, training=True)
    return logits


def loss_and_accuracy(model: keras.Model, params: Sequence[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean cross-entropy on logits and accuracy of ``model`` with weights ``params`` on ``(x, y)``."""
    logits = forward(model, params, x)
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), logits.dtype))
    return loss, acc


def inner_loop(model: keras.Model, params: Sequence[tf.Tensor], x: tf.Tensor, y: tf.Tensor, *, steps: int,
               lr: float | Sequence[tf.Tensor], first_order: bool = False) -> list[tf.Tensor]:
    """``steps`` plain SGD steps on ``(x, y)`` starting from ``params``; returns the adapted parameters.

    ``lr`` is a float or one rate per parameter (e.g. 0 for the layers a head-only adaptation keeps fixed). Under an enclosing
    ``GradientTape`` the result stays differentiable w.r.t. ``params`` *through* the gradient steps
    (second order); ``first_order=True`` stops the gradient through the inner gradients, so d(adapted)/d(params)
    is the identity (first-order MAML).
    """
    params = list(params)
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)
    for _ in range(int(steps)):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, _ = loss_and_accuracy(model, params, x, y)
        grads = tape.gradient(loss, params)
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        params = [p - a * g for p, a, g in zip(params, lrs, grads)]
    return params


def maml_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], support_x, support_y, query_x, query_y, *,
                       steps: int, lr: float | Sequence[tf.Tensor], first_order: bool = False,
                       zero_head: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's MAML meta-gradient: d L_query(adapt(params, support)) / d params.

    Returns ``(grads, query_loss, query_accuracy)``. ``first_order=True`` gives first-order MAML: the query gradient at the
    adapted parameters, with the second-order term (the Hessian of the inner loss) dropped.
    ``zero_head=True`` starts every task's inner loop with the last layer (kernel and bias) at zero (the
    "zeroing trick" of Kao et al., 2022), so its gradient w.r.t. the head is zero.
    """
    params = [tf.identity(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        start = params[:-2] + [tf.zeros_like(p) for p in params[-2:]] if zero_head else params
        adapted = inner_loop(model, start, support_x, support_y, steps=steps, lr=lr, first_order=first_order)
        loss, acc = loss_and_accuracy(model, adapted, query_x, query_y)
    grads = tape.gradient(loss, params)
    return [tf.zeros_like(w) if g is None else g for w, g in zip(params, grads)], loss, acc


def step_rates(rates: Sequence[tf.Tensor], step) -> list[tf.Tensor]:
    """The inner learning rates of step ``step`` (0-based) from a rate schedule.

    ``rates[i]`` has a leading step axis, shape ``(T,) + s`` with ``s`` either ``()`` (one rate for the whole
    parameter tensor) or the parameter's shape (one rate per weight); steps at or beyond ``T`` reuse the last row.
    ``step`` may be a Python int or a scalar int tensor (inside a ``tf.while_loop``).
    """
    if isinstance(step, int):
        return [r[min(step, int(r.shape[0]) - 1)] for r in rates]
    return [tf.gather(r, tf.minimum(step, tf.shape(r)[0] - 1)) for r in rates]


def learned_rate_inner_loop(model: keras.Model, params: Sequence[tf.Tensor], x: tf.Tensor, y: tf.Tensor, *,
                            rates: Sequence[tf.Tensor], steps: int, first_order: bool = False) -> list[tf.Tensor]:
    """:func:`inner_loop` with a rate schedule: step ``t`` is ``p - rates[i][t] * grad`` for every parameter ``i``
    (see :func:`step_rates` for the shapes). Differentiable w.r.t. ``params`` and ``rates``."""
    params = list(params)
    for t in range(int(steps)):
        params = inner_loop(model, params, x, y, steps=1, lr=step_rates(rates, t), first_order=first_order)
    return params


def learned_rate_task_gradient(model: keras.Model, params: Sequence[tf.Tensor], rates: Sequence[tf.Tensor],
                               support_x, support_y, query_x, query_y, *, steps: int, first_order: bool = False,
                               zero_head: bool = False) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's meta-gradient w.r.t. the initialisation *and* the inner learning rates (Meta-SGD, MAML++).

    Returns ``(grads, query_loss, query_accuracy)`` with ``grads`` the gradients of the query loss after
    :func:`learned_rate_inner_loop` w.r.t. ``params`` followed by those w.r.t. ``rates`` (same order and shapes).
    With every rate equal to ``lr`` the weight gradients are :func:`maml_task_gradient`'s.
    """
    params = [tf.identity(p) for p in params]
    rates = [tf.identity(r) for r in rates]
    with tf.GradientTape() as tape:
        tape.watch(params + rates)
        start = params[:-2] + [tf.zeros_like(p) for p in params[-2:]] if zero_head else params
        adapted = learned_rate_inner_loop(model, start, support_x, support_y, rates=rates, steps=steps,
                                          first_order=first_order)
        loss, acc = loss_and_accuracy(model, adapted, query_x, query_y)
    grads = tape.gradient(loss, params + rates)
    return [tf.zeros_like(w) if g is None else g for w, g in zip(params + rates, grads)], loss, acc


def check_rates(rates: Sequence, params: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``rates`` as float tensors, checked against ``params`` (one schedule per parameter, shapes of :func:`step_rates`)."""
    if isinstance(rates, (str, bytes)) or not isinstance(rates, (list, tuple)) or len(rates) != len(params):
        raise ValueError(f"rates must be a list with one schedule per parameter ({len(params)}), "
                         f"e.g. learner.rate_schedule(); got {type(rates).__name__}")
    out = []
    for i, (r, p) in enumerate(zip(rates, params)):
        r = tf.convert_to_tensor(r, p.dtype)
        if r.shape.rank < 1 or r.shape[0] < 1 or (tuple(r.shape[1:]) not in ((), tuple(p.shape))):
            raise ValueError(f"rates[{i}] must have shape (steps,) or (steps,) + {tuple(p.shape)}, got {tuple(r.shape)}")
        out.append(r)
    return out


def reptile_task_delta(model: keras.Model, params: Sequence[tf.Tensor], x, y, *, steps: int, lr: float,
                       query_x=None, query_y=None) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """One task's Reptile direction ``params - adapted`` after ``steps`` SGD steps on ``(x, y)``.

    Reptile's update is ``theta <- theta + outer_lr * mean_tasks(adapted - theta)``; feeding this delta to SGD with
    learning rate ``outer_lr`` as if it were a gradient gives exactly that. Returns ``(delta, loss, accuracy)``,
    the loss/accuracy measured on ``(query_x, query_y)`` after adaptation when given (else on ``(x, y)``).
    """
    params = [tf.identity(p) for p in params]
    adapted = inner_loop(model, params, x, y, steps=steps, lr=lr, first_order=True)
    adapted = [tf.stop_gradient(a) for a in adapted]
    loss, acc = loss_and_accuracy(model, adapted, x if query_x is None else query_x, y if query_y is None else query_y)
    return [p - a for p, a in zip(params, adapted)], loss, acc


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Query accuracy over many tasks after adaptation, fractions in [0, 1].

    ``mean`` and ``ci95`` (1.96 * std / sqrt(n)) are for the final ``steps``; ``accuracies`` (tasks,) the
    per-task values. ``curve_steps`` (m,) lists the step counts at which accuracy was also recorded, with
    ``per_task`` (tasks, m) the per-task accuracies there and ``curve`` / ``curve_ci95`` (m,) their mean and CI.
    """

    mean: float
    ci95: float
    accuracies: np.ndarray
    steps: int
    lr: float
    curve_steps: np.ndarray
    per_task: np.ndarray

    @property
    def curve(self) -> np.ndarray:
        return self.per_task.mean(axis=0)

    @property
    def curve_ci95(self) -> np.ndarray:
        return mean_ci95(self.per_task)[1]

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def at(self, steps: int) -> "Evaluation":
        """The same evaluation read off after ``steps`` adaptation steps (must be one of ``curve_steps``)."""
        hits = np.flatnonzero(self.curve_steps == steps)
        if not len(hits):
            raise ValueError(f"accuracy was recorded after {list(self.curve_steps)} steps, not {steps}; "
                             "evaluate again with that step count in record=")
        j = int(hits[0])
        acc = self.per_task[:, j]
        mean, ci = mean_ci95(acc)
        return Evaluation(float(mean), float(ci), acc, int(steps), self.lr, self.curve_steps[: j + 1], self.per_task[:, : j + 1])

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.ci95:.1f}% ({len(self.accuracies)} tasks, {self.steps} step{'' if self.steps == 1 else 's'})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary; ``inner_lr`` is None when adaptation used learned rates."""
        return {"mean": self.mean, "ci95": self.ci95, "test_steps": self.steps,
                "inner_lr": None if np.isnan(self.lr) else self.lr, "tasks": len(self.accuracies)}


# --------------------------------------------------------------------------------------------------
# Evaluation by adaptation: shared by the meta-learners and the baselines
# --------------------------------------------------------------------------------------------------
def default_record(steps: int) -> tuple[int, ...]:
    """Step counts at which accuracy is recorded: 0, 1, 2, 3, 5, 10, 20, 30, 50, 100... up to ``steps``."""
    marks = [s for s in (0, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500) if s < steps]
    return tuple(marks) + (int(steps),)


def evaluate_adaptation(model: keras.Model, tasks: Tasks, *, steps: int, lr: float | None,
                        params: Sequence[tf.Tensor] | None = None, head_only: bool = False,
                        record: Sequence[int] | None = None, chunk: int = 50,
                        rates: Sequence[tf.Tensor] | None = None) -> Evaluation:
    """Adapt ``model`` (or ``params``) to every task with ``steps`` SGD steps at ``lr`` on its support set.

    Returns an :class:`Evaluation` of query accuracy: mean and 95% CI after ``steps`` steps, per-task values,
    and the accuracy after each step count in ``record`` (default :func:`default_record`). ``head_only``
    adapts only the last layer (kernel and bias). MAML-style initialisations, training from scratch (a
    freshly initialised model) and pre-train + fine-tune are all measured this way, on the same tasks.
    ``rates``: a learned rate schedule (``learner.rate_schedule()`` of :class:`MetaSGD` / :class:`LSLR`, shapes
    as in :func:`step_rates`) used instead of ``lr``; pass ``lr=None`` with it (the result's ``lr`` is NaN).
    """
    from . import adaptation  # the evaluator builds on this module

    check_meta_model(model)
    if not isinstance(tasks, Tasks):
        raise TypeError(f"tasks must be a tutorial_lib.tasks.Tasks (from FewShotSampler.sample), got {type(tasks).__name__}")
    steps = check_count("steps", steps)
    record = tuple(sorted({int(r) for r in (record if record is not None else default_record(steps))} | {int(steps)}))
    if record[0] < 0 or record[-1] > steps:
        raise ValueError(f"record must hold step counts in 0..{steps}, got {record}")
    result = adaptation.adapt_and_evaluate(model, tasks, checkpoints=record, params=params, lr=lr, rates=rates,
                                           head_only=head_only, chunk=chunk)
    per_task = result.clean
    mean, ci = mean_ci95(per_task[:, -1])
    return Evaluation(mean=float(mean), ci95=float(ci), accuracies=per_task[:, -1], steps=int(steps),
                      lr=float("nan") if lr is None else float(lr), curve_steps=np.array(record), per_task=per_task)


# --------------------------------------------------------------------------------------------------
# The meta-learners
# --------------------------------------------------------------------------------------------------
@dataclass
class MetaHistory:
    """Per meta-step query loss and accuracy (after adaptation), averaged over the meta-batch."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "accuracy": self.accuracy, "seconds": self.seconds}


class MetaLearner:
    """Shared machinery: wraps ``model`` (logits, no non-trainable state), keeps its weights as the
    meta-parameters, and updates them with ``meta_optimizer`` from a meta-gradient over a meta-batch of tasks.

    Subclasses define ``_task_update`` (one task's meta-gradient). Use :class:`MAML` or :class:`Reptile`.
    """

    method = "meta"

    def __init__(self, model: keras.Model, *, inner_lr: float, inner_steps: int, test_steps: int | None = None,
                 test_lr: float | None = None, meta_optimizer: keras.optimizers.Optimizer | None = None) -> None:
        check_meta_model(model)
        self.model = model
        self.inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_inclusive=False)
        self.inner_steps = check_positive_int("inner_steps", inner_steps)
        self.test_steps = check_positive_int("test_steps", test_steps) if test_steps is not None else self.inner_steps
        self.test_lr = (check_number("test_lr", test_lr, low=0.0, low_inclusive=False) if test_lr is not None
                        else self.inner_lr)
        self.meta_optimizer = meta_optimizer if meta_optimizer is not None else self._default_optimizer()
        self.meta_optimizer.build(self.meta_variables)
        self.history = MetaHistory()

    def _default_optimizer(self) -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(1e-3)

    @property
    def meta_variables(self) -> list:
        """The variables the meta-optimizer updates: the model's trainable weights."""
        return list(self.model.trainable_variables)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model.name}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
                f"test_steps={self.test_steps}, test_lr={self.test_lr})")

    # ---- adaptation -------------------------------------------------------------------------------
    def adapt(self, support_x, support_y, steps: int | None = None, *, lr: float | None = None) -> list[tf.Tensor]:
        """Adapted parameters for one task: ``steps`` (default ``test_steps``) SGD steps on its support set.

        ``support_x``: float32 (n, 28, 28, 1); ``support_y``: int (n,) in 0..n_way-1. Returns a list of
        tensors in ``model.trainable_variables`` order; the model itself is unchanged. Use
        :meth:`predict` or :meth:`adapted_model` to run them.
        """
        sx = tf.convert_to_tensor(support_x, tf.float32)
        sy = tf.convert_to_tensor(support_y, tf.int32)
        if sx.shape.rank != 4 or sy.shape.rank != 1 or sx.shape[0] != sy.shape[0]:
            raise ValueError(f"adapt takes one task: support_x (n, H, W, C) and support_y (n,), got {sx.shape}, {sy.shape}")
        return inner_loop(self.model, params_of(self.model), sx, sy, steps=self.test_steps if steps is None else steps,
                          lr=self.test_lr if lr is None else lr, first_order=True)

    def predict(self, params: Sequence[tf.Tensor], x) -> np.ndarray:
        """Logits (n, n_way) of the model run with adapted ``params`` on images ``x``."""
        return forward(self.model, params, tf.convert_to_tensor(x, tf.float32)).numpy()

    def adapted_model(self, params: Sequence[tf.Tensor]) -> keras.Model:
        """A new Keras model (same architecture) holding ``params``; the wrapped model is untouched."""
        clone = keras.models.clone_model(self.model)
        clone.set_weights([np.asarray(p) for p in params])
        return clone

    # ---- meta-training ----------------------------------------------------------------------------
    def _task_update(self, params, sx, sy, qx, qy):
        raise NotImplementedError

    @property
    def _step_fn(self):
        """The compiled meta-step of this learner, from the package cache (:mod:`tutorial_lib.compiled`)."""
        return compiled(self, ("meta_step",), self._build_step)

    def _build_step(self):
        me = weakref.proxy(self)  # the cache holds its owner weakly: the function must not keep the learner alive
        variables = self.meta_variables

        @tf.function(reduce_retracing=True, jit_compile=use_xla())
        def step(sx, sy, qx, qy):
            params = [tf.convert_to_tensor(v) for v in me.model.trainable_variables]

            def body(task):
                return me._task_update(params, *task)

            dtype = variables[0].dtype
            signature = ([tf.TensorSpec(v.shape, v.dtype) for v in variables], tf.TensorSpec([], dtype),
                         tf.TensorSpec([], dtype))
            grads, losses, accs = tf.map_fn(body, (sx, sy, qx, qy), fn_output_signature=signature,
                                            parallel_iterations=int(sx.shape[0] or 8))
            mean_grads = [tf.reduce_mean(g, axis=0) for g in grads]
            me.meta_optimizer.apply_gradients(zip(mean_grads, variables))
            return tf.reduce_mean(losses), tf.reduce_mean(accs)

        return step

    def meta_step(self, tasks: Tasks) -> tuple[float, float]:
        """One meta-update from a meta-batch of tasks (all in one compiled step); returns (query loss, accuracy)."""
        if not isinstance(tasks, Tasks):
            raise TypeError(f"meta_step takes a Tasks batch from FewShotSampler.sample, got {type(tasks).__name__}")
        dtype = self.model.trainable_variables[0].dtype
        loss, acc = self._step_fn(tf.constant(tasks.support_x, dtype), tf.constant(tasks.support_y, tf.int32),
                                  tf.constant(tasks.query_x, dtype), tf.constant(tasks.query_y, tf.int32))
        return float(loss), float(acc)

    def meta_fit(self, sampler: FewShotSampler, meta_steps: int, meta_batch: int = 4, *, verbose: int = 1,
                 log_every: int | None = None) -> MetaHistory:
        """Meta-train for ``meta_steps`` updates, each on ``meta_batch`` tasks drawn from ``sampler``.

        ``verbose``: 0 silent; 1 a tqdm progress bar; 2 a compact log line every ``log_every`` steps
        (default a quarter of the run; best in stored notebook outputs). Returns (and appends to)
        ``self.history``: query loss and accuracy after adaptation per meta-step.
        """
        if not isinstance(sampler, FewShotSampler):
            raise TypeError(f"sampler must be a FewShotSampler, got {type(sampler).__name__}")
        meta_steps = check_positive_int("meta_steps", meta_steps)
        meta_batch = check_positive_int("meta_batch", meta_batch)
        log_every = log_every or max(1, meta_steps // 4)
        bar = None
        if verbose == 1:
            from tqdm import tqdm

            bar = tqdm(total=meta_steps, desc=f"{self.method} meta-training", file=sys.stdout, mininterval=1.0)
        start = time.perf_counter()
        chunk = 50
        done = 0
        while done < meta_steps:
            n = min(chunk, meta_steps - done)
            batch = sampler.sample(n * meta_batch)
            for i in range(n):
                loss, acc = self.meta_step(batch[i * meta_batch:(i + 1) * meta_batch])
                self.history.loss.append(loss)
                self.history.accuracy.append(acc)
                done += 1
                if bar is not None:
                    bar.update(1)
                    if done % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", refresh=False)
                elif verbose >= 2 and (done % log_every == 0 or done == meta_steps):
                    recent = slice(max(0, len(self.history.loss) - log_every), None)
                    print(f"{self.method} step {done:5d}/{meta_steps}: query loss {np.mean(self.history.loss[recent]):.3f}, "
                          f"accuracy {np.mean(self.history.accuracy[recent]):.3f} ({time.perf_counter() - start:.0f} s)")
        if bar is not None:
            bar.close()
        self.history.seconds += time.perf_counter() - start
        return self.history

    def meta_evaluate(self, sampler: FewShotSampler, tasks: int = 200, *, steps: int | None = None,
                      lr: float | None = None, seed: int = 0) -> Evaluation:
        """Mean query accuracy with a 95% CI over ``tasks`` tasks from ``sampler`` (fixed by ``seed``, so every
        method sees the same tasks), each adapted with ``steps`` (default ``test_steps``) SGD steps at ``lr``
        (default ``test_lr``) from the meta-learned initialisation."""
        return evaluate_adaptation(self.model, sampler.sample(tasks, seed=seed),
                                   steps=self.test_steps if steps is None else steps,
                                   lr=self.test_lr if lr is None else lr)


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017) with the true second-order meta-gradient.

    Meta-objective: ``min_theta E_T [ L_query_T( theta - alpha * grad L_support_T(theta) ) ]`` (for one inner
    step; ``inner_steps`` repeats the step). ``first_order=True`` is FOMAML (Hessian term dropped).
    ``zero_head=True`` sets the model's last layer to zero and starts every task from a zero head (Kao et al.,
    2022): with labels renumbered at random per task, a learned head can only encode a bias towards some
    labels, and without the second-order term FOMAML amplifies that bias until adaptation breaks.
    Meta-optimizer default: Adam(1e-3). Introduced in notebooks/04_meta_learning.ipynb.
    """

    method = "maml"

    def __init__(self, model: keras.Model, *, inner_lr: float = 0.4, inner_steps: int = 1, test_steps: int | None = None,
                 test_lr: float | None = None, first_order: bool = False, zero_head: bool = False,
                 meta_optimizer: keras.optimizers.Optimizer | None = None) -> None:
        self.first_order = bool(first_order)
        self.zero_head = bool(zero_head)
        if self.first_order:
            self.method = "fomaml"
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, test_steps=test_steps, test_lr=test_lr,
                         meta_optimizer=meta_optimizer)
        if self.zero_head:
            for v in model.trainable_variables[-2:]:
                v.assign(np.zeros(v.shape, v.dtype))

    def _task_update(self, params, sx, sy, qx, qy):
        return maml_task_gradient(self.model, params, sx, sy, qx, qy, steps=self.inner_steps, lr=self.inner_lr,
                                  first_order=self.first_order, zero_head=self.zero_head)


class Reptile(MetaLearner):
    """Reptile (Nichol et al. 2018): adapt with SGD on each task, then move the initialisation towards the
    adapted weights, ``theta <- theta + outer_lr * mean_tasks(phi_T - theta)``.

    The inner loop trains on the support and query images of each meta-training task together (all of the
    task's data, as in the Reptile paper); no gradient flows through it. The default meta-optimizer is
    SGD with ``learning_rate = outer_lr = 0.5``, which applies the update above exactly.
    Introduced in notebooks/04_meta_learning.ipynb.
    """

    method = "reptile"

    def __init__(self, model: keras.Model, *, inner_lr: float = 0.1, inner_steps: int = 5, test_steps: int | None = None,
                 test_lr: float | None = None, meta_optimizer: keras.optimizers.Optimizer | None = None) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, test_steps=test_steps, test_lr=test_lr,
                         meta_optimizer=meta_optimizer)

    def _default_optimizer(self) -> keras.optimizers.Optimizer:
        return keras.optimizers.SGD(0.5)

    def _task_update(self, params, sx, sy, qx, qy):
        x = tf.concat([sx, qx], 0)
        y = tf.concat([sy, qy], 0)
        return reptile_task_delta(self.model, params, x, y, steps=self.inner_steps, lr=self.inner_lr,
                                  query_x=qx, query_y=qy)


def read_rates(path) -> list[np.ndarray]:
    """The rate arrays :meth:`LearnedRateMAML.save_rates` wrote to ``path`` (``.npz``, read without pickle), in weight
    order."""
    with np.load(path, allow_pickle=False) as stored:
        return [stored[f"rate_{i}"] for i in range(len(stored.files))]


class LearnedRates:
    """The rate variables of a learner with meta-learned inner learning rates (:class:`LearnedRateMAML` and
    ``meta_adversarial.AttackAdaptiveMAML`` share them): one ``keras.Variable`` per model weight with a leading
    step axis (:func:`step_rates`), updated by the meta-optimizer beside the weights, stored beside the model
    (``.npz``, no pickle)."""

    rates: list

    @staticmethod
    def make_rates(model: keras.Model, shapes: Sequence[tuple[int, ...]], inner_lr: float) -> list:
        """One rate variable per model weight, of the given shapes, every entry ``inner_lr``."""
        return [keras.Variable(np.full(shape, inner_lr, v.dtype), name=f"rate_{i}", dtype=v.dtype)
                for i, (v, shape) in enumerate(zip(model.trainable_variables, shapes))]

    @property
    def meta_variables(self) -> list:
        """The model's trainable weights followed by the rate variables (what the meta-optimizer updates)."""
        return list(self.model.trainable_variables) + list(self.rates)

    def rate_schedule(self) -> list[tf.Tensor]:
        """The current rates as tensors (one per model weight, leading step axis), for :func:`evaluate_adaptation`."""
        return [tf.convert_to_tensor(r) for r in self.rates]

    def save_rates(self, path) -> None:
        """Write the rates to ``path`` (numpy ``.npz``, arrays ``rate_0``, ``rate_1``, ... in weight order)."""
        np.savez(path, **{f"rate_{i}": np.asarray(r) for i, r in enumerate(self.rates)})

    def load_rates(self, path) -> None:
        """Restore rates written by :meth:`save_rates` (no pickle); their shapes must match this learner's."""
        self.set_rates(read_rates(path))

    def set_rates(self, arrays: Sequence[np.ndarray]) -> None:
        """Assign the rates from arrays (same count and shapes as :attr:`rates`)."""
        if len(arrays) != len(self.rates):
            raise ValueError(f"expected {len(self.rates)} rate arrays (one per model weight), got {len(arrays)}")
        for i, (var, a) in enumerate(zip(self.rates, arrays)):
            if tuple(np.shape(a)) != tuple(var.shape):
                raise ValueError(f"rate {i} has shape {np.shape(a)}, this learner's has {tuple(var.shape)} "
                                 "(a different model, method or number of inner steps)")
            var.assign(np.asarray(a, var.dtype))


class LearnedRateMAML(LearnedRates, MAML):
    """MAML whose inner learning rates are meta-variables, learned with the initialisation (shared machinery of
    :class:`MetaSGD` and :class:`LSLR`; use those).

    The rates start at ``inner_lr`` and are updated by ``meta_optimizer`` from the gradient of the query loss
    after adaptation (:func:`learned_rate_task_gradient`); adaptation (:meth:`adapt`, :meth:`meta_evaluate`)
    uses the learned rates. ``rates`` holds one ``keras.Variable`` per model weight with a leading step axis
    (:func:`step_rates`); :meth:`save_rates` / :meth:`load_rates` store them beside the model (``.npz``, no pickle).
    """

    method = "learned_rates"

    def __init__(self, model: keras.Model, *, inner_lr: float = 0.4, inner_steps: int = 1,
                 test_steps: int | None = None, first_order: bool = False, zero_head: bool = False,
                 meta_optimizer: keras.optimizers.Optimizer | None = None) -> None:
        check_meta_model(model)
        inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_inclusive=False)
        inner_steps = check_positive_int("inner_steps", inner_steps)
        self.rates = self.make_rates(model, self._rate_shapes(model, inner_steps), inner_lr)
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, test_steps=test_steps,
                         first_order=first_order, zero_head=zero_head, meta_optimizer=meta_optimizer)
        self.method = type(self).method + ("_fo" if self.first_order else "")

    def _rate_shapes(self, model: keras.Model, steps: int) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _task_update(self, params, sx, sy, qx, qy):
        return learned_rate_task_gradient(self.model, params, self.rate_schedule(), sx, sy, qx, qy,
                                          steps=self.inner_steps, first_order=self.first_order,
                                          zero_head=self.zero_head)

    def adapt(self, support_x, support_y, steps: int | None = None, *, lr: float | None = None) -> list[tf.Tensor]:
        """Adapted parameters for one task: ``steps`` (default ``test_steps``) steps with the learned rates
        (steps beyond the schedule reuse its last row); ``lr`` given: plain SGD at ``lr`` instead."""
        if lr is not None:
            return super().adapt(support_x, support_y, steps, lr=lr)
        sx = tf.convert_to_tensor(support_x, tf.float32)
        sy = tf.convert_to_tensor(support_y, tf.int32)
        if sx.shape.rank != 4 or sy.shape.rank != 1 or sx.shape[0] != sy.shape[0]:
            raise ValueError(f"adapt takes one task: support_x (n, H, W, C) and support_y (n,), got {sx.shape}, {sy.shape}")
        return learned_rate_inner_loop(self.model, params_of(self.model), sx, sy, rates=self.rate_schedule(),
                                       steps=self.test_steps if steps is None else steps, first_order=True)

    def meta_evaluate(self, sampler: FewShotSampler, tasks: int = 200, *, steps: int | None = None,
                      lr: float | None = None, seed: int = 0) -> Evaluation:
        """As :meth:`MetaLearner.meta_evaluate`, adapting with the learned rates (or plain SGD at ``lr`` if given)."""
        return evaluate_adaptation(self.model, sampler.sample(tasks, seed=seed),
                                   steps=self.test_steps if steps is None else steps, lr=lr,
                                   rates=None if lr is not None else self.rate_schedule())


class MetaSGD(LearnedRateMAML):
    """Meta-SGD (Li et al. 2017, arXiv:1707.09835): one learned inner learning rate *per weight* (a tensor of the
    same shape as each weight, so the inner step ``theta - alpha * grad`` also learns a direction), meta-learned
    with the initialisation. All inner steps share the rates (the paper takes one). Rates start at ``inner_lr``;
    with them unchanged the first meta-gradient of the weights is MAML's. Introduced in notebooks/04_meta_learning.ipynb.
    """

    method = "metasgd"

    def _rate_shapes(self, model, steps):
        return [(1, *v.shape) for v in model.trainable_variables]


class LSLR(LearnedRateMAML):
    """MAML++'s per-layer per-step learning rates (Antoniou, Edwards and Storkey, "How to train your MAML",
    ICLR 2019): one learned scalar rate per weight tensor and inner step, so ``inner_steps`` steps may each take
    a different step size in each layer; test-time steps beyond ``inner_steps`` reuse the last step's rates.
    Introduced in notebooks/04_meta_learning.ipynb.
    """

    method = "lslr"

    def _rate_shapes(self, model, steps):
        return [(steps,) for _ in model.trainable_variables]


# --------------------------------------------------------------------------------------------------
# The article's step, kept for teaching and as a regression test. Do not use it to train.
# --------------------------------------------------------------------------------------------------
def article_meta_step(model: keras.Model, task_x, task_y, *, optimizer: keras.optimizers.Optimizer,
                         meta_optimizer: keras.optimizers.Optimizer,
                         perturb: Callable[[keras.Model, tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                         ) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """The article's ``meta_train_step`` (without its FGSM part), made to run on real task tensors.

    ``task_x``: float (tasks, n, H, W, C); ``task_y``: int (tasks, n). For each task in turn, under one outer
    tape, it takes a gradient step on the task *in place* (``optimizer.apply_gradients`` on the shared
    weights); then it differentiates the mean of the task losses w.r.t. the (already updated) weights and
    applies that with ``meta_optimizer``. Returns ``(meta_loss, meta_grads)``; mutates ``model``.

    Why this is not MAML: there are no adapted parameters theta' and no query set, and the outer tape cannot
    see through the in-place assignments, so ``meta_grads`` is just the sum of ordinary gradients, each at
    whatever weights the previous task left (divided by the number of tasks): sequential SGD plus a second,
    mis-scaled step. The true meta-gradient differentiates the query loss *through* the adaptation
    (:func:`maml_task_gradient`). ``perturb(model, x, y)``, when given, replaces each task's images before its
    step (the article's FGSM: :func:`tutorial_lib.meta_adversarial.article_adversarial_meta_step`).
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    variables = model.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        task_losses = []
        for i in range(len(task_x)):
            x = task_x[i] if perturb is None else perturb(model, task_x[i], task_y[i])
            with tf.GradientTape() as task_tape:
                task_loss = loss_fn(task_y[i], model(x, training=True))
            task_grads = task_tape.gradient(task_loss, variables)
            optimizer.apply_gradients(zip(task_grads, variables))
            task_losses.append(task_loss)
        meta_loss = tf.reduce_mean(task_losses)
    meta_grads = tape.gradient(meta_loss, variables)
    meta_optimizer.apply_gradients(zip(meta_grads, variables))
    return meta_loss, meta_grads


def article_vs_maml(model: keras.Model, tasks: Tasks, *, inner_lr: float) -> dict[str, np.ndarray]:
    """Flattened "meta-gradients" on one meta-batch, for comparison (the model is not changed).

    ``seed``: the article's :func:`article_meta_step` (inner SGD at ``inner_lr`` on each task's support set,
    run on a copy of the model); ``sequential_sgd``: the mean of plain support-set gradients taken one task
    after another from the weights the previous task left (what the article's step really computes);
    ``maml``: the true second-order MAML gradient (one inner step on the support set, loss on the query set);
    ``fomaml``: the same without the second-order term. All averaged over the tasks.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    sx = tf.constant(tasks.support_x)
    sy = tf.constant(tasks.support_y)
    _, article_grads = article_meta_step(clone, sx, sy, optimizer=keras.optimizers.SGD(inner_lr),
                                         meta_optimizer=keras.optimizers.SGD(0.0))
    params, seq = params_of(model), []
    for i in range(len(tasks)):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, _ = loss_and_accuracy(model, params, sx[i], sy[i])
        grads = tape.gradient(loss, params)
        seq.append(grads)
        params = [p - inner_lr * g for p, g in zip(params, grads)]
    out = {"article": article_grads, "sequential_sgd": [tf.add_n(list(g)) / len(tasks) for g in zip(*seq)]}
    for name, first_order in (("maml", False), ("fomaml", True)):
        per_task = [maml_task_gradient(model, params_of(model), sx[i], sy[i], tf.constant(tasks.query_x[i]),
                                       tf.constant(tasks.query_y[i]), steps=1, lr=inner_lr, first_order=first_order)[0]
                    for i in range(len(tasks))]
        out[name] = [tf.add_n(list(g)) / len(tasks) for g in zip(*per_task)]
    return {k: np.concatenate([np.ravel(g) for g in v]) for k, v in out.items()}


def make_learner(method: str, model: keras.Model, **options) -> MetaLearner:
    """``"maml"`` -> MAML, ``"fomaml"`` -> MAML(first_order=True), ``"reptile"`` -> Reptile, ``"metasgd"`` ->
    MetaSGD, ``"lslr"`` -> LSLR, with ``options``."""
    if method == "metasgd":
        return MetaSGD(model, **options)
    if method == "lslr":
        return LSLR(model, **options)
    if method == "maml":
        return MAML(model, **options)
    if method == "fomaml":
        return MAML(model, first_order=True, **options)
    if method == "reptile":
        return Reptile(model, **options)
    raise ValueError(f"method must be one of {LEARNERS + LEARNED_RATE_LEARNERS}, got {method!r}")
