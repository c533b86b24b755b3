"""The one evaluator of adapted learners: adapt an initialisation on each task's support set, then measure clean and
attacked query accuracy at chosen step checkpoints.

Every few-shot number of notebooks 04-07 comes from :func:`adapt_and_evaluate` (``meta.evaluate_adaptation``,
``meta_adversarial.robust_evaluate`` and ``experiments.unseen_attacks.adapt_and_attack`` are thin calls of it).
The support set is clean, attacked, or clean + attacked (crafted once, or re-crafted against the current inner
weights at every step); the rates are fixed, head-only or learned per layer and step (``meta.LSLR`` /
``meta.MetaSGD``); the queries are attacked against the ADAPTED weights by any list of attacks, and a query is
broken if any attack or restart breaks it. Many tasks run in one compiled call (a chunk); the compiled functions
live in :mod:`tutorial_lib.compiled`. Built on :mod:`tutorial_lib.meta` (forward pass, rate schedules).
Introduced in notebooks/05_meta_adversarial.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import attacks as _attacks
from . import evaluate as _evaluate
from . import meta as _meta
from .checks import check_bool, check_count, check_number, check_positive_int
from .compiled import compiled, count_trace, use_xla
from .tasks import Tasks

__all__ = ["SUPPORTS", "HEAD_INITS", "prototype_head", "AdaptationResult", "adapt_and_evaluate", "run_with_seeds", "adapted_logits_fn",
           "attack_adapted", "scaled_step", "support_surrogate", "attack_support", "check_attack", "check_data_range",
           "check_tasks", "fixed_rates", "first_adapted", "task_chunks", "task_seeds", "SUPPORT_MODES",
           "RobustEvaluation", "robust_evaluate", "EpsilonCurve", "epsilon_curve", "adapted_sanity_checks",
           "transfer_accuracy", "Selection", "select_on_validation"]

#: What each task adapts on: its clean support set, the support set attacked, or both together.
SUPPORTS = ("clean", "attacked", "clean+attacked")
#: How each task's last layer starts: the given weights, or the prototype head of the support set.
HEAD_INITS = ("given", "prototype")
#: Tasks mapped in parallel inside one compiled call (tf.map_fn's parallel_iterations; benchmarks/adaptation.py).
PARALLEL_TASKS = 8
#: Adaptations of at most this many steps are written out step by step in the graph (measured faster than a
#: tf.while_loop on notebook 06's 10 steps, benchmarks/adaptation.py); longer ones run in a loop.
UNROLL_STEPS = 20


# --------------------------------------------------------------------------------------------------
# Attacks against adapted weights: the one code path the learners and the evaluator use
# --------------------------------------------------------------------------------------------------
def check_attack(attack: Any, name: str = "attack") -> _attacks.Attack:
    """Return ``attack`` if it is an attack spec whose budget makes sense for its threat model (``attack.family``).

    A radius ``eps`` must be > 0: eps = 0 is no attack at all (use plain ``meta.MAML`` instead). L-inf: eps must
    also be smaller than the pixel range, since an L-inf ball as wide as the range contains every image (the
    attack can paint any picture) and no classifier can be robust in it. L2: eps > 0 is all (radii above 1 are
    common). Geometric attacks (Spatial, Rotation, Translation, ZoomShear: ``attacks.GEOMETRIC_FAMILIES``) have no
    radius: their ``scale`` multiplies the grid of transforms and lies in (0, 1].
    """
    if not isinstance(attack, _attacks.Attack):
        raise TypeError(f"{name} must be an attack spec from tutorial_lib.attacks (e.g. attacks.PGD(eps=0.1, "
                        f"steps=3, step_size=0.083)), got {type(attack).__name__}")
    if attack.family in _attacks.GEOMETRIC_FAMILIES:
        if not 0 < attack.scale <= 1:
            raise ValueError(f"{name}.scale = {attack.scale} multiplies the grid of transforms (e.g. max_angle, "
                             "max_shift) and must lie in (0, 1]; for a larger budget raise the grid's maxima instead")
        return attack
    if not attack.eps > 0:
        raise ValueError(f"{name}.eps must be > 0, got {attack.eps}; for no attack use meta.MAML")
    if attack.family == "linf":
        span = attack.clip_max - attack.clip_min
        if attack.eps >= span:
            raise ValueError(f"{name}.eps = {attack.eps} is not smaller than the pixel range [{attack.clip_min}, "
                             f"{attack.clip_max}]: the L-inf eps ball would contain every image. Use eps well "
                             f"below {span} (0.1-0.3 for MNIST in [0, 1])")
    return attack


def check_data_range(attack: _attacks.Attack, *arrays: np.ndarray, name: str = "attack") -> None:
    """Raise unless the images lie inside the attack's pixel range and, for an L-inf attack, its eps ball fits
    inside their range."""
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    tol = _attacks.RANGE_TOLERANCE  # float rounding, as the attacks allow
    if lo < attack.clip_min - tol or hi > attack.clip_max + tol:
        raise ValueError(f"the images lie in [{lo:.4g}, {hi:.4g}] but {name} clips to [{attack.clip_min}, "
                         f"{attack.clip_max}]: the attack would change even clean pixels. Rescale the images or "
                         "give the attack clip_min/clip_max matching the data")
    if attack.family == "linf" and hi > lo and attack.eps >= hi - lo:
        raise ValueError(f"{name}.eps = {attack.eps} is not smaller than the images' range [{lo:.4g}, {hi:.4g}]: "
                         "the L-inf eps ball would contain every image; use a smaller eps")


def check_tasks(tasks: Any, minimum: int = 2) -> Tasks:
    """``tasks`` if it is a :class:`~tutorial_lib.tasks.Tasks` batch of at least ``minimum`` tasks (a confidence
    interval needs two)."""
    if not isinstance(tasks, Tasks):
        raise TypeError(f"tasks must be a tutorial_lib.tasks.Tasks (from FewShotSampler.sample), got {type(tasks).__name__}")
    if len(tasks) < minimum:
        raise ValueError(f"evaluation by adaptation needs at least 2 tasks for a confidence interval, got {len(tasks)}")
    return tasks


def adapted_logits_fn(model: keras.Model, params: Sequence[tf.Tensor]) -> Callable[..., tf.Tensor]:
    """A callable ``f(x, training=False) -> logits``: ``model`` evaluated with weights ``params``.

    It is what an attack spec's ``.generate`` takes as its model, so any attack of :mod:`tutorial_lib.attacks`
    runs against adapted weights (``meta.forward``; the model itself is not changed).
    Introduced in notebooks/05_meta_adversarial.ipynb.
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
    Introduced in notebooks/05_meta_adversarial.ipynb.
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
    attacks crafted once are crafted against.

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


