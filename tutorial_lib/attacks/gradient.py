"""Gradient attacks: projected steps up the loss inside an eps ball (PGD), with FGSM, BIM and MIM as its cases.

PGD's math comes first (:func:`gradient_ascent`); then the specs ``FGSM(eps=0.1)``, ``PGD(eps=0.3, steps=40,
step_size=0.01)``, ``BIM``, ``MIM`` and the one-line functions ``fgsm``, ``pgd``, ``bim``, ``mim`` over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow as tf

from ..checks import check_bool, check_number, check_positive_int
from ._runner import Attack, check_norm, check_restarts, check_step_size, score, worst_of_restarts

__all__ = ["gradient_ascent", "FGSM", "BIM", "PGD", "MIM", "fgsm", "bim", "pgd", "mim"]


# --------------------------------------------------------------------------------------------------
# PGD: projected steps of gradient ascent on the loss (FGSM is one step, BIM has no random start, MIM adds momentum)
# --------------------------------------------------------------------------------------------------
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
    """
    norm, steps = check_norm(norm), check_positive_int("steps", steps)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    if not x.dtype.is_floating:
        raise TypeError(f"x must be a float tensor, got {x.dtype.name}")
    eps, step_size = tf.cast(eps, x.dtype), tf.cast(step_size, x.dtype)
    x_adv = _project(x + _random_delta(x, eps, norm, seed), x, eps, norm, clip_min, clip_max) if random_start else x

    def step(x_adv: tf.Tensor, g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(x_adv)
        grad = tape.gradient(loss, x_adv)
        if grad is None:
            raise ValueError("loss_fn(x_adv) does not depend on x_adv: its gradient is None")
        if momentum is not None:
            g = momentum * g + grad / tf.maximum(tf.reduce_mean(tf.abs(grad), axis=_pixel_axes(x), keepdims=True), 1e-12)
            grad = g
        return _project(x_adv + step_size * _ascent_direction(grad, norm), x, eps, norm, clip_min, clip_max), g

    x_adv, _ = repeat(step, steps, (x_adv, tf.zeros_like(x)))
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


# --------------------------------------------------------------------------------------------------
# The loop: steps written out in chunks inside a tf.while_loop (benchmarks/README.md says why)
# --------------------------------------------------------------------------------------------------
#: Steps written out per iteration of the attack loop.
LOOP_CHUNK = 10


def repeat(step: Callable[..., tuple], steps: int, state: tuple) -> tuple:
    """``state`` after ``steps`` applications of ``step(*state) -> state``, as graph ops.

    A ``tf.while_loop`` whose body holds :data:`LOOP_CHUNK` steps written out, then the remaining steps written
    out; attacks of fewer than ``2 * LOOP_CHUNK`` steps are written out whole. Plain Python inside (no
    AutoGraph needed), so it also runs where Keras traces without it (``test_step``).
    """
    chunk = min(steps, LOOP_CHUNK)
    loops, rest = divmod(steps, chunk)

    def steps_of(n: int) -> Callable[..., tuple]:
        def body(i: tf.Tensor, *state: tf.Tensor) -> tuple:
            for _ in range(n):
                state = step(*state)
            return (i + n, *state)
        return body

    counted = (tf.constant(0), *state)
    if loops > 1:  # a tf.while_loop whose body holds `chunk` steps
        counted = tf.while_loop(lambda i, *_: i < loops * chunk, steps_of(chunk), counted)
    else:  # short attacks: every step in the graph
        rest += loops * chunk
    return tuple(steps_of(rest)(*counted)[1:])


# --------------------------------------------------------------------------------------------------
# The attack on a model: cross-entropy on the logits, restarts kept by the worst-per-example rule
# --------------------------------------------------------------------------------------------------
def _attack(
    model: Any, x: tf.Tensor, y: tf.Tensor, *, eps: Any, step_size: Any, steps: int, norm: str | int,
    random_start: bool, restarts: int, momentum: float | None, targeted: bool, clip_min: float,
    clip_max: float, seed: Any,
) -> tf.Tensor:
    """The attack on a model as TensorFlow ops: cross-entropy on the logits (float32), ascended or, targeted,
    descended towards ``y``.

    With restarts, per example, a restart that succeeds (misclassifies; targeted: predicts the target) beats
    one that does not, and among equals the higher loss wins, so an example counts as broken if any restart
    breaks it (:func:`~tutorial_lib.attacks._runner.keep_worst`). Restart ``r`` starts from the random seed
    ``stateless_fold_in(seed, r)``.
    """
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)

    def run(r: Any) -> tf.Tensor:
        seed_r = None if seed is None else tf.random.experimental.stateless_fold_in(seed, r)
        return gradient_ascent(lambda xa: score(model, xa, y, targeted)[1], x, eps=eps, step_size=step_size,
                               steps=steps, norm=norm, random_start=random_start, momentum=momentum,
                               clip_min=clip_min, clip_max=clip_max, seed=seed_r)

    best = worst_of_restarts(run, restarts, model, y, targeted)
    return tf.stop_gradient(tf.cast(best, in_dtype))


