"""What every attack spec shares: the :class:`Attack` base, the checks, and the runner (validated numpy inputs,
the compiled function from :mod:`tutorial_lib.compiled`, batches), with :func:`keep_worst`, the one rule among
restarts or grid points: an example is broken if any of them breaks it.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow as tf

from .. import compiled, models
from ..checks import check_bool, check_count, check_eps, check_images_and_labels, check_number, check_positive_int

__all__ = ["Attack", "clear_cache", "trace_count"]

#: How far outside [clip_min, clip_max] input pixels may lie (float rounding) before it is an error.
RANGE_TOLERANCE = 1e-5
_NORMS = {"inf": "inf", "linf": "inf", "l_inf": "inf", "2": 2, "l2": 2}


# --------------------------------------------------------------------------------------------------
# The rule for restarts and grids, and the score it ranks by
# --------------------------------------------------------------------------------------------------
def score(model: Any, x_adv: tf.Tensor, y: tf.Tensor, targeted: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """(succeeded, loss to maximise) per example: misclassified and the cross-entropy (float32 logits);
    targeted: predicts the target ``y`` and minus the cross-entropy on it."""
    logits = tf.cast(model(x_adv, training=False), tf.float32)
    hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return (hit, -loss) if targeted else (tf.logical_not(hit), loss)


def keep_worst(best: tf.Tensor, best_ok: tf.Tensor, best_loss: tf.Tensor, cand: tf.Tensor, ok: tf.Tensor,
               loss: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per example, keep the candidate if it succeeds where the best so far does not, or if both agree and it
    has the higher loss: an example is broken if any candidate (restart, grid point) breaks it.

    ``best``, ``cand``: (B, ...) images; ``best_ok``, ``ok``: bool (B,); ``best_loss``, ``loss``: float (B,).
    Returns the new (best, best_ok, best_loss).
    """
    better = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
    keep_shape = tf.concat([tf.shape(best)[:1], tf.ones([best.shape.rank - 1], tf.int32)], 0)
    return tf.where(tf.reshape(better, keep_shape), cand, best), ok | best_ok, tf.where(better, loss, best_loss)


def worst_of_restarts(run: Callable[[Any], tf.Tensor], restarts: int, model: Any, y: tf.Tensor,
                      targeted: bool) -> tf.Tensor:
    """``run(0)``, then ``run(r)`` for r = 1 .. restarts - 1 in a ``tf.while_loop``, keeping per example the
    worst (:func:`keep_worst`): an example counts as broken if any restart breaks it. ``run(r)`` returns x_adv
    (B, ...) for restart ``r`` (a Python int or an int32 scalar tensor)."""
    best = run(0)
    if restarts > 1:
        def body(r: tf.Tensor, *kept: tf.Tensor) -> tuple:
            cand = run(r)
            return (r + 1, *keep_worst(*kept, cand, *score(model, cand, y, targeted)))

        _, best, _, _ = tf.while_loop(lambda r, *_: r < restarts, body,
                                      [tf.constant(1), best, *score(model, best, y, targeted)])
    return best


