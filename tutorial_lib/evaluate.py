"""Honest numbers: clean and robust accuracy with 95 % intervals, accuracy-vs-eps sweeps, gradient-masking checks.

Builds on :mod:`tutorial_lib.attacks` (attacks are passed in as specs such as ``attacks.PGD(eps=0.3)``); the
robust-accuracy rule everywhere is "correct clean and attacked". :mod:`tutorial_lib.viz` plots what this
module computes. Introduced in notebooks/01_fgsm.ipynb and
notebooks/02_iterative_attacks.ipynb.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import attacks, models
from .checks import check_bool, check_count, check_eps, check_images_and_labels, check_number, check_positive_int


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def eval_subset(data: Any, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` test images and labels from ``data`` (a :class:`~tutorial_lib.data.MNIST`), classes interleaved.

    The bundled subset's test split is sorted by class, so ``data.x_test[:n]`` would hold only the first
    digits. Here each class is shuffled (with ``seed``) and the classes take turns, so any ``n`` is as
    balanced as it can be and the first images show every digit. Returns ``(x, y)``: float32 (n, 28, 28, 1)
    in [0, 1] and int64 (n,). Introduced in notebooks/01_fgsm.ipynb.
    """
    y_all = np.asarray(data.y_test)
    n = check_positive_int("n", n)
    if n > len(y_all):
        raise ValueError(f"n must be at most {len(y_all)} (the number of test images), got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_all))
    rank = np.empty(len(y_all), dtype=np.int64)
    for c in np.unique(y_all):
        members = order[y_all[order] == c]
        rank[members] = np.arange(len(members))
    pick = np.lexsort((y_all, rank))[:n]  # round-robin over classes, shuffled within each class
    return np.asarray(data.x_test)[pick], y_all[pick]


# --------------------------------------------------------------------------------------------------
# Predictions and accuracy
# --------------------------------------------------------------------------------------------------
def predict_logits(model: keras.Model, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """The model's outputs for ``x`` in batches, as float32 numpy of shape (n, num_classes).

    ``x``: float32 images in [0, 1], shape (n, 28, 28, 1). Introduced in notebooks/01_fgsm.ipynb.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    x = np.asarray(x, dtype=np.float32)
    outs = [np.asarray(model(x[s], training=False), dtype=np.float32) for s in _batches(len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def mean_loss_and_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, *,
                           batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy (from logits) and accuracy of ``model`` on ``(x, y)``, as two Python floats.

    ``x``: float32 images in [0, 1]; ``y``: int labels. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    logits = predict_logits(model, x, batch_size=batch_size)
    loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return float(np.mean(loss)), float(np.mean(np.argmax(logits, axis=1) == y))


def probabilities(model: keras.Model, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Softmax of the model's logits: float32 of shape (n, num_classes), rows summing to 1.

    For display and confidence numbers only; attacks and losses use the logits. Introduced in notebooks/01_fgsm.ipynb.
    """
    return np.asarray(keras.ops.softmax(predict_logits(model, x, batch_size=batch_size), axis=-1), dtype=np.float32)


def correct(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Per-example correctness: bool array of shape (n,), True where argmax of the logits equals ``y``."""
    x, y = check_images_and_labels(x, y)
    return np.argmax(predict_logits(model, x, batch_size=batch_size), axis=1) == y


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 500) -> float:
    """Clean accuracy: the fraction in [0, 1] of ``x`` (float32 in [0, 1], NHWC) classified as ``y`` (int labels).

    Introduced in notebooks/01_fgsm.ipynb.
    """
    return float(np.mean(correct(model, x, y, batch_size=batch_size)))


def accuracy_ci95(correct: Any) -> tuple[float, float]:
    """Accuracy and the half-width of its 95 % interval from per-example correctness ``correct`` (bools, (n,)).

    The interval is the Wilson score interval for a binomial proportion (z = 1.96); it stays honest near 0 %
    and 100 %, where the normal approximation 1.96 * sqrt(p (1 - p) / n) shrinks to zero width. Wilson's
    interval is not centred on the accuracy, so ``half_width`` is the larger of its two distances from it:
    ``mean +- half_width`` contains the Wilson interval. Returns ``(mean, half_width)`` as fractions in [0, 1].
    Introduced in notebooks/01_fgsm.ipynb.
    """
    c = np.asarray(correct)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"correct must be a non-empty 1-D array of per-example bools, got shape {c.shape}")
    if c.dtype != np.bool_:
        if not np.issubdtype(c.dtype, np.integer) or not np.isin(c, (0, 1)).all():
            raise TypeError(f"correct must hold bools (or 0/1), got dtype {c.dtype}; pass e.g. evaluate.correct(...)")
        c = c.astype(bool)
    n, p, z = len(c), float(np.mean(c)), 1.96
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(p - (center - spread), center + spread - p)


def mean_ci95(values: Any, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95 % half-width ``1.96 * std / sqrt(n)`` (std with ddof=1) of ``values`` along ``axis``.

    For averages of many numbers, e.g. per-task few-shot accuracies (the normal approximation, as in the
    few-shot literature); for one accuracy over n examples use :func:`accuracy_ci95`.
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    if n < 2:
        raise ValueError(f"need at least 2 values for a confidence interval, got {n}")
    return values.mean(axis=axis), 1.96 * values.std(axis=axis, ddof=1) / math.sqrt(n)


def mean_ci95_record(values: Any) -> dict[str, float]:
    """:func:`mean_ci95` of a 1-d sequence as the ``{"mean", "ci95"}`` record the results files use.

    Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    mean, ci = mean_ci95(np.asarray(values, dtype=np.float64))
    return {"mean": float(mean), "ci95": float(ci)}


def adversarial_examples(model: keras.Model, x: np.ndarray, y: np.ndarray, attack: attacks.Attack, *,
                         batch_size: int = 500) -> np.ndarray:
    """Run ``attack(model, x_batch, y_batch)`` batch by batch; returns float32 images shaped like ``x``.

    ``attack`` is an attack spec from :mod:`tutorial_lib.attacks` (e.g. ``attacks.PGD(eps=0.3)``) or any
    callable with that signature. Batching bounds memory for large ``x``.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    if not callable(attack):
        raise TypeError(
            f"attack must be an attack spec such as tl.attacks.FGSM(eps=0.1), got {type(attack).__name__}; "
            "for a function with extra arguments wrap it, e.g. lambda m, x, y: tl.attacks.fgsm(m, x, y, 0.1)"
        )
    x, y = check_images_and_labels(x, y)
    batch_size = check_positive_int("batch_size", batch_size)
    out = [np.asarray(attack(model, x[s], y[s]), dtype=np.float32) for s in _batches(len(x), batch_size)]
    x_adv = np.concatenate(out, axis=0)
    if x_adv.shape != x.shape:
        raise ValueError(f"the attack returned shape {x_adv.shape} for inputs of shape {x.shape}; it must keep shapes")
    return x_adv


def robust_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, attack: attacks.Attack, *,
                    batch_size: int = 500) -> float:
    """Accuracy under ``attack``: the fraction in [0, 1] of examples classified correctly both clean and attacked.

    Counting an example only when its clean prediction is also right (as AutoAttack and the MNIST
    challenge do) makes ``robust_accuracy <= accuracy`` hold for every attack. ``attack`` is a spec,
    e.g. ``attacks.FGSM(eps=0.1)``. Introduced in notebooks/01_fgsm.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    x_adv = adversarial_examples(model, x, y, attack, batch_size=batch_size)
    both = correct(model, x, y, batch_size=batch_size) & correct(model, x_adv, y, batch_size=batch_size)
    return float(np.mean(both))


def accuracy_under(model: keras.Model, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, *,
                   batch_size: int = 500) -> float:
    """Robust accuracy for adversarial examples computed elsewhere: the fraction right on both ``x`` and ``x_adv``.

    ``x_adv`` must have the shape of ``x``. Introduced in notebooks/01_fgsm.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    x_adv = np.asarray(x_adv, dtype=np.float32)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {x_adv.shape} but x has shape {x.shape}; pass matching arrays")
    both = correct(model, x, y, batch_size=batch_size) & correct(model, x_adv, y, batch_size=batch_size)
    return float(np.mean(both))


def robustness_summary(model: keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, pgd_steps: int = 40,
                       pgd_step_size: float = 0.01, strong_steps: int = 100, restarts: int = 5,
                       batch_size: int = 500) -> dict[str, float]:
    """Clean, FGSM, PGD-``pgd_steps`` and PGD-``strong_steps`` x ``restarts`` accuracy (fractions) on ``(x, y)``.

    ``x``: float32 (N, H, W, C) in [0, 1]; ``y``: int labels (N,). All PGD runs are L-inf with step
    ``pgd_step_size`` and a random start. Every number counts an example only if it is correct clean and
    attacked. The strong attack is ``attacks.PGD(steps=strong_steps, restarts=restarts)`` (an example is broken
    if any restart breaks it), run on the examples PGD-``pgd_steps`` left standing: the strong number is the
    worst case over both attacks. ``restarts=0`` skips it. Keys: ``clean``, ``fgsm``, ``pgd{pgd_steps}``, and
    ``pgd{strong_steps}_restarts{restarts}``. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    eps = check_eps(eps, positive=True)
    restarts = check_count("restarts", restarts, hint=" (0 skips the strong attack)")
    fgsm = attacks.FGSM(eps=eps)
    pgd = attacks.PGD(eps=eps, steps=pgd_steps, step_size=pgd_step_size, seed=0)
    clean_ok = correct(model, x, y, batch_size=batch_size)
    robust = clean_ok & correct(model, adversarial_examples(model, x, y, pgd, batch_size=batch_size), y,
                                batch_size=batch_size)
    out = {"clean": float(clean_ok.mean()),
           "fgsm": float((clean_ok & correct(model, fgsm(model, x, y), y, batch_size=batch_size)).mean()),
           f"pgd{pgd_steps}": float(robust.mean())}
    if restarts:
        strong = attacks.PGD(eps=eps, steps=strong_steps, step_size=pgd_step_size, restarts=restarts, seed=1)
        idx = np.flatnonzero(robust)
        if idx.size:
            x_adv = adversarial_examples(model, x[idx], y[idx], strong, batch_size=min(batch_size, 100))
            robust[idx] = correct(model, x_adv, y[idx], batch_size=batch_size)
        out[f"pgd{strong_steps}_restarts{restarts}"] = float(robust.mean())
    return out


def summary_column_title(key: str) -> str:
    """A table heading for a :func:`robustness_summary` key: ``"pgd40"`` -> ``"PGD-40"``,
    ``"pgd100_restarts5"`` -> ``"PGD-100 x 5"``, ``"fgsm"`` -> ``"FGSM"``; other keys unchanged."""
    if key == "fgsm":
        return "FGSM"
    if key.startswith("pgd") and "_restarts" in key:
        steps, restarts = key[3:].split("_restarts")
        return f"PGD-{steps} x {restarts}"
    return f"PGD-{key[3:]}" if key.startswith("pgd") and key[3:].isdigit() else key


def activation_bytes(model: keras.Model, n: int) -> int:
    """Bytes of float32 layer outputs in one forward pass over ``n`` images: what a GradientTape keeps alive.

    Counts every layer's output (``model.layers``); a lower bound on the memory of an unbatched attack.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    per_image = sum(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    return int(n) * per_image * 4


def slug(name: str) -> str:
    """A results-file field name from an attack name: ``"PGD-40 L2 x5"`` -> ``"pgd40_l2_x5"``."""
    return "_".join(str(name).lower().replace("-", "").split())


# --------------------------------------------------------------------------------------------------
# The worst case over a list of attacks
# --------------------------------------------------------------------------------------------------
def _record(correct: np.ndarray) -> dict[str, float]:
    mean, half = accuracy_ci95(correct)
    return {"mean": float(mean), "ci95": float(half)}


@dataclass(frozen=True)
class WorstCase:
    """Robust accuracy against each of a list of attacks and against all of them (:func:`worst_case`).

    ``clean``: per-example correctness on the clean images, bool (n,). ``per_attack``: attack name -> bool (n,),
    correct clean and under that attack (``cumulative``: under that attack and every earlier one, see
    :func:`worst_case`'s ``cascade``). ``correct``: bool (n,), correct clean and under every attack (an example
    is broken if any attack, or any restart of one, breaks it). ``seconds``: attack name -> wall time.
    Accuracies are fractions in [0, 1]; each comes with the half-width of its 95 % Wilson interval
    (:func:`accuracy_ci95`). Introduced in notebooks/07_applications_and_results.ipynb.
    """

    clean: np.ndarray
    per_attack: dict[str, np.ndarray]
    correct: np.ndarray
    seconds: dict[str, float]
    cumulative: bool = False

    @property
    def attacks(self) -> list[str]:
        """The attack names, in the order they ran."""
        return list(self.per_attack)

    @property
    def combined(self) -> tuple[float, float]:
        """Worst-case robust accuracy and the half-width of its 95 % interval."""
        return accuracy_ci95(self.correct)

    def accuracy(self, name: str) -> tuple[float, float]:
        """Robust accuracy under the attack called ``name`` and its 95 % half-width (KeyError listing the names)."""
        if name not in self.per_attack:
            raise KeyError(f"no attack named {name!r}; attacks are {self.attacks}")
        return accuracy_ci95(self.per_attack[name])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers: ``{"n", "clean", "attacks", "per_attack": {name: {"mean", "ci95", "seconds"}},
        "combined": {"mean", "ci95"}}`` (accuracies as fractions)."""
        per = {k: {**_record(v), "seconds": float(self.seconds.get(k, 0.0))} for k, v in self.per_attack.items()}
        return {"n": int(len(self.correct)), "clean": _record(self.clean), "attacks": self.attacks,
                "per_attack": per, "combined": _record(self.correct), "cumulative": bool(self.cumulative)}

    def _rows(self) -> list[tuple[str, float, float, str]]:
        rows = [("clean", *accuracy_ci95(self.clean), "")]
        rows += [(f"after {k}" if self.cumulative else k, *accuracy_ci95(v), f"{self.seconds.get(k, 0.0):.1f}")
                 for k, v in self.per_attack.items()]
        return rows + [("worst case (all attacks)", *self.combined, f"{sum(self.seconds.values()):.1f}")]

    def table(self) -> str:
        """A Markdown table: clean, each attack, and the worst case, with 95 % intervals and seconds."""
        lines = [f"| attack ({len(self.correct)} examples) | accuracy | 95 % interval | seconds |", "|---|---|---|---|"]
        lines += [f"| {n} | {100 * m:.1f} % | ± {100 * h:.1f} | {t} |" for n, m, h, t in self._rows()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.table()

    def __str__(self) -> str:
        rows = self._rows()
        width = max(len(r[0]) for r in rows)
        head = f"{'attack':<{width}}  accuracy  95 % interval  seconds"
        body = [f"{n:<{width}}  {100 * m:7.1f}%  {'± ' + format(100 * h, '.1f'):>13}  {t:>7}" for n, m, h, t in rows]
        return "\n".join([f"robust accuracy on {len(self.correct)} examples", head, *body])


def worst_case(model: keras.Model, x: np.ndarray, y: np.ndarray, attacks: Sequence[attacks.Attack], *,
               batch_size: int | None = None, cascade: bool = False) -> WorstCase:
    """Robust accuracy of ``model`` against each attack of ``attacks`` and against all of them together.

    ``x``: float32 images in [0, 1], NHWC; ``y``: int labels (n,). ``attacks``: a non-empty list of attack specs
    (e.g. :func:`strong_attacks`) or callables ``f(model, x, y) -> x_adv`` (named by their ``name`` attribute).
    Each attack runs on the examples classified correctly clean (the others count as wrong anyway), all of them, so
    every per-attack number is that attack's own; an example counts as robust only if it is correct clean and
    under every attack (and every restart of each): the worst case per example, which is at most each
    per-attack number. ``batch_size``: images per call of an attack (None: all at once, the spec's own
    ``batch_size`` bounding memory). ``cascade=True`` runs each attack only on the examples that every earlier
    attack left correct (AutoAttack's way): the combined number is the same worst case (up to the random starts,
    drawn for fewer examples) at less cost when the first attacks break most examples, but each per-attack mask
    then says "correct after this attack and every earlier one" (``WorstCase.cumulative``). Returns a
    :class:`WorstCase` (``print`` it for a table; ``to_dict()`` for JSON).
    Introduced in notebooks/07_applications_and_results.ipynb.
    """
    if callable(attacks) or isinstance(attacks, (str, bytes)) or not isinstance(attacks, Sequence):
        raise TypeError("attacks must be a list of attack specs, e.g. tl.evaluate.strong_attacks(0.3) or "
                        f"[tl.attacks.PGD(eps=0.3)], got {type(attacks).__name__}")
    if len(attacks) == 0:
        raise ValueError("attacks is empty; pass at least one attack, e.g. tl.evaluate.strong_attacks(0.3)")
    for a in attacks:
        if not callable(a):
            raise TypeError(f"every attack must be an attack spec (callable as attack(model, x, y)), got "
                            f"{type(a).__name__}")
    names: list[str] = []
    seen: dict[str, int] = {}
    for a in attacks:  # two attacks of the same name (e.g. other seeds) become "name", "name #2"
        base = str(getattr(a, "name", None) or getattr(a, "__name__", None) or type(a).__name__)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    x, y = check_images_and_labels(x, y)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size, hint=" (or None for one call)")
    cascade = check_bool("cascade", cascade)
    clean = correct(model, x, y)
    standing = clean.copy()  # correct clean and under every attack so far
    per_attack: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, attack in zip(names, attacks):
        start = time.perf_counter()
        idx = np.flatnonzero(standing if cascade else clean)
        ok = np.zeros(len(x), dtype=bool)
        if idx.size:
            x_adv = adversarial_examples(model, x[idx], y[idx], attack, batch_size=batch_size or idx.size)
            ok[idx] = correct(model, x_adv, y[idx])
        per_attack[name] = ok
        standing &= ok
        seconds[name] = time.perf_counter() - start
    return WorstCase(clean=clean, per_attack=per_attack, correct=standing, seconds=seconds, cumulative=cascade)


def strong_attacks(eps: float, *, norm: str | int = "inf", steps: int = 100, restarts: int = 5,
                   seed: int = 0) -> list[attacks.Attack]:
    """The series' standard strong evaluation at radius ``eps``: a list for :func:`worst_case`.

    In AutoAttack's order: APGD with the cross-entropy and APGD with the DLR loss (Croce & Hein 2020), ``steps``
    iterations each from a random start (100: the paper's and AutoAttack's default; notebook 07's ART comparison
    ran 50), then PGD-``steps`` x ``restarts`` (step 2.5 eps / steps, random starts, broken if any restart breaks
    it). The order changes no worst case; with ``worst_case(..., cascade=True)`` the cheap APGD runs go first.
    ``norm``: "inf" or 2. ``seed`` fixes the random starts. Introduced in notebooks/07_applications_and_results.ipynb.
    """
    eps = check_eps(eps, positive=True)
    steps = check_positive_int("steps", steps)
    return [attacks.APGD(eps=eps, steps=steps, loss="ce", norm=norm, seed=seed),
            attacks.APGD(eps=eps, steps=steps, loss="dlr", norm=norm, seed=seed),
            attacks.PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps, norm=norm, random_start=True,
                        restarts=check_positive_int("restarts", restarts), seed=seed)]


def worst_case_record(result: WorstCase, art_apgd: Any = None) -> dict[str, Any]:
    """The ``"worst_case"`` field of build/results/07_applications.json: ``{"attacks": [names], "combined":
    {"mean", "ci95"}, "per_attack": {name: {"mean", "ci95"}}, "art_apgd": {"mean", "ci95"} or None}``.

    ``art_apgd``: per-example correctness under ART's APGD on the same images (bools (n,), e.g.
    ``peer_comparison(...)["correct"]["art_apgd"]``), or None when the ``peers`` extra is missing.
    Introduced in notebooks/07_applications_and_results.ipynb.
    """
    if not isinstance(result, WorstCase):
        raise TypeError(f"result must be the WorstCase of tl.evaluate.worst_case, got {type(result).__name__}")
    art = None
    if art_apgd is not None:
        mask = np.asarray(art_apgd)
        if mask.shape != result.correct.shape:
            raise ValueError(f"art_apgd must hold one bool per example ({result.correct.shape}), got shape "
                             f"{mask.shape}: pass ART's per-example correctness on the same images")
        art = _record(mask)
    return {"attacks": result.attacks, "combined": _record(result.correct),
            "per_attack": {k: _record(v) for k, v in result.per_attack.items()}, "art_apgd": art}


# --------------------------------------------------------------------------------------------------
# Accuracy-vs-eps sweeps
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    """Accuracy at each eps of a sweep: ``eps`` and ``accuracy`` are float arrays of the same length.

    ``accuracy[i]`` is robust accuracy (fraction in [0, 1]) at ``eps[i]``; at eps 0 it is clean accuracy.
    Plot with :func:`tutorial_lib.viz.plot_sweep`. Introduced in notebooks/01_fgsm.ipynb.
    """

    eps: np.ndarray
    accuracy: np.ndarray
    label: str
    seconds: float = 0.0

    def accuracy_at(self, eps: float) -> float:
        """Accuracy at the sweep point equal to ``eps`` (within 1e-9); ValueError if it was not swept."""
        hits = np.flatnonzero(np.isclose(self.eps, eps, rtol=0.0, atol=1e-9))
        if len(hits) == 0:
            raise ValueError(f"eps {eps} is not a point of this sweep; swept values: {np.round(self.eps, 4).tolist()}")
        return float(self.accuracy[hits[0]])

    def to_dict(self, prefix: str | None = None) -> dict[str, float]:
        """Flat ``{"<prefix>_eps<e>": accuracy}`` fields for :func:`tutorial_lib.runtime.save_results`."""
        prefix = prefix or slug(self.label)
        return {f"{prefix}_eps{e:g}": float(a) for e, a in zip(self.eps, self.accuracy)}

    def table(self) -> str:
        """A Markdown table of eps against accuracy."""
        rows = [f"| {e:.3g} | {a:.3f} |" for e, a in zip(self.eps, self.accuracy)]
        return "\n".join([f"| eps | {self.label} accuracy |", "|---|---|", *rows])

    def _repr_markdown_(self) -> str:
        return self.table()


def epsilon_sweep(model: keras.Model, x: np.ndarray, y: np.ndarray, attack_factory: Callable[[float], attacks.Attack],
                  eps_values: Sequence[float], *, label: str | None = None, batch_size: int = 500) -> SweepResult:
    """Robust accuracy of ``model`` at each eps in ``eps_values`` (non-negative, increasing).

    ``attack_factory(eps)`` returns an attack spec, e.g. ``lambda e: attacks.FGSM(eps=e)`` or
    ``attacks.PGD(eps=0.3, steps=40).with_eps``. At eps 0 the clean accuracy is used (no attack runs).
    ``label`` defaults to the spec's ``name``. Returns a :class:`SweepResult`.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    if not callable(attack_factory):
        raise TypeError("attack_factory must be a callable eps -> attack spec, e.g. lambda e: tl.attacks.FGSM(eps=e)")
    eps = np.asarray(eps_values, dtype=np.float64)
    if eps.ndim != 1 or len(eps) == 0:
        raise ValueError(f"eps_values must be a non-empty 1-D sequence of floats, got shape {eps.shape}")
    if np.any(eps < 0) or np.any(np.diff(eps) <= 0):
        raise ValueError(f"eps_values must be non-negative and strictly increasing, got {eps.tolist()}")
    x, y = check_images_and_labels(x, y)
    start = time.perf_counter()
    clean = correct(model, x, y, batch_size=batch_size)
    accs, name = [], label
    for e in eps:
        if e == 0.0:
            accs.append(float(np.mean(clean)))
            continue
        attack = attack_factory(float(e))
        name = name or getattr(attack, "name", None) or type(attack).__name__
        x_adv = adversarial_examples(model, x, y, attack, batch_size=batch_size)
        accs.append(float(np.mean(clean & correct(model, x_adv, y, batch_size=batch_size))))
    return SweepResult(eps=eps, accuracy=np.asarray(accs), label=name or "attack",
                       seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# Gradient-masking sanity checks
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One sanity check: a name, the measured value (as text), whether it passed, and what it means."""

    name: str
    value: str
    passed: bool
    meaning: str

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"


@dataclass
class SanityReport:
    """The outcome of :func:`sanity_checks`. ``passed`` is True only if every check passed.

    ``checks`` lists :class:`Check` records; ``numbers`` holds the raw measurements (accuracies as
    fractions in [0, 1]) for asserts and :func:`tutorial_lib.runtime.save_results`.
    """

    eps: float
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError listing the names if there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks are {[c.name for c in self.checks]}")

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def to_dict(self, prefix: str = "sanity") -> dict[str, Any]:
        """Flat verdict fields (``<prefix>_passed``, ``<prefix>_<check>``) for save_results."""
        out: dict[str, Any] = {f"{prefix}_passed": self.passed}
        out.update({f"{prefix}_{c.name}": c.passed for c in self.checks})
        return out

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.checks) if self.checks else 0
        head = f"sanity checks at eps {self.eps:g}: {'all passed' if self.passed else 'FAILED: ' + ', '.join(self.failed())}"
        lines = [f"  [{c.verdict:>4}] {c.name:<{width}}  {c.value}" for c in self.checks]
        return "\n".join([head, *lines])

    def _repr_markdown_(self) -> str:
        verdict = "**all checks passed**" if self.passed else f"**FAILED**: {', '.join(self.failed())}"
        rows = [f"| {c.name} | {c.value} | {'pass' if c.passed else '**FAIL**'} | {c.meaning} |" for c in self.checks]
        return "\n".join([f"Sanity checks at eps = {self.eps:g}: {verdict}", "",
                          "| check | measured | verdict | a failure means |", "|---|---|---|---|", *rows])


def looks_like_probabilities(outputs: np.ndarray, *, atol: float = 1e-3) -> bool:
    """True when every row of ``outputs`` (n, classes) is in [0, 1] and sums to 1: a softmax, not logits."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return bool(np.all(outputs >= -atol) and np.all(outputs <= 1 + atol)
                and np.allclose(outputs.sum(axis=1), 1.0, atol=atol))


def input_gradients(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Gradient of the per-example cross-entropy (on logits) w.r.t. the input: float32, shaped like ``x``.

    A gradient that is ``None`` (the graph has no gradient path, e.g. ``tf.round``) is returned as zeros.
    Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    grads = []
    for s in _batches(len(x), check_positive_int("batch_size", batch_size)):
        xb = tf.convert_to_tensor(x[s])
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = loss_fn(y[s], model(xb, training=False))
        g = tape.gradient(loss, xb)
        grads.append(np.zeros_like(x[s]) if g is None else g.numpy())
    return np.concatenate(grads, axis=0)


def random_noise(x: np.ndarray, eps: float, *, seed: int = 0, clip_min: float = 0.0, clip_max: float = 1.0) -> np.ndarray:
    """``x`` plus random signs of size ``eps`` (a corner of the L-inf ball), clipped to the pixel range.

    The baseline an attack must beat: an attack no stronger than this noise is not using the gradient.
    """
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=np.shape(x))
    return np.clip(np.asarray(x, dtype=np.float32) + np.float32(eps) * signs, clip_min, clip_max)


def _pct(a: float) -> str:
    return f"{100 * a:.1f}%"


#: The one set of limits of the gradient-masking checks (:func:`masking_checks`), for plain and adapted models.
MASKING_LIMITS: dict[str, float] = {"large_eps": 0.5, "chance_margin": 0.1, "restart_gain_limit": 0.02,
                                    "fgsm_margin": 0.01, "zero_grad_limit": 0.01}


def masking_checks(numbers: dict[str, float], *, probabilities: bool, restarts: int,
                   large_eps: float = MASKING_LIMITS["large_eps"],
                   chance_margin: float = MASKING_LIMITS["chance_margin"],
                   restart_gain_limit: float = MASKING_LIMITS["restart_gain_limit"],
                   fgsm_margin: float = MASKING_LIMITS["fgsm_margin"],
                   zero_grad_limit: float = MASKING_LIMITS["zero_grad_limit"],
                   unit: str = "examples") -> list[Check]:
    """The gradient-masking checks as :class:`Check` rows, from numbers measured elsewhere.

    ``numbers`` holds fractions in [0, 1]: ``zero_gradient_fraction`` (of ``unit`` with an all-zero input
    gradient), and the robust accuracies ``fgsm``, ``pgd`` (one run), ``pgd_restarts`` (``restarts`` random
    starts, broken if any breaks it), ``pgd_large_eps`` (PGD at ``large_eps``) and ``noise`` (random signs of
    size eps). ``probabilities``: whether the outputs looked like rows of probabilities
    (:func:`looks_like_probabilities`). ``unit`` names what was counted ("examples", or "queries" for adapted
    learners). The rows, in order: ``logits_not_probabilities``, ``nonzero_gradients``, ``pgd_beats_fgsm``,
    ``large_eps_breaks_model``, ``attack_beats_noise``, ``restarts_change_little`` (meanings in
    :func:`sanity_checks`). Used by :func:`sanity_checks` and by the checks on adapted learners, so both use
    the limits of :data:`MASKING_LIMITS` unless told otherwise. Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    missing = {"zero_gradient_fraction", "fgsm", "pgd", "pgd_restarts", "pgd_large_eps", "noise"} - set(numbers)
    if missing:
        raise ValueError(f"numbers lacks {sorted(missing)}; measure them first (see evaluate.sanity_checks)")
    num, zero = numbers, numbers["zero_gradient_fraction"]
    return [
        Check("logits_not_probabilities", "rows sum to 1" if probabilities else "unnormalised logits",
              not probabilities, "the model returns a softmax: losses saturate and gradients vanish"),
        Check("nonzero_gradients", f"{_pct(zero)} of {unit} have an all-zero gradient",
              zero <= zero_grad_limit, "gradient attacks have nothing to follow (masking)"),
        Check("pgd_beats_fgsm", f"PGD {_pct(num['pgd'])} vs FGSM {_pct(num['fgsm'])}",
              num["pgd"] <= num["fgsm"] + fgsm_margin + 1e-9,
              "the iterative attack is stuck (masked or broken gradients)"),
        Check("large_eps_breaks_model", f"PGD at eps {large_eps:g}: {_pct(num['pgd_large_eps'])}",
              num["pgd_large_eps"] <= chance_margin + 1e-9,
              "the attack cannot succeed even when it could erase the digit"),
        Check("attack_beats_noise", f"PGD {_pct(num['pgd'])} vs random noise {_pct(num['noise'])}",
              num["pgd"] < num["noise"], "the gradient is no better a direction than a random one"),
        Check("restarts_change_little",
              f"1 restart {_pct(num['pgd'])} vs {restarts} restarts {_pct(num['pgd_restarts'])}",
              num["pgd"] - num["pgd_restarts"] <= restart_gain_limit + 1e-9,
              "single-run numbers depend on luck: report restarts"),
    ]


def sanity_checks(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, *, steps: int = 40,
                  step_size: float | None = None, restarts: int = 5,
                  large_eps: float = MASKING_LIMITS["large_eps"],
                  chance_margin: float = MASKING_LIMITS["chance_margin"],
                  restart_gain_limit: float = MASKING_LIMITS["restart_gain_limit"],
                  fgsm_margin: float = MASKING_LIMITS["fgsm_margin"],
                  zero_grad_limit: float = MASKING_LIMITS["zero_grad_limit"],
                  seed: int = 0, batch_size: int = 500) -> SanityReport:
    """Check an L-inf robustness evaluation at ``eps`` for signs of gradient masking.

    ``x``: float32 images in [0, 1] (n, 28, 28, 1); ``y``: int labels. Runs FGSM, PGD-``steps`` (step size
    ``step_size``, default ``2.5 * eps / steps``) with 1 and with ``restarts`` random restarts, PGD at
    ``large_eps``, and random sign noise, then checks (names as in the report; rows from :func:`masking_checks`,
    default limits from :data:`MASKING_LIMITS`):

    * ``logits_not_probabilities``: outputs are not rows in [0, 1] summing to 1 (AutoAttack's softmax check);
    * ``nonzero_gradients``: at most ``zero_grad_limit`` of the examples have an all-zero input gradient;
    * ``pgd_beats_fgsm``: PGD accuracy <= FGSM accuracy + ``fgsm_margin``;
    * ``large_eps_breaks_model``: PGD accuracy at ``large_eps`` <= ``chance_margin`` (an image can be pushed
      to uniform grey at eps 0.5, so an honest attack reaches ~0);
    * ``attack_beats_noise``: PGD accuracy is below the accuracy under random noise of the same size;
    * ``restarts_change_little``: restarts lower PGD accuracy by at most ``restart_gain_limit``.

    Returns a :class:`SanityReport` (``.passed``, ``.checks``, ``.numbers``). Cost: about ``restarts + 2``
    PGD runs over ``x``, so pass a few hundred examples. Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    x, y = check_images_and_labels(x, y)
    eps = check_eps(eps, positive=True)
    if check_eps(large_eps) <= eps:
        raise ValueError(f"large_eps ({large_eps}) must be larger than eps ({eps}); 0.5 suits MNIST")
    steps, restarts = check_positive_int("steps", steps), check_positive_int("restarts", restarts)
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    report = SanityReport(eps=float(eps))
    num = report.numbers

    probs = looks_like_probabilities(predict_logits(model, x, batch_size=batch_size))
    grads = input_gradients(model, x, y, batch_size=batch_size)
    num["zero_gradient_fraction"] = float(np.mean(np.all(grads.reshape(len(x), -1) == 0, axis=1)))

    def pgd(e: float, r: int) -> attacks.Attack:
        size = step_size * e / eps
        return attacks.PGD(eps=e, steps=steps, step_size=size, norm="inf", random_start=True, restarts=r, seed=seed)

    def rob(attack: attacks.Attack) -> float:
        return robust_accuracy(model, x, y, attack, batch_size=batch_size)

    num["clean"] = accuracy(model, x, y, batch_size=batch_size)
    num["fgsm"] = rob(attacks.FGSM(eps=eps))
    num["pgd"] = rob(pgd(eps, 1))
    num["pgd_restarts"] = rob(pgd(eps, restarts)) if restarts > 1 else num["pgd"]
    num["pgd_large_eps"] = rob(pgd(large_eps, 1))
    num["noise"] = rob(lambda m, xb, yb: random_noise(xb, eps, seed=seed))
    report.checks += masking_checks(num, probabilities=probs, restarts=restarts, large_eps=large_eps,
                                    chance_margin=chance_margin, restart_gain_limit=restart_gain_limit,
                                    fgsm_margin=fgsm_margin, zero_grad_limit=zero_grad_limit)
    return report


# --------------------------------------------------------------------------------------------------
# Models that fool weak evaluations, and the article's naive FGSM (for side-by-side comparisons)
# --------------------------------------------------------------------------------------------------
def saturated_model(model: keras.Model, *, temperature: float = 1000.0) -> keras.Model:
    """A deliberately gradient-masked copy of ``model``: its logits multiplied by ``temperature``.

    Predictions (argmax) are identical, so it is exactly as (non-)robust, but the softmax saturates:
    cross-entropy gradients underflow to exactly zero for confidently classified inputs, and gradient
    attacks appear to fail. Used to show what :func:`sanity_checks` catches.
    Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    models.check_logits_model(model)
    temperature = check_number("temperature", temperature, low=0.0, low_inclusive=False)
    inputs = keras.Input(shape=model.input_shape[1:])
    outputs = keras.layers.Rescaling(float(temperature), name="temperature")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_saturated")


def softmax_model(model: keras.Model) -> keras.Model:
    """``model`` followed by a softmax, as the article builds its CNN (probabilities out).

    Only for showing what goes wrong; tutorial_lib attacks refuse such models.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    inputs = keras.Input(shape=model.input_shape[1:])
    outputs = keras.layers.Softmax(name="softmax")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_softmax")


def article_fgsm(model: keras.Model, images: np.ndarray, labels: np.ndarray, epsilon: float, *,
              keras_logits_rescue: bool = True) -> np.ndarray:
    """The article's ``fgsm_attack``, reproduced faithfully, flaws included; do not use it.

    ``model`` outputs probabilities (see :func:`softmax_model`), ``labels`` are one-hot (n, 10), the loss is
    ``CategoricalCrossentropy()`` on probabilities, the whole array goes through one eager tape (no
    batching), and the result is never clipped to [0, 1]. Returns float32 numpy shaped like ``images``.

    Keras 3 quietly rescues the probability loss: a Softmax layer's output carries its logits, and the
    loss uses them. Anything that makes a fresh tensor (a served or exported model, a hand-written softmax)
    drops them; ``keras_logits_rescue=False`` shows that case (the loss then sees clipped probabilities).
    Introduced in notebooks/01_fgsm.ipynb.
    """
    loss_fn = keras.losses.CategoricalCrossentropy()
    images = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        predictions = model(images)
        if not keras_logits_rescue:
            predictions = tf.identity(predictions)  # a plain tensor: no hidden logits attached
        loss = loss_fn(labels, predictions)
    gradients = tape.gradient(loss, images)
    return (images + epsilon * tf.sign(gradients)).numpy()
