"""Notebook 05's experiments: robust few-shot learning on held-out digits, from the profile to the results file.

Reads ``profile.meta_adv``, meta-trains each method once (cached by its configuration in ``build/cache/`` and
saved as ``build/models/05_<method>.keras``), evaluates clean and robust accuracy of every method on the same
meta-test tasks, and builds the table and the JSON of ``build/results/05_meta_adversarial.json``. The
algorithms are in :mod:`tutorial_lib.meta_adversarial`; this module only wires them to the profile.
Introduced in notebooks/05_meta_adversarial.ipynb.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .. import attacks, meta, models, runtime, training
from .. import evaluate as _evaluate
from .. import meta_adversarial as mad
from ..adaptation import AdaptationResult, RobustEvaluation, adapt_and_evaluate, adapted_sanity_checks, robust_evaluate
from ..evaluate import SanityReport
from ..tasks import FewShotSampler, Tasks, digit_splits
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
#: The methods of the strong column: the headline comparison, AQ against plain MAML.
STRONG = ("maml", "aq")


# --------------------------------------------------------------------------------------------------
# Settings from the profile
# --------------------------------------------------------------------------------------------------
def samplers(data: Any, settings: Any, *, seed: int = 0) -> tuple[FewShotSampler, FewShotSampler]:
    """(meta-train, meta-test) samplers: notebook 04's split (digits 0-4 under 4 rotations vs digits 5-9
    upright, train and test images pooled) with ``settings`` (``profile.meta_adv``) giving N, K and Q."""
    return digit_splits(data, n_way=settings.n_way, k_shot=settings.k_shot, q_queries=settings.q_queries, seed=seed)


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


def at_classifier(data: Any, settings: Any, *, seed: int = 0, verbose: int = 2) -> tuple[keras.Model, dict[str, Any]]:
    """The "AT transfer" baseline's classifier: a few-shot CNN over all meta-train classes (20: digits 0-4 under
    4 rotations), PGD adversarially trained with :func:`tutorial_lib.training.adversarial_fit` at ``eps``
    with the training attack's steps, ``at_epochs`` epochs, cached; saved as ``build/models/05_at_transfer.keras``."""
    s = settings
    attack = train_attack(s)
    fit = dict(method="pgd", eps=s.eps, epochs=s.at_epochs, steps=attack.steps, step_size=attack.step_size,
               learning_rate=1e-3, batch_size=64)

    def train():
        runtime.set_seed(seed)
        sampler, _ = samplers(data, s, seed=seed)
        x, y = sampler.labelled_images()
        model = models.few_shot_cnn(sampler.num_classes)
        _, info = training.adversarial_fit(model, x, y, verbose=verbose, **fit)
        return model, {"history": info["history"]}

    config = {"model": "few_shot_cnn(32 filters, 3 blocks)", "classes": "digits 0-4 x 4 rotations", **fit,
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}
    model, info = models.load_or_train("05_at_transfer", config, train, verbose=verbose > 0)
    models.save_model(model, runtime.build_subdir("models") / "05_at_transfer.keras")
    return model, info


def transfer_init(classifier: keras.Model, n_way: int) -> keras.Model:
    """An ``n_way`` few-shot CNN with ``classifier``'s convolutional layers and a zero head (notebook 04's
    :func:`tutorial_lib.experiments.meta_learning.finetune_init`), ready for head fine-tuning on a support set."""
    return meta_learning.finetune_init(classifier, n_way)


# --------------------------------------------------------------------------------------------------
# Evaluation on held-out digits
# --------------------------------------------------------------------------------------------------
def adaptation(method: str, settings: Any) -> dict[str, Any]:
    """How ``method`` adapts at test time: ``steps``, ``lr`` and the options of robust_evaluate."""
    _check_method(method, COMPARED)
    s = settings
    if method == "at_transfer":
        return dict(steps=s.at_finetune_steps, lr=s.at_finetune_lr, head_only=True)
    if method == "maml_adv_finetune":
        return dict(steps=s.adv_finetune_steps, lr=s.adv_finetune_lr, support="adversarial",
                    support_attack=eval_attack(s))
    return dict(steps=s.train_steps, lr=s.inner_lr)