# --------------------------------------------------------------------------------------------------
# The base of the specs
# --------------------------------------------------------------------------------------------------
class Attack:
    """Base of the attack specs: ``spec(model, x, y)`` (numpy) and ``spec.generate(model, x, y)`` (tensors).

    Subclasses are frozen dataclasses; their fields are the attack's settings. The repr shows ``eps`` and
    every setting that differs from its default, e.g. ``PGD(eps=0.3, steps=40, step_size=0.01)``.
    A subclass says what its compiled function computes with ``_ops`` (a function of TensorFlow ops
    ``f(model, x, y, *, seed, **scalars, **settings)``), ``_settings`` (part of the cache key) and ``_scalars``
    (inputs that change without retracing, e.g. eps). Introduced in notebooks/01_fgsm.ipynb.
    """

    label: ClassVar[str] = "attack"
    _always_shown: ClassVar[tuple[str, ...]] = ("eps", "steps", "step_size")
    _ops: ClassVar[Callable[..., tf.Tensor]]
    targeted: bool
    clip_min: float
    clip_max: float
    jit_compile: bool | None

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default or f.name in self._always_shown:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _validate_common(self) -> None:
        if hasattr(self, "eps"):
            object.__setattr__(self, "eps", check_eps(self.eps))
        clip_min, clip_max = check_clip(self.clip_min, self.clip_max)
        object.__setattr__(self, "clip_min", clip_min)
        object.__setattr__(self, "clip_max", clip_max)
        object.__setattr__(self, "targeted", check_bool("targeted", self.targeted))
        if hasattr(self, "batch_size"):
            check_batch_size(self.batch_size)
        if getattr(self, "jit_compile", None) is not None:
            object.__setattr__(self, "jit_compile", check_bool("jit_compile", self.jit_compile))

    @property
    def name(self) -> str:
        """A short label for tables and plots, e.g. "FGSM", "PGD-40", "PGD-40 L2 x5"."""
        return self._name() + (" targeted" if self.targeted else "")

    def _name(self) -> str:
        return self.label

    @property
    def family(self) -> str:
        """The threat model, for attack pools (:class:`~tutorial_lib.attacks.AttackPool`): one of
        :data:`~tutorial_lib.attacks.FAMILIES` ("linf", "l2", "l1", "spatial", "rotation", ...)."""
        return "l2" if getattr(self, "norm", "inf") == 2 else "linf"

    def with_eps(self, eps: float) -> "Attack":
        """The same attack with another radius (other settings unchanged, step_size included)."""
        if not hasattr(self, "eps"):
            raise TypeError(f"{type(self).__name__} has no radius eps")
        return dataclasses.replace(self, eps=eps)

    def generate(self, model: Any, x: Any, y: Any, *, seed: Any = None, **overrides: Any) -> tf.Tensor:
        """Adversarial examples as a tensor, from TensorFlow ops only (usable inside another ``tf.function``,
        against any ``f(x, training=False) -> logits``); each spec documents its overrides (e.g. ``eps``)."""
        raise NotImplementedError

    # What the compiled function computes (see the class docstring) ------------------------------------
    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _scalars(self) -> dict[str, float]:
        raise NotImplementedError

    def _check_inputs(self, x: np.ndarray) -> None:
        """Checks of validated images that only some attacks need (e.g. a channel axis)."""

    def __call__(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Run the attack on numpy (or tensor) inputs: validated, batched, compiled; float32 numpy out."""
        return run(self, model, x, y)


# --------------------------------------------------------------------------------------------------
# Running a spec on numpy inputs: validation, the compiled function of the model and settings, batches
# --------------------------------------------------------------------------------------------------
def trace_count(model: Any) -> int:
    """How many times compiled functions were traced for ``model`` (repeated calls should not add any);
    see :func:`tutorial_lib.compiled.trace_count`."""
    return compiled.trace_count(model)


def clear_cache(model: Any = None) -> None:
    """Drop the compiled functions of ``model`` (of every model when None): attacks and every other compiled
    function of the package (:func:`tutorial_lib.compiled.clear_cache`)."""
    compiled.clear_cache(model)


def run(spec: Attack, model: Any, x: Any, y: Any) -> np.ndarray:
    """Validate, then run the spec's cached compiled attack batch by batch; float32 numpy out.

    Each batch gets a stateless seed pair from a generator seeded by ``spec.seed`` (0 for specs without one;
    numpy's global state when it is None).
    """
    x, y = prepare(model, x, y, spec.clip_min, spec.clip_max)
    spec._check_inputs(x)
    scalars = spec._scalars()
    fn = compiled_attack(model, type(spec)._ops, spec._settings(), tuple(scalars), tuple(x.shape[1:]),
                         compiled.use_xla(getattr(spec, "jit_compile", None)))
    values = [tf.constant(v, tf.float32) for v in scalars.values()]
    rng = seed_generator(getattr(spec, "seed", 0))
    batch_size = spec.batch_size or len(x)
    out = np.empty_like(x)
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        seed_t = tf.constant(rng.integers(0, 2**62, size=2), tf.int64)
        out[start:stop] = fn(tf.constant(x[start:stop]), tf.constant(y[start:stop]), *values, seed_t).numpy()
    return out


def compiled_attack(model: Any, ops: Callable[..., tf.Tensor], settings: dict[str, Any], scalars: tuple[str, ...],
                    sample_shape: tuple[int, ...], jit: bool) -> Any:
    """The ``tf.function`` of ``ops`` for ``model``, settings and image shape, from the package's cache.

    Its inputs: x (None, *sample_shape) float32, y (None,) int64, one float32 scalar per name in ``scalars``
    and a (2,) int64 seed; traced once per key (see :func:`tutorial_lib.compiled.compiled`).
    """
    key = ("attack", ops.__qualname__, tuple(sorted(settings.items())), scalars, sample_shape, jit)

    def build() -> Any:
        model_ref = weakref.ref(model)  # the cache must not keep the model alive
        # A partial (not a closure) gives each compiled function its own key in TF's retracing detector.
        fn = functools.partial(_traced, model_ref, ops, settings, scalars)
        signature = [tf.TensorSpec((None, *sample_shape), tf.float32, name="x"),
                     tf.TensorSpec((None,), tf.int64, name="y"),
                     *(tf.TensorSpec((), tf.float32, name=name) for name in scalars),
                     tf.TensorSpec((2,), tf.int64, name="seed")]
        return tf.function(fn, input_signature=signature, jit_compile=jit)

    return compiled.compiled(model, key, build)


def _traced(model_ref: Any, ops: Callable[..., tf.Tensor], settings: dict[str, Any], scalars: tuple[str, ...],
            x: tf.Tensor, y: tf.Tensor, *args: tf.Tensor) -> tf.Tensor:
    model = model_ref()
    compiled.count_trace(model)  # Python side effect: runs only while tracing
    values, seed = args[:-1], args[-1]
    return ops(model, x, y, seed=seed, **dict(zip(scalars, values)), **settings)


def seed_generator(seed: Any) -> np.random.Generator:
    """The generator of per-batch seed pairs: from ``seed``, or from numpy's global state when None (so
    ``runtime.setup(seed=...)`` makes runs repeatable)."""
    if seed is None:
        return np.random.default_rng(np.random.randint(0, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return np.random.default_rng(check_count("seed", seed))


# --------------------------------------------------------------------------------------------------
# Checks of settings and inputs (Python values only: they run before anything is traced);
# the checks shared with other modules are in tutorial_lib.checks
# --------------------------------------------------------------------------------------------------
def check_step_size(step_size: Any) -> float:
    """A step size: a finite number > 0."""
    return check_number("step_size", step_size, low=0.0, low_inclusive=False,
                        hint="A typical L-inf choice is 2.5 * eps / steps.")


def check_restarts(restarts: Any, random_start: bool) -> int:
    """A number of restarts >= 1; more than one needs random starts."""
    restarts = check_positive_int("restarts", restarts)
    if restarts > 1 and not random_start:
        raise ValueError(
            f"restarts={restarts} needs random_start=True: without a random start every restart "
            "computes the same perturbation"
        )
    return restarts


def check_norm(norm: Any) -> str | int:
    """Canonical norm: ``"inf"`` or ``2``. Accepts "inf", np.inf, "linf", 2, "2", "l2"."""
    if isinstance(norm, bool):
        raise ValueError(f"unknown norm {norm!r}; use norm='inf' (L-infinity) or norm=2 (L2)")
    if not isinstance(norm, str) and norm == 1 or isinstance(norm, str) and norm.strip().lower() in ("1", "l1"):
        raise ValueError(f"unknown norm {norm!r} for this attack; use norm='inf' (L-infinity) or norm=2 (L2). The L1 "
                         "attack is a spec of its own, SparseL1Descent(eps=...): its steps and projection differ")
    if isinstance(norm, (int, float, np.integer, np.floating)):
        if norm == np.inf:
            return "inf"
        if norm == 2:
            return 2
    elif isinstance(norm, str) and norm.strip().lower() in _NORMS:
        return _NORMS[norm.strip().lower()]
    raise ValueError(f"unknown norm {norm!r}; use norm='inf' (L-infinity) or norm=2 (L2)")


def check_clip(clip_min: Any, clip_max: Any) -> tuple[float, float]:
    """The pixel range (clip_min, clip_max) as floats with clip_min < clip_max."""
    clip_min = check_number("clip_min", clip_min)
    clip_max = check_number("clip_max", clip_max)
    if clip_min >= clip_max:
        raise ValueError(
            f"clip_min must be < clip_max, got clip_min={clip_min}, clip_max={clip_max} "
            "(the valid pixel range; [0, 1] for the series' images)"
        )
    return clip_min, clip_max


def check_batch_size(batch_size: Any) -> int | None:
    """A batch size >= 1, or None for one batch."""
    if batch_size is None:
        return None
    return check_positive_int("batch_size", batch_size, hint=" (or None for one batch)")


def check_in_range(x: np.ndarray, clip_min: float, clip_max: float) -> np.ndarray:
    """``x`` if its pixels lie in [clip_min, clip_max] up to :data:`RANGE_TOLERANCE` (clipped onto it)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < clip_min - RANGE_TOLERANCE or hi > clip_max + RANGE_TOLERANCE:
        hint = " (uint8 images? divide by 255 first)" if hi > 1.5 and clip_max <= 1 else ""
        raise ValueError(
            f"x has values in [{lo:.4g}, {hi:.4g}], outside the valid range [clip_min, clip_max] = "
            f"[{clip_min}, {clip_max}]{hint}; rescale x or pass the clip_min/clip_max of your data"
        )
    if lo < clip_min or hi > clip_max:  # float rounding only
        x = np.clip(x, clip_min, clip_max)
    return x


def num_classes(model: Any, x: np.ndarray) -> int:
    """The number of logits the model returns (from its output shape, else from one forward pass)."""
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


def prepare(model: Any, x: Any, y: Any, clip_min: float, clip_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Validate the model, images (inside [clip_min, clip_max]) and labels (inside the model's classes)."""
    models.check_logits_model(model)
    x, y = check_images_and_labels(x, y)
    x = check_in_range(x, clip_min, clip_max)
    n_classes = num_classes(model, x)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"labels must be in 0..{n_classes - 1} (the model has {n_classes} outputs), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )
    return x, y
