"""Notebook 05's experiments: robust few-shot learning on held-out digits, from the profile to the results file.

Reads ``profile.meta_adv``, meta-trains each method once (cached by its configuration in ``build/cache/`` and
saved as ``build/models/05_<method>.keras``), evaluates clean and robust accuracy of every method on the same
meta-test tasks, and builds the table and the JSON of ``build/results/05_meta_adversarial.json``. The
algorithms are in :mod:`tutorial_lib.meta_adversarial`; this module only wires them to the profile.
Introduced in notebooks/05_meta_adversarial.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .. import attacks, compute, meta, models, runtime, training
from .. import evaluate as _evaluate
from .. import meta_adversarial as mad
from ..adaptation import (AdaptationResult, RobustEvaluation, Selection, adapt_and_evaluate, adapted_sanity_checks,
                          robust_evaluate, select_on_validation)
from ..evaluate import SanityReport
from ..checks import check_positive_int
from ..tasks import FewShotSampler, Tasks, digit_splits, digit_splits_with_validation
from . import meta_learning

#: Every method of the results table, in table order.
COMPARED = ("maml", "maml_adv_finetune", "at_transfer", "adml", "aq", "aq_trades", "seed_fgsm")
#: The methods that are meta-trained (the others reuse a meta-trained or adversarially trained model).
META_TRAINED = ("maml", "adml", "aq", "aq_trades", "seed_fgsm")
#: What each method is, in a few words (table rows and figure labels).
LABELS = {
    "maml": "MAML",
    "maml_adv_finetune": "MAML + adversarial fine-tuning",
    "at_transfer": "AT transfer",
    "adml": "ADML",
    "aq": "AQ",
    "aq_trades": "AQ + TRADES",
    "seed_fgsm": "article's idea (FGSM MAML)",
}
RESULTS_NAME = "05_meta_adversarial"
#: The methods whose training compute :func:`training_compute` counts: every method but AT transfer (whose
#: count, matched to AQ's, is in :func:`at_classifier`'s plan).
COUNTED = ("maml", "maml_adv_finetune", "adml", "aq", "aq_trades", "seed_fgsm")
#: What the prototype head of :func:`tutorial_lib.adaptation.prototype_head` is, in the cache key of AT
#: transfer's selection: change it whenever that head changes, so that no stale selection is loaded.
PROTOTYPE_HEAD_VERSION = "temperature: spread of class means"
#: The methods of the strong column: the headline comparison, AQ against plain MAML.
STRONG = ("maml", "aq")
#: Every method the strong attacks run on: the headline pair and AT transfer (its fine-tuning recipe passed to
#: :func:`strong_evaluation` as ``recipes``), the baseline level with or ahead of AQ in the results table.
STRONG_COLUMN = (*STRONG, "at_transfer")


# --------------------------------------------------------------------------------------------------
# Settings from the profile
# --------------------------------------------------------------------------------------------------
def samplers(data: Any, settings: Any, *, seed: int = 0) -> tuple[FewShotSampler, FewShotSampler]:
    """(meta-train, meta-test) samplers: notebook 04's split (digits 0-4 under 4 rotations vs digits 5-9
    upright, train and test images pooled) with ``settings`` (``profile.meta_adv``) giving N, K and Q."""
    return digit_splits(data, n_way=settings.n_way, k_shot=settings.k_shot, q_queries=settings.q_queries, seed=seed)


def validation_samplers(data: Any, settings: Any, *, seed: int = 0) -> tuple[FewShotSampler, FewShotSampler]:
    """(training, validation) samplers of the meta-train classes:
    :func:`tutorial_lib.tasks.digit_splits_with_validation` with ``at_validation`` of each meta-train digit's
    images held out for validation tasks (the meta-test digits 5-9 are untouched: :func:`samplers`' test sampler
    is the same). The AT classifier trains on the first sampler's images; its fine-tuning recipe is chosen on
    tasks of the second."""
    s = settings
    train, val, _ = digit_splits_with_validation(data, n_way=s.n_way, k_shot=s.k_shot, q_queries=s.q_queries,
                                                 validation=s.at_validation, seed=seed)
    return train, val


def train_attack(settings: Any) -> attacks.PGD:
    """The attack used while training: PGD-``train_pgd_steps`` at ``eps``, step scale * eps / steps, random start."""
    s = settings
    return attacks.PGD(eps=s.eps, steps=s.train_pgd_steps, step_size=s.train_step_scale * s.eps / s.train_pgd_steps,
                       random_start=True)


def eval_attack(settings: Any, *, restarts: int = 1, eps: float | None = None) -> attacks.PGD:
    """The test attack: PGD-``eval_pgd_steps`` at ``eps`` (default the profile's), step 2.5 eps / steps, random
    start, ``restarts`` restarts, seeded so every method meets the same random starts."""
    s = settings
    eps = s.eps if eps is None else eps
    return attacks.PGD(eps=eps, steps=s.eval_pgd_steps, step_size=2.5 * eps / s.eval_pgd_steps, random_start=True,
                       restarts=restarts, seed=0)


def describe_eval_attack(settings: Any) -> str:
    """The test attack in words (the ``eval_attack`` field of the results)."""
    s = settings
    return (f"PGD-{s.eval_pgd_steps} L-inf, step 2.5*eps/{s.eval_pgd_steps}, random start, against the adapted "
            f"weights (white-box); robust_restarts{s.eval_restarts}: broken if any of {s.eval_restarts} restarts breaks it")


def meta_steps(method: str, settings: Any) -> int:
    """Meta-steps of ``method`` in this profile (``<method>_meta_steps`` or else ``meta_steps``)."""
    _check_method(method, META_TRAINED)
    value = getattr(settings, f"{method}_meta_steps", None)
    return int(settings.meta_steps if value is None else value)


def method_options(method: str, settings: Any, *, steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`tutorial_lib.meta_adversarial.make_learner` for ``method``.

    ``steps`` is the length of the run (default :func:`meta_steps`); an eps ramp covers its first
    ``ramp_fraction`` for every adversarial method (AQ, AQ + TRADES, ADML with the same PGD training
    attack; the article's idea with FGSM). Every method adapts with ``train_steps`` SGD steps at ``inner_lr`` from a
    zero head and uses Adam(``meta_lr``) on the meta-gradient.
    """
    _check_method(method, META_TRAINED)
    s = settings
    steps = meta_steps(method, s) if steps is None else int(steps)
    opts: dict[str, Any] = dict(inner_lr=s.inner_lr, inner_steps=s.train_steps, zero_head=True,
                                meta_optimizer=keras.optimizers.Adam(s.meta_lr))
    if method == "maml":
        return opts
    opts.update(attack=train_attack(s), ramp_steps=int(round(s.ramp_fraction * steps)))
    if method == "aq":
        opts.update(clean_weight=0.0)
    elif method == "aq_trades":
        opts.update(outer_loss="trades", trades_beta=s.trades_beta)
    elif method == "seed_fgsm":
        opts.update(attack=attacks.FGSM(eps=s.eps))
    return opts


def _check_method(method: Any, allowed: tuple[str, ...]) -> str:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    return method


def _jsonable_options(opts: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in opts.items():
        if isinstance(value, keras.optimizers.Optimizer):
            value = {"class": type(value).__name__,  # convert_to_numpy: also a tf.distribute variable
                     "learning_rate": float(keras.ops.convert_to_numpy(value.learning_rate))}
        elif isinstance(value, attacks.Attack):
            value = repr(value)
        out[key] = value
    return out


def meta_config(method: str, settings: Any, data: Any, *, seed: int = 0, steps: int | None = None,
                **overrides: Any) -> dict[str, Any]:
    """Everything that determines a meta-trained initialisation (the cache key of :func:`meta_train`)."""
    s = settings
    steps = meta_steps(method, s) if steps is None else int(steps)
    opts = {**method_options(method, s, steps=steps), **overrides}
    return {"method": method, "meta_steps": steps, "n_way": s.n_way, "k_shot": s.k_shot, "q_queries": s.q_queries,
            "meta_batch": s.meta_batch, **_jsonable_options(opts), "model": "few_shot_cnn(32 filters, 3 blocks)",
            "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}


# --------------------------------------------------------------------------------------------------
# Training, cached
# --------------------------------------------------------------------------------------------------
def meta_train(method: str, data: Any, settings: Any, *, seed: int = 0, verbose: int = 2, steps: int | None = None,
               name: str | None = None, save: bool = True, **overrides: Any) -> tuple[keras.Model, dict[str, Any]]:
    """Meta-train ``method`` (one of :data:`META_TRAINED`) with the profile's ``settings``, cached by config.

    ``steps`` overrides the number of meta-steps and ``overrides`` any learner option (e.g. ``ramp_steps=0``
    for pure AQ); ``name`` (default ``05_<method>``) names the cache entry and, with ``save``, the copy in
    ``build/models/<name>.keras`` (safe-mode loadable). Returns ``(model, info)``: the meta-learned
    initialisation (a :func:`tutorial_lib.models.few_shot_cnn`) and ``info`` with the per-step ``history``
    (query loss and accuracy on meta-train tasks) and ``train_seconds`` (measured when it was trained;
    ``info["cached"]`` says whether it was loaded).
    """
    s = settings
    steps = meta_steps(method, s) if steps is None else int(steps)
    opts = {**method_options(method, s, steps=steps), **overrides}
    config = meta_config(method, s, data, seed=seed, steps=steps, **overrides)

    def train():
        runtime.set_seed(seed)
        train_sampler, _ = samplers(data, s, seed=seed)
        model = models.few_shot_cnn(s.n_way)
        learner = mad.make_learner(method, model, **opts)
        history = learner.meta_fit(train_sampler, steps, s.meta_batch, verbose=verbose)
        return model, {"history": {"loss": history.loss, "accuracy": history.accuracy}}

    name = name or f"05_{method}"
    model, info = models.load_or_train(name, config, train, verbose=verbose > 0)
    if save:
        models.save_model(model, runtime.build_subdir("models") / f"{name}.keras")
    return model, info


def training_compute(method: str, settings: Any) -> int:
    """Gradient evaluations (:mod:`tutorial_lib.compute`) spent training ``method``'s initialisation.

    Meta-learners (:data:`COUNTED`: MAML, ADML, AQ, AQ + TRADES, the article's idea): meta-steps x
    :func:`tutorial_lib.compute.meta_step_cost` of the learner the profile builds (no method here warm-starts from
    another model). MAML + adversarial fine-tuning reuses plain MAML's, so it is MAML's. AT transfer's count is in
    :func:`at_classifier`'s ``info["plan"]``.
    """
    if method == "at_transfer":
        raise ValueError("AT transfer's training compute depends on its training images: read "
                         "rfs.at_classifier(...)[1]['plan']['gradient_evaluations'] (or rfs.at_training_plan)")
    _check_method(method, COUNTED)
    s = settings
    if method == "maml_adv_finetune":
        method = "maml"
    learner = mad.make_learner(method, models.few_shot_cnn(s.n_way), **method_options(method, s))
    per_step = compute.meta_step_cost(learner, n_support=s.n_way * s.k_shot, n_query=s.n_way * s.q_queries,
                                      meta_batch=s.meta_batch)
    return int(round(meta_steps(method, s) * per_step))


def at_training_plan(settings: Any, n_images: int) -> dict[str, Any]:
    """Epochs and images per epoch of PGD adversarial training that spend AQ's training compute.

    The budget is ``training_compute("aq")`` gradient evaluations; one training example costs the training
    attack's steps plus one (:func:`tutorial_lib.compute.adversarial_training_cost`). ``at_epochs`` set in the
    profile fixes the epochs (every image each epoch, for tiny test runs); None (the default) matches the budget:
    ``epochs`` = the budget's examples / ``n_images`` rounded (at least 1), each epoch on ``images_per_epoch``
    (all ``n_images``, or a fixed random subset when the budget is less than whole epochs). Returns
    ``{"epochs", "images_per_epoch", "ramp_epochs", "gradient_evaluations", "budget"}`` (ramp: the first
    ``ramp_fraction`` of the epochs, as AQ's meta-steps).
    """
    s = settings
    n_images = check_positive_int("n_images", n_images)
    attack = train_attack(s)
    budget = training_compute("aq", s)
    per_example = compute.adversarial_training_cost(attack, 1)
    if s.at_epochs is None:
        examples = budget / per_example
        epochs = max(1, int(round(examples / n_images)))
        per_epoch = min(n_images, int(round(examples / epochs)))
    else:
        epochs, per_epoch = check_positive_int("at_epochs", s.at_epochs), n_images
    ramp = min(epochs, int(round(s.ramp_fraction * epochs)))
    spent = compute.adversarial_training_cost(attack, epochs * per_epoch)
    return {"epochs": epochs, "images_per_epoch": per_epoch, "ramp_epochs": ramp,
            "gradient_evaluations": int(round(spent)), "budget": int(budget)}


def at_classifier(data: Any, settings: Any, *, seed: int = 0, verbose: int = 2) -> tuple[keras.Model, dict[str, Any]]:
    """The "AT transfer" baseline's classifier: a few-shot CNN over all meta-train classes (20: digits 0-4 under
    4 rotations), PGD adversarially trained with :func:`tutorial_lib.training.adversarial_fit` at ``eps`` with
    the training attack, on the images outside the validation share (:func:`validation_samplers`), for as many
    gradient evaluations as AQ's meta-training (:func:`at_training_plan`; eps ramped over the same share of
    training as AQ's), cached; saved as ``build/models/05_at_transfer.keras``. ``info`` adds ``"plan"`` (the
    epochs, images and ``gradient_evaluations``) to the history and training seconds."""
    s = settings
    attack = train_attack(s)
    # which images are held out depends on at_validation and seed only, not on task sizes: 1-shot, 1-query
    # samplers give the training images even when the held-out share is too small for the profile's tasks
    train_sampler, _, _ = digit_splits_with_validation(data, n_way=s.n_way, k_shot=1, q_queries=1,
                                                       validation=s.at_validation, seed=seed)
    x, y = train_sampler.labelled_images()
    plan = at_training_plan(s, len(x))
    fit = dict(method="pgd", eps=s.eps, epochs=plan["epochs"], ramp_epochs=plan["ramp_epochs"], steps=attack.steps,
               step_size=attack.step_size, learning_rate=1e-3, batch_size=64)

    def train():
        runtime.set_seed(seed)
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:plan["images_per_epoch"]])
        model = models.few_shot_cnn(train_sampler.num_classes)
        _, info = training.adversarial_fit(model, x[keep], y[keep], verbose=verbose, **fit)
        return model, {"history": info["history"], "plan": plan}

    config = {"model": "few_shot_cnn(32 filters, 3 blocks)", "classes": "digits 0-4 x 4 rotations",
              "images": f"meta-train images outside the {s.at_validation:g} validation share, "
                        f"{plan['images_per_epoch']} per epoch", **fit,
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}
    model, info = models.load_or_train("05_at_transfer", config, train, verbose=verbose > 0)
    models.save_model(model, runtime.build_subdir("models") / "05_at_transfer.keras")
    return model, {**info, "plan": plan}


def transfer_init(classifier: keras.Model, n_way: int) -> keras.Model:
    """An ``n_way`` few-shot CNN with ``classifier``'s convolutional layers and a zero head (notebook 04's
    :func:`tutorial_lib.experiments.meta_learning.finetune_init`), ready for head fine-tuning on a support set."""
    return meta_learning.finetune_init(classifier, n_way)


# --------------------------------------------------------------------------------------------------
# Evaluation on held-out digits
# --------------------------------------------------------------------------------------------------
def adaptation(method: str, settings: Any, *, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """How ``method`` adapts at test time: ``steps``, ``lr`` and the options of robust_evaluate.

    AT transfer follows ``recipe`` (a candidate of :func:`at_candidates`, e.g. ``selection.chosen`` of
    :func:`select_at_finetuning`); without one, the profile's ``at_finetune_steps`` head-only steps at
    ``at_finetune_lr`` from a zero head. Its dict adds ``head_init`` ("given": the zero head; "prototype")."""
    _check_method(method, COMPARED)
    s = settings
    if method == "at_transfer":
        r = dict(steps=s.at_finetune_steps, lr=s.at_finetune_lr, recipe="head", head_init="zero") \
            if recipe is None else check_at_recipe(recipe)
        return dict(steps=int(r["steps"]), lr=float(r["lr"]), head_only=r["recipe"] == "head",
                    head_init="prototype" if r["head_init"] == "prototype" else "given")
    if recipe is not None:
        raise ValueError(f"recipe= applies to at_transfer (its fine-tuning), not to {method!r}")
    if method == "maml_adv_finetune":
        return dict(steps=s.adv_finetune_steps, lr=s.adv_finetune_lr, support="adversarial",
                    support_attack=eval_attack(s))
    return dict(steps=s.train_steps, lr=s.inner_lr)


def evaluate(method: str, model: keras.Model, tasks: Tasks, settings: Any, *, restarts: int | None = None,
             recipe: dict[str, Any] | None = None) -> RobustEvaluation:
    """Clean and robust query accuracy of ``method`` (``model``: its initialisation) on ``tasks``.

    Adapts on each task's support set as :func:`adaptation` says (``recipe``: AT transfer's fine-tuning), then
    attacks the queries with the test attack against the adapted weights; with ``restarts`` (default
    ``eval_restarts``) also the worst case over that many restarts. A prototype head goes through
    :func:`tutorial_lib.adaptation.adapt_and_evaluate` (same attack and restarts, its own random starts); every
    other adaptation through :func:`tutorial_lib.adaptation.robust_evaluate`. Returns the
    :class:`tutorial_lib.adaptation.RobustEvaluation`.
    """
    s = settings
    restarts = s.eval_restarts if restarts is None else restarts
    how = adaptation(method, s, recipe=recipe)
    head_init = how.pop("head_init", "given")
    if head_init == "given":
        return robust_evaluate(model, tasks, attack=eval_attack(s), restarts=restarts, **how)
    attack = eval_attack(s)
    res = adapt_and_evaluate(model, tasks, checkpoints=(how["steps"],), lr=how["lr"], head_only=how["head_only"],
                             head_init=head_init, query_attacks=(attack,), restarts=restarts)
    clean_ok, runs = res.clean_mask[:, 0], res.attacked_runs[:, 0, 0]  # (tasks, Q), (tasks, restarts, Q)
    return RobustEvaluation(clean=clean_ok.mean(axis=1), robust=(clean_ok & runs[:, 0]).mean(axis=1),
                            robust_restarts=(clean_ok & runs.all(axis=1)).mean(axis=1) if restarts > 1 else None,
                            restarts=restarts, attack=attack.name, eps=float(attack.eps), steps=how["steps"],
                            lr=how["lr"], support="clean")


# --------------------------------------------------------------------------------------------------
# AT transfer's fine-tuning, chosen on validation tasks
# --------------------------------------------------------------------------------------------------
#: Which layers AT transfer fine-tunes: the last layer only, or every layer.
AT_RECIPES = ("head", "full")
#: How each task's 5-way last layer starts: zero, or the support set's class means (a nearest-class-mean head).
AT_HEAD_INITS = ("zero", "prototype")


def check_at_recipe(recipe: Any) -> dict[str, Any]:
    """``recipe`` as a dict with ``steps`` (int >= 0), ``lr`` (>= 0), ``recipe`` (:data:`AT_RECIPES`) and
    ``head_init`` (:data:`AT_HEAD_INITS`); a ``ValueError``/``TypeError`` saying what is wrong otherwise."""
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict with steps, lr, recipe and head_init, got {type(recipe).__name__}")
    missing = {"steps", "lr", "recipe", "head_init"} - set(recipe)
    if missing:
        raise ValueError(f"recipe lacks {sorted(missing)}; e.g. {{'steps': 20, 'lr': 0.1, 'recipe': 'head', "
                         f"'head_init': 'prototype'}}")
    if recipe["recipe"] not in AT_RECIPES:
        raise ValueError(f"recipe['recipe'] must be one of {AT_RECIPES}, got {recipe['recipe']!r}")
    if recipe["head_init"] not in AT_HEAD_INITS:
        raise ValueError(f"recipe['head_init'] must be one of {AT_HEAD_INITS}, got {recipe['head_init']!r}")
    if isinstance(recipe["steps"], bool) or not isinstance(recipe["steps"], (int, np.integer)) or recipe["steps"] < 0:
        raise ValueError(f"recipe['steps'] must be an int >= 0, got {recipe['steps']!r}")
    if recipe["steps"] == 0 and recipe["head_init"] == "zero":
        raise ValueError("a zero head with 0 fine-tuning steps predicts nothing; give steps >= 1 or a prototype head")
    if isinstance(recipe["lr"], bool) or not isinstance(recipe["lr"], (int, float)) or not recipe["lr"] >= 0:
        raise ValueError(f"recipe['lr'] must be a number >= 0, got {recipe['lr']!r}")
    return dict(recipe)


def at_candidates(settings: Any) -> list[dict[str, Any]]:
    """AT transfer's fine-tuning candidates, cheapest first: every step count of ``at_select_steps`` (fewest
    first), head-only before every layer, each head start and rate of ``at_select_lrs``. Zero steps: only the
    prototype head (the nearest-class-mean classifier as it stands, ``lr`` 0)."""
    s = settings
    out = []
    for steps in s.at_select_steps:
        if steps == 0:
            out.append({"steps": 0, "recipe": "head", "head_init": "prototype", "lr": 0.0})
            continue
        out += [{"steps": int(steps), "recipe": r, "head_init": h, "lr": float(lr)}
                for r in AT_RECIPES for h in AT_HEAD_INITS for lr in s.at_select_lrs]
    return out


def masking_probe(settings: Any) -> attacks.APGD:
    """APGD on the DLR loss with the test attack's steps at ``eps``, seeded: a loss that ignores the scale of the
    logits, so it still has a gradient where the cross-entropy's vanishes (a head whose logits are thousands apart
    gives an all-zero cross-entropy gradient in float32: the test attack would be masked)."""
    s = settings
    return attacks.APGD(eps=s.eps, steps=s.eval_pgd_steps, loss="dlr", seed=0)


def select_at_finetuning(init: keras.Model, tasks: Tasks, settings: Any, *, cache: bool = True
                         ) -> tuple[Selection, dict[tuple, AdaptationResult]]:
    """Choose AT transfer's fine-tuning on validation ``tasks`` (never on test tasks).

    ``init``: :func:`transfer_init` of the AT classifier. One :func:`tutorial_lib.adaptation.adapt_and_evaluate`
    per (layers, head start, rate) with every step count of ``at_select_steps`` as a checkpoint (the prototype
    head before any step is measured once). The queries are attacked against the adapted weights by the test
    attack (:func:`eval_attack`, one run) and by :func:`masking_probe`. A candidate is eligible only if the test
    attack is not masked for it (:func:`masking_gap` at most ``at_masking_tolerance``: the results table measures
    every method with the test attack, so a recipe that attack cannot see through cannot be measured there); its
    score is its robust accuracy when a query is broken if either attack breaks it.
    :func:`tutorial_lib.adaptation.select_on_validation` keeps the cheapest eligible candidate within
    ``at_select_tolerance`` of the best. With ``cache`` the evaluations are kept in ``build/cache/`` keyed by the
    weights, the tasks, the settings and :data:`PROTOTYPE_HEAD_VERSION`. Returns the
    :class:`~tutorial_lib.adaptation.Selection` (eligible candidates) and the evaluations keyed by
    ``(recipe, head_init, lr)`` (for :func:`selection_table`).
    """
    s = settings
    if len(tasks) < 2:
        raise ValueError(f"selection needs at least 2 validation tasks, got {len(tasks)}")
    runs = _selection_runs(init, tasks, s, cache=cache)
    eligible = [c for c in at_candidates(s) if masking_gap(c, runs)["mean"] <= s.at_masking_tolerance]
    if not eligible:
        raise ValueError("the test attack is masked for every candidate (masking_gap above at_masking_tolerance); "
                         "the table's attack cannot measure any of them")

    def score(c: dict[str, Any]) -> float:
        res = runs[_run_key(c)]
        return float(res.robust[:, res.column(c["steps"])].mean())

    return select_on_validation(eligible, score, tolerance=s.at_select_tolerance), runs


def _selection_runs(init: keras.Model, tasks: Tasks, settings: Any, *, cache: bool) -> dict[tuple, AdaptationResult]:
    s = settings
    probes = (eval_attack(s), masking_probe(s))
    later = tuple(k for k in s.at_select_steps if k > 0)
    plan = ([(("head", "prototype", 0.0), (0,))] if 0 in s.at_select_steps else []) + \
        [((r, h, float(lr)), later) for r in AT_RECIPES for h in AT_HEAD_INITS for lr in s.at_select_lrs]
    digest = hashlib.sha256()
    for array in [*init.get_weights(), tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y]:
        digest.update(np.ascontiguousarray(array).tobytes())
    config = {"data": digest.hexdigest(), "attacks": [repr(a) for a in probes], "plan": repr(plan),
              "prototype_head": PROTOTYPE_HEAD_VERSION}
    path = runtime.build_subdir("cache") / f"05_at_selection-{models.config_hash('05_at_selection', config)}.npz"
    if cache and path.is_file():
        stored = np.load(path)
        return {key: AdaptationResult(tuple(int(c) for c in stored[f"{i}_checkpoints"]), stored[f"{i}_clean"],
                                      stored[f"{i}_attacked"], tuple(a.name for a in probes))
                for i, (key, _) in enumerate(plan)}
    runs = {key: adapt_and_evaluate(init, tasks, checkpoints=checkpoints, lr=key[2], head_only=key[0] == "head",
                                    head_init="prototype" if key[1] == "prototype" else "given", query_attacks=probes)
            for key, checkpoints in plan}
    if cache:
        arrays = {}
        for i, (key, _) in enumerate(plan):
            res = runs[key]
            arrays.update({f"{i}_checkpoints": np.asarray(res.checkpoints), f"{i}_clean": res.clean_mask,
                           f"{i}_attacked": res.attacked_runs})
        np.savez_compressed(path, **arrays)
    return runs


def _run_key(candidate: dict[str, Any]) -> tuple:
    return (candidate["recipe"], candidate["head_init"], float(candidate["lr"]))


def masking_gap(candidate: dict[str, Any], runs: dict[tuple, AdaptationResult]) -> dict[str, float]:
    """For ``candidate`` on the validation tasks of :func:`select_at_finetuning`: mean and 95 % CI over tasks of
    (robust accuracy under the test attack alone) minus (under the test attack + :func:`masking_probe`); near 0
    when the test attack is not masked, large when the probe finds what the test attack misses."""
    res = runs[_run_key(candidate)]
    col = res.column(candidate["steps"])
    return _evaluate.mean_ci95_record(np.asarray(res.robust_under([0])[:, col] - res.robust[:, col], np.float64))


def selection_table(selection: Selection, runs: dict[tuple, AdaptationResult], settings: Any) -> str:
    """Markdown: every candidate of :func:`at_candidates` with its clean accuracy, its robust accuracy under the
    test attack alone and under the test attack + :func:`masking_probe` (the score) on the validation tasks (means
    with 95 % intervals over tasks), and whether it was eligible; the chosen one in bold."""
    def cell(values: np.ndarray) -> str:
        r = _evaluate.mean_ci95_record(np.asarray(values, np.float64))
        return f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}%"

    first = next(iter(runs.values()))
    lines = [f"| steps | layers | head start | lr | clean | {first.attacks[0]} | {first.attacks[0]} + "
             f"{first.attacks[1]} (score) | test attack masked? |", "|---|---|---|---|---|---|---|---|"]
    for c in at_candidates(settings):
        res = runs[_run_key(c)]
        col = res.column(c["steps"])
        gap = masking_gap(c, runs)["mean"]
        mark = "**" if c == selection.chosen else ""
        layers = "head only" if c["recipe"] == "head" else "every layer"
        masked = f"yes ({100 * gap:.1f} points): not eligible" if gap > settings.at_masking_tolerance else "no"
        lines.append(f"| {mark}{c['steps']}{mark} | {layers} | {c['head_init']} | {c['lr']:g} | "
                     f"{cell(res.clean[:, col])} | {cell(res.robust_under([0])[:, col])} | "
                     f"{mark}{cell(res.robust[:, col])}{mark} | {masked} |")
    return "\n".join(lines)


def selection_record(selection: Selection, runs: dict[tuple, AdaptationResult], settings: Any,
                     n_tasks: int) -> dict[str, Any]:
    """The ``selection`` field of AT transfer in the results file: :meth:`Selection.to_dict` (chosen settings,
    eligible candidates with ``validation_robust``, ``"chosen_on": "validation"``), plus ``validation_tasks``,
    the score's attacks and ``excluded``: the candidates whose test attack was masked, with their gap."""
    excluded = [{**c, "masking_gap": masking_gap(c, runs)["mean"]} for c in at_candidates(settings)
                if masking_gap(c, runs)["mean"] > settings.at_masking_tolerance]
    attacks_used = list(next(iter(runs.values())).attacks)
    return {**selection.to_dict(), "validation_tasks": int(n_tasks), "score_attacks": attacks_used,
            "excluded": excluded}


def describe_recipe(recipe: dict[str, Any]) -> str:
    """AT transfer's fine-tuning in words, e.g. "20 steps at lr 0.1, head only, from a prototype head"."""
    r = check_at_recipe(recipe)
    if r["steps"] == 0:
        return "no fine-tuning: the prototype head of the support set"
    layers = "head only" if r["recipe"] == "head" else "every layer"
    return f"{r['steps']} step(s) at lr {r['lr']:g}, {layers}, from a {r['head_init']} head"


def shot_check(init: keras.Model, data: Any, settings: Any, recipe: dict[str, Any], *, shots: tuple[int, ...] = (1, 5),
               tasks: int = 100, seed: int = 0) -> dict[int, dict[str, float]]:
    """Clean query accuracy of AT transfer fine-tuned with ``recipe`` on meta-test tasks with each number of
    ``shots`` per class (``tasks`` tasks each; queries as in the profile): ``{k: {"mean", "ci95"}}``. A sanity
    check: more examples per class should not hurt."""
    how = adaptation("at_transfer", settings, recipe=recipe)
    out = {}
    for k in shots:
        _, test = samplers(data, dataclasses.replace(settings, k_shot=int(k)), seed=seed)
        res = adapt_and_evaluate(init, test.sample(tasks, seed=0), checkpoints=(how["steps"],), lr=how["lr"],
                                 head_only=how["head_only"], head_init=how["head_init"])
        out[int(k)] = _evaluate.mean_ci95_record(res.clean[:, 0])
    return out


def sanity_checks(model: keras.Model, tasks: Tasks, settings: Any, *,
                  transfer_from: keras.Model | None = None) -> SanityReport:
    """The gradient-masking checks of :func:`tutorial_lib.adaptation.adapted_sanity_checks` on ``model``
    adapted as a meta-learner, at the profile's eps with the test attack's steps and restarts; with
    ``transfer_from`` (e.g. plain MAML) also the transfer attack from that initialisation."""
    s = settings
    return adapted_sanity_checks(model, tasks, eps=s.eps, steps=s.train_steps, lr=s.inner_lr,
                                     attack_steps=s.eval_pgd_steps, restarts=s.eval_restarts,
                                     transfer_params=None if transfer_from is None else meta.params_of(transfer_from))


# --------------------------------------------------------------------------------------------------
# The strong column: the series' strong attacks against the adapted weights
# --------------------------------------------------------------------------------------------------
def strong_attacks(settings: Any) -> list[attacks.Attack]:
    """Notebook 03's strong evaluation at this notebook's ``eps``: :func:`tutorial_lib.evaluate.strong_attacks`
    (APGD-CE, APGD-DLR, then PGD x ``strong_restarts``, ``strong_steps`` steps each)."""
    s = settings
    return _evaluate.strong_attacks(s.eps, steps=s.strong_steps, restarts=s.strong_restarts)


def strong_evaluation(inits: dict[str, keras.Model], tasks: Tasks, settings: Any, *,
                      methods: tuple[str, ...] = STRONG, recipes: dict[str, dict[str, Any]] | None = None
                      ) -> dict[str, AdaptationResult]:
    """Each of ``methods`` (initialisations in ``inits``) adapted on the first ``strong_tasks`` of ``tasks`` as in
    the results table (:func:`adaptation`; ``recipes``: AT transfer's fine-tuning, e.g.
    ``{"at_transfer": selection.chosen}``), its queries attacked by every attack of :func:`strong_attacks`
    against the ADAPTED weights; a query is robust only if no attack breaks it. Methods whose support set is
    clean only. Returns an :class:`tutorial_lib.adaptation.AdaptationResult` per method (``.at(steps)``,
    ``.per_attack``); the methods share one compiled evaluator when they adapt alike."""
    s = settings
    specs = tuple(strong_attacks(s))
    subset = tasks[: s.strong_tasks]
    arch = inits[methods[0]]  # the architecture; each method brings its own weights
    out = {}
    recipes = recipes or {}
    for m in methods:
        how = adaptation(m, s, recipe=recipes.get(m))
        if "support" in how:
            raise ValueError(f"{m} adapts on an attacked support set; the strong column takes methods with a clean "
                             f"support set, e.g. {STRONG}")
        out[m] = adapt_and_evaluate(arch, subset, params=meta.params_of(inits[m]), checkpoints=(how["steps"],),
                                    lr=how["lr"], head_only=how.get("head_only", False), query_attacks=specs,
                                    head_init=how.get("head_init", "given"))
    return out


def strong_record(result: AdaptationResult) -> dict[str, Any]:
    """The ``worst_case`` field of one method in the results file: ``{"mean", "ci95"}`` of the robust accuracy
    under every strong attack (over tasks), plus ``per_attack`` ``{name: {"mean", "ci95"}}``."""
    steps = result.checkpoints[-1]
    per = {name: _evaluate.mean_ci95_record(result.per_attack[:, -1, j]) for j, name in enumerate(result.attacks)}
    return {**result.at(steps)["robust"], "per_attack": per}


def strong_table(strong: dict[str, AdaptationResult], evaluations: dict[str, Any]) -> str:
    """Markdown: per method of :func:`strong_evaluation`, on its tasks, clean accuracy, the table's PGD-20 x
    restarts on the same tasks, each strong attack and the worst case over all of them (means over tasks, 95 %
    intervals)."""
    first = next(iter(strong.values()))
    n = first.clean.shape[0]
    restarts = next(iter(evaluations.values())).restarts

    def cell(values: np.ndarray) -> str:
        r = _evaluate.mean_ci95_record(np.asarray(values, dtype=np.float64))
        return f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}%"

    lines = [f"| method ({n} tasks) | clean | PGD-20 x {restarts} (table above) | " + " | ".join(first.attacks)
             + " | worst case (strong) |", "|---" * (len(first.attacks) + 4) + "|"]
    for m, res in strong.items():
        table_pgd = evaluations[m].robust_restarts[:n]
        cells = [cell(res.clean[:, -1]), cell(table_pgd)] + [cell(res.per_attack[:, -1, j])
                                                                for j in range(len(res.attacks))]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + f" | **{cell(res.robust[:, -1])}** |")
    return "\n".join(lines)