def evaluate(method: str, model: keras.Model, tasks: Tasks, settings: Any, *,
             restarts: int | None = None) -> RobustEvaluation:
    """Clean and robust query accuracy of ``method`` (``model``: its initialisation) on ``tasks``.

    Adapts on each task's support set as :func:`adaptation` says, then attacks the queries with the test
    attack against the adapted weights; with ``restarts`` (default ``eval_restarts``) also the worst case over
    that many restarts. Returns the :class:`tutorial_lib.adaptation.RobustEvaluation`.
    """
    s = settings
    restarts = s.eval_restarts if restarts is None else restarts
    return robust_evaluate(model, tasks, attack=eval_attack(s), restarts=restarts, **adaptation(method, s))


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
                      methods: tuple[str, ...] = STRONG) -> dict[str, AdaptationResult]:
    """Each of ``methods`` (initialisations in ``inits``) adapted on the first ``strong_tasks`` of ``tasks`` as in
    the results table (:func:`adaptation`), its queries attacked by every attack of :func:`strong_attacks`
    against the ADAPTED weights; a query is robust only if no attack breaks it. Methods whose support set is
    clean only. Returns an :class:`tutorial_lib.adaptation.AdaptationResult` per method (``.at(steps)``,
    ``.per_attack``); the methods share one compiled evaluator when they adapt alike."""
    s = settings
    specs = tuple(strong_attacks(s))
    subset = tasks[: s.strong_tasks]
    arch = inits[methods[0]]  # the architecture; each method brings its own weights
    out = {}
    for m in methods:
        how = adaptation(m, s)
        if "support" in how:
            raise ValueError(f"{m} adapts on an attacked support set; the strong column takes methods with a clean "
                             f"support set, e.g. {STRONG}")
        out[m] = adapt_and_evaluate(arch, subset, params=meta.params_of(inits[m]), checkpoints=(how["steps"],),
                                    lr=how["lr"], head_only=how.get("head_only", False), query_attacks=specs)
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
def method_result(method: str, evaluation, settings: Any, train_seconds: float | None) -> dict[str, Any]:
    """One method's entry of the results file: clean / robust / robust_restarts<R> as {mean, ci95}, the test-time
    adaptation (inner_lr, test_steps) and the training seconds."""
    summary = evaluation.summary()
    how = adaptation(method, settings)
    return {**{k: {"mean": float(v["mean"]), "ci95": float(v["ci95"])} for k, v in summary.items()},
            "inner_lr": float(how["lr"]), "test_steps": int(how["steps"]),
            "train_seconds": None if train_seconds is None else float(train_seconds)}


def results(evaluations: dict[str, Any], train_seconds: dict[str, float | None], settings: Any, *,
            strong: dict[str, AdaptationResult] | None = None) -> dict[str, Any]:
    """The results of notebook 05 in the series' schema (``methods`` keyed by :data:`COMPARED` order). With
    ``strong`` (:func:`strong_evaluation`), each of its methods gains ``worst_case`` (:func:`strong_record`) and
    the file gains ``strong_eval``: the attacks, the number of tasks and the adaptation steps they ran at."""
    s = settings
    n_tasks = {len(ev.clean) for ev in evaluations.values()}
    if len(n_tasks) != 1:
        raise ValueError(f"every method must be evaluated on the same tasks; got task counts {sorted(n_tasks)}")
    out = {"eps": s.eps, "n_way": s.n_way, "k_shot": s.k_shot, "tasks": n_tasks.pop(),
           "eval_attack": describe_eval_attack(s),
           "methods": {m: method_result(m, evaluations[m], s, train_seconds.get(m))
                       for m in COMPARED if m in evaluations}}
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
    """A Markdown table of :func:`results`: accuracies in percent with 95% CIs, adaptation and training time."""
    r = int(result.get("restarts", 5))
    key = next((k for k in next(iter(result["methods"].values())) if k.startswith("robust_restarts")), f"robust_restarts{r}")
    lines = [f"| method | clean | PGD-20 | PGD-20 x {key.removeprefix('robust_restarts')} restarts | adaptation at test time | training (s) |",
             "|---|---|---|---|---|---|"]
    for m, row in result["methods"].items():
        cells = [f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['ci95']:.1f}%" for k in ("clean", "robust", key)]
        sec = row["train_seconds"]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells)
                     + f" | {row['test_steps']} step(s) at lr {row['inner_lr']:g} | {'-' if sec is None else f'{sec:.0f}'} |")
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
