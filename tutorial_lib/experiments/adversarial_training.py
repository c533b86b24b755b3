"""Notebook 03's experiments: training recipes from the profile, cached training, and the results table.

Reads ``profile.adv_training``; the algorithms are in :mod:`tutorial_lib.training` (adversarial training) and
:mod:`tutorial_lib.evaluate` (robustness numbers); this module only wires them to the profile and the cache.
Introduced in notebooks/03_adversarial_training.ipynb.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .. import attacks, evaluate, models, runtime, training


def recipe(method: str, settings: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`~tutorial_lib.training.adversarial_fit` for ``method`` under a profile's
    ``adv_training`` settings.

    Everything that affects the weights is in here, so it doubles as the cache key.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    training.training_attack(method, settings.eps)  # validates the method
    s = settings
    kw: dict[str, Any] = {"method": method, "eps": s.eps, "epochs": s.epochs, "batch_size": s.batch_size,
                          "learning_rate": s.learning_rate, "decay_epochs": s.decay_epochs}
    if method == "none":
        kw.update(epochs=s.standard_epochs, decay_epochs=0)
    elif method == "fgsm":
        kw.update(epochs=s.fast_epochs, decay_epochs=0)
    elif method == "fgsm_rs":
        kw.update(epochs=s.fast_epochs, decay_epochs=0, step_size=s.fast_alpha * s.eps)
    elif method == "n_fgsm":
        kw.update(epochs=s.fast_epochs, decay_epochs=0, step_size=s.nfgsm_alpha * s.eps, noise=s.nfgsm_noise)
    elif method in ("pgd", "trades"):
        kw.update(steps=s.train_pgd_steps, step_size=s.train_step_scale * s.eps / s.train_pgd_steps,
                  ramp_epochs=s.ramp_epochs)
        if method == "trades":
            kw.update(beta=s.trades_beta)
    return kw


def overfitting_monitor(data: Any, settings: Any, *, seed: int = 0,
                        **kwargs: Any) -> training.CatastrophicOverfittingMonitor:
    """A :class:`~tutorial_lib.training.CatastrophicOverfittingMonitor` on ``settings.monitor_size`` training
    images drawn at random.

    The images are a fixed random sample (seed ``seed``; the bundled subset is sorted by class, so the first
    images would all be zeros). It attacks with FGSM and PGD-``settings.monitor_pgd_steps`` (step
    2.5 eps / steps, random start) at ``settings.eps``, like Wong et al.'s check on a training batch (test
    images stay unseen, so restoring the best epoch is not tuned on the test set). ``kwargs`` go to the
    monitor (``on_overfit``, ``restore_best``...). Introduced in notebooks/03_adversarial_training.ipynb.
    """
    n, steps = settings.monitor_size, settings.monitor_pgd_steps
    idx = np.random.default_rng(seed).choice(len(data.x_train), size=min(n, len(data.x_train)), replace=False)
    return training.CatastrophicOverfittingMonitor(
        data.x_train[idx], data.y_train[idx], fgsm=attacks.FGSM(eps=settings.eps),
        pgd=attacks.PGD(eps=settings.eps, steps=steps, step_size=2.5 * settings.eps / steps, seed=0), **kwargs)


def fast_at_remedies(settings: Any) -> dict[str, dict[str, Any]]:
    """Remedies for fast AT's catastrophic overfitting, each with fast AT's epochs: ``{name: adversarial_fit options}``.

    ``"stop_restore"`` is plain fast AT meant to run with an ``overfitting_monitor(on_overfit="stop")`` (early
    stopping at the flag, best weights restored; :func:`train_cached`'s ``stop_restore_name`` gets that model from
    fast AT's own monitored run); ``"eps_ramp"`` warms eps up over ``remedy_ramp_epochs``;
    ``"gradalign"`` adds the GradAlign term; ``"n_fgsm"`` trains on N-FGSM's batch instead (``recipe("n_fgsm")``:
    noise ``nfgsm_noise`` x eps, step ``nfgsm_alpha`` x eps, no projection) and ``"n_fgsm_ramp"`` does so with
    the eps warm-up of ``"eps_ramp"``. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    base = recipe("fgsm_rs", settings)
    n_fgsm = recipe("n_fgsm", settings)
    ramp = settings.remedy_ramp_epochs
    return {
        "stop_restore": dict(base),
        "eps_ramp": {**base, "ramp_epochs": ramp},
        "gradalign": {**base, "align_weight": settings.align_weight},
        "n_fgsm": n_fgsm,
        "n_fgsm_ramp": {**n_fgsm, "ramp_epochs": ramp},
    }