def strong_paired(strong: dict[str, AdaptationResult], a: str, b: str) -> dict[str, float]:
    """Mean and 95 % CI of the per-task difference ``a - b`` of worst-case robust accuracy under the strong attacks
    (the same tasks for both: a paired comparison)."""
    return _evaluate.mean_ci95_record(np.asarray(strong[a].robust[:, -1] - strong[b].robust[:, -1], np.float64))


# --------------------------------------------------------------------------------------------------
# Results: the JSON of build/results and the notebook's table
# --------------------------------------------------------------------------------------------------
def method_result(method: str, evaluation, settings: Any, train_seconds: float | None, *,
                  recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """One method's entry of the results file: clean / robust / robust_restarts<R> as {mean, ci95}, the test-time
    adaptation (inner_lr, test_steps; AT transfer's from ``recipe``) and the training seconds."""
    summary = evaluation.summary()
    how = adaptation(method, settings, recipe=recipe if method == "at_transfer" else None)
    return {**{k: {"mean": float(v["mean"]), "ci95": float(v["ci95"])} for k, v in summary.items()},
            "inner_lr": float(how["lr"]), "test_steps": int(how["steps"]),
            "train_seconds": None if train_seconds is None else float(train_seconds)}


def results(evaluations: dict[str, Any], train_seconds: dict[str, float | None], settings: Any, *,
            strong: dict[str, AdaptationResult] | None = None, gradient_evaluations: dict[str, int] | None = None,
            at_selection: Selection | None = None, at_selection_record: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """The results of notebook 05 in the series' schema (``methods`` keyed by :data:`COMPARED` order). With
    ``strong`` (:func:`strong_evaluation`), each of its methods gains ``worst_case`` (:func:`strong_record`) and
    the file gains ``strong_eval``: the attacks, the number of tasks and the adaptation steps they ran at. With
    ``gradient_evaluations`` ({method: count}), those methods gain ``"gradient_evaluations"`` (training compute,
    :mod:`tutorial_lib.compute`). With ``at_selection`` (:func:`select_at_finetuning`), the AT-transfer row's
    adaptation is the chosen recipe and it gains ``"selection"``: ``at_selection_record``
    (:func:`selection_record`) or else ``at_selection.to_dict()``."""
    s = settings
    n_tasks = {len(ev.clean) for ev in evaluations.values()}
    if len(n_tasks) != 1:
        raise ValueError(f"every method must be evaluated on the same tasks; got task counts {sorted(n_tasks)}")
    recipe = None if at_selection is None else at_selection.chosen
    out = {"eps": s.eps, "n_way": s.n_way, "k_shot": s.k_shot, "tasks": n_tasks.pop(),
           "eval_attack": describe_eval_attack(s),
           "methods": {m: method_result(m, evaluations[m], s, train_seconds.get(m), recipe=recipe)
                       for m in COMPARED if m in evaluations}}
    for m, count in (gradient_evaluations or {}).items():
        if m in out["methods"]:
            out["methods"][m]["gradient_evaluations"] = int(count)
    if at_selection is not None and "at_transfer" in out["methods"]:
        out["methods"]["at_transfer"]["selection"] = at_selection_record or at_selection.to_dict()
    if strong:
        for m, res in strong.items():
            out["methods"][m]["worst_case"] = strong_record(res)
        first = next(iter(strong.values()))
        out["strong_eval"] = {"attacks": list(first.attacks), "tasks": int(first.clean.shape[0]),
                              "methods": list(strong)}
    return out


def save(result: dict[str, Any]) -> Path:
    """Write ``result`` to ``build/results/05_meta_adversarial.json``; returns the path."""
    return runtime.save_results(RESULTS_NAME, result)


def results_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`results`: accuracies in percent with 95% CIs, adaptation, training time and
    (where recorded) training compute in gradient evaluations."""
    r = int(result.get("restarts", 5))
    key = next((k for k in next(iter(result["methods"].values())) if k.startswith("robust_restarts")), f"robust_restarts{r}")
    lines = [f"| method | clean | PGD-20 | PGD-20 x {key.removeprefix('robust_restarts')} restarts "
             "| adaptation at test time | training (s) | training (gradient evaluations) |",
             "|---|---|---|---|---|---|---|"]
    for m, row in result["methods"].items():
        cells = [f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['ci95']:.1f}%" for k in ("clean", "robust", key)]
        sec = row["train_seconds"]
        grads = row.get("gradient_evaluations")
        how = describe_recipe(row["selection"]) if "selection" in row else \
            f"{row['test_steps']} step(s) at lr {row['inner_lr']:g}"
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + f" | {how} | "
                     + f"{'-' if sec is None else f'{sec:.0f}'} | " + ("-" if grads is None else f"{grads:,}") + " |")
    return "\n".join(lines)


def compare(result: dict[str, Any], a: str, b: str, field: str = "robust") -> str:
    """``a`` against ``b`` on ``field`` in words: "beats", "loses to" or "ties with (CIs overlap)", with numbers."""
    x, y = result["methods"][a][field], result["methods"][b][field]
    lo_x, hi_x, lo_y, hi_y = x["mean"] - x["ci95"], x["mean"] + x["ci95"], y["mean"] - y["ci95"], y["mean"] + y["ci95"]
    word = "beats" if lo_x > hi_y else ("loses to" if hi_x < lo_y else "ties with (CIs overlap)")
    return (f"{LABELS.get(a, a)} {100 * x['mean']:.1f} ± {100 * x['ci95']:.1f}% {word} "
            f"{LABELS.get(b, b)} {100 * y['mean']:.1f} ± {100 * y['ci95']:.1f}%")


def paired_difference(evaluations: dict[str, Any], a: str, b: str, field: str = "robust") -> dict[str, float]:
    """Mean and 95% CI of the per-task difference ``a - b`` of ``field`` ("clean", "robust" or "robust_restarts"),
    over the tasks both were evaluated on (the same tasks: a paired comparison, tighter than two separate CIs)."""
    x, y = (np.asarray(getattr(evaluations[m], field), dtype=np.float64) for m in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"{a} and {b} were evaluated on different tasks ({x.shape} vs {y.shape}); use the same tasks")
    return _evaluate.mean_ci95_record(x - y)


def paired_verdict(evaluations: dict[str, Any], a: str, b: str, field: str = "robust") -> str:
    """``a`` against ``b`` in words from the paired per-task differences: ahead / behind / no clear difference."""
    d = paired_difference(evaluations, a, b, field)
    lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
    word = "ahead of" if lo > 0 else ("behind" if hi < 0 else "not clearly different from")
    return (f"{LABELS.get(a, a)} is {word} {LABELS.get(b, b)} on {field.replace('_', ' ')} accuracy: "
            f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f} points (paired over the same tasks)")


def uniform_loss(n_way: int) -> float:
    """Cross-entropy of the uniform prediction over ``n_way`` classes: ln(n_way) (what a collapsed model scores)."""
    return math.log(n_way)


if __name__ == "__main__":  # python -m tutorial_lib.experiments.robust_few_shot --profile standard --strategy ...
    from tutorial_lib.experiments import cli

    raise SystemExit(cli.main("robust_few_shot"))
