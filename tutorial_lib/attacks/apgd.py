"""Auto-PGD (Croce & Hein, ICML 2020): PGD whose step size halves at checkpoints when progress stalls.

The algorithm first (:func:`checkpoints`, the losses, :func:`apgd_ascent`), then the spec ``APGD(eps=0.3)``, a
value like the specs of :mod:`~tutorial_lib.attacks.gradient` (same runner, so numpy in and out, or ``.generate``
on tensors and adapted weights). Parameter-free: a robustness number does not depend on a step size someone tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow as tf

from ..checks import check_bool, check_number, check_positive_int
from ._runner import check_norm, check_restarts, keep_worst
from .gradient import _ascent_direction, _GradientAttack, _project, _random_delta, repeat

__all__ = ["APGD", "apgd_ascent", "checkpoints", "ce_loss", "dlr_loss", "targeted_dlr_loss", "LOSSES"]

#: The losses APGD can ascend: cross-entropy, the difference of logits ratio, and its targeted form.
LOSSES = ("ce", "dlr", "dlr-targeted")


# --------------------------------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------------------------------
def checkpoints(steps: int) -> list[int]:
    """The iterations w_1 < w_2 < ... <= ``steps`` at which APGD decides whether to halve its step.

    w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) while
    p_{j+1} <= 1 (the paper's schedule; for 100 steps: 22, 41, 57, 70, 80, 87, 93, 99). The p_j are counted in
    hundredths with integers, so 0.57 * 100 is 57 (in floating point it is 57.000000000000007, which rounds
    up to 58). Repeated values (few steps) are dropped; w_0 = 0 is the start and not listed.
    """
    steps = check_positive_int("steps", steps)
    p = [0, 22]
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return sorted({-(-q * steps // 100) for q in p} - {0})


def ce_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy of ``logits`` (B, classes) against int labels ``y`` (B,)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def dlr_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Croce & Hein's difference of logits ratio: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), (B,).

    z_pi1 >= z_pi2 >= z_pi3 are the largest logits. Unlike the cross-entropy it does not change when the logits
    are shifted or scaled, so a model cannot hide behind large or saturated logits. Needs 3 or more classes.
    """
    top = tf.math.top_k(logits, k=3)
    z_y = tf.gather(logits, y, batch_dims=1)
    z_other = tf.where(tf.equal(top.indices[:, 0], y), top.values[:, 1], top.values[:, 0])
    return -(z_y - z_other) / (top.values[:, 0] - top.values[:, 2] + 1e-12)


def targeted_dlr_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """The targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12) for true labels ``y`` and targets
    ``target`` (both int, (B,)); ascending it pushes the target's logit above the true one. Needs 4 or more classes.
    """
    values = tf.math.top_k(logits, k=4).values
    z_y = tf.gather(logits, y, batch_dims=1)
    z_t = tf.gather(logits, target, batch_dims=1)
    return -(z_y - z_t) / (values[:, 0] - 0.5 * (values[:, 2] + values[:, 3]) + 1e-12)


def apgd_ascent(
    loss_fn: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]], x: tf.Tensor, x_start: tf.Tensor, *, eps: Any,
    step_size: Any, steps: int, norm: str | int = "inf", rho: float = 0.75, momentum: float = 0.75,
    clip_min: float = 0.0, clip_max: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One APGD run from ``x_start``: ``steps`` steps ascending ``loss_fn`` inside the ``eps`` ball around ``x``.

    ``loss_fn(x_adv)`` returns ``(loss, success)``, both (B,): the per-example loss to maximise and whether the
    point already fools the model. Step k (from x^(k), with step size eta, per example):
    z = P(x^(k) + eta * d(grad)), x^(k+1) = P(x^(k) + a (z - x^(k)) + (1 - a) (x^(k) - x^(k-1))), with
    d = sign (L-inf) or grad / ||grad||_2 (L2), P the projection on the ball and the pixel range, a = 1 at the
    first step and ``momentum`` (0.75) after. At each checkpoint w_j of :func:`checkpoints`, eta halves for an
    example when (1) the loss went up at fewer than ``rho`` * (w_j - w_{j-1}) of the steps since w_{j-1}, or
    (2) eta was not halved at w_{j-1} and the best loss has not improved since; the run then continues from the
    best point found (with the gradient stored there). eta starts at ``step_size`` (2 eps in the paper).

    Where it differs from the authors' code (auto-attack's ``autopgd_base.py``), it follows the paper: condition 1
    is "fewer than" (the code: "at most") and counts the first step against f(x^(0)) (the code compares with 0),
    condition 2 can hold at the first checkpoint (the code starts as if just halved), and after moving to the best
    point the next step's increase is counted against the best loss. For 100 steps the checkpoints are the code's.
    Like the code (and unlike ART, which keeps only the last iterate), any iterate that fools the model is kept.

    Returns ``(x_adv, success, best_loss, eta)``: per example the last point that fooled the model if any did
    (the start included), else the point of highest loss; whether one did; the highest loss; the final step size.
    ``steps + 1`` gradient evaluations. Graph-compatible TensorFlow; the steps run in the package's chunked
    ``tf.while_loop`` (:func:`~tutorial_lib.attacks.gradient.repeat`).
    Introduced in notebooks/07_applications_and_results.ipynb.
    """
    norm = check_norm(norm)
    steps = check_positive_int("steps", steps)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    eps = tf.cast(eps, x.dtype)
    pixel_ones = tf.ones([x.shape.rank - 1], tf.int32)
    per_pixel = lambda v: tf.reshape(v, tf.concat([tf.shape(v), pixel_ones], 0))  # noqa: E731  (B,) -> (B, 1, 1, 1)
    where = lambda cond, a, b: tf.where(per_pixel(cond), a, b)  # noqa: E731

    def evaluate(x_adv: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss, success = loss_fn(x_adv)
        grad = tape.gradient(loss, x_adv)
        if grad is None:
            raise ValueError("loss_fn(x_adv) does not depend on x_adv: its gradient is None")
        return tf.stop_gradient(loss), success, tf.stop_gradient(grad)

    # interval[t] = w_j - w_{j-1} when t = w_j is a checkpoint, else 0
    marks = [0, *checkpoints(steps)]
    interval = np.zeros(steps + 1, np.float32)
    interval[marks[1:]] = np.diff(marks)
    interval = tf.constant(interval)

    def step(s: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x_k, eta = s["x"], s["eta"]
        a = tf.where(tf.equal(s["i"], 0), tf.constant(1.0, x.dtype), tf.constant(momentum, x.dtype))
        z = _project(x_k + per_pixel(eta) * _ascent_direction(s["grad"], norm), x, eps, norm, clip_min, clip_max)
        x_new = _project(x_k + a * (z - x_k) + (1 - a) * (x_k - s["x_prev"]), x, eps, norm, clip_min, clip_max)
        loss, success, grad = evaluate(x_new)
        better = loss > s["best_loss"]
        best_loss = tf.where(better, loss, s["best_loss"])
        best_x, best_grad = where(better, x_new, s["best_x"]), where(better, grad, s["best_grad"])
        ups = s["ups"] + tf.cast(loss > s["loss"], x.dtype)
        length = interval[s["i"] + 1]
        at_check = length > 0
        halve = at_check & ((ups < rho * length) | (tf.equal(eta, s["eta_check"]) & (best_loss <= s["best_check"])))
        return {
            "i": s["i"] + 1,
            "x": where(halve, best_x, x_new), "x_prev": x_k, "grad": where(halve, best_grad, grad),
            "loss": tf.where(halve, best_loss, loss), "eta": tf.where(halve, eta / 2, eta),
            "ups": tf.where(at_check, tf.zeros_like(ups), ups),
            "eta_check": tf.where(at_check, eta, s["eta_check"]),
            "best_check": tf.where(at_check, best_loss, s["best_check"]),
            "best_x": best_x, "best_grad": best_grad, "best_loss": best_loss,
            "found": where(success, x_new, s["found"]), "success": s["success"] | success,
        }

    x0 = tf.stop_gradient(tf.cast(x_start, x.dtype))
    loss0, success0, grad0 = evaluate(x0)
    eta0 = tf.fill(tf.shape(loss0), tf.cast(step_size, x.dtype))
    state = {"i": tf.constant(0), "x": x0, "x_prev": x0, "grad": grad0, "loss": loss0, "eta": eta0,
             "ups": tf.zeros_like(loss0), "eta_check": eta0, "best_check": loss0, "best_x": x0, "best_grad": grad0,
             "best_loss": loss0, "found": x0, "success": success0}
    keys = list(state)
    state = dict(zip(keys, repeat(lambda *values: tuple(step(dict(zip(keys, values))).values()), steps,
                                  tuple(state.values()))))
    x_adv = where(state["success"], state["found"], state["best_x"])
    return tf.stop_gradient(x_adv), state["success"], state["best_loss"], state["eta"]


@tf.autograph.experimental.do_not_convert  # plain Python control flow on purpose: nothing to convert
def _apgd(
    model: Any, x: tf.Tensor, y: tf.Tensor, *, eps: Any, step_size: Any, steps: int, norm: str | int, loss: str,
    restarts: int, target_classes: int, random_start: bool, rho: float, momentum: float, targeted: bool,
    clip_min: float, clip_max: float, seed: Any,
) -> tf.Tensor:
    """APGD on a model as TensorFlow ops: ``restarts`` runs (times ``target_classes`` targets for the targeted
    DLR), kept per example by the package's one rule (a run that fools the model beats one that does not, else
    the higher loss wins: :func:`~tutorial_lib.attacks._runner.keep_worst`); the runs stop once every example is
    fooled. Run r starts from the random seed ``stateless_fold_in(seed, r)``; with the targeted DLR, run r aims at
    the class of the (r // restarts + 2)-th largest clean logit."""
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    runs = restarts * (target_classes if loss == "dlr-targeted" else 1)
    need = {"ce": 2, "dlr": 3, "dlr-targeted": max(4, target_classes + 1)}[loss]
    ranked = None
    if loss == "dlr-targeted":
        clean_logits = tf.cast(model(x, training=False), tf.float32)
        _check_classes(clean_logits, need, loss, target_classes)
        ranked = tf.math.top_k(clean_logits, k=target_classes + 1).indices

    def loss_fn(target: Any) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        def value(x_adv: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = tf.cast(model(x_adv, training=False), tf.float32)
            _check_classes(logits, need, loss, target_classes)
            hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)
            if targeted:
                return -ce_loss(logits, y), hit
            if loss == "ce":
                return ce_loss(logits, y), tf.logical_not(hit)
            if loss == "dlr":
                return dlr_loss(logits, y), tf.logical_not(hit)
            return targeted_dlr_loss(logits, y, target), tf.logical_not(hit)
        return value

    def run(r: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        start = x
        if random_start:
            seed_r = None if seed is None else tf.random.experimental.stateless_fold_in(seed, r)
            delta = _random_delta(x, tf.cast(eps, x.dtype), norm, seed_r)
            start = _project(x + delta, x, eps, norm, clip_min, clip_max)
        target = None if ranked is None else tf.gather(ranked, r // restarts + 1, axis=1)
        x_adv, success, best_loss, _ = apgd_ascent(loss_fn(target), x, start, eps=eps, step_size=step_size,
                                                   steps=steps, norm=norm, rho=rho, momentum=momentum,
                                                   clip_min=clip_min, clip_max=clip_max)
        return x_adv, success, best_loss

    best = run(0)
    if runs > 1:
        def body(r: tf.Tensor, *kept: tf.Tensor) -> tuple:
            return (r + 1, *keep_worst(*kept, *run(r)))

        _, best_x, _, _ = tf.while_loop(lambda r, _, ok, __: (r < runs) & tf.logical_not(tf.reduce_all(ok)), body,
                                        [tf.constant(1), *best])
        best = (best_x,)
    return tf.stop_gradient(tf.cast(best[0], in_dtype))


def _check_classes(logits: tf.Tensor, need: int, loss: str, target_classes: int) -> None:
    """ValueError (while tracing) when the model has too few classes for the loss."""
    classes = logits.shape[-1]
    if classes is not None and classes < need:
        what = (f"the targeted DLR with target_classes={target_classes} needs {need}" if loss == "dlr-targeted"
                else f"loss={loss!r} needs {need}")
        raise ValueError(f"{what} or more classes, but the model returns {classes} logits; "
                         "use loss='ce' (or fewer target_classes)")


# --------------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class APGD(_GradientAttack):
    """Auto-PGD (Croce & Hein, ICML 2020): parameter-free PGD with momentum and a step that halves when stuck.

    ``APGD(eps=0.3)(model, x, y)`` runs 100 steps of :func:`apgd_ascent` on the cross-entropy (``loss="ce"``),
    from a random start, starting with step 2 eps. ``loss="dlr"`` ascends the difference of logits ratio
    (:func:`dlr_loss`, 3+ classes), which ignores the scale of the logits; ``loss="dlr-targeted"`` runs the
    targeted DLR (:func:`targeted_dlr_loss`, 4+ classes) once per target class, the ``target_classes`` classes
    with the largest clean logits after the top one (AutoAttack's APGD-T: 9), ``restarts`` times each. Every run
    is kept per example by the package's rule (one that fools the model beats one that does not, else the higher
    loss): an example is broken if any run breaks it; the runs stop once every example is fooled.
    ``y``: the true int labels (B,), or with ``targeted=True`` (``loss="ce"`` only) the target classes, the loss
    then being minus the cross-entropy towards them. ``norm``: "inf" or 2. ``rho`` and ``momentum``: the
    paper's 0.75 and 0.75. Returns float32 numpy of x's shape, inside the ball and the pixel range: per example
    a point that fools the model if one was found, else the point of highest loss. ``seed``, ``batch_size``,
    ``jit_compile``, ``clip_min``/``clip_max`` as in :class:`~tutorial_lib.attacks.PGD`.

    Cost: ``steps + 1`` gradients per run and example (PGD-``steps`` costs ``steps``).
    Introduced in notebooks/07_applications_and_results.ipynb.
    """

    label: ClassVar[str] = "APGD"
    _ops = staticmethod(_apgd)
    _always_shown: ClassVar[tuple[str, ...]] = ("eps", "steps", "loss")
    eps: float
    steps: int = 100
    loss: str = "ce"
    norm: str | int = "inf"
    restarts: int = 1
    target_classes: int = 9
    random_start: bool = True
    rho: float = 0.75
    momentum: float = 0.75
    targeted: bool = False
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None
    seed: int | None = None
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        self._validate_common()
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.targeted and self.loss != "ce":
            raise ValueError(f"targeted=True (y holds target classes) works with loss='ce', not {self.loss!r}; "
                             "for Croce & Hein's targeted DLR pass the true labels with loss='dlr-targeted'")
        object.__setattr__(self, "norm", check_norm(self.norm))
        object.__setattr__(self, "random_start", check_bool("random_start", self.random_start))
        object.__setattr__(self, "restarts", check_restarts(self.restarts, self.random_start))
        object.__setattr__(self, "target_classes", check_positive_int("target_classes", self.target_classes))
        rho_hint = "It is the fraction of steps that must raise the loss; 0.75 in the paper."
        momentum_hint = "It weighs the new step against the last move; 0.75 in the paper."
        object.__setattr__(self, "rho", check_number("rho", self.rho, low=0.0, high=1.0, hint=rho_hint))
        object.__setattr__(self, "momentum", check_number("momentum", self.momentum, low=0.0, high=1.0,
                                                          hint=momentum_hint))

    def _name(self) -> str:
        name = f"{self.label}-{'T' if self.loss == 'dlr-targeted' else self.loss.upper()}-{self.steps}"
        if self.norm == 2:
            name += " L2"
        if self.restarts > 1:
            name += f" x{self.restarts}"
        return name

    def _step_size(self, eps: Any) -> Any:
        return 2.0 * eps

    def _settings(self) -> dict[str, Any]:
        return dict(steps=self.steps, norm=self.norm, loss=self.loss, restarts=self.restarts,
                    target_classes=self.target_classes, random_start=self.random_start, rho=self.rho,
                    momentum=self.momentum, targeted=self.targeted, clip_min=self.clip_min, clip_max=self.clip_max)

    def generate(self, model: Any, x: Any, y: Any, *, eps: Any = None, seed: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """Adversarial examples as a tensor, from TensorFlow ops only (as :meth:`Attack.generate`).

        ``model``: any callable ``f(x, training=False) -> logits``, e.g. adapted weights
        (``meta_adversarial.adapted_logits_fn``). ``eps``: float or scalar tensor overriding ``self.eps``;
        ``step_size``: the first step size (default 2 eps); ``seed``: optional shape-(2,) int tensor.
        """
        eps = self.eps if eps is None else eps
        step_size = self._step_size(eps) if step_size is None else step_size
        return _apgd(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), eps=eps, step_size=step_size,
                     seed=seed, **self._settings())