def train_cached(
    name: str,
    data: Any,
    fit_kwargs: dict[str, Any],
    *,
    seed: int = 0,
    callbacks: list | None = None,
    save: bool = True,
    verbose: bool = True,
    stop_restore_name: str | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh article's CNN with :func:`~tutorial_lib.training.adversarial_fit` (``fit_kwargs``) on ``data``,
    cached by config hash.

    ``data``: an :class:`~tutorial_lib.data.MNIST`. ``callbacks`` are used only if training runs (the cache
    key includes their class names); a monitor's record lands in ``info["monitor"]``. With ``save`` the
    classifier is also written to ``build/models/<name>.keras`` (a plain Keras model: loads in safe mode
    with nothing beyond Keras). Returns ``(classifier, info)`` as :func:`tutorial_lib.models.load_or_train`.

    ``stop_restore_name``: with a :class:`~tutorial_lib.training.CatastrophicOverfittingMonitor` among the
    callbacks, also cache (and save) under that name the classifier early stopping would have left (the monitor's
    ``stop_weights``: best-PGD epoch up to the first flag), returned as ``info["stop_restore"] = (classifier,
    info)`` whose ``epoch_seconds`` are the epochs up to the flag. It equals a second run with
    ``on_overfit="stop", restore_best=True`` (same seed and recipe) without training again.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not isinstance(fit_kwargs, dict) or "method" not in fit_kwargs:
        raise TypeError("fit_kwargs must be a dict of adversarial_fit options with at least 'method', "
                        "e.g. recipe('pgd', profile.adv_training)")
    callbacks = list(callbacks or [])
    monitors = [c for c in callbacks if isinstance(c, training.CatastrophicOverfittingMonitor)]
    if stop_restore_name is not None and len(monitors) != 1:
        raise ValueError("stop_restore_name needs exactly one CatastrophicOverfittingMonitor among the callbacks, "
                         f"got {len(monitors)}")
    cb_names = [type(c).__name__ for c in callbacks]
    config = {"model": "seed_cnn", "data": f"{data.source}:{len(data.x_train)}", "seed": seed, **fit_kwargs,
              "callbacks": cb_names}

    def train() -> tuple[keras.Model, dict[str, Any]]:
        runtime.set_seed(seed)
        clf = models.article_cnn()
        clf, info = training.adversarial_fit(clf, data.x_train, data.y_train, callbacks=callbacks,
                                             verbose=2 if verbose else 0, **fit_kwargs)
        for cb in callbacks:
            if isinstance(cb, training.CatastrophicOverfittingMonitor):
                info["monitor"] = {"history": cb.history, "onset_epoch": cb.onset_epoch, "best_epoch": cb.best_epoch}
        return clf, info

    model, info = models.load_or_train(name, config, train, verbose=verbose)
    if stop_restore_name is not None:
        info["stop_restore"] = _stop_restore(stop_restore_name, config, monitors[0], info,
                                             lambda: models.load_or_train(name, config, train, retrain=True,
                                                                          verbose=verbose),
                                             save=save, verbose=verbose)
    if save:
        _save(name, model, info)
    return model, info


def _save(name: str, model: keras.Model, info: dict[str, Any]) -> None:
    path = runtime.build_subdir("models") / f"{name}.keras"
    models.save_model(model, path)
    info["path"] = runtime.display_path(path)


def _stop_restore(name: str, config: dict[str, Any], monitor: training.CatastrophicOverfittingMonitor,
                  info: dict[str, Any], retrain: Any, *, save: bool, verbose: bool) -> tuple[keras.Model, dict[str, Any]]:
    """The early-stopped classifier of a monitored run, cached under ``name`` (see :func:`train_cached`)."""

    def restore() -> tuple[keras.Model, dict[str, Any]]:
        if monitor.stop_weights is None:  # the run came from the cache: run it again to get the weights
            retrain()
        clf = models.article_cnn()
        clf.set_weights(monitor.stop_weights)
        onset = monitor.onset_epoch
        stopped = len(monitor.history) if onset is None else onset + 1
        return clf, {"epoch_seconds": info["epoch_seconds"][:stopped], "stop_epoch": monitor.stop_epoch,
                     "onset_epoch": onset}

    model, stop_info = models.load_or_train(name, {**config, "weights": "stop at the first flag, restore best"},
                                            restore, verbose=verbose)
    if save:
        _save(name, model, stop_info)
    return model, stop_info


def robustness_table(results: dict[str, dict[str, float]], *, labels: dict[str, str] | None = None,
                     n: int | None = None) -> str:
    """A Markdown table of :func:`tutorial_lib.evaluate.robustness_summary` results keyed by row name.

    Fractions are shown as percents, ``seconds_per_epoch`` and ``train_seconds`` in seconds; columns are the
    union of the result keys in first-seen order. Rows are labelled by ``labels``, else by
    :data:`tutorial_lib.training.METHOD_TITLES`, else by their key. ``n``: the number of test images behind each
    accuracy; if given, every accuracy carries its 95 % interval (Wilson, :func:`tutorial_lib.evaluate.accuracy_ci95`).
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict {row name: {column: value}}")
    names = {"clean": "clean", "seconds_per_epoch": "s / epoch", "train_seconds": "train s"}
    columns: list[str] = []
    for row in results.values():
        columns += [c for c in row if c not in columns]

    def cell(c: str, v: Any) -> str:
        if v is None:
            return "-"
        if c in ("seconds_per_epoch", "train_seconds"):
            return f"{v:.1f}"
        if n is None:
            return f"{100 * v:.1f}%"
        half = evaluate.accuracy_ci95(np.arange(n) < round(float(v) * n))[1]
        return f"{100 * v:.1f}% ± {100 * half:.1f}"

    heads = [names.get(c) or evaluate.summary_column_title(c) for c in columns]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, row in results.items():
        label = (labels or {}).get(key, training.METHOD_TITLES.get(key, key))
        lines.append(f"| {label} | " + " | ".join(cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def strong_attacks(settings: Any) -> list[attacks.Attack]:
    """The series' standard strong evaluation (:func:`tutorial_lib.evaluate.strong_attacks`) at the profile's
    ``eps``: APGD-CE, APGD-DLR and PGD x ``strong_restarts``, ``eval_strong_steps`` steps each (100 in every
    profile; the quick profile runs PGD once instead of 5 times). Introduced in notebooks/03_adversarial_training.ipynb."""
    s = settings
    return evaluate.strong_attacks(s.eps, steps=s.eval_strong_steps, restarts=s.strong_restarts)


def strong_evaluation(trained: dict[str, keras.Model], x: np.ndarray, y: np.ndarray, settings: Any, *,
                      methods: list[str] | tuple[str, ...] | None = None) -> dict[str, evaluate.WorstCase]:
    """Each model's worst case over :func:`strong_attacks` on the same images ``x`` (float32 NHWC in [0, 1]),
    ``y`` (int labels): a :class:`tutorial_lib.evaluate.WorstCase` per method (default: every model in
    ``trained``), run as a cascade (each attack only on what the earlier ones left correct), so an undefended
    model costs one APGD run. Introduced in notebooks/03_adversarial_training.ipynb."""
    specs = strong_attacks(settings)
    methods = list(trained) if methods is None else list(methods)
    return {m: evaluate.worst_case(trained[m], x, y, specs, cascade=True) for m in methods}


def strong_table(strong: dict[str, evaluate.WorstCase], *, labels: dict[str, str] | None = None) -> str:
    """A Markdown table of :func:`strong_evaluation`: per method the clean accuracy, the accuracy left after each
    attack of the cascade (the last one is the worst case over all of them), with 95 % intervals, and the
    seconds the attacks took. Introduced in notebooks/03_adversarial_training.ipynb."""
    if not isinstance(strong, dict) or not strong:
        raise ValueError("strong must be a non-empty dict {method: WorstCase} from strong_evaluation")
    first = next(iter(strong.values()))
    names = first.attacks
    heads = ["clean"] + [f"after {names[0]}"] + [f"+ {n}" for n in names[1:-1]] + [f"+ {names[-1]} (worst case)"]
    lines = [f"| method ({len(first.correct)} images) | " + " | ".join(heads) + " | seconds |",
             "|---" * (len(heads) + 2) + "|"]

    def cell(mask: np.ndarray) -> str:
        mean, half = evaluate.accuracy_ci95(mask)
        return f"{100 * mean:.1f}% ± {100 * half:.1f}"

    for key, wc in strong.items():
        label = (labels or {}).get(key, training.METHOD_TITLES.get(key, key))
        cells = [cell(wc.clean)] + [cell(wc.per_attack[n]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sum(wc.seconds.values()):.0f} |")
    return "\n".join(lines)


def overfitting_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Read catastrophic overfitting off a monitor's per-epoch ``history`` (``{"fgsm", "pgd", ...}`` per epoch).

    Returns ``peak`` (0-based epoch of the best PGD accuracy), ``onset`` (the first epoch after the peak at which
    PGD accuracy has lost a third of its peak while FGSM accuracy is at least its value at the peak; None if
    never), ``pgd`` and ``fgsm`` (arrays), ``total_drop`` (peak minus last PGD accuracy), ``largest_drop`` and
    ``largest_drop_epoch`` (the biggest fall between two consecutive epochs after the peak, and the epoch it
    starts from), and ``sudden`` (True when that one fall is at least half of the total).
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not history:
        raise ValueError("history is empty: pass the monitor's record, info['monitor']['history']")
    pgd = np.array([float(h["pgd"]) for h in history])
    fgsm = np.array([float(h["fgsm"]) for h in history])
    peak = int(np.argmax(pgd))
    onset = next((e for e in range(peak + 1, len(pgd)) if pgd[e] < 2 / 3 * pgd[peak] and fgsm[e] >= fgsm[peak]), None)
    drops = -np.diff(pgd[peak:]) if peak + 1 < len(pgd) else np.zeros(1)
    big = int(np.argmax(drops))
    total = float(pgd[peak] - pgd[-1])
    return {"peak": peak, "onset": onset, "pgd": pgd, "fgsm": fgsm, "total_drop": total,
            "largest_drop": float(drops[big]), "largest_drop_epoch": peak + big,
            "sudden": bool(total > 0 and drops[big] >= 0.5 * total)}


# ------------------------------------------------------------------------------------------------
# Wong, Rice and Kolter (2020): their MNIST fast-AT recipe, run on our data and model
# ------------------------------------------------------------------------------------------------
#: The settings of ``MNIST/train_mnist.py`` in github.com/locuslab/fast_adversarial (commit 54f7287), the code
#: behind the paper's MNIST experiments: FGSM with a uniform random start in the eps-ball, step alpha = 0.375
#: (1.25 eps), Adam with a "cyclic" learning rate (linear from 0 up to lr_max at 2/5 of training, then down to 0,
#: updated every batch), 10 epochs of batches of 100, no early stopping. ``lr_type="flat"`` is the script's other
#: option (lr_max throughout). Their evaluation (``evaluate_mnist.py``) is PGD-50, step 0.01, 10 restarts.
WONG_MNIST: dict[str, Any] = {"eps": 0.3, "alpha": 0.375, "epochs": 10, "batch_size": 100, "lr_max": 5e-3,
                              "lr_type": "cyclic"}


class CyclicLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Wong et al.'s "cyclic" rate: piecewise linear in training progress t (in epochs), 0 at t = 0, ``lr_max`` at
    ``epochs * 2 // 5``, 0 at ``epochs``; t = (step + 1) / steps_per_epoch, as ``np.interp`` in their script."""

    def __init__(self, lr_max: float, epochs: int, steps_per_epoch: int) -> None:
        self.lr_max, self.epochs, self.steps_per_epoch = float(lr_max), int(epochs), int(steps_per_epoch)
        if self.lr_max <= 0 or self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"need lr_max > 0, epochs >= 1 and steps_per_epoch >= 1, got {lr_max}, {epochs}, "
                             f"{steps_per_epoch}")

    def __call__(self, step: Any) -> tf.Tensor:
        t = (tf.cast(step, tf.float32) + 1.0) / self.steps_per_epoch
        peak = float(self.epochs * 2 // 5)
        up = self.lr_max * t / peak if peak > 0 else tf.constant(self.lr_max)
        down = self.lr_max * (self.epochs - t) / (self.epochs - peak)
        return tf.clip_by_value(tf.where(t <= peak, up, down), 0.0, self.lr_max)

    def get_config(self) -> dict[str, Any]:
        return {"lr_max": self.lr_max, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch}


def train_wong_recipe(name: str, data: Any, *, recipe_settings: dict[str, Any] | None = None, seed: int = 0,
                      save: bool = True, verbose: bool = True) -> tuple[keras.Model, dict[str, Any]]:
    """Fast AT with Wong et al.'s MNIST recipe (:data:`WONG_MNIST`, overridable by ``recipe_settings``) on our
    data and our CNN, cached like :func:`train_cached` (a config of its own, so no other cache entry changes).

    What differs from their script is stated in notebook 03: our model (the article's CNN, not their
    4-layer ``mnist_net``), our training images, and our FGSM-RS step, which clips the random start to [0, 1]
    before taking the gradient (theirs takes it at the unclipped point). Returns ``(classifier, info)`` with
    ``history``, ``epoch_seconds`` and ``seconds_per_epoch``. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    settings = {**WONG_MNIST, **(recipe_settings or {})}
    unknown = set(settings) - set(WONG_MNIST)
    if unknown:
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; known: {sorted(WONG_MNIST)}")
    if settings["lr_type"] not in ("cyclic", "flat"):
        raise ValueError(f"lr_type must be 'cyclic' or 'flat' (their script's options), got {settings['lr_type']!r}")
    config = {"model": "seed_cnn", "data": f"{data.source}:{len(data.x_train)}", "seed": seed,
              "recipe": "wong2020_mnist_fast_at", **settings}

    def train() -> tuple[keras.Model, dict[str, Any]]:
        runtime.set_seed(seed)
        clf = models.article_cnn()
        trainer = training.AdversarialTrainer(clf, method="fgsm_rs", eps=settings["eps"], step_size=settings["alpha"])
        steps = math.ceil(len(data.x_train) / settings["batch_size"])
        lr = (CyclicLearningRate(settings["lr_max"], settings["epochs"], steps) if settings["lr_type"] == "cyclic"
              else settings["lr_max"])
        trainer.compile(optimizer=keras.optimizers.Adam(lr))
        timer = training.EpochTimer()
        hist = trainer.fit(data.x_train, data.y_train, batch_size=settings["batch_size"], epochs=settings["epochs"],
                           callbacks=[timer], shuffle=True, verbose=2 if verbose else 0)
        return clf, {"history": hist.history, "epoch_seconds": timer.seconds,
                     "seconds_per_epoch": float(np.median(timer.seconds))}

    model, info = models.load_or_train(name, config, train, verbose=verbose)
    if save:
        _save(name, model, info)
    return model, info
