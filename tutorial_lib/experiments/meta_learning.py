"""Notebook 04's experiments: task samplers and learner options from the profile, cached meta-training, the
pre-train + fine-tune and from-scratch baselines, and the tables.

Reads ``profile.meta``; the algorithms are in :mod:`tutorial_lib.meta` (MAML, FOMAML, Reptile, Meta-SGD, LSLR) and
:mod:`tutorial_lib.tasks` (few-shot tasks); this module only wires them to the profile and the cache.
Introduced in notebooks/04_meta_learning.ipynb.
"""

from __future__ import annotations

import shutil
from typing import Any

import keras
import numpy as np

from .. import meta, models, runtime, tasks


def samplers(data: Any, settings: Any, k_shot: int, *, seed: int = 0) -> tuple[tasks.FewShotSampler, tasks.FewShotSampler]:
    """(meta-train, meta-test) samplers of the series' split for ``k_shot`` (digits 0-4 with the profile's
    rotations/flips vs digits 5-9 upright; train and test images pooled per digit). ``settings`` is
    ``profile.meta``. Introduced in notebooks/04_meta_learning.ipynb."""
    return tasks.digit_splits(data, n_way=settings.n_way, k_shot=k_shot, q_queries=settings.q_queries,
                              rotations=settings.rotations, flips=settings.flips, seed=seed)


