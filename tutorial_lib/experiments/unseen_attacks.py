"""Notebook 06's experiments: adapting to an attack family held out of training, against fair baselines.

Reads ``profile.unseen`` (and notebook 05's ``profile.meta_adv``). Six attack families (three Lp, three
geometric), each at a budget where plain MAML loses about as much as under L-inf PGD at eps 0.1. For each
held-out family and training seed: :class:`~tutorial_lib.meta_adversarial.AttackAdaptiveMAML` meta-trained on
the other five families (``meta_adv``), the same learner trained on all six (``oracle``), and the non-meta
answer: multi-perturbation adversarial training on the other five (``union_at_finetune``) with the same number
of gradient evaluations (:mod:`tutorial_lib.compute`), fine-tuned per task from a nearest-class-mean head. Plain
MAML, LSLR-MAML (notebook 04) and L-inf Adversarial Querying (notebook 05) are the reference rows. Every
adaptation recipe (steps, rates, head or full fine-tuning) is chosen on validation tasks from held-out images of
the meta-training digits (:func:`select`), then evaluated once on the test digits 5-9, every method adapting on
the same clean + attacked support sets (re-crafted against the current weights before every step) and attacked
against its adapted weights. Models are saved as ``build/models/06_<method>_without_<family>_seed<k>.keras``
(learned rates beside them as ``.rates.npz``); results go to ``build/results/06_unseen_attacks.json``.
Introduced in notebooks/06_unseen_attacks.ipynb.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from .. import adaptation, attacks, compute, evaluate, meta, models, runtime, training
from .. import meta_adversarial as mad
from ..meta_adversarial import AttackAdaptiveMAML
from ..tasks import FewShotSampler, Tasks, digit_splits_with_validation
from . import meta_learning
from . import robust_few_shot as rfs

#: The attack families, in table order (three Lp, three geometric).
FAMILIES = ("linf", "l2", "l1", "rotation", "translation", "zoom_shear")
GEOMETRIC = ("rotation", "translation", "zoom_shear")
FAMILY_LABELS = {"linf": "L∞", "l2": "L2", "l1": "L1", "rotation": "rotation", "translation": "translation",
                 "zoom_shear": "zoom/shear"}
#: The methods compared, in table order; SEEDED ones are trained once per seed and held-out family.
METHODS = ("maml", "lslr", "aq_linf", "union_at_finetune", "meta_adv", "oracle")
SEEDED = ("union_at_finetune", "meta_adv", "oracle")
LABELS = {"maml": "plain MAML", "lslr": "LSLR-MAML", "aq_linf": "AQ (L∞ only)",
          "union_at_finetune": "union AT + fine-tune", "meta_adv": "attack-adaptive MAML",
          "oracle": "oracle (trained on it)"}
RESULTS_NAME = "06_unseen_attacks"


def _check(value: Any, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# The attack families
# --------------------------------------------------------------------------------------------------
def family_attack(family: str, settings: Any, *, train: bool = False, scale: float = 1.0,
                  steps: int | None = None, finer: bool = False) -> attacks.Attack:
    """The spec of ``family`` at the profile's budget: the test attack, or (``train``) the cheaper training one.

    L-inf and L2: PGD-k from a random start, step 2.5 eps / k; L1: SLIDE-k (``SparseL1Descent``), step 2 eps / k;
    k = ``eval_pgd_steps`` (test), ``train_pgd_steps`` (training) or ``steps``. Geometric: the worst of a grid
    (rotation angles; translations in x and y, bilinear; zoom x zoom x shear), the test grid or the coarser
    training grid, or (``finer``) a grid about twice as fine. ``scale`` multiplies the budget (eps, or the grid's
    extent).
    """
    s = settings
    _check(family, FAMILIES, "family")
    k = (s.train_pgd_steps if train else s.eval_pgd_steps) if steps is None else int(steps)
    if family in ("linf", "l2"):
        eps = (s.linf_eps if family == "linf" else s.l2_eps) * scale
        return attacks.PGD(eps=eps, steps=k, step_size=2.5 * eps / k, norm="inf" if family == "linf" else 2,
                           random_start=True)
    if family == "l1":
        eps = s.l1_eps * scale
        return attacks.SparseL1Descent(eps=eps, steps=k, step_size=2.0 * eps / k, random_start=True)
    if family == "rotation":
        n = s.train_rotation_steps if train else s.rotation_steps
        return attacks.Rotation(max_angle=s.rotation_max_angle * scale, angle_steps=2 * n - 1 if finer else n)
    n = s.train_grid_steps if train else (s.translation_steps if family == "translation" else s.zoom_shear_steps)
    n = 2 * n - 1 if finer else n
    if family == "translation":
        return attacks.Translation(max_shift=s.translation_max_shift * scale, shift_steps=n, interpolation="bilinear")
    return attacks.ZoomShear(max_zoom=s.max_zoom * scale, max_shear=s.max_shear * scale, zoom_steps=n, shear_steps=n)


def eval_attacks(family: str, settings: Any, **options: Any) -> tuple[attacks.Attack, ...]:
    """The test attacks of ``family`` (a query is robust only if every one fails): :func:`family_attack`, plus
    MIM-k at L-inf when the profile's ``linf_mim`` says so. ``options`` go to :func:`family_attack`."""
    first = family_attack(family, settings, **options)
    if family == "linf" and settings.linf_mim:
        k = first.steps
        return first, attacks.MIM(eps=first.eps, steps=k, step_size=first.eps / k)
    return (first,)