# --------------------------------------------------------------------------------------------------
# Small helpers every caller shares: rates, chunks of tasks, seeds
# --------------------------------------------------------------------------------------------------
def fixed_rates(model: keras.Model, lr: float, later_lr: float | None = None) -> list[tf.Tensor]:
    """A rate schedule (``meta.step_rates`` shapes) for plain SGD: ``lr`` for the first step, ``later_lr``
    (default ``lr``) for every later one, the same for every weight."""
    rows = [float(lr)] if later_lr is None or float(later_lr) == float(lr) else [float(lr), float(later_lr)]
    return [tf.constant(rows, v.dtype) for v in model.trainable_variables]


def first_adapted(model: keras.Model, head_only: bool) -> int:
    """Index of the first weight that adaptation changes: 0 (every layer) or, ``head_only``, the last layer's
    kernel (its kernel and bias are the last two weights)."""
    return len(model.trainable_variables) - 2 if head_only else 0


def task_chunks(tasks: Tasks, chunk: int, dtype: Any = tf.float32) -> Iterator[tuple[int, tuple[tf.Tensor, ...]]]:
    """``(start, (support_x, support_y, query_x, query_y))`` for consecutive chunks of at most ``chunk`` tasks,
    as tensors (images in ``dtype``, labels int32): the one loop over tasks whose memory a chunk bounds."""
    chunk = check_positive_int("chunk", chunk)
    for start in range(0, len(tasks), chunk):
        t = tasks[start:start + chunk]
        yield start, (tf.constant(t.support_x, dtype), tf.constant(t.support_y, tf.int32),
                      tf.constant(t.query_x, dtype), tf.constant(t.query_y, tf.int32))


def task_seeds(seed: int, n_tasks: int) -> np.ndarray:
    """The per-task seeds of :func:`adapt_and_evaluate`: ``stateless_fold_in([seed, 0], t)`` for task ``t``, shape
    (n_tasks, 2) int64. They depend on the task's index only, not on the chunk, so any chunk size (and one task
    at a time) gives the same random starts."""
    base = tf.constant([seed, 0], tf.int64)
    return np.stack([tf.random.experimental.stateless_fold_in(base, t).numpy() for t in range(n_tasks)]) \
        if n_tasks else np.zeros((0, 2), np.int64)


def _fold(seeds: np.ndarray, i: Any) -> np.ndarray:
    """``stateless_fold_in(s, i)`` for every seed of an (..., 2) array (``i`` a Python int, or a tensor whose
    dtype matters: an int64 ``i`` gives other seeds than the same int32 one)."""
    flat = seeds.reshape(-1, 2)
    out = [tf.random.experimental.stateless_fold_in(tf.constant(s, tf.int64), i).numpy() for s in flat]
    return np.asarray(out, np.int64).reshape(seeds.shape)


# --------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdaptationResult:
    """Per-task, per-query outcomes of :func:`adapt_and_evaluate`.

    ``checkpoints`` (C,): adaptation step counts at which the queries were measured; ``clean_mask`` bool
    (tasks, C, Q): query correct clean; ``attacked_runs`` bool (tasks, C, A, R, Q): correct under attack ``a``,
    restart ``r`` (A = 0 without query attacks); ``attacks``: the attacks' names.
    """

    checkpoints: tuple[int, ...]
    clean_mask: np.ndarray
    attacked_runs: np.ndarray
    attacks: tuple[str, ...]

    @property
    def attacked_mask(self) -> np.ndarray:
        """bool (tasks, C, A, Q): correct under attack ``a`` in every restart (broken if any restart breaks it)."""
        return self.attacked_runs.all(axis=3)

    @property
    def clean(self) -> np.ndarray:
        """Clean query accuracy per task and checkpoint, (tasks, C)."""
        return self.clean_mask.mean(axis=-1)

    @property
    def robust(self) -> np.ndarray:
        """Robust accuracy (tasks, C): correct clean AND under every attack and restart."""
        return (self.clean_mask & self.attacked_mask.all(axis=2)).mean(axis=-1)

    @property
    def per_attack(self) -> np.ndarray:
        """(tasks, C, A): correct clean and under attack ``a`` (all its restarts)."""
        return (self.clean_mask[:, :, None, :] & self.attacked_mask).mean(axis=-1)

    def robust_under(self, which: Sequence[int], restarts: int | None = None) -> np.ndarray:
        """Robust accuracy (tasks, C) when only the attacks numbered ``which`` (and their first ``restarts``
        restarts; default all) count."""
        runs = self.attacked_runs[:, :, list(which)]
        runs = runs if restarts is None else runs[:, :, :, :restarts]
        return (self.clean_mask & runs.all(axis=(2, 3))).mean(axis=-1)

    def column(self, checkpoint: int) -> int:
        """The index of ``checkpoint`` in :attr:`checkpoints` (a clear error if it was not recorded)."""
        if checkpoint not in self.checkpoints:
            raise ValueError(f"accuracy was recorded after {list(self.checkpoints)} steps, not {checkpoint}; "
                             "evaluate again with that step count in checkpoints=")
        return self.checkpoints.index(checkpoint)

    def at(self, checkpoint: int) -> dict[str, dict[str, float]]:
        """``{"clean": {"mean", "ci95"}, "robust": {...}}`` over tasks after ``checkpoint`` adaptation steps."""
        c = self.column(checkpoint)
        out = {"clean": _evaluate.mean_ci95_record(self.clean[:, c])}
        if self.attacks:
            out["robust"] = _evaluate.mean_ci95_record(self.robust[:, c])
        return out