def method_options(method: str, settings: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`tutorial_lib.meta.make_learner` for ``method`` from ``settings`` (``profile.meta``)."""
    s = settings
    if method in ("maml", "fomaml"):
        return dict(inner_lr=s.inner_lr, inner_steps=s.train_steps, test_steps=s.test_steps or s.train_steps,
                    zero_head=s.zero_head,
                    meta_optimizer=keras.optimizers.Adam(s.meta_lr))
    if method == "reptile":
        return dict(inner_lr=s.reptile_inner_lr, inner_steps=s.reptile_train_steps,
                    test_steps=s.test_steps or s.reptile_train_steps,
                    meta_optimizer=keras.optimizers.SGD(s.reptile_outer_lr))
    if method in meta.LEARNED_RATE_LEARNERS:
        lr, steps = (s.metasgd_inner_lr, s.metasgd_train_steps) if method == "metasgd" else (s.lslr_inner_lr, s.lslr_train_steps)
        return dict(inner_lr=lr, inner_steps=steps, test_steps=s.test_steps or steps, zero_head=s.zero_head,
                    meta_optimizer=keras.optimizers.Adam(s.meta_lr))
    raise ValueError(f"method must be one of {meta.LEARNERS + meta.LEARNED_RATE_LEARNERS}, got {method!r}")


def meta_config(method: str, k_shot: int, settings: Any, data: Any, *, seed: int = 0) -> dict[str, Any]:
    """Everything that determines a meta-trained initialisation (the cache key of :func:`meta_train`)."""
    opts = {k: v for k, v in method_options(method, settings).items() if k not in ("meta_optimizer", "test_steps")}
    optimizer = method_options(method, settings)["meta_optimizer"]
    return {"method": method, "k_shot": k_shot, "n_way": settings.n_way, "q_queries": settings.q_queries,
            "meta_batch": settings.meta_batch, "meta_steps": settings.meta_steps, **opts,
            "meta_optimizer": {"class": type(optimizer).__name__, "learning_rate": float(optimizer.learning_rate)},
            "rotations": list(settings.rotations), "flips": settings.flips, "filters": settings.filters,
            "blocks": settings.blocks, "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}


def meta_train(method: str, k_shot: int, data: Any, settings: Any, *, seed: int = 0, verbose: int = 2,
               keep_copy: bool = True) -> tuple[keras.Model, dict[str, Any]]:
    """Meta-train ``method`` for ``k_shot``-shot tasks with the profile's ``settings``, cached by config.

    Returns ``(model, info)``: the meta-learned initialisation (a :func:`tutorial_lib.models.few_shot_cnn`)
    and ``info`` with the training ``history`` and ``train_seconds`` (``info["cached"]`` when loaded).
    A copy is saved as ``build/models/04_<method>_<k>shot.keras`` (safe-mode loadable) unless ``keep_copy`` is
    False. Learners with learned inner rates (``"metasgd"``, ``"lslr"``) also return ``info["rates"]`` (a list of
    arrays, :meth:`tutorial_lib.meta.LearnedRateMAML.rate_schedule` order), cached beside the model as ``.npz``
    (and copied to ``build/models/04_<method>_<k>shot.rates.npz``; ``tutorial_lib.meta.read_rates`` reads it).
    """
    name = f"04_{method}_{k_shot}shot"
    config = meta_config(method, k_shot, settings, data, seed=seed)
    learned = method in meta.LEARNED_RATE_LEARNERS
    rates_path = models.cache_paths(name, config)[0].with_suffix(".rates.npz")

    def train():
        runtime.set_seed(seed)
        train_sampler, _ = samplers(data, settings, k_shot, seed=seed)
        model = models.few_shot_cnn(settings.n_way, filters=settings.filters, blocks=settings.blocks)
        learner = meta.make_learner(method, model, **method_options(method, settings))
        history = learner.meta_fit(train_sampler, settings.meta_steps, settings.meta_batch, verbose=verbose)
        if learned:
            learner.save_rates(rates_path)
        return model, {"history": {"loss": history.loss, "accuracy": history.accuracy}}

    model, info = models.load_or_train(name, config, train, verbose=verbose > 0,
                                       retrain=learned and not rates_path.is_file())
    if learned:
        info["rates"] = meta.read_rates(rates_path)
    if keep_copy:
        models.save_model(model, runtime.build_subdir("models") / f"{name}.keras")
        if learned:
            shutil.copyfile(rates_path, runtime.build_subdir("models") / f"{name}.rates.npz")
    return model, info


def evaluate_init(method: str, model: keras.Model, info: dict[str, Any], eval_tasks: tasks.Tasks, settings: Any, *,
                  steps: int | None = None) -> meta.Evaluation:
    """Evaluation by adaptation of a :func:`meta_train` result on ``eval_tasks``, as it was meta-trained: plain SGD
    at the method's inner rate, or the learned rates (``info["rates"]``) for Meta-SGD / LSLR; ``steps`` defaults
    to the method's test steps. Introduced in notebooks/04_meta_learning.ipynb."""
    opts = method_options(method, settings)
    steps = opts["test_steps"] if steps is None else steps
    if method in meta.LEARNED_RATE_LEARNERS:
        return meta.evaluate_adaptation(model, eval_tasks, steps=steps, lr=None, rates=info["rates"])
    return meta.evaluate_adaptation(model, eval_tasks, steps=steps, lr=opts["inner_lr"])


def pretrained_classifier(data: Any, settings: Any, *, seed: int = 0, verbose: int = 2) -> tuple[keras.Model, dict[str, Any]]:
    """Baseline: the few-shot CNN trained as an ordinary classifier on all meta-train classes (cached).

    Same classes and images as meta-training (digits 0-4 under the profile's rotations/flips), Adam 1e-3,
    ``settings.pretrain_epochs`` epochs with ``model.fit``. Returns ``(model, info)``.
    """
    def train():
        runtime.set_seed(seed)
        sampler, _ = samplers(data, settings, 1, seed=seed)
        x, y = sampler.labelled_images()
        model = models.few_shot_cnn(sampler.num_classes, filters=settings.filters, blocks=settings.blocks)
        hist = models.train_classifier(model, x, y, epochs=settings.pretrain_epochs, verbose=verbose)
        return model, {"history": hist.history}

    config = {"rotations": list(settings.rotations), "flips": settings.flips, "filters": settings.filters,
              "blocks": settings.blocks, "epochs": settings.pretrain_epochs,
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}
    return models.load_or_train("04_pretrain", config, train, verbose=verbose > 0)


def finetune_init(pretrained: keras.Model, n_way: int) -> keras.Model:
    """An ``n_way`` few-shot CNN with ``pretrained``'s convolutional layers and a zero-initialised head.

    A zero head gives every class the same logit before fine-tuning, so no class is favoured by the
    pre-training labels (which mean nothing for the new digits).
    """
    conv = [layer for layer in pretrained.layers if isinstance(layer, keras.layers.Conv2D)]
    model = models.few_shot_cnn(n_way, filters=conv[0].filters, blocks=len(conv))
    weights = pretrained.get_weights()[:-2]
    head = model.get_weights()[-2:]
    model.set_weights(weights + [np.zeros_like(w) for w in head])
    return model


def scratch_init(settings: Any, *, seed: int = 0) -> keras.Model:
    """Baseline: a freshly initialised few-shot CNN (Glorot-uniform weights, zero biases), seeded."""
    keras.utils.set_random_seed(seed)
    return models.few_shot_cnn(settings.n_way, filters=settings.filters, blocks=settings.blocks)


def accuracy_table(results: dict[str, dict[str, meta.Evaluation]]) -> str:
    """A Markdown table: one row per method, one column per shot setting (``"<k>shot"``), ``mean +- ci95`` in percent.

    Introduced in notebooks/04_meta_learning.ipynb.
    """
    columns = sorted({s for r in results.values() for s in r}, key=lambda s: int(s.rstrip("shot")))
    lines = ["| method | " + " | ".join(f"5-way {s[:-4]}-shot" for s in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method, row in results.items():
        cells = [f"{100 * row[s].mean:.1f} ± {100 * row[s].ci95:.1f}% ({row[s].steps} step{'' if row[s].steps == 1 else 's'}, "
                 + ("learned rates)" if np.isnan(row[s].lr) else f"lr {row[s].lr:g})") if s in row else "" for s in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradient_table(grads: dict[str, np.ndarray], reference: str = "maml") -> str:
    """Markdown table of :func:`tutorial_lib.meta.article_vs_maml`'s gradients: norm of each, cosine similarity and
    relative difference to ``reference``. Introduced in notebooks/04_meta_learning.ipynb."""
    ref = grads[reference]
    lines = [f"| gradient | norm | cosine with {reference} | relative difference to {reference} |", "|---|---|---|---|"]
    for name, g in grads.items():
        cos = float(g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref)))
        rel = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
        lines.append(f"| {name} | {np.linalg.norm(g):.4f} | {cos:.3f} | {rel:.3f} |")
    return "\n".join(lines)