def train_pool(settings: Any) -> attacks.AttackPool:
    """Every family's training spec with equal weight; ``.without(family)`` holds one out."""
    return attacks.AttackPool([family_attack(f, settings, train=True) for f in FAMILIES])


def budget_text(family: str, settings: Any) -> str:
    """The budget of ``family`` in words, e.g. "eps = 1.41" or "±23.9°"."""
    s = settings
    return {"linf": f"ε = {s.linf_eps:g}", "l2": f"ε = {s.l2_eps:g}", "l1": f"ε = {s.l1_eps:g}",
            "rotation": f"±{s.rotation_max_angle:g}°", "translation": f"±{s.translation_max_shift:g} px",
            "zoom_shear": f"zoom ±{100 * s.max_zoom:g} %, shear ±{s.max_shear:g}"}[family]


def budget_value(family: str, settings: Any) -> Any:
    """The budget of ``family`` as data (the results file's ``budget``)."""
    s = settings
    return {"linf": s.linf_eps, "l2": s.l2_eps, "l1": s.l1_eps, "rotation": {"max_angle": s.rotation_max_angle},
            "translation": {"max_shift": s.translation_max_shift},
            "zoom_shear": {"max_zoom": s.max_zoom, "max_shear": s.max_shear}}[family]


def maml_probe(maml: keras.Model, tasks: Tasks, settings: Any) -> dict[str, dict[str, float]]:
    """Robust accuracy of plain MAML under each family after one step at ``adapt_lr`` on the clean support set
    (the probe the budgets were matched on): ``{family: {"mean", "ci95"}}`` over ``tasks``."""
    specs = [family_attack(f, settings) for f in FAMILIES]
    res = adaptation.adapt_and_evaluate(maml, tasks, checkpoints=(1,), lr=settings.adapt_lr, query_attacks=specs)
    return {f: evaluate.mean_ci95_record(res.robust_under([j])[:, 0]) for j, f in enumerate(FAMILIES)}