# --------------------------------------------------------------------------------------------------
# The compiled evaluation of a chunk of tasks
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """Everything the compiled function depends on besides the model and the input shapes (its cache key)."""

    checkpoints: tuple[int, ...]
    first: int  # first adapted weight
    support: str
    support_attack: Any
    recraft: bool
    query_attacks: tuple
    restarts: int
    zero_start: bool
    scale_step: bool  # query attacks at the radius given to the call, step size scaled with it
    parallel: int
    rate_shapes: tuple
    head_init: str = "given"  # or "prototype": the last layer set from the support's class means first


def _evaluator(model: keras.Model, plan: _Plan):
    """The compiled ``fn(params, rates, sx, sy, qx, qy, support_seeds, query_seeds, eps) -> (clean (T, C, Q),
    attacked (T, C, A, R, Q))`` of ``plan``, from the package cache (one trace for every chunk size)."""
    def build():
        model_ref = weakref.ref(model)
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        image = tuple(model.input_shape[1:])
        n_att = len(plan.query_attacks)
        dtype = model.trainable_variables[0].dtype
        signature = ([tf.TensorSpec(s, dtype) for s in shapes],
                     [tf.TensorSpec(s, dtype) for s in plan.rate_shapes],
                     tf.TensorSpec((None, None, *image), dtype), tf.TensorSpec((None, None), tf.int32),
                     tf.TensorSpec((None, None, *image), dtype), tf.TensorSpec((None, None), tf.int32),
                     tf.TensorSpec((None, 2), tf.int64), tf.TensorSpec((None, n_att, plan.restarts, 2), tf.int64),
                     tf.TensorSpec([], tf.float32))

        def run(params, rates, sx, sy, qx, qy, support_seeds, query_seeds, eps):
            count_trace(model_ref())
            m = model_ref()
            params, rates = list(params), list(rates)
            first = plan.first
            eps_arg = eps if plan.scale_step else None  # a radius other than the attacks' own (eps sweeps)

            def fit_set(p, sx_t, sy_t, seed):
                """The images the step at weights ``p`` trains on."""
                if plan.support == "clean":
                    return sx_t, sy_t
                adv = attack_adapted(plan.support_attack, m, p, sx_t, sy_t, seed=seed)
                if plan.support == "attacked":
                    return adv, sy_t
                return tf.concat([sx_t, adv], 0), tf.concat([sy_t, sy_t], 0)

            def step(p, x, y, i):
                with tf.GradientTape() as tape:
                    tape.watch(p[first:])
                    loss, _ = _meta.loss_and_accuracy(m, p, x, y)
                grads = tape.gradient(loss, p[first:])
                lrs = _meta.step_rates(rates, i)[first:]
                return p[:first] + [w - a * g for w, a, g in zip(p[first:], lrs, grads)]

            def one(task):
                sx_t, sy_t, qx_t, qy_t, s_seed, q_seeds = task
                p = list(params)
                if plan.head_init == "prototype":
                    p = p[:-2] + prototype_head(m, p, sx_t, sy_t)
                if plan.support != "clean" and not plan.recraft:  # crafted once, against one clean step
                    surrogate = [tf.stop_gradient(w) for w in step(p, sx_t, sy_t, 0)]
                    x_fit, y_fit = fit_set(surrogate, sx_t, sy_t, s_seed)
                else:
                    x_fit, y_fit = sx_t, sy_t
                done, cleans, attacked = 0, [], []
                for c in plan.checkpoints:
                    if c > done:
                        if plan.recraft:
                            def body(i, *p):
                                x, y = fit_set(list(p), sx_t, sy_t,
                                               tf.random.experimental.stateless_fold_in(s_seed, i))
                                return (i + 1, *[tf.stop_gradient(w) for w in step(list(p), x, y, i)])
                        else:
                            def body(i, *p):
                                return (i + 1, *[tf.stop_gradient(w) for w in step(list(p), x_fit, y_fit, i)])
                        if plan.checkpoints[-1] <= UNROLL_STEPS:  # steps written out: faster for short runs
                            for i in range(done, c):
                                _, *p = body(i, *p)
                        else:
                            _, *p = tf.while_loop(lambda i, *_: i < c, body, (tf.constant(done), *p))
                        done = c
                    frozen = [tf.stop_gradient(w) for w in p]
                    ok = tf.equal(tf.argmax(_meta.forward(m, frozen, qx_t), -1, output_type=tf.int32), qy_t)
                    cleans.append(ok)
                    rows = []
                    for j, a in enumerate(plan.query_attacks):
                        if plan.zero_start and done == 0:  # a zero head: logits ignore the image, nothing to attack
                            rows.append(tf.stack([ok] * plan.restarts))
                            continue
                        runs = []
                        for r in range(plan.restarts):
                            x_adv = attack_adapted(a, m, frozen, qx_t, qy_t, eps=eps_arg, seed=q_seeds[j, r],
                                                   step_size=scaled_step(a, eps) if plan.scale_step else None)
                            runs.append(tf.equal(tf.argmax(_meta.forward(m, frozen, x_adv), -1, output_type=tf.int32),
                                                 qy_t))
                        rows.append(tf.stack(runs))
                    attacked.append(tf.stack(rows) if rows else tf.zeros([0, plan.restarts, tf.shape(qy_t)[0]], tf.bool))
                return tf.stack(cleans), tf.stack(attacked)

            return tf.map_fn(one, (sx, sy, qx, qy, support_seeds, query_seeds), fn_output_signature=(tf.bool, tf.bool),
                             parallel_iterations=plan.parallel)

        # A partial gives each compiled function its own key in TF's retracing detector: one graph per model and
        # plan is the point of the cache, not retracing.
        return tf.function(functools.partial(run), input_signature=signature, jit_compile=use_xla())

    return compiled(model, ("adapt_and_evaluate", plan), build)