# --------------------------------------------------------------------------------------------------
# Attack specs: attacks as values (each setting is declared and validated here, once)
# --------------------------------------------------------------------------------------------------
class _GradientAttack(Attack):
    """What the gradient specs share: a radius ``eps``, a step, and :func:`_attack` as their compiled ops."""

    _ops = staticmethod(_attack)
    eps: float

    def _step_size(self, eps: Any) -> Any:
        return self.step_size  # type: ignore[attr-defined]

    def _scalars(self) -> dict[str, float]:
        return {"eps": self.eps, "step_size": float(self._step_size(self.eps))}

    def _scaled(self, factor: Any) -> dict[str, Any]:
        """``generate`` options for this attack with its budget times ``factor`` (radius and step)."""
        options = {"eps": self.eps * factor}
        if hasattr(self, "step_size"):
            options["step_size"] = self.step_size * factor
        return options

    def generate(self, model: Any, x: Any, y: Any, *, eps: Any = None, seed: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """Adversarial examples as a tensor, built from TensorFlow ops only.

        Callable inside another ``tf.function`` (e.g. a Keras ``train_step``). ``model``: any callable
        ``f(x, training=False) -> logits``. ``x``: float tensor (B, H, W, C) in [clip_min, clip_max]; ``y``: int
        class ids (B,). ``eps``: Python float or scalar tensor / ``tf.Variable`` overriding ``self.eps`` (for eps
        ramps; no retracing when it is a tensor). ``seed``: optional shape-(2,) int tensor for stateless random
        starts (else TF's global generator). ``step_size``: float or scalar tensor overriding the spec's step
        (e.g. scaled with an eps ramp). No value validation, no batching. Returns x_adv (dtype of x,
        gradient stopped) inside the eps ball and the pixel range.
        Introduced in notebooks/02_iterative_attacks.ipynb.
        """
        eps = self.eps if eps is None else eps
        step_size = self._step_size(eps) if step_size is None else step_size
        return _attack(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), eps=eps, step_size=step_size,
                       seed=seed, **self._settings())


@dataclass(frozen=True, repr=False)
class FGSM(_GradientAttack):
    """Fast Gradient Sign Method: x_adv = clip(x + eps * sign(grad_x CE(model(x), y)), clip_min, clip_max).

    ``FGSM(eps=0.1)(model, x, y)``: ``model`` returns logits (B, classes); ``x``: float images (B, H, W, C) in
    [clip_min, clip_max] (numpy or tensor); ``y``: int class ids (B,); with ``targeted=True`` they are the
    *target* classes and the step goes down the loss instead. One-hot labels are rejected: convert with
    ``np.argmax(y, axis=1)``. ``batch_size`` bounds memory (None: one batch). ``jit_compile``: XLA or not
    (None: :func:`tutorial_lib.compiled.use_xla` decides). Returns float32 numpy, same shape as x, with
    ``|x_adv - x| <= eps`` and pixels in range. Introduced in notebooks/01_fgsm.ipynb.
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
class PGD(_GradientAttack):
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
        object.__setattr__(self, "step_size", check_step_size(self.step_size))
        object.__setattr__(self, "norm", check_norm(self.norm))
        object.__setattr__(self, "random_start", check_bool("random_start", self.random_start))
        object.__setattr__(self, "restarts", check_restarts(self.restarts, self.random_start))

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
class MIM(_GradientAttack):
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
        object.__setattr__(self, "step_size", check_step_size(self.step_size))
        object.__setattr__(self, "norm", check_norm(self.norm))
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