def describe_families(settings: Any, probe: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The ``families`` entry of the results: geometric or not, test spec, budget, plain MAML's robust accuracy."""
    return {f: {"geometric": f in GEOMETRIC, "spec": repr(family_attack(f, settings)),
                "train_spec": repr(family_attack(f, settings, train=True)), "budget": budget_value(f, settings),
                "maml_robust": probe[f]} for f in FAMILIES}


# --------------------------------------------------------------------------------------------------
# Tasks: meta-train, validation (held-out images of the meta-train digits) and test (digits 5-9)
# --------------------------------------------------------------------------------------------------
def splits(data: Any, settings: Any, meta_settings: Any, k_shot: int, *, q_queries: int | None = None
           ) -> tuple[FewShotSampler, FewShotSampler, FewShotSampler]:
    """(meta-train, validation, test) samplers of :func:`tutorial_lib.tasks.digit_splits_with_validation` with
    notebook 05's N, ``k_shot`` shots and ``q_queries`` (default the profile's test queries) per class."""
    q = settings.q_queries if q_queries is None else q_queries
    return digit_splits_with_validation(data, n_way=meta_settings.n_way, k_shot=k_shot, q_queries=q,
                                        validation=settings.validation_fraction)


def eval_tasks(data: Any, settings: Any, meta_settings: Any, k_shot: int, *, n: int | None = None) -> Tasks:
    """``n`` (default ``eval_tasks``) test tasks (digits 5-9, notebook 05's test split); the same for every method."""
    n = settings.eval_tasks if n is None else n
    return splits(data, settings, meta_settings, k_shot)[2].sample(n, seed=1000 + k_shot)


def validation_tasks(data: Any, settings: Any, meta_settings: Any, k_shot: int) -> Tasks:
    """``validation_tasks`` tasks of the meta-train classes on images no learner of this notebook trained on."""
    return splits(data, settings, meta_settings, k_shot)[1].sample(settings.validation_tasks, seed=2000 + k_shot)


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------
def references(data: Any, profile: Any, *, verbose: int = 0) -> dict[str, Any]:
    """The reference learners, loaded from notebooks 04 and 05 (trained and cached when missing): plain MAML and
    L-inf AQ (notebook 05), LSLR-MAML with its learned rates (notebook 04, 5-shot). Returns ``{"maml": model,
    "aq_linf": model, "lslr": model, "lslr_rates": [arrays], "info": {method: info}}``."""
    ms = profile.meta_adv
    maml_model, maml_info = rfs.meta_train("maml", data, ms, verbose=verbose)
    aq_model, aq_info = rfs.meta_train("aq", data, ms, verbose=verbose)
    lslr_model, lslr_info = meta_learning.meta_train("lslr", 5, data, profile.meta, verbose=verbose)
    n_support, n_query = ms.n_way * ms.k_shot, ms.n_way * ms.q_queries
    for method, info in (("maml", maml_info), ("aq", aq_info)):
        learner = mad.make_learner(method, models.few_shot_cnn(ms.n_way), **rfs.method_options(method, ms))
        info["gradient_evaluations"] = int(round(rfs.meta_steps(method, ms) * compute.meta_step_cost(
            learner, n_support=n_support, n_query=n_query, meta_batch=ms.meta_batch)))
    m = profile.meta
    learner = meta.make_learner("lslr", models.few_shot_cnn(m.n_way), **meta_learning.method_options("lslr", m))
    lslr_info["gradient_evaluations"] = int(round(m.meta_steps * compute.meta_step_cost(
        learner, n_support=m.n_way * 5, n_query=m.n_way * m.q_queries, meta_batch=m.meta_batch)))
    return {"maml": maml_model, "aq_linf": aq_model, "lslr": lslr_model, "lslr_rates": lslr_info["rates"],
            "info": {"maml": maml_info, "aq_linf": aq_info, "lslr": lslr_info}}


def model_name(method: str, family: str | None, seed: int) -> str:
    """``06_<method>_without_<family>_seed<k>`` (the oracle holds nothing out: ``06_oracle_seed<k>``)."""
    _check(method, SEEDED, "method")
    return f"06_{method}_seed{seed}" if family is None else f"06_{method}_without_{family}_seed{seed}"


def _pool_for(family: str | None, settings: Any) -> attacks.AttackPool:
    pool = train_pool(settings)
    return pool if family is None else pool.without(_check(family, FAMILIES, "family"))


def make_learner(model: keras.Model, pool: attacks.AttackPool, settings: Any, *, seed: int) -> AttackAdaptiveMAML:
    """The attack-adaptive learner with the profile's settings (inner steps, rates, clean share, ramp)."""
    s = settings
    return AttackAdaptiveMAML(model, pool=pool, inner_lr=s.inner_lr, inner_steps=s.inner_steps,
                              clean_weight=s.clean_weight, ramp_steps=int(round(s.ramp_fraction * s.meta_steps)),
                              zero_head=True, meta_optimizer=keras.optimizers.Adam(s.meta_lr), seed=seed)


def meta_step_cost(settings: Any, meta_settings: Any, family: str | None) -> float:
    """Gradient evaluations of one meta-step of the attack-adaptive learner without ``family`` (None: all)."""
    learner = make_learner(models.few_shot_cnn(meta_settings.n_way), _pool_for(family, settings), settings, seed=0)
    return compute.meta_step_cost(learner, n_support=meta_settings.n_way * settings.train_k_shot,
                                  n_query=meta_settings.n_way * meta_settings.q_queries,
                                  meta_batch=meta_settings.meta_batch)


def meta_adv(data: Any, profile: Any, start: keras.Model, *, held_out: str | None, seed: int,
             verbose: int = 0) -> tuple[keras.Model, dict[str, Any]]:
    """The attack-adaptive learner trained on every family but ``held_out`` (None: all six, the oracle) from
    ``start``'s weights (notebook 05's MAML), ``meta_steps`` meta-steps on meta-train tasks, cached by
    configuration and saved as ``build/models/06_<meta_adv|oracle>_..._seed<k>.keras`` with its rates beside it.
    Returns ``(model, info)``; ``info["rates"]``: the learned rates; ``info["gradient_evaluations"]``."""
    s, ms = profile.unseen, profile.meta_adv
    method = "oracle" if held_out is None else "meta_adv"
    pool = _pool_for(held_out, s)
    name = model_name(method, held_out, seed)
    config = {"pool": repr(pool), "meta_steps": s.meta_steps, "inner_steps": s.inner_steps, "inner_lr": s.inner_lr,
              "clean_weight": s.clean_weight, "ramp_fraction": s.ramp_fraction, "meta_lr": s.meta_lr,
              "n_way": ms.n_way, "k_shot": s.train_k_shot, "q_queries": ms.q_queries, "meta_batch": ms.meta_batch,
              "validation": s.validation_fraction, "start": "05_maml",
              "start_weights": float(sum(float(np.sum(w)) for w in start.get_weights())),
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}
    rates_path = models.cache_paths(name, config)[0].with_suffix(".rates.npz")

    def train():
        runtime.set_seed(seed)
        sampler = splits(data, s, ms, s.train_k_shot, q_queries=ms.q_queries)[0]
        model = models.few_shot_cnn(ms.n_way)
        model.set_weights(start.get_weights())
        learner = make_learner(model, pool, s, seed=seed)
        history = learner.meta_fit(sampler, s.meta_steps, ms.meta_batch, verbose=verbose)
        learner.save_rates(rates_path)
        return model, {"history": {"loss": history.loss, "accuracy": history.accuracy}}

    model, info = models.load_or_train(name, config, train, verbose=verbose > 0, retrain=not rates_path.is_file())
    info["rates"] = meta.read_rates(rates_path)
    info["gradient_evaluations"] = int(round(s.meta_steps * meta_step_cost(s, ms, held_out)))
    folder = runtime.build_subdir("models")
    models.save_model(model, folder / f"{name}.keras")
    shutil.copyfile(rates_path, folder / f"{name}.rates.npz")
    return model, info


def union_steps(settings: Any, meta_settings: Any, family: str) -> tuple[int, int]:
    """(epochs, batches per epoch) of union adversarial training without ``family`` so that its gradient
    evaluations equal the attack-adaptive learner's (without the same family) as closely as whole batches allow."""
    s = settings
    budget = s.meta_steps * meta_step_cost(s, meta_settings, family)
    per_batch = s.union_batch_size * compute.union_training_cost(_pool_for(family, s))
    batches = max(s.union_epochs, int(round(budget / per_batch)))
    return s.union_epochs, int(round(batches / s.union_epochs))


def union_at(data: Any, profile: Any, start: keras.Model, *, held_out: str, seed: int,
             verbose: int = 0) -> tuple[keras.Model, dict[str, Any]]:
    """The non-meta answer: a classifier of the 20 meta-train classes (digits 0-4 x 4 rotations, the meta-train
    images) with ``start``'s convolutional layers (notebook 05's MAML, as the meta-learners start from) and a new
    head, trained by multi-perturbation adversarial training (``AdversarialTrainer(method="union")``: every
    training spec of the other families attacks each batch, each example trains on its worst copy) for the
    gradient evaluations of :func:`union_steps`, the budget ramped up over the first half. Cached; saved as
    ``build/models/06_union_at_finetune_without_<family>_seed<k>.keras``. Returns ``(classifier, info)``."""
    s, ms = profile.unseen, profile.meta_adv
    pool = _pool_for(held_out, s)
    epochs, per_epoch = union_steps(s, ms, held_out)
    name = model_name("union_at_finetune", held_out, seed)
    config = {"pool": repr(pool), "epochs": epochs, "batches_per_epoch": per_epoch, "batch_size": s.union_batch_size,
              "learning_rate": s.union_lr, "ramp_epochs": max(1, epochs // 2), "validation": s.validation_fraction,
              "start": "05_maml", "start_weights": float(sum(float(np.sum(w)) for w in start.get_weights())),
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}

    def train():
        runtime.set_seed(seed)
        sampler = splits(data, s, ms, s.train_k_shot)[0]
        x, y = sampler.labelled_images()
        classifier = models.few_shot_cnn(sampler.num_classes)
        classifier.set_weights(start.get_weights()[:-2] + classifier.get_weights()[-2:])
        stream = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat()
                  .batch(s.union_batch_size))
        trainer = training.AdversarialTrainer(classifier, method="union", attack=pool)
        trainer.compile(optimizer=keras.optimizers.Adam(s.union_lr))
        ramp = training.EpsilonRamp(trainer.eps_max, max(1, epochs // 2))
        hist = trainer.fit(stream, epochs=epochs, steps_per_epoch=per_epoch, callbacks=[ramp], shuffle=False,
                           verbose=verbose)
        return classifier, {"history": hist.history}

    classifier, info = models.load_or_train(name, config, train, verbose=verbose > 0)
    examples = epochs * per_epoch * s.union_batch_size
    info["gradient_evaluations"] = int(round(compute.adversarial_training_cost(pool, examples)))
    models.save_model(classifier, runtime.build_subdir("models") / f"{name}.keras")
    return classifier, info


@dataclasses.dataclass
class Learner:
    """One trained model ready to adapt: ``init`` (an N-way few-shot CNN), its learned ``rates`` (or None) and its
    training ``info`` (``gradient_evaluations``, ``train_seconds``)."""

    method: str
    init: keras.Model
    rates: list[np.ndarray] | None
    info: dict[str, Any]


def train_all(data: Any, profile: Any, refs: dict[str, Any], *, verbose: int = 0) -> dict[str, dict[Any, Learner]]:
    """Every model of the comparison, trained or loaded: ``{method: {key: Learner}}`` where the key is None for the
    reference learners, ``seed`` for the oracle (:func:`oracle_seeds`) and ``(family, seed)`` for meta_adv and union_at_finetune (each
    held-out family of the profile, each seed)."""
    s, ms = profile.unseen, profile.meta_adv
    start = refs["maml"]
    out: dict[str, dict[Any, Learner]] = {
        "maml": {None: Learner("maml", refs["maml"], None, refs["info"]["maml"])},
        "lslr": {None: Learner("lslr", refs["lslr"], refs["lslr_rates"], refs["info"]["lslr"])},
        "aq_linf": {None: Learner("aq_linf", refs["aq_linf"], None, refs["info"]["aq_linf"])},
        "union_at_finetune": {}, "meta_adv": {}, "oracle": {}}
    for seed in s.seeds:
        if seed in oracle_seeds(s):
            model, info = meta_adv(data, profile, start, held_out=None, seed=seed, verbose=verbose)
            out["oracle"][seed] = Learner("oracle", model, info["rates"], info)
        for family in s.held_out:
            model, info = meta_adv(data, profile, start, held_out=family, seed=seed, verbose=verbose)
            out["meta_adv"][(family, seed)] = Learner("meta_adv", model, info["rates"], info)
            classifier, info = union_at(data, profile, start, held_out=family, seed=seed, verbose=verbose)
            out["union_at_finetune"][(family, seed)] = Learner("union_at_finetune",
                                                               rfs.transfer_init(classifier, ms.n_way), None, info)
    for per in (out["union_at_finetune"], out["meta_adv"], out["oracle"]):
        for learner in per.values():
            learner.info["start"] = "05_maml"
            learner.info["start_gradient_evaluations"] = refs["info"]["maml"]["gradient_evaluations"]
    return out


def oracle_seeds(settings: Any) -> tuple[int, ...]:
    """The training seeds of the oracle: the first ``oracle_seeds`` of ``seeds``."""
    return tuple(settings.seeds[: settings.oracle_seeds])


def method_seeds(method: str, settings: Any) -> tuple[int, ...]:
    """The training seeds ``method`` has models for (the reference learners: one model, listed as ``seeds[0]``)."""
    if method == "oracle":
        return oracle_seeds(settings)
    return tuple(settings.seeds) if method in SEEDED else (settings.seeds[0],)


def learner_for(learners: dict[str, dict[Any, Learner]], method: str, family: str, seed: int) -> Learner:
    """The model of ``method`` that meets held-out ``family`` with training seed ``seed`` (references: their one model)."""
    per = learners[method]
    if None in per:
        return per[None]
    return per[seed] if method == "oracle" else per[(family, seed)]


def compute_record(learners: dict[str, dict[Any, Learner]]) -> dict[str, dict[str, Any]]:
    """The results' ``compute``: per method, gradient evaluations and training seconds (means over its models;
    seconds are those measured when each model was trained, None when not recorded), the model it started from
    and that model's gradient evaluations (the seeded methods all start from notebook 05's MAML)."""
    out: dict[str, dict[str, Any]] = {}
    for method, per in learners.items():
        evals = [l.info.get("gradient_evaluations") for l in per.values()]
        secs = [l.info.get("train_seconds") for l in per.values()]
        first = next(iter(per.values())).info
        out[method] = {"gradient_evaluations": int(np.mean(evals)) if all(e is not None for e in evals) else None,
                       "train_seconds": float(np.mean(secs)) if all(t is not None for t in secs) else None,
                       "models": len(per), "start": first.get("start", "random"),
                       "start_gradient_evaluations": first.get("start_gradient_evaluations", 0)}
    return out


# --------------------------------------------------------------------------------------------------
# Adaptation recipes, chosen on validation tasks
# --------------------------------------------------------------------------------------------------
def candidates(method: str, settings: Any) -> list[dict[str, Any]]:
    """The adaptation recipes tried for ``method`` on validation tasks, cheapest first within each recipe.

    - plain MAML and AQ adapt every layer ("full_after_first"): the first step at notebook 05's meta-trained
      rate ``adapt_lr``, later steps at ``lr`` (each of ``later_lrs``; ``lr = adapt_lr`` is every step at it);
    - LSLR-MAML, attack-adaptive MAML and the oracle use their learned rates ("learned"); the attack-adaptive
      learners adapt for exactly the steps they were meta-trained with;
    - union AT + fine-tune starts each task from the nearest-class-mean head of its clean support set and
      fine-tunes the head ("prototype+head") or every layer ("prototype+full") at each of ``finetune_lrs``
      (0 steps: the nearest-class-mean classifier itself).
    """
    s = settings
    _check(method, METHODS, "method")
    if method in ("meta_adv", "oracle"):
        return [{"steps": s.inner_steps, "recipe": "learned", "lr": None}]
    if method == "lslr":
        return [{"steps": k, "recipe": "learned", "lr": None} for k in s.select_steps]
    if method == "union_at_finetune":
        return [{"steps": k, "recipe": r, "lr": lr} for r in ("prototype+head", "prototype+full")
                for lr in s.finetune_lrs for k in (0,) + tuple(s.select_steps)]
    return [{"steps": k, "recipe": "full_after_first", "lr": lr} for lr in s.later_lrs for k in s.select_steps]


def adapt_options(learner: Learner, recipe: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`tutorial_lib.adaptation.adapt_and_evaluate` for ``learner`` and ``recipe``."""
    r = recipe["recipe"]
    if r == "learned":
        return {"lr": None, "rates": [tf.convert_to_tensor(x) for x in learner.rates]}
    if r == "full_after_first":
        return {"lr": settings.adapt_lr, "later_lr": recipe["lr"]}
    if r == "full":
        return {"lr": recipe["lr"]}
    if r in ("prototype+head", "prototype+full"):
        return {"lr": recipe["lr"], "head_only": r == "prototype+head", "head_init": "prototype"}
    raise ValueError(f"unknown recipe {r!r}")


_ARCHITECTURES: dict[tuple[int, ...], keras.Model] = {}


def architecture(model: keras.Model) -> keras.Model:
    """One model object per architecture (weight shapes): every learner is evaluated through it with its own
    weights as ``params``, so learners that adapt alike share one compiled evaluator instead of one each."""
    key = tuple(int(np.prod(w.shape)) for w in model.weights) + tuple(model.output_shape[1:])
    if key not in _ARCHITECTURES:
        _ARCHITECTURES[key] = keras.models.clone_model(model)
    return _ARCHITECTURES[key]


def adapt_and_attack(learner: Learner, family: str, tasks: Tasks, recipe: dict[str, Any], settings: Any, *,
                     checkpoints: Sequence[int], query_attacks: Sequence[attacks.Attack] | None = None,
                     restarts: int | None = None, seed: int = 0) -> adaptation.AdaptationResult:
    """Adapt ``learner`` as ``recipe`` says on each task's support set plus its copy attacked by ``family``'s test
    attack (re-crafted against the current weights before every step), then attack the queries with
    ``query_attacks`` (default the family's test attacks) against the adapted weights at every checkpoint."""
    s = settings
    specs = eval_attacks(family, s) if query_attacks is None else tuple(query_attacks)
    restarts = s.eval_restarts if restarts is None else restarts
    if restarts > 1 and not all(getattr(a, "random_start", False) for a in specs):
        restarts = 1  # deterministic attacks (grids) find the same examples every time
    return adaptation.adapt_and_evaluate(
        architecture(learner.init), tasks, params=meta.params_of(learner.init),
        checkpoints=tuple(sorted(set(checkpoints))), support="clean+attacked",
        support_attack=family_attack(family, s), recraft=True, query_attacks=specs, restarts=restarts, seed=seed,
        **adapt_options(learner, recipe, s))


def select(method: str, learners: dict[str, dict[Any, Learner]], tasks: Tasks, settings: Any
           ) -> adaptation.Selection:
    """Choose ``method``'s recipe on validation ``tasks`` (meta-train classes, K = ``select_k``): the score of a
    recipe is its robust accuracy averaged over the held-out families of the profile, each met by the model that
    never saw it (training seed ``seeds[0]``). Ties within ``select_tolerance`` go to fewer steps."""
    s = settings
    cands = candidates(method, s)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault((c["recipe"], c["lr"]), []).append(i)
    scores: dict[int, dict[str, float]] = {}
    for idx in groups.values():
        steps = [cands[i]["steps"] for i in idx]
        for family in s.held_out:
            learner = learner_for(learners, method, family, s.seeds[0])
            res = adapt_and_attack(learner, family, tasks, cands[idx[0]], s, checkpoints=steps, restarts=1)
            for i in idx:
                scores.setdefault(i, {})[family] = float(res.robust[:, res.column(cands[i]["steps"])].mean())
    selection = adaptation.select_on_validation(
        [dict(c, _i=i) for i, c in enumerate(cands)], lambda c: float(np.mean(list(scores[c["_i"]].values()))),
        tolerance=s.select_tolerance)
    chosen = {k: v for k, v in selection.chosen.items() if k != "_i"}
    cands_out = [{**{k: v for k, v in c.items() if k != "_i"},
                  "validation_by_family": scores[c["_i"]]} for c in selection.candidates]
    return adaptation.Selection(chosen, cands_out)


# --------------------------------------------------------------------------------------------------
# Evaluation on the test digits, over seeds
# --------------------------------------------------------------------------------------------------
def crossed_ci95(values: Any) -> dict[str, float]:
    """Mean and 95 % interval of per-(seed, task) values ``(seeds, tasks)``, seeds and tasks both random.

    Two-way clustered variance (Cameron, Gelbach & Miller 2011): ``V = V_seeds + V_tasks - V_cells`` with
    ``V_seeds`` the variance of the seed means / seeds, ``V_tasks`` that of the task means / tasks and ``V_cells``
    the cell variance / cells (never below ``V_tasks``); ci95 = 1.96 sqrt(V). With one seed it is the usual
    interval over tasks."""
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"values must be (seeds, tasks) with at least 2 tasks, got shape {v.shape}")
    s, t = v.shape
    if s == 1:
        return evaluate.mean_ci95_record(v[0])
    v_tasks = v.mean(axis=0).var(ddof=1) / t
    var = max(v.mean(axis=1).var(ddof=1) / s + v_tasks - v.var(ddof=1) / (s * t), v_tasks)
    return {"mean": float(v.mean()), "ci95": float(1.96 * np.sqrt(var))}


@dataclasses.dataclass
class Cell:
    """One method on one held-out family at K shots: ``results[i]`` is training seed ``seeds[i]``'s
    :class:`~tutorial_lib.adaptation.AdaptationResult` on the same test tasks; ``steps`` the chosen step count."""

    method: str
    family: str
    k: int
    steps: int
    seeds: tuple[int, ...]
    results: list[adaptation.AdaptationResult]

    def robust(self, steps: int | None = None) -> np.ndarray:
        """Robust accuracy (seeds, tasks) after ``steps`` (default the chosen) adaptation steps."""
        steps = self.steps if steps is None else steps
        return np.stack([r.robust[:, r.column(steps)] for r in self.results])

    def clean(self, steps: int | None = None) -> np.ndarray:
        """Clean accuracy (seeds, tasks) after ``steps`` (default the chosen) adaptation steps."""
        steps = self.steps if steps is None else steps
        return np.stack([r.clean[:, r.column(steps)] for r in self.results])

    def record(self) -> dict[str, Any]:
        """The ``"<k>shot"`` record of the results file."""
        checkpoints = self.results[0].checkpoints
        return {"steps": self.steps, "clean": crossed_ci95(self.clean()), "robust": crossed_ci95(self.robust()),
                "per_seed": [{"seed": sd, "clean": float(c.mean()), "robust": float(r.mean())}
                             for sd, c, r in zip(self.seeds, self.clean(), self.robust())],
                "curve": {str(c): crossed_ci95(self.robust(c)) for c in checkpoints}}


def evaluate_cell(method: str, family: str, k: int, learners: dict[str, dict[Any, Learner]], tasks: Tasks,
                  recipe: dict[str, Any], settings: Any) -> Cell:
    """``method`` adapted with its chosen ``recipe`` on the test ``tasks`` (K = ``k``) against held-out ``family``,
    once per training seed (the reference learners once), at the chosen steps (and, for K = ``select_k``, at every
    step count of the curve)."""
    s = settings
    seeds = method_seeds(method, s)
    checkpoints = sorted(set(s.curve_steps) | {recipe["steps"]}) if k == s.select_k else [recipe["steps"]]
    results = [adapt_and_attack(learner_for(learners, method, family, sd), family, tasks, recipe, s,
                                checkpoints=checkpoints) for sd in seeds]
    return Cell(method, family, k, recipe["steps"], seeds, results)


def paired(a: Cell, b: Cell) -> dict[str, Any]:
    """Robust accuracy difference ``a - b`` per (seed, task), paired on tasks and seeds (a single-model method is
    the same model for every seed), with :func:`crossed_ci95` and a verdict."""
    ra, rb = a.robust(), b.robust()
    n = max(len(ra), len(rb))
    diff = np.broadcast_to(ra, (n, ra.shape[1])) - np.broadcast_to(rb, (n, rb.shape[1]))
    record = crossed_ci95(diff)
    return {**record, "verdict": verdict(record)}


def verdict(diff: dict[str, float]) -> str:
    """"ahead", "behind" or "tied" from a paired difference's 95 % interval."""
    lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
    return "ahead" if lo > 0 else ("behind" if hi < 0 else "tied")


def gap_closed(cells: dict[str, Cell]) -> dict[str, Any]:
    """How much of the gap between plain MAML and the oracle the attack-adaptive learner closes:
    ``(meta_adv - maml) / (oracle - maml)`` on mean robust accuracy, with both gains. ``closed`` is None when the
    oracle is not ahead of plain MAML (paired interval), since then there is no gap to close."""
    m = {k: float(cells[k].robust().mean()) for k in ("maml", "meta_adv", "oracle")}
    oracle_ahead = paired(cells["oracle"], cells["maml"])["verdict"] == "ahead"
    gap = m["oracle"] - m["maml"]
    return {"closed": (m["meta_adv"] - m["maml"]) / gap if oracle_ahead else None,
            "meta_adv_gain": m["meta_adv"] - m["maml"], "oracle_gain": gap, "oracle_ahead_of_maml": oracle_ahead}


PAIRS = (("meta_adv", "union_at_finetune"), ("meta_adv", "maml"), ("meta_adv", "lslr"), ("meta_adv", "aq_linf"),
         ("oracle", "meta_adv"), ("oracle", "maml"), ("union_at_finetune", "maml"))


def results(*, settings: Any, probe: dict[str, Any], selections: dict[str, adaptation.Selection],
            learners: dict[str, dict[Any, Learner]], cells: dict[str, dict[str, dict[int, Cell]]],
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results file's content (schema in notebook 06 and the README): families, K shots, seeds, selection,
    compute, held_out (family -> method -> "<k>shot"), paired (family -> "<a>_vs_<b>" at K = ``select_k``)."""
    s = settings
    out: dict[str, Any] = {"families": describe_families(s, probe), "k_shots": list(s.shots),
                           "seeds": list(s.seeds), "held_out_families": list(s.held_out),
                           "selection": {m: sel.to_dict() for m, sel in selections.items()},
                           "compute": compute_record(learners), "held_out": {}, "paired": {}, "gap_closed": {}}
    for family, per in cells.items():
        out["held_out"][family] = {m: {f"{k}shot": c.record() for k, c in per_k.items()} for m, per_k in per.items()}
        k = s.select_k
        out["paired"][family] = {f"{a}_vs_{b}": paired(per[a][k], per[b][k]) for a, b in PAIRS}
        out["gap_closed"][family] = gap_closed({m: per[m][k] for m in ("maml", "meta_adv", "oracle")})
    out["tasks"] = {"test": int(s.eval_tasks), "validation": int(s.validation_tasks)}
    out.update(extra or {})
    return out


def save(result: dict[str, Any]) -> Path:
    """Write ``result`` to ``build/results/06_unseen_attacks.json``; returns the path."""
    return runtime.save_results(RESULTS_NAME, result)


def _pct(cell: dict[str, float]) -> str:
    return f"{100 * cell['mean']:.1f} ± {100 * cell['ci95']:.1f}"


def held_out_table(result: dict[str, Any], k: int) -> str:
    """Markdown: per held-out family and method, robust and clean accuracy (%, 95 % CI over seeds x tasks) at the
    chosen steps for K = ``k``, with the chosen recipe and the training compute."""
    lines = ["| held-out family | method | steps | recipe | robust | clean | per seed (robust) | gradient evals |",
             "|---|---|---|---|---|---|---|---|"]
    for family, per in result["held_out"].items():
        for method, entry in per.items():
            cell = entry[f"{k}shot"]
            sel = result["selection"][method]
            recipe = sel["recipe"] + ("" if sel["lr"] is None else f", lr {sel['lr']:g}")
            seeds = ", ".join(f"{100 * p['robust']:.1f}" for p in cell["per_seed"])
            evals = result["compute"][method]["gradient_evaluations"]
            lines.append(f"| {FAMILY_LABELS[family]} | {LABELS[method]} | {cell['steps']} | {recipe} | "
                         f"**{_pct(cell['robust'])}** | {_pct(cell['clean'])} | {seeds} | "
                         f"{'' if evals is None else f'{evals / 1e6:.2f} M'} |")
    return "\n".join(lines)


def selection_table(result: dict[str, Any]) -> str:
    """Markdown: every candidate recipe of every method with its validation robust accuracy (chosen in bold)."""
    lines = ["| method | recipe | lr | steps | validation robust % |", "|---|---|---|---|---|"]
    for method, sel in result["selection"].items():
        for c in sel["candidates"]:
            chosen = all(c[k] == sel[k] for k in ("steps", "recipe", "lr"))
            lr = "learned" if c["lr"] is None else f"{c['lr']:g}"
            score = f"{100 * c['validation_robust']:.1f}"
            lines.append(f"| {LABELS[method]} | {c['recipe']} | {lr} | {c['steps']} | "
                         f"{f'**{score}**' if chosen else score} |")
    return "\n".join(lines)


def paired_table(result: dict[str, Any]) -> str:
    """Markdown: the paired differences (robust accuracy points, 95 % CI over seeds x tasks) and verdicts."""
    lines = ["| held-out family | comparison | difference (points) | verdict |", "|---|---|---|---|"]
    for family, per in result["paired"].items():
        for key, d in per.items():
            a, b = key.split("_vs_")
            lines.append(f"| {FAMILY_LABELS[family]} | {LABELS[a]} − {LABELS[b]} | "
                         f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f} | {d['verdict']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The trained-on x tested-on matrix and the sanity checks of the test attacks
# --------------------------------------------------------------------------------------------------
def matrix(learners: dict[str, dict[Any, Learner]], selections: dict[str, adaptation.Selection], tasks: Tasks,
           settings: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Robust accuracy of one model per row on every family (K = ``select_k``, each row's chosen recipe, training
    seed ``seeds[0]``): plain MAML, AQ, each held-out family's attack-adaptive model, the oracle.
    Returns ``{row: {family: {"mean", "ci95"}}}``."""
    s = settings
    seed = s.seeds[0]
    rows: dict[str, tuple[str, Learner]] = {"maml": ("maml", learners["maml"][None]),
                                            "aq_linf": ("aq_linf", learners["aq_linf"][None])}
    for f in s.held_out:
        rows[f"meta_adv_without_{f}"] = ("meta_adv", learners["meta_adv"][(f, seed)])
    rows["oracle"] = ("oracle", learners["oracle"][seed])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row, (method, learner) in rows.items():
        recipe = selections[method].chosen
        out[row] = {}
        for family in FAMILIES:
            res = adapt_and_attack(learner, family, tasks, recipe, s, checkpoints=(recipe["steps"],), restarts=1)
            out[row][family] = evaluate.mean_ci95_record(res.robust[:, -1])
    return out


def matrix_label(row: str) -> str:
    """The label of a matrix row."""
    for method in ("meta_adv", "union_at_finetune"):
        if row.startswith(f"{method}_without_"):
            return f"{LABELS[method]} without {FAMILY_LABELS[row.removeprefix(f'{method}_without_')]}"
    return LABELS[row]


def sanity_checks(learner: Learner, family: str, tasks: Tasks, recipe: dict[str, Any], settings: Any, *,
                  change_limit: float = 0.05, large_limit: float = 0.1) -> dict[str, Any]:
    """Does ``family``'s test attack measure what it claims on ``learner`` adapted with ``recipe``?

    - stronger attack: gradient families twice the steps with 3 random restarts and, for L-inf and L2, also
      APGD with the DLR loss (scale-free, so a saturated softmax cannot hide from it), twice the steps; a query
      is broken if any of them breaks it. Geometric families: a grid about twice as fine. Robust accuracy may
      drop by at most ``change_limit``;
    - large budget: ``large_scales`` times the budget must leave at most ``large_limit`` robust accuracy.
    Returns the accuracies and a pass flag per check.
    """
    s = settings

    def masks(specs, restarts=1) -> np.ndarray:
        res = adapt_and_attack(learner, family, tasks, recipe, s, checkpoints=(recipe["steps"],),
                               query_attacks=specs, restarts=restarts)
        return res.clean_mask[:, -1] & res.attacked_mask[:, -1].all(axis=1)  # (tasks, queries)

    out: dict[str, Any] = {"family": family, "base": float(masks(eval_attacks(family, s)).mean())}
    if family in GEOMETRIC:
        stronger = family_attack(family, s, finer=True)
        out["stronger"], out["stronger_attack"] = float(masks((stronger,)).mean()), stronger.name
    else:
        k = 2 * s.eval_pgd_steps
        pgd = eval_attacks(family, s, steps=k)
        survives = masks(pgd, restarts=3)
        names = [f"{pgd[0].name} x 3 restarts"]
        if family in ("linf", "l2"):
            eps = s.linf_eps if family == "linf" else s.l2_eps
            dlr = attacks.APGD(eps=eps, steps=k, loss="dlr", norm="inf" if family == "linf" else 2, seed=0)
            survives &= masks((dlr,))
            names.append(dlr.name)
        out["stronger"], out["stronger_attack"] = float(survives.mean()), " + ".join(names)
    large = family_attack(family, s, scale=dict(s.large_scales)[family])
    out["large"], out["large_attack"] = float(masks((large,)).mean()), large.name
    out["stronger_changes_little"] = bool(out["base"] - out["stronger"] <= change_limit)
    out["large_budget_breaks"] = bool(out["large"] <= large_limit)
    return out


# --------------------------------------------------------------------------------------------------
# The strong column: notebook 03's strong attacks on the L-inf family
# --------------------------------------------------------------------------------------------------
def strong_column(cells: dict[str, Cell], learners: dict[str, dict[Any, Learner]],
                  selections: dict[str, adaptation.Selection], tasks: Tasks, settings: Any) -> dict[str, Any]:
    """The L-inf held-out cells of ``methods`` re-attacked with :func:`tutorial_lib.evaluate.strong_attacks`
    (APGD-CE, APGD-DLR, PGD x ``strong_restarts``, ``strong_steps`` steps) against the same adapted weights, on
    the first ``strong_tasks`` test tasks, training seed ``seeds[0]``. Returns ``{method: {"table", "strong",
    "attacks"}}`` (robust accuracy under the table's attack on the same tasks and under every strong attack)."""
    s = settings
    specs = evaluate.strong_attacks(s.linf_eps, norm="inf", steps=s.strong_steps, restarts=s.strong_restarts)
    subset = tasks[: s.strong_tasks]
    out = {}
    for method, cell in cells.items():
        recipe = selections[method].chosen
        learner = learner_for(learners, method, "linf", s.seeds[0])
        res = adapt_and_attack(learner, "linf", subset, recipe, s, checkpoints=(recipe["steps"],), query_attacks=specs,
                               restarts=1)
        table = cell.robust()[0, : s.strong_tasks]
        out[method] = {"table": evaluate.mean_ci95_record(table),
                       "strong": evaluate.mean_ci95_record(res.robust[:, -1]),
                       "per_attack": {a: evaluate.mean_ci95_record(res.per_attack[:, -1, j])
                                      for j, a in enumerate(res.attacks)}}
    return out