def _run(model: keras.Model, tasks: Tasks, params: list[tf.Tensor], rates: list[tf.Tensor], plan: _Plan,
         support_seeds: np.ndarray, query_seeds: np.ndarray, *, chunk: int,
         eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run ``plan`` on every chunk of ``tasks`` with the given per-task seeds: ``support_seeds`` (tasks, 2) and
    ``query_seeds`` (tasks, attacks, restarts, 2)."""
    fn = _evaluator(model, plan)
    eps_t = tf.constant(np.nan if eps is None else eps, tf.float32)
    cleans, attacked = [], []
    for start, (sx, sy, qx, qy) in task_chunks(tasks, chunk, params[0].dtype):
        rows = slice(start, start + int(sx.shape[0]))
        c, a = fn(params, rates, sx, sy, qx, qy, tf.constant(support_seeds[rows]), tf.constant(query_seeds[rows]),
                  eps_t)
        cleans.append(c.numpy())
        attacked.append(a.numpy())
    return np.concatenate(cleans), np.concatenate(attacked)


def adapt_and_evaluate(model: keras.Model, tasks: Tasks, *, checkpoints: Sequence[int],
                       params: Sequence[Any] | None = None, lr: float | None = None, later_lr: float | None = None,
                       rates: Sequence[Any] | None = None, head_only: bool = False, support: str = "clean",
                       support_attack: _attacks.Attack | None = None, recraft: bool = False,
                       query_attacks: Sequence[_attacks.Attack] = (), restarts: int = 1, seed: int = 0,
                       chunk: int = 50, parallel_tasks: int = PARALLEL_TASKS,
                       head_init: str = "given") -> AdaptationResult:
    """Adapt an initialisation on each task's support set; record clean and attacked query accuracy at checkpoints.

    ``model`` gives the architecture and, unless ``params`` is given, the initial weights. Each task takes
    ``max(checkpoints)`` SGD steps on its support set; the queries are measured after every step count in
    ``checkpoints`` (distinct, increasing, >= 0). Rates: ``lr`` for the first step and ``later_lr`` (default
    ``lr``) after it, or ``rates`` (a learned schedule, ``learner.rate_schedule()`` of ``meta.LSLR`` /
    ``meta.MetaSGD``; shapes of ``meta.step_rates``) with ``lr=None``. ``head_only`` adapts the last layer only.
    ``support``: ``"clean"``, ``"attacked"`` (the support images replaced by ``support_attack``'s) or
    ``"clean+attacked"`` (both); the attacked copies are crafted once against the weights after one clean step
    (:func:`support_surrogate`), or with ``recraft=True`` against the current inner weights before every step.
    ``query_attacks``: attacks run against the ADAPTED weights at every checkpoint, each ``restarts`` times with
    different random starts; a query counts as robust only if it is correct clean and no attack or restart
    breaks it. ``seed`` fixes every random start through :func:`task_seeds` (per task, so ``chunk``, the number
    of tasks per compiled call, changes memory but not results). ``head_init="prototype"`` starts each task's
    last layer at :func:`prototype_head` of its clean support set (a nearest-class-mean classifier on the
    model's features: the fine-tuning start of a pre-trained, non-meta-learned model); ``"given"`` keeps
    ``params``' last layer. Returns an :class:`AdaptationResult`.
    Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    _meta.check_meta_model(model)
    tasks = check_tasks(tasks, minimum=1)
    checkpoints = _check_checkpoints(checkpoints)
    params = _meta.resolve_params(model, params)
    rates = _resolve_rates(model, params, lr, later_lr, rates)
    query_attacks = tuple(check_attack(a, "query_attacks[]") for a in query_attacks)
    restarts = check_positive_int("restarts", restarts)
    if restarts > 1 and not all(getattr(a, "random_start", False) for a in query_attacks):
        raise ValueError(f"restarts={restarts} needs attacks with random_start=True (the others start at x every "
                         "time, so every run would find the same examples)")
    support, support_attack = _check_support(support, support_attack, check_bool("recraft", recraft))
    for a in query_attacks:
        check_data_range(a, tasks.support_x, tasks.query_x, name="query_attacks[]")
    if support_attack is not None:
        check_data_range(support_attack, tasks.support_x, name="support_attack")
    seeds = task_seeds(check_count("seed", seed), len(tasks))
    query_seeds = np.stack([np.stack([_fold(_fold(seeds, 1 + j), r) for r in range(restarts)], 1)
                            for j in range(len(query_attacks))], 1) if query_attacks else \
        np.zeros((len(tasks), 0, restarts, 2), np.int64)
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
    plan = _Plan(checkpoints, first_adapted(model, check_bool("head_only", head_only)), support, support_attack,
                 bool(recraft), query_attacks, restarts, _zero_head(params) and head_init == "given", False,
                 check_positive_int("parallel_tasks", parallel_tasks), tuple(tuple(r.shape) for r in rates), head_init)
    clean, attacked = _run(model, tasks, params, rates, plan, _fold(seeds, 0), query_seeds, chunk=chunk)
    return AdaptationResult(checkpoints, clean, attacked, tuple(a.name for a in query_attacks))


def run_with_seeds(model: keras.Model, tasks: Tasks, params: list[tf.Tensor], rates: list[tf.Tensor], *,
                   checkpoints: tuple[int, ...], head_only: bool, support: str, support_attack: Any,
                   query_attacks: tuple, support_seeds: np.ndarray, query_seeds: np.ndarray, chunk: int,
                   eps: float | None = None, parallel_tasks: int = PARALLEL_TASKS) -> AdaptationResult:
    """:func:`adapt_and_evaluate` with the per-task seeds given and no argument checks: ``support_seeds`` (tasks, 2),
    ``query_seeds`` (tasks, attacks, restarts, 2); ``eps`` given: every query attack at that radius with its step
    size scaled (:func:`scaled_step`). For the evaluators that keep their own (older) seed schemes, so their
    numbers stay as they were."""
    plan = _Plan(tuple(checkpoints), first_adapted(model, head_only), support, support_attack, False,
                 tuple(query_attacks), int(query_seeds.shape[2]), _zero_head(params), eps is not None,
                 int(parallel_tasks), tuple(tuple(r.shape) for r in rates))
    clean, attacked = _run(model, tasks, params, rates, plan, support_seeds, query_seeds, chunk=chunk, eps=eps)
    return AdaptationResult(plan.checkpoints, clean, attacked, tuple(getattr(a, "name", str(a)) for a in query_attacks))


def _check_checkpoints(checkpoints: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(c) for c in checkpoints)
    except TypeError:
        raise TypeError(f"checkpoints must be a list of step counts, e.g. (0, 1, 5, 10), got {checkpoints!r}") from None
    if not out or list(out) != sorted(set(out)) or out[0] < 0:
        raise ValueError(f"checkpoints must be distinct step counts >= 0 in increasing order, got {out}")
    return out


def _resolve_rates(model: keras.Model, params: list[tf.Tensor], lr: Any, later_lr: Any, rates: Any) -> list[tf.Tensor]:
    if (rates is None) == (lr is None):
        raise ValueError("give either lr (plain SGD) or rates (a learned rate schedule, with lr=None), not both or neither")
    if rates is not None:
        if later_lr is not None:
            raise ValueError("later_lr applies to plain SGD (lr=); a learned schedule (rates=) has a row per step")
        return _meta.check_rates(rates, params)
    lr = check_number("lr", lr, low=0.0)
    later_lr = None if later_lr is None else check_number("later_lr", later_lr, low=0.0)
    return fixed_rates(model, lr, later_lr)


def _check_support(support: Any, support_attack: Any, recraft: bool) -> tuple[str, Any]:
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if support == "clean":
        if support_attack is not None or recraft:
            raise ValueError("support_attack and recraft apply to an attacked support set: pass "
                             "support='attacked' or 'clean+attacked' with them")
        return support, None
    if support_attack is None:
        raise ValueError(f"support={support!r} needs support_attack= (the attack that crafts the support copies)")
    return support, check_attack(support_attack, "support_attack")


def prototype_head(model: keras.Model, params: Sequence[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
    """The last layer that makes ``model`` (at ``params``) a nearest-class-mean classifier of ``(x, y)``.

    With ``mu_c`` the mean penultimate feature of class ``c`` in ``(x, y)``, kernel column ``c`` is
    ``2 mu_c / T`` and bias ``c`` is ``-|mu_c|^2 / T``: the logits are then ``-|f - mu_c|^2 / T`` up to a term
    shared by every class, the prototypical-network classifier (Snell et al. 2017) written as a linear head,
    which Proto-MAML (Triantafillou et al. 2020) fine-tunes from. The temperature ``T`` is the mean squared
    distance of the class means from their average: without it the logits of a CNN's unnormalised features lie
    hundreds apart, the softmax saturates, the cross-entropy gradient is exactly zero for most inputs, and
    gradient attacks on the loss (and fine-tuning) stall: gradient masking. ``T`` changes no prediction. The
    class sums come from one backward pass: the logits are linear in the kernel, so
    d(sum_i logit[i, y_i]) / d(kernel[:, c]) is the sum of class ``c``'s features. The last two weights must be
    the final Dense layer's kernel and bias. Classes absent from ``y`` get a zero column and bias. Returns
    ``[kernel, bias]``. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    params = list(params)
    kernel = tf.convert_to_tensor(params[-2])
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        logits = _meta.forward(model, params[:-2] + [kernel, params[-1]], x)
        picked = tf.reduce_sum(logits * tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype))
    sums = tf.stop_gradient(tape.gradient(picked, kernel))  # (features, classes)
    counts = tf.reduce_sum(tf.one_hot(y, tf.shape(kernel)[-1], dtype=kernel.dtype), axis=0)
    means = sums / tf.maximum(counts, 1.0)
    present = tf.cast(counts > 0, kernel.dtype)
    centre = tf.reduce_sum(means * present, axis=1, keepdims=True) / tf.maximum(tf.reduce_sum(present), 1.0)
    spread = tf.reduce_sum(tf.reduce_sum((means - centre) ** 2, axis=0) * present) / tf.maximum(tf.reduce_sum(present), 1.0)
    temperature = tf.maximum(spread, 1e-12)
    return [tf.cast(2.0 * means / temperature, kernel.dtype),
            tf.cast(-tf.reduce_sum(means * means, axis=0) / temperature, params[-1].dtype)]


def _zero_head(params: Sequence[tf.Tensor]) -> bool:
    """True when the last layer is all zero: before any step the logits ignore the image."""
    return all(not np.any(np.asarray(p)) for p in params[-2:])


# --------------------------------------------------------------------------------------------------
# Robust evaluation of adapted learners (notebook 05): one attack, restarts, eps curves, masking checks
# --------------------------------------------------------------------------------------------------
#: ``robust_evaluate``'s support modes: clean, or replaced by attacked copies (``support="attacked"`` above).
SUPPORT_MODES = ("clean", "adversarial")


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


def _robust_masks(model, tasks: Tasks, *, params, steps: int, lr: float, attack, restarts: int, support: str,
                  support_attack, head_only: bool, seed: int, chunk: int,
                  eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clean-correct mask (tasks, queries) and attacked-correct masks (tasks, restarts, queries) with
    :func:`robust_evaluate`'s seeds: restart ``r`` of the ``i``-th task of its chunk folds ``i`` into
    ``[seed, r]``; the support attack folds ``i`` into ``[seed, 2**31]``."""
    local = np.arange(len(tasks)) % chunk
    base = [np.array([seed, r], np.int64) for r in range(restarts)]
    query_seeds = np.stack([np.stack([_fold(b[None], int(i))[0] for b in base]) for i in local])[:, None]
    support_seeds = np.stack([_fold(np.array([[seed, 2**31]], np.int64), int(i))[0] for i in local])
    res = run_with_seeds(model, tasks, params, fixed_rates(model, lr), checkpoints=(steps,), head_only=head_only,
                         support="attacked" if support == "adversarial" else "clean", support_attack=support_attack,
                         query_attacks=(attack,), support_seeds=support_seeds, query_seeds=query_seeds, chunk=chunk,
                         eps=eps)
    return res.clean_mask[:, 0], res.attacked_runs[:, 0, 0]


def robust_evaluate(model: keras.Model, tasks: Tasks, *, params: Sequence[Any] | None = None, steps: int, lr: float,
                    attack: _attacks.Attack, restarts: int = 1, support: str = "clean",
                    support_attack: _attacks.Attack | None = None, head_only: bool = False, seed: int = 0,
                    chunk: int = 50) -> RobustEvaluation:
    """Adapt to each task's support set, then attack its queries against the ADAPTED weights (white-box).

    ``model`` (or ``params``, default the model's weights) is the initialisation; each task adapts with
    ``steps`` SGD steps at ``lr`` (``head_only`` adapts only the last layer).
    ``support="adversarial"`` adapts on support images attacked with ``support_attack`` (default ``attack``)
    crafted against the weights after ONE clean adaptation step (:func:`support_surrogate`), i.e. MAML with
    adversarial fine-tuning at test time. The queries are attacked with ``attack`` against the adapted weights.
    ``restarts`` > 1 runs the attack that many times with different random starts and counts a query broken if
    ANY run breaks it (``robust_restarts``); ``robust`` is the first run alone. A query counts as robust only
    if it is also classified correctly clean. ``seed`` fixes the random starts. Returns a
    :class:`RobustEvaluation`; ``.summary()`` gives mean and 95% CI over tasks. (A one-checkpoint, one-attack
    call of the evaluator of :func:`adapt_and_evaluate`.) Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    _meta.check_meta_model(model)
    tasks = check_tasks(tasks)
    attack = check_attack(attack)
    if support not in SUPPORT_MODES:
        raise ValueError(f"support must be one of {SUPPORT_MODES}, got {support!r}")
    support_attack = None if support == "clean" else check_attack(attack if support_attack is None else support_attack,
                                                                  "support_attack")
    restarts = check_positive_int("restarts", restarts)
    steps = check_count("steps", steps)
    if restarts > 1 and not getattr(attack, "random_start", False):
        raise ValueError(f"restarts={restarts} needs an attack with random_start=True ({attack.name} starts at x "
                         "every time, so every run would find the same examples)")
    lr = check_number("lr", lr, low=0.0)
    check_data_range(attack, tasks.support_x, tasks.query_x)
    if support_attack is not None:
        check_data_range(support_attack, tasks.support_x, name="support_attack")
    params = _meta.resolve_params(model, params)
    clean_ok, runs = _robust_masks(model, tasks, params=params, steps=steps, lr=lr, attack=attack, restarts=restarts,
                                   support=support, support_attack=support_attack, head_only=bool(head_only),
                                   seed=seed, chunk=chunk)
    robust = (clean_ok & runs[:, 0]).mean(axis=1)
    robust_restarts = (clean_ok & runs.all(axis=1)).mean(axis=1) if restarts > 1 else None
    return RobustEvaluation(clean=clean_ok.mean(axis=1), robust=robust, robust_restarts=robust_restarts,
                            restarts=restarts, attack=attack.name, eps=float(getattr(attack, "eps", getattr(attack, "scale", 0.0))), steps=steps, lr=float(lr),
                            support=support)


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
        """``{"eps", "mean", "ci95"}`` as lists (JSON-able)."""
        return {"eps": self.eps.tolist(), "mean": self.mean.tolist(), "ci95": self.ci95.tolist()}


def epsilon_curve(model: keras.Model, tasks: Tasks, eps_values: Sequence[float], *, params: Sequence[Any] | None = None,
                  steps: int, lr: float, attack: _attacks.Attack, seed: int = 0, chunk: int = 50) -> EpsilonCurve:
    """Robust accuracy of the adapted models (as :func:`robust_evaluate`, clean support) for each eps in
    ``eps_values`` (>= 0; eps 0 gives the clean accuracy). The attack's step size scales with eps (PGD-20 at
    step 2.5 eps / 20 stays that at every eps); one compiled graph serves every eps.
    Introduced in notebooks/05_meta_adversarial.ipynb."""
    _meta.check_meta_model(model)
    tasks = check_tasks(tasks)
    attack = check_attack(attack)
    eps_values = np.asarray(eps_values, dtype=np.float64)
    if eps_values.ndim != 1 or not len(eps_values) or np.any(~np.isfinite(eps_values)) or np.any(eps_values < 0):
        raise ValueError(f"eps_values must be a non-empty list of numbers >= 0, got {eps_values.tolist()}")
    span = attack.clip_max - attack.clip_min
    if np.any(eps_values >= span):
        raise ValueError(f"eps_values must be smaller than the pixel range {span}, got {eps_values.tolist()}")
    check_data_range(attack, tasks.support_x, tasks.query_x)
    params = _meta.resolve_params(model, params)
    steps, lr = check_count("steps", steps), check_number("lr", lr, low=0.0)
    columns, clean = [], None
    for e in eps_values:  # eps 0 still runs once, for the clean accuracy when every eps is 0
        if e == 0 and clean is not None:
            columns.append(clean)
            continue
        clean_ok, runs = _robust_masks(model, tasks, params=params, steps=steps, lr=lr, attack=attack, restarts=1,
                                       support="clean", support_attack=None, head_only=False, seed=seed, chunk=chunk,
                                       eps=float(e))
        clean = clean_ok.mean(axis=1)
        columns.append(clean if e == 0 else (clean_ok & runs[:, 0]).mean(axis=1))
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


def _zero_gradient_fraction(model, tasks: Tasks, params, *, steps: int, lr: float, chunk: int) -> float:
    """Fraction of queries whose input gradient (CE at the adapted weights) is all zero."""
    def build():
        model_ref = weakref.ref(model)

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

        return tf.function(functools.partial(run), reduce_retracing=True)

    fn = compiled(model, ("zero_gradient_fraction", steps, lr), build)
    zero = [fn(params, *t).numpy() for _, t in task_chunks(tasks, chunk, params[0].dtype)]
    return float(np.concatenate(zero).mean())


def adapted_sanity_checks(model: keras.Model, tasks: Tasks, *, eps: float, steps: int, lr: float,
                          params: Sequence[Any] | None = None, attack_steps: int = 20, restarts: int = 5,
                          large_eps: float = _evaluate.MASKING_LIMITS["large_eps"],
                          chance_margin: float = _evaluate.MASKING_LIMITS["chance_margin"],
                          restart_gain_limit: float = _evaluate.MASKING_LIMITS["restart_gain_limit"],
                          fgsm_margin: float = _evaluate.MASKING_LIMITS["fgsm_margin"],
                          zero_grad_limit: float = _evaluate.MASKING_LIMITS["zero_grad_limit"],
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
    Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    _meta.check_meta_model(model)
    tasks = check_tasks(tasks)
    if not (isinstance(eps, (int, float)) and 0 < eps < large_eps):
        raise ValueError(f"need 0 < eps < large_eps, got eps={eps!r}, large_eps={large_eps!r}")
    params = _meta.resolve_params(model, params)
    pgd = _attacks.PGD(eps=float(eps), steps=attack_steps, step_size=2.5 * eps / attack_steps, random_start=True)
    common = dict(params=params, steps=steps, lr=lr, seed=seed, chunk=chunk)
    report = _evaluate.SanityReport(eps=float(eps))
    num = report.numbers

    adapted = _meta.inner_loop(model, params, tf.constant(tasks.support_x[0], params[0].dtype),
                               tf.constant(tasks.support_y[0], tf.int32), steps=steps, lr=lr, first_order=True)
    probs = _evaluate.looks_like_probabilities(_meta.forward(model, adapted, tf.constant(tasks.query_x[0], params[0].dtype)).numpy())
    num["zero_gradient_fraction"] = _zero_gradient_fraction(model, tasks, params, steps=steps, lr=float(lr), chunk=chunk)
    main = robust_evaluate(model, tasks, attack=pgd, restarts=restarts, **common)
    num["clean"] = float(main.clean.mean())
    num["pgd"] = float(main.robust.mean())
    num["pgd_restarts"] = float(main.robust_restarts.mean()) if restarts > 1 else num["pgd"]
    num["fgsm"] = float(robust_evaluate(model, tasks, attack=_attacks.FGSM(eps=float(eps)), **common).robust.mean())
    big = dataclasses.replace(pgd, eps=float(large_eps), step_size=2.5 * large_eps / attack_steps)
    num["pgd_large_eps"] = float(robust_evaluate(model, tasks, attack=big, **common).robust.mean())
    clean_ok, noisy = _robust_masks(model, tasks, attack=_SignNoise(float(eps), pgd.clip_min, pgd.clip_max),
                                    restarts=1, support="clean", support_attack=None, head_only=False, **common)
    num["noise"] = float((clean_ok & noisy[:, 0]).mean(axis=1).mean())
    report.checks += _evaluate.masking_checks(
        num, probabilities=probs, restarts=restarts, large_eps=large_eps, chance_margin=chance_margin,
        restart_gain_limit=restart_gain_limit, fgsm_margin=fgsm_margin, zero_grad_limit=zero_grad_limit,
        unit="queries")
    pct = lambda a: f"{100 * a:.1f}%"  # noqa: E731
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
    tasks = check_tasks(tasks)
    attack = check_attack(attack)
    params = _meta.resolve_params(model, params)
    source = [tf.convert_to_tensor(p, params[0].dtype) for p in source_params]
    if [tuple(p.shape) for p in source] != [tuple(p.shape) for p in params]:
        raise ValueError("source_params must have the shapes of the model's weights (the same architecture)")

    def build():
        model_ref = weakref.ref(model)

        def run(params, source, sx, sy, qx, qy, query_seed):
            m = model_ref()

            def one(task):
                sx_t, sy_t, qx_t, qy_t, i = task
                adapted = _meta.inner_loop(m, params, sx_t, sy_t, steps=steps, lr=lr, first_order=True)
                adapted_source = _meta.inner_loop(m, source, sx_t, sy_t, steps=steps, lr=lr, first_order=True)
                qx_adv = attack_adapted(attack, m, adapted_source, qx_t, qy_t,
                                        seed=tf.random.experimental.stateless_fold_in(query_seed, i))
                ok = [tf.equal(tf.argmax(_meta.forward(m, adapted, q), -1, output_type=tf.int32), qy_t)
                      for q in (qx_t, qx_adv)]
                return tf.reduce_mean(tf.cast(ok[0] & ok[1], tf.float32))

            return tf.map_fn(one, (sx, sy, qx, qy, tf.range(tf.shape(sx)[0])), fn_output_signature=tf.float32)

        return tf.function(functools.partial(run), reduce_retracing=True)

    fn = compiled(model, ("transfer_accuracy", attack, steps, float(lr)), build)
    accs = [fn(params, source, *t, tf.constant([seed, 0], tf.int64)).numpy()
            for _, t in task_chunks(tasks, chunk, params[0].dtype)]
    return float(np.concatenate(accs).mean())


# --------------------------------------------------------------------------------------------------
# Choices made on validation tasks, before the test tasks are looked at
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_on_validation`: the chosen candidate and every candidate with its score.

    ``chosen``: the candidate's settings (a dict, e.g. ``{"steps": 5, "recipe": "full", "lr": 0.1}``);
    ``candidates``: every candidate's settings plus its ``"validation_robust"`` score, in the order tried.
    ``to_dict()`` gives the ``selection`` record of a results file: the chosen settings, ``"candidates"`` and
    ``"chosen_on": "validation"``.
    """

    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {**self.chosen, "candidates": [dict(c) for c in self.candidates], "chosen_on": "validation"}


def select_on_validation(candidates: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float], *,
                         tolerance: float = 0.0) -> Selection:
    """Choose settings (adaptation steps, rates, fine-tuning recipe, ...) by their score on validation tasks.

    ``candidates``: a non-empty list of dicts of settings, cheapest first (e.g. fewer steps first);
    ``score(candidate)``: its robust accuracy on *validation* tasks (higher is better), never on test tasks.
    The chosen candidate is the first whose score is within ``tolerance`` of the best, so with ``tolerance > 0``
    ties and near-ties go to the cheaper setting. Every score is kept, so a reader can see how close the choice was.
    """
    if isinstance(candidates, dict) or not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
        raise TypeError(f"candidates must be a list of dicts of settings, got {type(candidates).__name__}")
    if len(candidates) == 0:
        raise ValueError("candidates is empty; pass at least one dict of settings, e.g. [{'steps': 1}, {'steps': 5}]")
    if not all(isinstance(c, dict) for c in candidates):
        raise TypeError("every candidate must be a dict of settings, e.g. {'steps': 5, 'lr': 0.1}")
    if not callable(score):
        raise TypeError(f"score must be a function candidate -> validation accuracy, got {type(score).__name__}")
    tolerance = check_number("tolerance", tolerance, low=0.0)
    scored = []
    for c in candidates:
        value = score(dict(c))
        value = check_number("score(candidate)", value,
                             hint="score must return one number, the validation accuracy of that candidate.")
        scored.append({**c, "validation_robust": value})
    best = max(c["validation_robust"] for c in scored)
    chosen = next(c for c in scored if c["validation_robust"] >= best - tolerance)
    return Selection({k: v for k, v in chosen.items() if k != "validation_robust"}, scored)
