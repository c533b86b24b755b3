"""Adversarial attacks on logits models: FGSM, BIM, PGD (L-inf and L2, random start, restarts) and MIM.

PGD's math comes first (:func:`gradient_ascent`, one screen); then the attack specs (``FGSM(eps=0.1)``,
``PGD(eps=0.3, steps=40, step_size=0.01)``), small values that ``evaluate``, ``training`` and the meta-learning
modules take as "an attack"; the functions ``fgsm``, ``pgd``, ``bim``, ``mim`` are one-line wrappers over them.
The whole iteration loop runs in one graph-mode ``tf.function``, traced once per model, input shape and
settings and then reused. Introduced in notebooks/01_fgsm.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow as tf

from . import models
from .checks import check_bool, check_eps, check_images_and_labels, check_number, check_positive_int

__all__ = [
    "gradient_ascent", "Attack", "FGSM", "BIM", "PGD", "MIM", "fgsm", "bim", "pgd", "mim",
    "trace_count", "clear_cache",
]

#: How far outside [clip_min, clip_max] input pixels may lie (float rounding) before it is an error.
RANGE_TOLERANCE = 1e-5
_NORMS = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": 2, "l2": 2}


# --------------------------------------------------------------------------------------------------
# PGD: projected steps of gradient ascent on the loss (FGSM is one step, BIM has no random start, MIM adds momentum)
# --------------------------------------------------------------------------------------------------
#: Steps per iteration of the attack loop (see :func:`gradient_ascent` for the measurement).
LOOP_CHUNK = 10


def gradient_ascent(
    loss_fn: Callable[[tf.Tensor], tf.Tensor], x: Any, *, eps: Any, step_size: Any, steps: int,
    norm: str | int = "inf", random_start: bool = False, momentum: float | None = None,
    clip_min: float = 0.0, clip_max: float = 1.0, seed: Any = None,
) -> tf.Tensor:
    """Maximise ``loss_fn`` around ``x`` by projected gradient steps; pure TensorFlow, graph-compatible.

    ``loss_fn(x_adv)`` returns the per-example loss, shape (B,); its gradient is taken for the sum, so each
    example gets its own gradient. Each step moves by ``step_size`` along sign(grad) (``norm="inf"``) or
    grad / ||grad||_2 (``norm=2``), then projects onto the ``eps`` ball around ``x`` and onto
    [clip_min, clip_max]. ``momentum`` (MIM's decay mu) accumulates g = mu g + grad / mean|grad| and steps
    along g instead. ``random_start`` starts from a uniform point of the ball, from ``tf.random.stateless_*``
    when ``seed`` (shape (2,) int tensor) is given, else from TF's global generator. ``eps``/``step_size``:
    Python floats or scalar tensors (tensors do not cause retracing). Values are not validated here (the specs
    do that). Returns x_adv with the dtype of x, gradient stopped. Used by TRADES in notebooks/03.
    Introduced in notebooks/02_iterative_attacks.ipynb.

    The steps run in a ``tf.while_loop`` whose body holds :data:`LOOP_CHUNK` steps written out (attacks of fewer
    than ``2 * LOOP_CHUNK`` steps are written out whole), plain Python inside, so it also runs where Keras traces
    without AutoGraph (``test_step``). Measured with benchmarks/attacks.py on a quiet 2-core CPU, a loop of single
    steps ran PGD-40 at 1.66x the 40-pass floor (1.69x in CPU time) and 10-step chunks at 0.98x (0.99x), 1,000
    images, same machine and day; under load from other jobs single steps measured 0.97x-1.75x: the per-iteration overhead of the
    loop is not small next to one step on 1,000 MNIST images.
    """
    norm = _check_norm(norm)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    if not x.dtype.is_floating:
        raise TypeError(f"x must be a float tensor, got {x.dtype.name}")
    eps, step_size = tf.cast(eps, x.dtype), tf.cast(step_size, x.dtype)
    x_adv = _project(x + _random_delta(x, eps, norm, seed), x, eps, norm, clip_min, clip_max) if random_start else x

    def step(i: tf.Tensor, x_adv: tf.Tensor, g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(x_adv)
        grad = tape.gradient(loss, x_adv)
        if grad is None:
            raise ValueError("loss_fn(x_adv) does not depend on x_adv: its gradient is None")
        if momentum is not None:
            g = momentum * g + grad / tf.maximum(tf.reduce_mean(tf.abs(grad), axis=_pixel_axes(x), keepdims=True), 1e-12)
            grad = g
        return i + 1, _project(x_adv + step_size * _ascent_direction(grad, norm), x, eps, norm, clip_min, clip_max), g

    steps = check_positive_int("steps", steps)
    chunk = min(steps, LOOP_CHUNK)
    loops, rest = divmod(steps, chunk)

    def steps_of(n: int):
        def body(i: tf.Tensor, x_adv: tf.Tensor, g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            for _ in range(n):
                i, x_adv, g = step(i, x_adv, g)
            return i, x_adv, g
        return body

    state = (tf.constant(0), x_adv, tf.zeros_like(x))
    if loops > 1:  # a tf.while_loop whose body holds `chunk` steps
        state = tf.while_loop(lambda i, *_: i < loops * chunk, steps_of(chunk), state)
    else:  # short attacks: every step in the graph
        rest += loops * chunk
    _, x_adv, _ = steps_of(rest)(*state)
    return tf.stop_gradient(x_adv)


def _ascent_direction(grad: tf.Tensor, norm: str | int) -> tf.Tensor:
    """The steepest-ascent unit step for the norm: sign(grad) for L-inf, grad / ||grad||_2 for L2."""
    if norm == "inf":
        return tf.sign(grad)
    return tf.math.l2_normalize(grad, axis=_pixel_axes(grad), epsilon=1e-24)


def _project(x_adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor, norm: str | int, clip_min: float, clip_max: float) -> tf.Tensor:
    """Project onto the eps ball around x, then onto the pixel range."""
    if norm == "inf":
        x_adv = tf.clip_by_value(x_adv, x - eps, x + eps)
    else:
        # delta * min(1, eps / ||delta||), written out: tf.clip_by_norm divides 0 by 0 when delta = 0 and eps = 0
        delta = x_adv - x
        length = tf.norm(tf.reshape(delta, [tf.shape(delta)[0], -1]), axis=1)
        scale = tf.minimum(1.0, tf.math.divide_no_nan(eps, length))  # ||delta|| = 0: delta is 0, any scale will do
        x_adv = x + delta * tf.reshape(scale, [-1] + [1] * (x.shape.rank - 1))
    return tf.clip_by_value(x_adv, clip_min, clip_max)


def _random_delta(x: tf.Tensor, eps: tf.Tensor, norm: str | int, seed: tf.Tensor | None) -> tf.Tensor:
    """A uniform random point of the eps ball (L-inf: uniform cube; L2: uniform in the ball)."""
    shape = tf.shape(x)
    if norm == "inf":
        if seed is None:
            unit = tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype)
        else:
            unit = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=x.dtype)
        return eps * unit
    axes = _pixel_axes(x)
    dim = float(np.prod(x.shape[1:]))
    radius_shape = tf.concat([shape[:1], tf.ones([len(axes)], tf.int32)], 0)
    if seed is None:
        direction = tf.random.normal(shape, dtype=x.dtype)
        u = tf.random.uniform(radius_shape, dtype=x.dtype)
    else:
        direction = tf.random.stateless_normal(shape, seed, dtype=x.dtype)
        u = tf.random.stateless_uniform(radius_shape, tf.random.experimental.stateless_fold_in(seed, 1), dtype=x.dtype)
    return eps * tf.math.l2_normalize(direction, axis=axes) * u ** (1.0 / dim)


def _pixel_axes(x: tf.Tensor) -> list[int]:
    return list(range(1, x.shape.rank))


def _attack(
    model: Any, x: tf.Tensor, y: tf.Tensor, *, eps: Any, step_size: Any, steps: int, norm: str | int,
    random_start: bool, restarts: int, momentum: float | None, targeted: bool, clip_min: float,
    clip_max: float, seed: Any,
) -> tf.Tensor:
    """The attack on a model as TensorFlow ops: cross-entropy on the logits (float32), ascended or, targeted,
    descended towards ``y``.

    With restarts, per example, a restart that succeeds (misclassifies; targeted: predicts the target) beats
    one that does not, and among equals the higher loss wins, so an example counts as broken if any restart
    breaks it. Restart ``r`` starts from the random seed ``stateless_fold_in(seed, r)``.
    """
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)

    def score(x_adv: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(succeeded, loss to maximise) per example."""
        logits = tf.cast(model(x_adv, training=False), tf.float32)
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return (hit, -loss) if targeted else (tf.logical_not(hit), loss)

    def run(r: Any) -> tf.Tensor:
        seed_r = None if seed is None else tf.random.experimental.stateless_fold_in(seed, r)
        return gradient_ascent(lambda xa: score(xa)[1], x, eps=eps, step_size=step_size, steps=steps, norm=norm,
                               random_start=random_start, momentum=momentum, clip_min=clip_min,
                               clip_max=clip_max, seed=seed_r)

    best = run(0)
    if restarts > 1:
        keep_shape = tf.concat([tf.shape(x)[:1], tf.ones([x.shape.rank - 1], tf.int32)], 0)

        def body(r: tf.Tensor, best: tf.Tensor, best_ok: tf.Tensor, best_loss: tf.Tensor) -> tuple:
            cand = run(r)
            ok, loss = score(cand)
            better = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
            return (r + 1, tf.where(tf.reshape(better, keep_shape), cand, best), ok | best_ok,
                    tf.where(better, loss, best_loss))

        _, best, _, _ = tf.while_loop(lambda r, *_: r < restarts, body, [tf.constant(1), best, *score(best)])
    return tf.stop_gradient(tf.cast(best, in_dtype))


# --------------------------------------------------------------------------------------------------
# Attack specs: attacks as values (each setting is declared and validated here, once)
# --------------------------------------------------------------------------------------------------
class Attack:
    """Base of the attack specs: ``spec(model, x, y)`` (numpy) and ``spec.generate(model, x, y)`` (tensors).

    Subclasses are frozen dataclasses; their fields are the attack's settings. The repr shows ``eps`` and
    every setting that differs from its default, e.g. ``PGD(eps=0.3, steps=40, step_size=0.01)``.
    """

    label: ClassVar[str] = "attack"
    _always_shown: ClassVar[tuple[str, ...]] = ("eps", "steps", "step_size")
    eps: float
    targeted: bool
    clip_min: float
    clip_max: float

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default or f.name in self._always_shown:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _validate_common(self) -> None:
        object.__setattr__(self, "eps", check_eps(self.eps))
        clip_min, clip_max = _check_clip(self.clip_min, self.clip_max)
        object.__setattr__(self, "clip_min", clip_min)
        object.__setattr__(self, "clip_max", clip_max)
        object.__setattr__(self, "targeted", check_bool("targeted", self.targeted))
        if hasattr(self, "batch_size"):
            _check_batch_size(self.batch_size)

    @property
    def name(self) -> str:
        """A short label for tables and plots, e.g. "FGSM", "PGD-40", "PGD-40 L2 x5"."""
        return self._name() + (" targeted" if self.targeted else "")

    def _name(self) -> str:
        return self.label

    @property
    def family(self) -> str:
        """The threat model, for attack pools (:class:`AttackPool`): "linf", "l2" or "spatial"."""
        return "l2" if getattr(self, "norm", "inf") == 2 else "linf"

    def with_eps(self, eps: float) -> "Attack":
        """The same attack with another radius (other settings unchanged, step_size included)."""
        return dataclasses.replace(self, eps=eps)

    def _settings(self) -> dict[str, Any]:
        """The settings of :func:`_attack` other than eps, step_size and seed (the compiled function's key)."""
        raise NotImplementedError

    def _step_size(self, eps: Any) -> Any:
        return self.step_size  # type: ignore[attr-defined]

    def generate(self, model: Any, x: Any, y: Any, *, eps: Any = None, seed: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """Adversarial examples as a tensor, built from TensorFlow ops only.

        Callable inside another ``tf.function`` (e.g. a Keras ``train_step``). ``model``: any callable
        ``f(x, training=False) -> logits``. ``x``: float tensor (B, H, W, C) in [clip_min, clip_max]; ``y``: int
        class ids (B,). ``eps``: Python float or scalar tensor / ``tf.Variable`` overriding ``self.eps`` (for eps
        ramps; no retracing when it is a tensor). ``seed``: optional shape-(2,) int tensor for stateless random
        starts (else TF's global generator). ``step_size``: float or scalar tensor overriding the spec's step
        (e.g. one that shrinks with an eps ramp). No value validation, no batching. Returns x_adv (dtype of x,
        gradient stopped) inside the eps ball and the pixel range.
        Introduced in notebooks/02_iterative_attacks.ipynb.
        """
        eps = self.eps if eps is None else eps
        step_size = self._step_size(eps) if step_size is None else step_size
        return _attack(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), eps=eps, step_size=step_size,
                       seed=seed, **self._settings())

    def __call__(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Run the attack on numpy (or tensor) inputs: validated, batched, compiled; numpy out."""
        return _run(self, model, x, y)


@dataclass(frozen=True, repr=False)
class FGSM(Attack):
    """Fast Gradient Sign Method: x_adv = clip(x + eps * sign(grad_x CE(model(x), y)), clip_min, clip_max).

    ``FGSM(eps=0.1)(model, x, y)``: ``model`` returns logits (B, classes); ``x``: float images (B, H, W, C) in
    [clip_min, clip_max] (numpy or tensor); ``y``: int class ids (B,); with ``targeted=True`` they are the
    *target* classes and the step goes down the loss instead. One-hot labels are rejected: convert with
    ``np.argmax(y, axis=1)``. ``batch_size`` bounds memory (None: one batch). ``jit_compile``: None means XLA
    on GPU only. Returns float32 numpy, same shape as x, with ``|x_adv - x| <= eps`` and pixels in range.
    Introduced in notebooks/01_fgsm.ipynb.
    """

    label: ClassVar[str] = "FGSM"
    eps: float
    targeted: bool = False
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        self._validate_common()

    def _step_size(self, eps: Any) -> Any:
        return eps

    def _settings(self) -> dict[str, Any]:
        return dict(steps=1, norm="inf", random_start=False, restarts=1, momentum=None, targeted=self.targeted,
                    clip_min=self.clip_min, clip_max=self.clip_max)


@dataclass(frozen=True, repr=False)
class PGD(Attack):
    """Projected Gradient Descent (Madry et al.): ``steps`` gradient-ascent steps projected on the eps ball.

    ``PGD(eps=0.3, steps=40, step_size=0.01)(model, x, y)``. ``norm``: "inf" (signed steps, L-inf ball) or 2
    (normalised steps, L2 ball). ``random_start``: begin at a uniform random point of the ball; ``restarts`` > 1
    repeats from new random starts and keeps, per example, a restart that misclassifies (targeted: hits the
    target) if there is one, else the one with the highest loss: an example counts as broken if any restart
    breaks it. ``seed`` makes the random starts repeatable (None: drawn from numpy's global generator, which
    ``runtime.setup`` seeds). Other settings as in :class:`FGSM`. Returns float32 numpy of x's shape, inside
    the ball and the pixel range. Introduced in notebooks/02_iterative_attacks.ipynb.
    """

    label: ClassVar[str] = "PGD"
    eps: float
    steps: int = 40
    step_size: float = 0.01
    norm: str | int = "inf"
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None
    seed: int | None = None
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        self._validate_common()
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        object.__setattr__(self, "step_size", _check_step_size(self.step_size))
        object.__setattr__(self, "norm", _check_norm(self.norm))
        object.__setattr__(self, "random_start", check_bool("random_start", self.random_start))
        object.__setattr__(self, "restarts", _check_restarts(self.restarts, self.random_start))

    def _name(self) -> str:
        name = f"{self.label}-{self.steps}"
        if self.norm == 2:
            name += " L2"
        if self.restarts > 1:
            name += f" x{self.restarts}"
        return name

    def _settings(self) -> dict[str, Any]:
        return dict(steps=self.steps, norm=self.norm, random_start=self.random_start, restarts=self.restarts,
                    momentum=None, targeted=self.targeted, clip_min=self.clip_min, clip_max=self.clip_max)


@dataclass(frozen=True, repr=False)
class BIM(PGD):
    """Basic Iterative Method (Kurakin et al.): L-inf PGD from x itself (no random start, no restarts).

    Settings and result as in :class:`PGD`. Introduced in notebooks/02_iterative_attacks.ipynb.
    """

    label: ClassVar[str] = "BIM"
    random_start: bool = False


@dataclass(frozen=True, repr=False)
class MIM(Attack):
    """Momentum Iterative Method (Dong et al.): g = decay * g + grad / mean|grad|; step along sign(g).

    ``MIM(eps=0.3, steps=10, step_size=0.03)(model, x, y)``. Starts at x (no random start). Other settings and
    result as in :class:`PGD`. Introduced in notebooks/02_iterative_attacks.ipynb.
    """

    label: ClassVar[str] = "MIM"
    eps: float
    steps: int = 10
    step_size: float = 0.03
    decay: float = 1.0
    norm: str | int = "inf"
    targeted: bool = False
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        self._validate_common()
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        object.__setattr__(self, "step_size", _check_step_size(self.step_size))
        object.__setattr__(self, "norm", _check_norm(self.norm))
        object.__setattr__(self, "decay", check_number("decay", self.decay, low=0.0,
                                                       hint="It is the momentum factor; 1.0 in the MIM paper."))

    def _name(self) -> str:
        return f"{self.label}-{self.steps}" + (" L2" if self.norm == 2 else "")

    def _settings(self) -> dict[str, Any]:
        return dict(steps=self.steps, norm=self.norm, random_start=False, restarts=1, momentum=self.decay,
                    targeted=self.targeted, clip_min=self.clip_min, clip_max=self.clip_max)


# --------------------------------------------------------------------------------------------------
# The functions: one line each over the specs
# --------------------------------------------------------------------------------------------------
def fgsm(model: Any, x: Any, y: Any, eps: float, *, targeted: bool = False, clip_min: float = 0.0,
         clip_max: float = 1.0, batch_size: int | None = None, jit_compile: bool | None = None) -> np.ndarray:
    """``FGSM(eps, ...)(model, x, y)``: see :class:`FGSM`. Introduced in notebooks/01_fgsm.ipynb."""
    return FGSM(eps=eps, targeted=targeted, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size,
                jit_compile=jit_compile)(model, x, y)


def pgd(model: Any, x: Any, y: Any, eps: float, *, step_size: float, steps: int, norm: str | int = "inf",
        random_start: bool = True, restarts: int = 1, targeted: bool = False, clip_min: float = 0.0,
        clip_max: float = 1.0, batch_size: int | None = None, seed: int | None = None,
        jit_compile: bool | None = None) -> np.ndarray:
    """``PGD(eps, ...)(model, x, y)``: see :class:`PGD`. Introduced in notebooks/02_iterative_attacks.ipynb."""
    return PGD(eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start, restarts=restarts,
               targeted=targeted, clip_min=clip_min, clip_max=clip_max, batch_size=batch_size, seed=seed,
               jit_compile=jit_compile)(model, x, y)


def bim(model: Any, x: Any, y: Any, eps: float, *, step_size: float, steps: int, targeted: bool = False,
        clip_min: float = 0.0, clip_max: float = 1.0, batch_size: int | None = None,
        jit_compile: bool | None = None) -> np.ndarray:
    """``BIM(eps, ...)(model, x, y)``: see :class:`BIM`. Introduced in notebooks/02_iterative_attacks.ipynb."""
    return BIM(eps=eps, steps=steps, step_size=step_size, targeted=targeted, clip_min=clip_min, clip_max=clip_max,
               batch_size=batch_size, seed=0, jit_compile=jit_compile)(model, x, y)


def mim(model: Any, x: Any, y: Any, eps: float, *, step_size: float, steps: int, decay: float = 1.0,
        norm: str | int = "inf", targeted: bool = False, clip_min: float = 0.0, clip_max: float = 1.0,
        batch_size: int | None = None, jit_compile: bool | None = None) -> np.ndarray:
    """``MIM(eps, ...)(model, x, y)``: see :class:`MIM`. Introduced in notebooks/02_iterative_attacks.ipynb."""
    return MIM(eps=eps, steps=steps, step_size=step_size, decay=decay, norm=norm, targeted=targeted,
               clip_min=clip_min, clip_max=clip_max, batch_size=batch_size, jit_compile=jit_compile)(model, x, y)


# --------------------------------------------------------------------------------------------------
# Running a spec on numpy inputs: validation, a compiled function cached per model and settings, batches
# --------------------------------------------------------------------------------------------------
_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()
_TRACES: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def trace_count(model: Any) -> int:
    """How many times attack graphs were traced for ``model`` (repeated calls should not add any)."""
    return _TRACES.get(model, 0)


def clear_cache(model: Any = None) -> None:
    """Drop the compiled attack functions of ``model`` (all models when None)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)


def _run(spec: Attack, model: Any, x: Any, y: Any) -> np.ndarray:
    """Validate, then run the spec's cached compiled attack batch by batch; numpy out."""
    x, y = _prepare(model, x, y, spec.clip_min, spec.clip_max)
    fn = _compiled(model, spec._settings(), tuple(x.shape[1:]), spec.jit_compile)
    eps_t = tf.constant(spec.eps, tf.float32)
    step_t = tf.constant(float(spec._step_size(spec.eps)), tf.float32)
    rng = _seed_pair(getattr(spec, "seed", 0))
    batch_size = spec.batch_size or len(x)
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        seed_t = tf.constant(rng.integers(0, 2**62, size=2), tf.int64)
        out[start:stop] = fn(tf.constant(x[start:stop]), tf.constant(y[start:stop]), eps_t, step_t, seed_t).numpy()
    return out


def _compiled(model: Any, settings: dict[str, Any], sample_shape: tuple[int, ...], jit_compile: bool | None) -> Any:
    # XLA on GPU; plain graph mode on CPU (XLA ran PGD 2-4x slower on our 2-core CPUs).
    jit = bool(tf.config.list_logical_devices("GPU")) if jit_compile is None else bool(jit_compile)
    key = (tuple(sorted(settings.items(), key=lambda kv: kv[0])), sample_shape, jit)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    model_ref = weakref.ref(model)  # the cache must not keep the model alive
    # A partial (not a closure) gives each compiled function its own key in TF's retracing detector.
    run = functools.partial(_traced_attack, model_ref, settings)
    signature = [
        tf.TensorSpec((None, *sample_shape), tf.float32, name="x"),
        tf.TensorSpec((None,), tf.int64, name="y"),
        tf.TensorSpec((), tf.float32, name="eps"),
        tf.TensorSpec((), tf.float32, name="step_size"),
        tf.TensorSpec((2,), tf.int64, name="seed"),
    ]
    fn = tf.function(run, input_signature=signature, jit_compile=jit)
    per_model[key] = fn
    return fn


def _traced_attack(model_ref: Any, settings: dict[str, Any], x: tf.Tensor, y: tf.Tensor, eps: tf.Tensor,
                   step_size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    model = model_ref()
    _TRACES[model] = _TRACES.get(model, 0) + 1  # Python side effect: runs only while tracing
    return _attack(model, x, y, eps=eps, step_size=step_size, seed=seed, **settings)


def _seed_pair(seed: Any) -> np.random.Generator:
    """The generator of the per-batch seed pairs: from ``seed``, or from numpy's global state when None (so
    ``runtime.setup(seed=...)`` makes runs repeatable)."""
    if seed is None:
        return np.random.default_rng(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


# --------------------------------------------------------------------------------------------------
# Validation of attack settings and inputs (Python values only: runs before anything is traced);
# the checks shared with other modules are in tutorial_lib.checks
# --------------------------------------------------------------------------------------------------
def _check_step_size(step_size: Any) -> float:
    return check_number("step_size", step_size, low=0.0, low_inclusive=False,
                        hint="A typical L-inf choice is 2.5 * eps / steps.")


def _check_restarts(restarts: Any, random_start: bool) -> int:
    restarts = check_positive_int("restarts", restarts)
    if restarts > 1 and not random_start:
        raise ValueError(
            f"restarts={restarts} needs random_start=True: without a random start every restart "
            "computes the same perturbation"
        )
    return restarts


def _check_norm(norm: Any) -> str | int:
    """Canonical norm: ``"inf"`` or ``2``. Accepts "inf", np.inf, "linf", 2, "2", "l2"."""
    if isinstance(norm, bool):
        raise ValueError(f"unknown norm {norm!r}; use norm='inf' (L-infinity) or norm=2 (L2)")
    if isinstance(norm, (int, float, np.integer, np.floating)):
        if norm == np.inf:
            return "inf"
        if norm == 2:
            return 2
    elif isinstance(norm, str) and norm.strip().lower() in _NORMS:
        return _NORMS[norm.strip().lower()]
    raise ValueError(f"unknown norm {norm!r}; use norm='inf' (L-infinity) or norm=2 (L2)")


def _check_clip(clip_min: Any, clip_max: Any) -> tuple[float, float]:
    clip_min = check_number("clip_min", clip_min)
    clip_max = check_number("clip_max", clip_max)
    if clip_min >= clip_max:
        raise ValueError(
            f"clip_min must be < clip_max, got clip_min={clip_min}, clip_max={clip_max} "
            "(the valid pixel range; [0, 1] for the series' images)"
        )
    return clip_min, clip_max


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    return check_positive_int("batch_size", batch_size, hint=" (or None for one batch)")


def _num_classes(model: Any, x: np.ndarray) -> int:
    shape = None
    try:
        shape = tuple(model.output_shape)
    except Exception:  # subclassed models have no static output shape
        pass
    if not shape or shape[-1] is None:
        shape = tuple(model(tf.constant(x[:1]), training=False).shape)
    if len(shape) != 2:
        raise ValueError(
            f"the model must return logits of shape (batch, classes), but its output has shape {shape}"
        )
    return int(shape[-1])


def _prepare(model: Any, x: Any, y: Any, clip_min: float, clip_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Validate the model, images (inside [clip_min, clip_max]) and labels (inside the model's classes)."""
    models.check_logits_model(model)
    x, y = check_images_and_labels(x, y)
    lo, hi = float(x.min()), float(x.max())
    if lo < clip_min - RANGE_TOLERANCE or hi > clip_max + RANGE_TOLERANCE:
        hint = " (uint8 images? divide by 255 first)" if hi > 1.5 and clip_max <= 1 else ""
        raise ValueError(
            f"x has values in [{lo:.4g}, {hi:.4g}], outside the valid range [clip_min, clip_max] = "
            f"[{clip_min}, {clip_max}]{hint}; rescale x or pass the clip_min/clip_max of your data"
        )
    if lo < clip_min or hi > clip_max:  # float rounding only
        x = np.clip(x, clip_min, clip_max)
    n_classes = _num_classes(model, x)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"labels must be in 0..{n_classes - 1} (the model has {n_classes} outputs), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )
    return x, y


# --------------------------------------------------------------------------------------------------
# Spatial attack: the worst of a grid of rotations and translations (forward passes only)
# --------------------------------------------------------------------------------------------------
#: Attack families an :class:`AttackPool` can hold (see :attr:`Attack.family`).
FAMILIES = ("linf", "l2", "spatial")
_INTERPOLATIONS = ("nearest", "bilinear")


def _check_grid_axis(steps_name: str, steps: Any, max_name: str, maximum: Any) -> tuple[int, float]:
    """An odd number of grid values in [-maximum, maximum] (odd: the grid is symmetric and contains 0)."""
    maximum = check_number(max_name, maximum)
    if maximum < 0:
        raise ValueError(f"{max_name} must be >= 0 (the grid spans -{max_name} .. +{max_name}), got {maximum}")
    steps = check_positive_int(steps_name, steps)
    if steps % 2 == 0:
        raise ValueError(f"{steps_name} must be odd so that the grid is symmetric and contains 0 (no change), "
                         f"got {steps}; use {steps - 1} or {steps + 1}")
    if steps == 1 and maximum != 0:
        raise ValueError(f"{steps_name}=1 leaves only the value 0, but {max_name}={maximum}: "
                         f"use {steps_name} >= 3 or {max_name}=0")
    if steps > 1 and maximum == 0:
        raise ValueError(f"{max_name}=0 with {steps_name}={steps} repeats the value 0: use {steps_name}=1")
    return steps, maximum


def spatial_grid(max_angle: float, max_shift: float, angle_steps: int, shift_steps: int) -> np.ndarray:
    """The grid of the spatial attack: float64 array (angle_steps * shift_steps**2, 3) of (angle, dx, dy).

    Angles in degrees, ``angle_steps`` values evenly spaced in [-max_angle, max_angle]; shifts in pixels,
    ``shift_steps`` values in [-max_shift, max_shift] for each of dx (right) and dy (down). Step counts are odd,
    so the identity (0, 0, 0) is a grid point. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    angle_steps, max_angle = _check_grid_axis("angle_steps", angle_steps, "max_angle", max_angle)
    shift_steps, max_shift = _check_grid_axis("shift_steps", shift_steps, "max_shift", max_shift)
    angles = np.linspace(-max_angle, max_angle, angle_steps)
    shifts = np.linspace(-max_shift, max_shift, shift_steps)
    a, dx, dy = np.meshgrid(angles, shifts, shifts, indexing="ij")
    return np.stack([a.ravel(), dx.ravel(), dy.ravel()], axis=1)


def _transform_rows(angle: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Rows (N, 8) for ImageProjectiveTransformV3: rotate about the image centre, then shift.

    An input pixel p goes to q = c + R(p - c) + t, with R a counter-clockwise rotation as displayed (rows grow
    downwards) and t = (dx, dy). The op needs the inverse map, output q -> input p = c + R^T (q - c - t).
    Computed in float64 (so 90 degrees and integer shifts land exactly on pixels), returned as float32.
    """
    theta = tf.cast(angle, tf.float64) * (np.pi / 180.0)
    dx, dy = tf.cast(dx, tf.float64), tf.cast(dy, tf.float64)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zero = tf.zeros_like(theta)
    rows = [cos, -sin, cx - cos * (cx + dx) + sin * (cy + dy),
            sin, cos, cy - sin * (cx + dx) - cos * (cy + dy), zero, zero]
    return tf.cast(tf.stack(rows, axis=-1), tf.float32)


def spatial_transform(x: Any, angle: Any = 0.0, dx: Any = 0.0, dy: Any = 0.0, *, interpolation: str = "nearest",
                      fill_value: float = 0.0) -> tf.Tensor:
    """Rotate images by ``angle`` degrees (counter-clockwise as displayed) about their centre, then shift them
    ``dx`` pixels right and ``dy`` pixels down; pixels from outside the image are ``fill_value``.

    ``x``: float tensor (B, H, W, C). ``angle``, ``dx``, ``dy``: scalars (the same for every image) or (B,)
    tensors (one per image). ``interpolation``: "nearest" (every output pixel is an input pixel or
    ``fill_value``: no new grey levels) or "bilinear". TensorFlow ops only (graph-compatible); no gradient
    with respect to ``x`` (the spatial attack needs forward passes only). Introduced in
    notebooks/06_unseen_attacks.ipynb.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or x.shape[1] is None or x.shape[2] is None:
        raise ValueError(f"x must be images of shape (batch, height, width, channels) with known height and "
                         f"width, got shape {x.shape}")
    angle, dx, dy = (tf.reshape(tf.convert_to_tensor(v, tf.float64), [-1]) for v in (angle, dx, dy))
    shape = tf.broadcast_dynamic_shape(tf.broadcast_dynamic_shape(tf.shape(angle), tf.shape(dx)), tf.shape(dy))
    transforms = _transform_rows(*(tf.broadcast_to(v, shape) for v in (angle, dx, dy)), x.shape[1], x.shape[2])
    return _apply_transforms(x, transforms, interpolation, fill_value)


def _apply_transforms(x: tf.Tensor, transforms: tf.Tensor, interpolation: str, fill_value: Any) -> tf.Tensor:
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(x, tf.float32), transforms=transforms, output_shape=tf.shape(x)[1:3],
        fill_value=tf.cast(fill_value, tf.float32), interpolation=interpolation.upper(), fill_mode="CONSTANT")
    return tf.cast(out, x.dtype)


def _spatial_attack(model: Any, x: tf.Tensor, y: tf.Tensor, *, grid: np.ndarray, scale: Any, targeted: bool,
                    interpolation: str, fill_value: float) -> tf.Tensor:
    """The worst grid point per example, as TensorFlow ops: a tf.while_loop of one forward pass per point.

    A grid point that succeeds (misclassifies; targeted: predicts the target) beats one that does not; among
    equals the higher loss (targeted: the lower loss on the target) wins. So an example counts as broken if any
    grid point breaks it. ``scale`` (the spec's eps) multiplies every angle and shift.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or x.shape[1] is None or x.shape[2] is None:
        raise ValueError(f"the spatial attack needs images of shape (batch, height, width, channels) with known "
                         f"height and width, got shape {x.shape}")
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    points = tf.constant(grid, tf.float64) * tf.cast(scale, tf.float64)
    transforms = _transform_rows(points[:, 0], points[:, 1], points[:, 2], x.shape[1], x.shape[2])
    keep_shape = tf.concat([tf.shape(x)[:1], tf.ones([3], tf.int32)], 0)

    def body(i: tf.Tensor, best: tf.Tensor, best_ok: tf.Tensor, best_loss: tf.Tensor) -> tuple:
        cand = _apply_transforms(x, transforms[i][None], interpolation, fill_value)
        logits = tf.cast(model(cand, training=False), tf.float32)
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        ok, loss = (hit, -loss) if targeted else (tf.logical_not(hit), loss)
        better = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
        return (i + 1, tf.where(tf.reshape(better, keep_shape), cand, best), ok | best_ok,
                tf.where(better, loss, best_loss))

    batch = tf.shape(x)[:1]
    start = [tf.constant(0), x, tf.zeros(batch, tf.bool), tf.fill(batch, tf.constant(-np.inf, tf.float32))]
    _, best, _, _ = tf.while_loop(lambda i, *_: i < len(grid), body, start)
    return tf.stop_gradient(tf.cast(best, in_dtype))


def _spatial_compiled(model: Any, settings: dict[str, Any], sample_shape: tuple[int, ...]) -> Any:
    """One tf.function per model, settings and image shape (kept in the attacks' cache; traced once)."""
    key = ("spatial", tuple(sorted(settings.items())), sample_shape)
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        model_ref = weakref.ref(model)
        run = functools.partial(_traced_spatial, model_ref, settings)
        signature = [tf.TensorSpec((None, *sample_shape), tf.float32, name="x"),
                     tf.TensorSpec((None,), tf.int64, name="y"), tf.TensorSpec((), tf.float32, name="scale")]
        per_model[key] = tf.function(run, input_signature=signature)
    return per_model[key]


def _traced_spatial(model_ref: Any, settings: dict[str, Any], x: tf.Tensor, y: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    model = model_ref()
    _TRACES[model] = _TRACES.get(model, 0) + 1  # Python side effect: runs only while tracing
    grid = spatial_grid(settings["max_angle"], settings["max_shift"], settings["angle_steps"], settings["shift_steps"])
    return _spatial_attack(model, x, y, grid=grid, scale=scale, targeted=settings["targeted"],
                           interpolation=settings["interpolation"], fill_value=settings["fill_value"])


@dataclass(frozen=True, repr=False)
class Spatial(Attack):
    """The worst of a grid of rotations and translations (Engstrom et al., ICML 2019, "Exploring the Landscape
    of Spatial Robustness"): ``Spatial(max_angle=30, max_shift=3)(model, x, y)``.

    Every image is rotated by each of ``angle_steps`` angles in [-max_angle, max_angle] degrees and shifted by
    each of ``shift_steps`` x ``shift_steps`` offsets in [-max_shift, max_shift] pixels (see
    :func:`spatial_grid`, :func:`spatial_transform`); per example the attack keeps a grid point that
    misclassifies (targeted: that predicts the target ``y``) if there is one, the highest-loss one among them,
    else the highest-loss point overall. So an example is broken if any grid point breaks it. Forward passes
    only (one per grid point and batch, in one compiled ``tf.while_loop``), no gradients, no randomness.

    ``interpolation="nearest"`` (default): every output pixel is an input pixel or the fill, so the attack
    changes geometry only, 90-degree turns and whole-pixel shifts are exact, and no blur (a second, photometric
    perturbation the model might react to) is mixed in; "bilinear" gives smoother rotations. Pixels moved in
    from outside the image are ``clip_min`` (black; 0 for the series' images). ``eps`` scales the whole grid:
    angles and shifts are multiplied by it, so 1 (default) is the grid as given, ``with_eps(0.5)`` halves the
    budget and an eps ramp 0 -> 1 grows the grid from the identity. Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "Spatial"
    max_angle: float = 30.0
    max_shift: float = 3.0
    angle_steps: int = 7
    shift_steps: int = 5
    eps: float = 1.0
    targeted: bool = False
    interpolation: str = "nearest"
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self._validate_common()
        angle_steps, max_angle = _check_grid_axis("angle_steps", self.angle_steps, "max_angle", self.max_angle)
        shift_steps, max_shift = _check_grid_axis("shift_steps", self.shift_steps, "max_shift", self.max_shift)
        for name, value in (("angle_steps", angle_steps), ("max_angle", max_angle),
                            ("shift_steps", shift_steps), ("max_shift", max_shift)):
            object.__setattr__(self, name, value)
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")

    def __repr__(self) -> str:
        parts = [f"max_angle={self.max_angle:g}", f"max_shift={self.max_shift:g}",
                 f"grid=({self.angle_steps}, {self.shift_steps}, {self.shift_steps})"]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("eps", "targeted", "interpolation", "clip_min", "clip_max", "batch_size"):
            if getattr(self, name) != defaults[name]:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"Spatial({', '.join(parts)})"

    @property
    def family(self) -> str:
        return "spatial"

    @property
    def grid(self) -> np.ndarray:
        """The (angle, dx, dy) grid points at eps = 1, shape (grid_points, 3); see :func:`spatial_grid`."""
        return spatial_grid(self.max_angle, self.max_shift, self.angle_steps, self.shift_steps)

    @property
    def grid_points(self) -> int:
        """Forward passes per image: angle_steps * shift_steps ** 2."""
        return self.angle_steps * self.shift_steps ** 2

    def _name(self) -> str:
        return (f"Spatial {self.max_angle * self.eps:g}deg {self.max_shift * self.eps:g}px "
                f"({self.angle_steps}x{self.shift_steps}x{self.shift_steps})")

    def _spatial_settings(self) -> dict[str, Any]:
        return dict(max_angle=self.max_angle, max_shift=self.max_shift, angle_steps=self.angle_steps,
                    shift_steps=self.shift_steps, targeted=self.targeted, interpolation=self.interpolation,
                    fill_value=self.clip_min)

    def generate(self, model: Any, x: Any, y: Any, *, eps: Any = None, seed: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """The worst grid point per example as a tensor, from TensorFlow ops only (see :meth:`Attack.generate`).

        ``model``: any callable ``f(x, training=False) -> logits`` (e.g. a meta-learner's adapted weights).
        ``x``: float tensor (B, H, W, C); ``y``: int class ids (B,). ``eps``: scale of the grid overriding
        ``self.eps`` (Python float or scalar tensor). ``seed`` and ``step_size`` are accepted and ignored
        (the attack is deterministic and takes no steps), so it can stand wherever a gradient attack does.
        Returns x_adv (dtype of x, gradient stopped), each image an exact rotation/translation
        of its input.
        """
        settings = self._spatial_settings()
        return _spatial_attack(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), grid=self.grid,
                               scale=self.eps if eps is None else eps, targeted=self.targeted,
                               interpolation=settings["interpolation"], fill_value=settings["fill_value"])

    def __call__(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Run the attack on numpy (or tensor) inputs: validated, batched, compiled; numpy out."""
        x, y = _prepare(model, x, y, self.clip_min, self.clip_max)
        if x.ndim != 4:
            raise ValueError(f"the spatial attack needs images of shape (batch, height, width, channels), "
                             f"got shape {x.shape}; add a channel axis with x[..., None]")
        fn = _spatial_compiled(model, self._spatial_settings(), tuple(x.shape[1:]))
        scale = tf.constant(self.eps, tf.float32)
        batch_size = self.batch_size or len(x)
        out = np.empty_like(x)
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            out[start:stop] = fn(tf.constant(x[start:stop]), tf.constant(y[start:stop]), scale).numpy()
        return out


__all__ += ["FAMILIES", "spatial_grid", "spatial_transform", "Spatial"]


# --------------------------------------------------------------------------------------------------
# Attack pools: each meta-training task draws its attack
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class AttackPool:
    """A set of attack specs with sampling weights; each meta-training task draws one of them.

    ``AttackPool([FGSM(eps=0.1), PGD(eps=0.1, steps=10, step_size=0.025), PGD(eps=1.5, norm=2, ...)],
    weights=[1, 2, 1])``. ``weights`` (default: equal) are positive and need not sum to 1. ``held_out``
    names the family kept out of training (e.g. "spatial"): a pool holding a spec of that family is an error,
    so a leave-one-out experiment cannot leak the held-out attack into training; :meth:`without` builds such a
    pool from a full one. All specs must share one pixel range (clip_min, clip_max).

    Drawing: :meth:`sample` gives one index per task (numpy, seeded); :meth:`draw` gives one index as a tensor
    inside a ``tf.function``; :meth:`generate` runs the drawn spec with ``tf.switch_case`` (graph mode, the
    model may be any ``f(x, training=False) -> logits``, e.g. adapted weights). Introduced in
    notebooks/06_unseen_attacks.ipynb.
    """

    attacks: tuple[Attack, ...]
    weights: tuple[float, ...] | None = None
    held_out: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attacks, Attack):
            raise TypeError("attacks must be a list of attack specs, got a single spec; wrap it: [spec]")
        specs = tuple(self.attacks)
        if not specs:
            raise ValueError("an AttackPool needs at least one attack spec, got none")
        for spec in specs:
            if not isinstance(spec, Attack):
                raise TypeError(f"every pool member must be an attack spec (FGSM, PGD, MIM, BIM, Spatial), "
                                f"got {type(spec).__name__}: {spec!r}")
        weights = (1.0,) * len(specs) if self.weights is None else tuple(self.weights)
        if len(weights) != len(specs):
            raise ValueError(f"got {len(weights)} weights for {len(specs)} attacks: pass one weight per attack "
                             "(or weights=None for equal weights)")
        weights = tuple(check_number("weight", w) for w in weights)
        if min(weights) <= 0:
            raise ValueError(f"weights must be > 0, got {list(weights)}; drop an attack instead of giving it weight 0")
        ranges = sorted({(s.clip_min, s.clip_max) for s in specs})
        if len(ranges) > 1:
            raise ValueError(f"the specs disagree on the pixel range (clip_min, clip_max): {ranges}; give every "
                             "spec the clip_min/clip_max of your data")
        held_out = self.held_out
        if held_out is not None:
            if held_out not in FAMILIES:
                raise ValueError(f"held_out must be one of {FAMILIES} or None, got {held_out!r}")
            leaks = [s for s in specs if s.family == held_out]
            if leaks:
                raise ValueError(f"held-out family {held_out!r} is also in the pool: {leaks}; remove those specs "
                                 f"(pool.without({held_out!r}) does it)")
        object.__setattr__(self, "attacks", specs)
        object.__setattr__(self, "weights", weights)

    def __repr__(self) -> str:
        members = ", ".join(f"{s!r}: {w:g}" for s, w in zip(self.attacks, self.weights))
        held = "" if self.held_out is None else f", held_out={self.held_out!r}"
        return f"AttackPool({{{members}}}{held})"

    def __len__(self) -> int:
        return len(self.attacks)

    def __getitem__(self, index: int) -> Attack:
        return self.attacks[index]

    def __iter__(self) -> Any:
        return iter(self.attacks)

    @property
    def families(self) -> tuple[str, ...]:
        """The family of each spec, in order ("linf", "l2" or "spatial")."""
        return tuple(s.family for s in self.attacks)

    @property
    def probabilities(self) -> np.ndarray:
        """The weights normalised to sum to 1, float64 (len(pool),)."""
        weights = np.asarray(self.weights, np.float64)
        return weights / weights.sum()

    @property
    def clip_min(self) -> float:
        return self.attacks[0].clip_min

    @property
    def clip_max(self) -> float:
        return self.attacks[0].clip_max

    def without(self, family: str) -> "AttackPool":
        """The same pool minus every spec of ``family`` (weights kept), with ``held_out=family``."""
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        kept = [(s, w) for s, w in zip(self.attacks, self.weights) if s.family != family]
        if not kept:
            raise ValueError(f"every spec of the pool is in family {family!r}: nothing would be left to train on")
        return AttackPool([s for s, _ in kept], [w for _, w in kept], held_out=family)

    def sample(self, n_tasks: int, seed: int | None = None) -> np.ndarray:
        """One spec index per task, drawn with the pool's probabilities: int64 (n_tasks,); same seed, same draws."""
        n_tasks = check_positive_int("n_tasks", n_tasks)
        return _seed_pair(seed).choice(len(self), size=n_tasks, p=self.probabilities).astype(np.int64)

    def draw(self, seed: Any) -> tf.Tensor:
        """One spec index as an int32 scalar tensor, from a shape-(2,) int seed tensor (stateless, graph mode)."""
        logits = tf.math.log(tf.constant(self.probabilities[None], tf.float32))
        return tf.cast(tf.random.stateless_categorical(logits, 1, seed)[0, 0], tf.int32)

    def generate(self, model: Any, x: Any, y: Any, index: Any, *, scale: Any = None, seed: Any = None) -> tf.Tensor:
        """Adversarial examples of spec ``index`` (int or int tensor) as a tensor; graph mode, gradient stopped.

        Every spec is traced once into a ``tf.switch_case`` and only the drawn one runs. ``scale`` (Python
        float or scalar tensor, e.g. an eps ramp 0 -> 1) multiplies the drawn spec's eps and its step_size (for
        :class:`Spatial`, the size of its grid), so steps shrink with the ball; None leaves every spec as it
        is. ``seed``: as in
        :meth:`Attack.generate`. ``x``, ``y``, ``model`` as there.
        """
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)

        def branch(spec: Attack) -> Callable[[], tf.Tensor]:
            options: dict[str, Any] = {}
            if scale is not None:
                options["eps"] = spec.eps * tf.cast(scale, tf.float32)
                if hasattr(spec, "step_size"):
                    options["step_size"] = spec.step_size * tf.cast(scale, tf.float32)
            return lambda: tf.cast(spec.generate(model, x, y, seed=seed, **options), x.dtype)

        if len(self) == 1:
            return branch(self.attacks[0])()
        return tf.switch_case(tf.cast(index, tf.int32), [branch(s) for s in self.attacks])


__all__ += ["AttackPool"]


# --------------------------------------------------------------------------------------------------
# Adversarial patch: one universal sticker, trained over random placements (Brown et al. 2017)
# --------------------------------------------------------------------------------------------------
_PATCH_OPTIMIZERS = ("adam", "sign")


def paste_patch(x: Any, patch: Any, rows: Any, cols: Any, angles: Any = None) -> tf.Tensor:
    """Paste ``patch`` into each image with its top-left corner at (rows[i], cols[i]); TensorFlow ops only.

    ``x``: float tensor (B, H, W, C); ``patch``: (s, s, C); ``rows``, ``cols``: int (B,), each in
    0..H-s / 0..W-s. ``angles`` (radians, (B,) or None) turns the patch counter-clockwise (as displayed) about
    the centre of its square, nearest-pixel: the turned patch is cut to its square, and square pixels it no
    longer covers keep the image. Pixels outside the square are never changed. Differentiable with respect to
    ``patch`` (a gather), so it can be trained through. Introduced in notebooks/07_applications.ipynb.
    """
    x = tf.convert_to_tensor(x)
    patch = tf.cast(tf.convert_to_tensor(patch), x.dtype)
    size, height, width = patch.shape[0], x.shape[1], x.shape[2]
    r = tf.range(height, dtype=tf.float32)[None, :, None]
    c = tf.range(width, dtype=tf.float32)[None, None, :]
    top = tf.cast(rows, tf.float32)[:, None, None]
    left = tf.cast(cols, tf.float32)[:, None, None]
    inside = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)  # (B, H, W)
    half = (size - 1) / 2.0
    dr, dc = r - top - half, c - left - half  # offsets from the square's centre
    if angles is None:
        pr, pc = dr + 0.0 * dc + half, dc + 0.0 * dr + half
    else:  # the output pixel q shows the patch pixel R^T q (R: the turn), as in spatial_transform
        cos = tf.cos(tf.cast(angles, tf.float32))[:, None, None]
        sin = tf.sin(tf.cast(angles, tf.float32))[:, None, None]
        pr, pc = tf.round(sin * dc + cos * dr + half), tf.round(cos * dc - sin * dr + half)
    valid = inside & (pr >= 0) & (pr <= size - 1) & (pc >= 0) & (pc <= size - 1)
    index = (tf.cast(tf.clip_by_value(pr, 0, size - 1), tf.int32) * size
             + tf.cast(tf.clip_by_value(pc, 0, size - 1), tf.int32))
    canvas = tf.gather(tf.reshape(patch, [size * size, -1]), index)  # (B, H, W, C)
    return tf.where(valid[..., None], canvas, x)


@dataclass(frozen=True, repr=False)
class AdversarialPatch:
    """A universal adversarial patch (Brown et al. 2017, "Adversarial Patch"): one ``size`` x ``size`` sticker
    that, pasted anywhere on an image, makes the model misread it (``target=None``) or read ``target``.

    :meth:`fit` trains the patch over random images and random placements (expectation over placements; and
    over turns in [-max_angle, max_angle] degrees when ``max_angle`` > 0): each of ``steps`` steps draws
    ``batch_size`` images and a position (and angle) per image, and moves the patch to raise the
    cross-entropy of the true class (targeted: lower that of the target) with Adam (``optimizer="adam"``,
    rate ``learning_rate``) or signed steps of ``learning_rate`` (``"sign"``), then clips it to
    [clip_min, clip_max]. One compiled ``tf.function`` step, traced once per fit. The start is a uniform random
    patch from ``seed``, the same patch :meth:`random_patch` gives as the control.
    :meth:`apply` pastes a patch at given positions; :meth:`success_rate` measures it over random placements.
    Not an :class:`Attack`: a patch is trained once on many images, then reused (universal, not per example).
    Introduced in notebooks/07_applications.ipynb.
    """

    size: int
    target: int | None = None
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: str = "adam"
    max_angle: float = 0.0
    clip_min: float = 0.0
    clip_max: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_positive_int("size", self.size))
        if self.target is not None:
            if isinstance(self.target, bool) or not isinstance(self.target, (int, np.integer)) or self.target < 0:
                raise ValueError(f"target must be None (untargeted) or a class id >= 0, got {self.target!r}")
            object.__setattr__(self, "target", int(self.target))
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        object.__setattr__(self, "batch_size", check_positive_int("batch_size", self.batch_size))
        rate = check_number("learning_rate", self.learning_rate)
        if rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {rate}")
        object.__setattr__(self, "learning_rate", rate)
        if self.optimizer not in _PATCH_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_PATCH_OPTIMIZERS}, got {self.optimizer!r}")
        angle = check_number("max_angle", self.max_angle)
        if not 0 <= angle <= 180:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {angle}")
        object.__setattr__(self, "max_angle", angle)
        clip_min, clip_max = _check_clip(self.clip_min, self.clip_max)
        object.__setattr__(self, "clip_min", clip_min)
        object.__setattr__(self, "clip_max", clip_max)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")

    def __repr__(self) -> str:
        parts = [f"size={self.size}"]
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default or f.name in ("target", "steps"):
                parts.append(f"{f.name}={value!r}")
        return f"AdversarialPatch({', '.join(parts)})"

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def family(self) -> str:
        return "patch"

    @property
    def name(self) -> str:
        """E.g. "Patch 9x9" or "Patch 9x9 -> 3"."""
        return f"Patch {self.size}x{self.size}" + ("" if self.target is None else f" -> {self.target}")

    # ----------------------------------------------------------------------------------------------
    def random_patch(self, channels: int = 1, *, seed: int | None = None) -> np.ndarray:
        """A uniform random patch (size, size, channels) in [clip_min, clip_max]: the control, and fit's start."""
        channels = check_positive_int("channels", channels)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return rng.uniform(self.clip_min, self.clip_max, (self.size, self.size, channels)).astype(np.float32)

    def random_positions(self, n: int, image_shape: tuple[int, ...], *, seed: int | None = None) -> np.ndarray:
        """``n`` top-left corners (row, col), int64 (n, 2), uniform over the places the patch fits."""
        height, width = self._check_fits(image_shape)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return np.stack([rng.integers(0, height - self.size + 1, n), rng.integers(0, width - self.size + 1, n)], 1)

    def _check_fits(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        if len(image_shape) != 3:
            raise ValueError(f"the patch needs images of shape (batch, height, width, channels), got images of "
                             f"shape (batch, {', '.join(map(str, image_shape))}); add a channel axis with x[..., None]")
        height, width = int(image_shape[0]), int(image_shape[1])
        if self.size > min(height, width):
            raise ValueError(f"a {self.size} x {self.size} patch does not fit in {height} x {width} images; "
                             "use a smaller size")
        return height, width

    def _check_patch(self, patch: Any, channels: int) -> np.ndarray:
        patch = np.asarray(patch).astype(np.float32)
        if patch.shape != (self.size, self.size, channels):
            raise ValueError(f"patch must have shape {(self.size, self.size, channels)} (size, size, channels of "
                             f"the images), got {patch.shape}")
        if not np.all(np.isfinite(patch)) or patch.min() < self.clip_min or patch.max() > self.clip_max:
            raise ValueError(f"patch pixels must be finite and in [{self.clip_min}, {self.clip_max}]")
        return patch

    def _random_placements(self, seed: tf.Tensor, n: Any, height: int, width: int) -> tuple:
        fold = tf.random.experimental.stateless_fold_in
        rows = tf.random.stateless_uniform([n], fold(seed, 1), 0, height - self.size + 1, dtype=tf.int32)
        cols = tf.random.stateless_uniform([n], fold(seed, 2), 0, width - self.size + 1, dtype=tf.int32)
        angles = None
        if self.max_angle > 0:
            limit = self.max_angle * np.pi / 180.0
            angles = tf.random.stateless_uniform([n], fold(seed, 3), -limit, limit)
        return rows, cols, angles

    def _loss(self, model: Any, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(loss to minimise, success per example) of patched images x."""
        logits = tf.cast(model(x, training=False), tf.float32)
        labels = tf.fill(tf.shape(y), self.target) if self.targeted else tf.cast(y, tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return (tf.reduce_mean(ce), hit) if self.targeted else (-tf.reduce_mean(ce), tf.logical_not(hit))

    def _prepare_images(self, model: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
        x, y = _prepare(model, x, y, self.clip_min, self.clip_max)
        height, width = self._check_fits(x.shape[1:])
        if self.targeted:
            n_classes = _num_classes(model, x)
            if self.target >= n_classes:
                raise ValueError(f"target must be in 0..{n_classes - 1} (the model has {n_classes} outputs), "
                                 f"got {self.target}")
        return x, y, height, width

    # ----------------------------------------------------------------------------------------------
    def fit(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Train the patch on images ``x`` (B, H, W, C) in range with true labels ``y`` (B,); numpy patch out.

        Returns float32 (size, size, C) in [clip_min, clip_max]. Same seed, same patch.
        """
        x, y, height, width = self._prepare_images(model, x, y)
        patch = tf.Variable(self.random_patch(x.shape[-1]), name="patch")
        optimizer = None
        if self.optimizer == "adam":
            import keras

            optimizer = keras.optimizers.Adam(self.learning_rate)
            optimizer.build([patch])
        images, labels = tf.constant(x), tf.constant(y)
        n, batch = len(x), self.batch_size

        def step(seed: tf.Tensor) -> tf.Tensor:
            _TRACES[model] = _TRACES.get(model, 0) + 1  # Python side effect: runs only while tracing
            pick = tf.random.stateless_uniform([batch], seed, 0, n, dtype=tf.int32)
            xb, yb = tf.gather(images, pick), tf.gather(labels, pick)
            rows, cols, angles = self._random_placements(seed, batch, height, width)
            with tf.GradientTape() as tape:
                loss, _ = self._loss(model, paste_patch(xb, patch, rows, cols, angles), yb)
            grad = tape.gradient(loss, patch)
            if optimizer is None:
                patch.assign_sub(self.learning_rate * tf.sign(grad))
            else:
                optimizer.apply_gradients([(grad, patch)])
            patch.assign(tf.clip_by_value(patch, self.clip_min, self.clip_max))
            return loss

        compiled = tf.function(step, input_signature=[tf.TensorSpec((2,), tf.int64)])
        seeds = np.random.default_rng(self.seed).integers(0, 2**62, size=(self.steps, 2))
        for seed in seeds:
            compiled(tf.constant(seed))
        return patch.numpy()

    def apply(self, x: Any, patch: Any, positions: Any, angles: Any = None) -> np.ndarray:
        """Paste ``patch`` at ``positions`` (int (B, 2) top-left (row, col)); ``angles`` in degrees (B,) or None.

        Numpy in and out; see :func:`paste_patch`. Pixels outside each square are returned unchanged.
        """
        x = check_images_and_labels(x, np.zeros(len(np.asarray(x)), np.int64))[0]
        if x.min() < self.clip_min - RANGE_TOLERANCE or x.max() > self.clip_max + RANGE_TOLERANCE:
            raise ValueError(f"x has values in [{x.min():.4g}, {x.max():.4g}], outside [clip_min, clip_max] = "
                             f"[{self.clip_min}, {self.clip_max}]; rescale x or pass the clip_min/clip_max of your data")
        height, width = self._check_fits(x.shape[1:])
        patch = self._check_patch(patch, x.shape[-1])
        positions = np.asarray(positions)
        if positions.shape != (len(x), 2) or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be integer (row, col) pairs of shape ({len(x)}, 2), got "
                             f"{positions.dtype} {positions.shape}")
        if (positions.min(0) < 0).any() or positions[:, 0].max() > height - self.size or positions[:, 1].max() > width - self.size:
            raise ValueError(f"positions must keep the patch inside the image: rows in 0..{height - self.size}, "
                             f"cols in 0..{width - self.size}")
        if angles is not None:
            angles = tf.constant(np.radians(np.asarray(angles).astype(np.float64)).reshape(len(x)), tf.float32)
        return paste_patch(tf.constant(x), patch, positions[:, 0], positions[:, 1], angles).numpy()

    def success_rate(self, model: Any, x: Any, y: Any, patch: Any, *, placements: int = 1,
                     seed: int | None = None, batch_size: int = 1000) -> float:
        """Fraction of (image, random placement) pairs the patch fools: misread (targeted: read as ``target``).

        Each image gets ``placements`` random positions (and turns in [-max_angle, max_angle] when max_angle > 0,
        as in training), drawn from ``seed`` (default: the spec's seed + 1, not the training draws). Targeted:
        images whose true class is the target are left out. Pass correctly classified images to measure what
        the patch adds to the model's own errors.
        """
        x, y, height, width = self._prepare_images(model, x, y)
        patch = tf.constant(self._check_patch(patch, x.shape[-1]))
        placements = check_positive_int("placements", placements)
        batch_size = check_positive_int("batch_size", batch_size)
        if self.targeted:
            keep = y != self.target
            if not keep.any():
                raise ValueError(f"every image is of the target class {self.target}: nothing to measure")
            x, y = x[keep], y[keep]

        @tf.function(input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                                      tf.TensorSpec((None,), tf.int64), tf.TensorSpec((2,), tf.int64)])
        def fooled(xb: tf.Tensor, yb: tf.Tensor, seed_t: tf.Tensor) -> tf.Tensor:
            rows, cols, angles = self._random_placements(seed_t, tf.shape(xb)[0], height, width)
            return self._loss(model, paste_patch(xb, patch, rows, cols, angles), yb)[1]

        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        hits = 0
        for _ in range(placements):
            for start in range(0, len(x), batch_size):
                seed_t = tf.constant(rng.integers(0, 2**62, size=2), tf.int64)
                hits += int(tf.reduce_sum(tf.cast(fooled(tf.constant(x[start:start + batch_size]),
                                                         tf.constant(y[start:start + batch_size]), seed_t), tf.int32)))
        return hits / (len(x) * placements)

    def __call__(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Fit the patch on (x, y), then paste it at random positions (from the spec's seed + 1): numpy out."""
        patch = self.fit(model, x, y)
        x = np.asarray(x).astype(np.float32)
        positions = self.random_positions(len(x), x.shape[1:], seed=self.seed + 1)
        return self.apply(x, patch, positions)


__all__ += ["paste_patch", "AdversarialPatch"]
