"""Notebook 03's experiments: training recipes from the profile, cached training, and the results table.

Reads ``profile.adv_training``; the algorithms are in :mod:`tutorial_lib.training` (adversarial training) and
:mod:`tutorial_lib.evaluate` (robustness numbers); this module only wires them to the profile and the cache.
Introduced in notebooks/03_adversarial_training.ipynb.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

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
    """Train a fresh seed CNN with :func:`~tutorial_lib.training.adversarial_fit` (``fit_kwargs``) on ``data``,
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
        clf = models.seed_cnn()
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
        clf = models.seed_cnn()
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


def robustness_table(results: dict[str, dict[str, float]], *, labels: dict[str, str] | None = None) -> str:
    """A Markdown table of :func:`tutorial_lib.evaluate.robustness_summary` results keyed by row name.

    Fractions are shown as percents, ``seconds_per_epoch`` and ``train_seconds`` in seconds; columns are the
    union of the result keys in first-seen order. Rows are labelled by ``labels``, else by
    :data:`tutorial_lib.training.METHOD_TITLES`, else by their key.
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
        return f"{v:.1f}" if c in ("seconds_per_epoch", "train_seconds") else f"{100 * v:.1f}%"

    heads = [names.get(c) or evaluate.summary_column_title(c) for c in columns]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, row in results.items():
        label = (labels or {}).get(key, training.METHOD_TITLES.get(key, key))
        lines.append(f"| {label} | " + " | ".join(cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
