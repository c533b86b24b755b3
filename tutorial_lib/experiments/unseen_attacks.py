"""Notebook 06's experiments: adapting to an attack family never seen in meta-training (leave one family out).

Reads ``profile.unseen`` (and notebook 05's ``profile.meta_adv``), builds the three attack families (L-inf, L2,
spatial), meta-trains one Adversarial-Querying initialisation per held-out family on an
:class:`tutorial_lib.attacks.AttackPool` of the other families (cached, saved as
``build/models/06_meta_adv_without_<family>.keras``), evaluates every method on the same meta-test tasks with
clean + attacked support sets and queries attacked against the ADAPTED weights, and writes
``build/results/06_unseen_attacks.json``. Introduced in notebooks/06_unseen_attacks.ipynb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from .. import adaptation, attacks, evaluate, meta, models, runtime
from ..checks import check_number
from ..meta_adversarial import PoolQuerying
from ..tasks import FewShotSampler, Tasks, digit_splits
from . import robust_few_shot as rfs

#: The attack families, in table order.
FAMILIES = ("linf", "l2", "spatial")
FAMILY_LABELS = {"linf": "L∞", "l2": "L2", "spatial": "spatial"}
#: The methods compared, in table order.
COMPARED = ("maml", "aq_linf", "at_finetune", "meta_adv_pool")
LABELS = {"maml": "plain MAML", "aq_linf": "AQ (L∞ only)", "at_finetune": "AT + head fine-tune",
          "meta_adv_pool": "leave-one-out AQ"}
RESULTS_NAME = "06_unseen_attacks"


# --------------------------------------------------------------------------------------------------
# The attack families
# --------------------------------------------------------------------------------------------------
def _check_family(family: Any) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def eval_attacks(family: str, settings: Any, *, l2_eps: float | None = None, steps: int | None = None,
                 scale: float = 1.0) -> tuple[attacks.Attack, ...]:
    """The test attacks of ``family``: a query counts as robust only if EVERY one of them fails on it.

    L-inf: PGD-k (and MIM-k when ``linf_mim``) at ``linf_eps`` (step 2.5 eps / k, PGD with a random start); L2: PGD-k at ``l2_eps``
    (step 2.5 eps / k, random start); spatial: the worst of the profile's grid of rotations and shifts.
    ``steps`` overrides k; ``scale`` multiplies the budget (eps, or the size of the spatial grid).
    """
    s = settings
    k = s.eval_pgd_steps if steps is None else int(steps)
    family = _check_family(family)
    if family == "linf":
        eps = s.linf_eps * scale
        pgd = attacks.PGD(eps=eps, steps=k, step_size=2.5 * eps / k, random_start=True)
        return (pgd, attacks.MIM(eps=eps, steps=k, step_size=eps / k)) if s.linf_mim else (pgd,)
    if family == "l2":
        if l2_eps is None:
            raise ValueError("the L2 family needs its eps: pass l2_eps (see choose_l2_eps)")
        eps = l2_eps * scale
        return (attacks.PGD(eps=eps, steps=k, step_size=2.5 * eps / k, norm=2, random_start=True),)
    return (spatial_attack(settings, scale=scale),)


def spatial_attack(settings: Any, *, scale: float = 1.0, angle_steps: int | None = None,
                   shift_steps: int | None = None) -> attacks.Spatial:
    """The spatial test attack: ``Spatial`` over ±spatial_max_angle degrees x ±spatial_max_shift pixels (times
    ``scale``) on the profile's grid (or ``angle_steps`` x ``shift_steps`` x ``shift_steps``)."""
    s = settings
    return attacks.Spatial(max_angle=s.spatial_max_angle * scale, max_shift=s.spatial_max_shift * scale,
                           angle_steps=s.spatial_angle_steps if angle_steps is None else angle_steps,
                           shift_steps=s.spatial_shift_steps if shift_steps is None else shift_steps)


def train_pool(settings: Any, l2_eps: float) -> attacks.AttackPool:
    """Every family's training attacks, equal weight per family: FGSM, PGD-3 and MIM-3 at linf_eps (a third each),
    PGD-3 L2 at ``l2_eps``, and the spatial attack on a coarse grid. ``.without(family)`` leaves one out."""
    s = settings
    e = s.linf_eps
    specs = [attacks.FGSM(eps=e), attacks.PGD(eps=e, steps=3, step_size=2.5 * e / 3, random_start=True),
             attacks.MIM(eps=e, steps=3, step_size=e / 3),
             attacks.PGD(eps=l2_eps, steps=3, step_size=2.5 * l2_eps / 3, norm=2, random_start=True),
             spatial_attack(s, angle_steps=s.train_spatial_angle_steps, shift_steps=s.train_spatial_shift_steps)]
    return attacks.AttackPool(specs, weights=[1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])


def describe_families(settings: Any, l2_eps: float) -> dict[str, dict[str, Any]]:
    """The ``families`` entry of the results: each family's test attacks (names) and budget."""
    out = {}
    for family in FAMILIES:
        specs = eval_attacks(family, settings, l2_eps=l2_eps)
        eps: Any = {"linf": settings.linf_eps, "l2": l2_eps}.get(family)
        if family == "spatial":
            eps = {"max_angle": settings.spatial_max_angle, "max_shift": settings.spatial_max_shift}
        out[family] = {"attacks": [a.name for a in specs], "eps": eps}
    return out


# --------------------------------------------------------------------------------------------------
# Meta-training on an attack pool (meta_adversarial.PoolQuerying: each task draws its attack)
# --------------------------------------------------------------------------------------------------
def meta_adv_without(family: str, data: Any, settings: Any, meta_settings: Any, *, l2_eps: float, start: keras.Model,
                     seed: int = 0, verbose: int = 0) -> tuple[keras.Model, dict[str, Any]]:
    """The leave-one-out initialisation for held-out ``family``: :class:`~tutorial_lib.meta_adversarial.PoolQuerying`
    on ``train_pool(...).without(family)``, starting from ``start``'s weights (notebook 05's MAML),
    ``settings.meta_steps`` meta-steps with notebook 05's tasks, inner loop and meta-optimiser. Cached by configuration; saved as
    ``build/models/06_meta_adv_without_<family>.keras`` (safe-mode loadable)."""
    family = _check_family(family)
    s, ms = settings, meta_settings
    pool = train_pool(s, l2_eps).without(family)
    ramp = int(round(s.ramp_fraction * s.meta_steps))
    name = f"06_meta_adv_without_{family}"
    config = {"pool": repr(pool), "meta_steps": s.meta_steps, "ramp_steps": ramp, "ramp": "linear from 1/ramp_steps",
              "clean_weight": s.clean_weight,
              "start": "05_maml", "start_weights": float(sum(float(np.sum(w)) for w in start.get_weights())),
              "n_way": ms.n_way, "k_shot": ms.k_shot, "q_queries": ms.q_queries, "meta_batch": ms.meta_batch,
              "inner_lr": ms.inner_lr, "inner_steps": ms.train_steps, "meta_lr": ms.meta_lr,
              "data": f"{data.source}:{len(data.x_train)}+{len(data.x_test)}", "seed": seed}

    def train():
        runtime.set_seed(seed)
        sampler, _ = rfs.samplers(data, ms, seed=seed)
        model = models.few_shot_cnn(ms.n_way)
        model.set_weights(start.get_weights())
        learner = PoolQuerying(model, pool=pool, inner_lr=ms.inner_lr, inner_steps=ms.train_steps, zero_head=True,
                               ramp_steps=ramp, clean_weight=s.clean_weight,
                               meta_optimizer=keras.optimizers.Adam(ms.meta_lr), seed=seed)
        history = learner.meta_fit(sampler, s.meta_steps, ms.meta_batch, verbose=verbose)
        return model, {"history": {"loss": history.loss, "accuracy": history.accuracy}}

    model, info = models.load_or_train(name, config, train, verbose=verbose > 0)
    models.save_model(model, runtime.build_subdir("models") / f"{name}.keras")
    return model, info


# --------------------------------------------------------------------------------------------------
# Evaluation: clean + attacked support, adaptation checkpoints, queries attacked against adapted weights
# --------------------------------------------------------------------------------------------------
class Adaptation(adaptation.AdaptationResult):
    """Per-task query accuracies after each number of adaptation steps (an :class:`~tutorial_lib.adaptation.AdaptationResult`).

    ``checkpoints`` (C,); ``clean`` (tasks, C); ``robust`` (tasks, C): fraction of queries correct clean AND under
    every attack of the family; ``per_attack`` (tasks, C, A); ``clean_mask`` bool (tasks, C, Q); ``attacked_mask``
    bool (tasks, C, A, Q): correct under attack j. ``steps`` is the old name of ``checkpoints``.
    """

    @property
    def steps(self) -> tuple[int, ...]:
        """The checkpoints (kept for notebook 06's cells; new code reads ``checkpoints``)."""
        return self.checkpoints


def adapt_and_attack(model: keras.Model, tasks: Tasks, params: Sequence[Any], *, query_attacks: Sequence[Any],
                     steps: Sequence[int], lr: float, later_lr: float | None = None, head_only: bool = False,
                     support_attack: Any = None, seed: int = 0, chunk: int = 50) -> Adaptation:
    """Adapt ``params`` on each task's support set (plus its images attacked by ``support_attack``, crafted against
    the weights after one clean step, when given) and attack the queries against the adapted weights.

    ``model`` gives the architecture (any few-shot CNN with parameters shaped like ``params``); ``steps``: the
    adaptation step counts to report (sorted, >= 0; one adaptation run passes through all of them); ``lr``:
    SGD rate of the first step, on every layer or (``head_only``) on the last layer only; ``later_lr`` (default
    ``lr``) the rate of the steps after it. A query is robust if it is classified
    correctly clean and under every attack in ``query_attacks`` (white-box against the adapted weights).
    """
    tasks = adaptation.check_tasks(tasks)
    steps = tuple(int(c) for c in steps)
    if not steps or list(steps) != sorted(set(steps)) or steps[0] < 0:
        raise ValueError(f"steps must be distinct step counts >= 0 in increasing order, got {steps}")
    query_attacks = tuple(query_attacks)
    if not query_attacks or not all(isinstance(a, attacks.Attack) for a in query_attacks):
        raise TypeError(f"query_attacks must be a non-empty list of attack specs, got {query_attacks!r}")
    if support_attack is not None and not isinstance(support_attack, attacks.Attack):
        raise TypeError(f"support_attack must be an attack spec or None, got {type(support_attack).__name__}")
    lr = check_number("lr", lr, low=0.0)
    later_lr = lr if later_lr is None else check_number("later_lr", later_lr, low=0.0)
    params = [tf.convert_to_tensor(p, tf.float32) for p in params]
    # this chapter's seeds: task i of the chunk starting at `start` folds i (int64) into [seed, start]
    fold = tf.random.experimental.stateless_fold_in
    task = np.stack([fold(tf.constant([seed, g - g % chunk], tf.int64), tf.constant(g % chunk, tf.int64)).numpy()
                     for g in range(len(tasks))])
    query_seeds = np.stack([adaptation._fold(task, j + 1) for j in range(len(query_attacks))], 1)[:, :, None]
    res = adaptation.run_with_seeds(model, tasks, params, adaptation.fixed_rates(model, lr, later_lr),
                                    checkpoints=steps, head_only=bool(head_only),
                                    support="clean" if support_attack is None else "clean+attacked",
                                    support_attack=support_attack, query_attacks=query_attacks,
                                    support_seeds=adaptation._fold(task, 0), query_seeds=query_seeds, chunk=chunk,
                                    parallel_tasks=4)
    return Adaptation(res.checkpoints, res.clean_mask, res.attacked_runs, res.attacks)


def eval_sampler(data: Any, settings: Any, meta_settings: Any, k_shot: int) -> FewShotSampler:
    """The meta-test sampler: digits 5-9 (notebook 05's split and N), ``k_shot`` support and ``q_queries`` query
    images per class."""
    _, sampler = digit_splits(data, n_way=meta_settings.n_way, k_shot=k_shot, q_queries=settings.q_queries)
    return sampler


def eval_tasks(data: Any, settings: Any, meta_settings: Any, k_shot: int, *, seed: int = 0) -> Tasks:
    """``settings.eval_tasks`` meta-test tasks from :func:`eval_sampler`; the same seed gives the same tasks for every
    method."""
    return eval_sampler(data, settings, meta_settings, k_shot).sample(settings.eval_tasks, seed=seed + 1000 + k_shot)


def method_adaptation(method: str, settings: Any) -> dict[str, Any]:
    """How ``method`` adapts at test time: every layer, first step at ``adapt_lr`` and later ones at
    ``adapt_later_lr``, or (AT) the head only at ``at_lr``."""
    if method not in COMPARED:
        raise ValueError(f"method must be one of {COMPARED}, got {method!r}")
    if method == "at_finetune":
        return {"lr": settings.at_lr, "later_lr": settings.at_lr, "head_only": True}
    return {"lr": settings.adapt_lr, "later_lr": settings.adapt_later_lr, "head_only": False}


def choose_l2_eps(model: keras.Model, params: Any, tasks: Tasks, settings: Any, *, steps: int, lr: float) -> dict[str, Any]:
    """The L2 eps at which plain MAML (``params``, clean support, ``steps`` steps) loses about as much robust
    accuracy as under the L-inf family at ``linf_eps``: the candidate whose robust accuracy is closest.
    Returns ``{"eps", "linf", "clean", "candidates": {eps: {"mean", "ci95"}}}`` (over tasks)."""
    s = settings
    candidates = tuple(float(e) for e in s.l2_eps_candidates)
    linf = eval_attacks("linf", s)
    l2 = tuple(eval_attacks("l2", s, l2_eps=e)[0] for e in candidates)
    res = adapt_and_attack(model, tasks, params, query_attacks=linf + l2, steps=(steps,), lr=lr)
    linf_robust = res.robust_under(range(len(linf)))[:, 0]
    per_l2 = [res.robust_under([len(linf) + j])[:, 0] for j in range(len(candidates))]
    best = int(np.argmin([abs(r.mean() - linf_robust.mean()) for r in per_l2]))
    return {"eps": candidates[best], "linf": evaluate.mean_ci95_record(linf_robust),
            "clean": evaluate.mean_ci95_record(res.clean[:, 0]),
            "candidates": {f"{e:g}": evaluate.mean_ci95_record(r) for e, r in zip(candidates, per_l2)}}


# --------------------------------------------------------------------------------------------------
# The comparison: every method on every held-out family, K shots, adaptation steps
# --------------------------------------------------------------------------------------------------
def baselines(data: Any, profile: Any, *, verbose: int = 0) -> dict[str, keras.Model]:
    """Notebook 05's models: plain MAML, AQ at L-inf eps 0.1, and the PGD-trained classifier of the meta-train
    classes with a zero head (to fine-tune). Loaded (safe mode) from ``build/models/05_<name>.keras`` when notebook
    05 has run, else trained by notebook 05's driver (cached by configuration)."""
    ms = profile.meta_adv
    folder = runtime.build_subdir("models")

    def load(name: str, train) -> keras.Model:
        path = folder / f"05_{name}.keras"
        return models.load_model(path) if path.exists() else train()[0]

    maml_model = load("maml", lambda: rfs.meta_train("maml", data, ms, verbose=verbose))
    aq_model = load("aq", lambda: rfs.meta_train("aq", data, ms, verbose=verbose))
    classifier = load("at_transfer", lambda: rfs.at_classifier(data, ms, verbose=verbose))
    return {"maml": maml_model, "aq_linf": aq_model, "at_finetune": rfs.transfer_init(classifier, ms.n_way)}


def evaluate_method(method: str, init: keras.Model, family: str, tasks: Tasks, settings: Any, *, l2_eps: float,
                    steps: Sequence[int] | None = None, seed: int = 0) -> Adaptation:
    """``method`` (initialisation ``init``) on ``tasks`` against ``family``: support = clean + attacked by the
    family's first test attack (against the weights after one clean step), adaptation as
    :func:`method_adaptation`, queries attacked by every test attack of the family against the adapted weights."""
    family_attacks = eval_attacks(family, settings, l2_eps=l2_eps)
    steps = settings.adapt_steps if steps is None else steps
    return adapt_and_attack(init, tasks, meta.params_of(init), query_attacks=family_attacks, steps=steps,
                            support_attack=family_attacks[0], seed=seed, **method_adaptation(method, settings))


def matrix_rows() -> tuple[str, ...]:
    """Rows of the trained-on x tested-on matrix: the baselines, then one leave-one-out model per family."""
    return ("maml", "aq_linf", "at_finetune") + tuple(f"without_{f}" for f in FAMILIES)


def matrix_label(row: str) -> str:
    """The table label of a row of :func:`matrix_rows`."""
    if row.startswith("without_"):
        return f"AQ pool without {FAMILY_LABELS[row.removeprefix('without_')]}"
    return LABELS[row]


def attack_matrix(held_out: dict[str, dict[str, dict[int, Adaptation]]], loo: dict[str, keras.Model],
                  tasks: Tasks, settings: Any, *, l2_eps: float) -> dict[str, dict[str, dict[str, float]]]:
    """Robust accuracy of every model of :func:`matrix_rows` on every family at ``matrix_k`` shots after
    ``matrix_steps`` steps (attacked support). Cells already in ``held_out`` are reused (same tasks, same seeds);
    the leave-one-out models are evaluated on the families they were trained on. ``tasks``: the K = matrix_k
    tasks; ``loo[family]``: the model trained without ``family``."""
    k, c = settings.matrix_k, settings.matrix_steps
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in matrix_rows():
        out[row] = {}
        for family in FAMILIES:
            if row.startswith("without_"):
                held = row.removeprefix("without_")
                if held == family:
                    ev = held_out[family]["meta_adv_pool"][k]
                else:
                    ev = evaluate_method("meta_adv_pool", loo[held], family, tasks, settings, l2_eps=l2_eps, steps=(c,))
            else:
                ev = held_out[family][row][k]
            out[row][family] = evaluate.mean_ci95_record(ev.robust[:, ev.steps.index(c)])
    return out


# --------------------------------------------------------------------------------------------------
# The strong column: notebook 03's strong attacks on the gradient families
# --------------------------------------------------------------------------------------------------
#: The families the strong column covers (the strong attacks are L-inf / L2 gradient attacks) and its methods.
STRONG_FAMILIES = ("linf", "l2")
STRONG = ("aq_linf", "meta_adv_pool")  # the headline: leave-one-out AQ against AQ trained on L-inf


def strong_attacks(family: str, settings: Any, *, l2_eps: float) -> list[attacks.Attack]:
    """:func:`tutorial_lib.evaluate.strong_attacks` (APGD-CE, APGD-DLR, PGD x ``strong_restarts``, ``strong_steps``
    steps each) in ``family``'s norm at its radius: ``linf_eps`` for "linf", ``l2_eps`` for "l2"."""
    if family not in STRONG_FAMILIES:
        raise ValueError(f"the strong attacks cover the gradient families {STRONG_FAMILIES}, got {family!r}")
    s = settings
    eps, norm = (s.linf_eps, "inf") if family == "linf" else (float(l2_eps), 2)
    return evaluate.strong_attacks(eps, norm=norm, steps=s.strong_steps, restarts=s.strong_restarts)


def strong_column(inits: dict[str, dict[str, keras.Model]], tasks: Tasks, settings: Any, *, l2_eps: float,
                  seed: int = 0) -> dict[str, dict[str, Adaptation]]:
    """``inits[family][method]`` adapted exactly as in the held-out table (support = clean + attacked by the
    family's first test attack, :func:`method_adaptation`, the same seeds) on the first ``strong_tasks`` of
    ``tasks`` (K = ``matrix_k`` shots) for the last of ``adapt_steps`` steps; the queries are then attacked by
    every attack of :func:`strong_attacks` against the adapted weights (robust only if none breaks it).
    Returns ``{family: {method: Adaptation}}`` for :data:`STRONG_FAMILIES`."""
    s = settings
    subset = tasks[: s.strong_tasks]
    out: dict[str, dict[str, Adaptation]] = {}
    for family in STRONG_FAMILIES:
        support_attack = eval_attacks(family, s, l2_eps=l2_eps)[0]
        specs = strong_attacks(family, s, l2_eps=l2_eps)
        arch = next(iter(inits[family].values()))  # one architecture: methods that adapt alike share a graph
        out[family] = {m: adapt_and_attack(arch, subset, meta.params_of(init), query_attacks=specs,
                                           steps=(s.adapt_steps[-1],), support_attack=support_attack, seed=seed,
                                           **method_adaptation(m, s))
                       for m, init in inits[family].items()}
    return out


def strong_record(strong: dict[str, dict[str, Adaptation]], settings: Any) -> dict[str, Any]:
    """The ``worst_case`` field of the results file: ``{"tasks", "k_shot", "steps", "families": {family:
    {"attacks": [names], "methods": {method: {"mean", "ci95"}}}}}`` (robust accuracy under every strong attack)."""
    first = next(iter(next(iter(strong.values())).values()))
    return {"tasks": int(first.clean.shape[0]), "k_shot": int(settings.matrix_k), "steps": int(first.steps[-1]),
            "families": {f: {"attacks": list(next(iter(per.values())).attacks),
                             "methods": {m: evaluate.mean_ci95_record(ev.robust[:, -1]) for m, ev in per.items()}}
                         for f, per in strong.items()}}


def strong_table(strong: dict[str, dict[str, Adaptation]], held_out: dict[str, dict[str, dict[int, Adaptation]]],
                 settings: Any) -> str:
    """Markdown: per family and method, the held-out table's robust accuracy on the same tasks (same K, steps and
    adapted weights) beside each strong attack and the worst case over them (means over tasks, 95 % CIs)."""
    s = settings
    k, last = s.matrix_k, s.adapt_steps[-1]
    lines = [f"| held-out family | method | table's attacks | APGD-CE | APGD-DLR | PGD | worst case (strong) |",
             "|---|---|---|---|---|---|---|"]
    for family, per in strong.items():
        for m, ev in per.items():
            n = ev.clean.shape[0]
            table = held_out[family][m][k]
            cells = [table.robust[:n, table.steps.index(last)]] + [ev.per_attack[:, -1, j] for j in range(3)]
            text = [_pct(evaluate.mean_ci95_record(np.asarray(c, np.float64))) for c in cells]
            worst = _pct(evaluate.mean_ci95_record(ev.robust[:, -1]))
            lines.append(f"| {FAMILY_LABELS[family]} | {LABELS[m]} | " + " | ".join(text) + f" | **{worst}** |")
    return "\n".join(lines)


def results(held_out: dict[str, dict[str, dict[int, Adaptation]]], matrix: dict[str, dict[str, dict[str, float]]],
            settings: Any, *, l2_eps: float, l2_choice: dict[str, Any] | None = None,
            strong: dict[str, dict[str, Adaptation]] | None = None) -> dict[str, Any]:
    """The results of notebook 06: ``held_out[family][method][k]`` are :class:`Adaptation` s on the same tasks;
    with ``strong`` (:func:`strong_column`) also ``worst_case`` (:func:`strong_record`).

    Schema: ``{"families": {f: {"attacks", "eps"}}, "k_shots", "steps", "held_out": {f: {method: {"<k>shot":
    {"clean": {"mean", "ci95"}, "robust": {"<steps>": {"mean", "ci95"}}}}}}}`` (clean: after the most steps),
    plus ``matrix`` (row -> family -> {"mean", "ci95"}), ``tasks`` and the L2 eps choice."""
    steps = tuple(settings.adapt_steps)
    out: dict[str, Any] = {"families": describe_families(settings, l2_eps), "k_shots": list(settings.k_shots),
                           "steps": list(steps), "held_out": {}}
    n_tasks = set()
    for family, per_method in held_out.items():
        out["held_out"][family] = {}
        for method in COMPARED:
            if method not in per_method:
                continue
            entry = {}
            for k, ev in per_method[method].items():
                n_tasks.add(len(ev.clean))
                entry[f"{k}shot"] = {"clean": evaluate.mean_ci95_record(ev.clean[:, -1]),
                                     "robust": {str(c): evaluate.mean_ci95_record(ev.robust[:, i])
                                                for i, c in enumerate(ev.steps)}}
            out["held_out"][family][method] = entry
    if len(n_tasks) > 1:
        raise ValueError(f"every cell must be evaluated on the same number of tasks, got {sorted(n_tasks)}")
    out["tasks"] = n_tasks.pop() if n_tasks else 0
    out["matrix"] = {"k_shot": settings.matrix_k, "steps": settings.matrix_steps, "rows": matrix}
    if l2_choice is not None:
        out["l2_eps_choice"] = l2_choice
    if strong:
        out["worst_case"] = strong_record(strong, settings)
    return out


def save(result: dict[str, Any]) -> Path:
    """Write ``result`` to ``build/results/06_unseen_attacks.json``; returns the path."""
    return runtime.save_results(RESULTS_NAME, result)


def _pct(cell: dict[str, float]) -> str:
    return f"{100 * cell['mean']:.1f} ± {100 * cell['ci95']:.1f}"


def held_out_table(result: dict[str, Any], k: int | None = None) -> str:
    """The held-out-family table in Markdown: robust accuracy (%, 95% CI) after each number of adaptation steps
    and clean accuracy (after the most steps), one row per family and method; ``k`` (default all) picks K."""
    ks = result["k_shots"] if k is None else [k]
    head = "| held-out family | method | K | " + " | ".join(f"robust, {c} steps" for c in result["steps"]) + " | clean |"
    lines = [head, "|" + "---|" * (4 + len(result["steps"]))]
    for family, per_method in result["held_out"].items():
        for method, entry in per_method.items():
            for kk in ks:
                cell = entry[f"{kk}shot"]
                lines.append(f"| {FAMILY_LABELS[family]} | {LABELS[method]} | {kk} | "
                             + " | ".join(_pct(cell["robust"][str(c)]) for c in result["steps"])
                             + f" | {_pct(cell['clean'])} |")
    return "\n".join(lines)


def paired(held_out: Any, family: str, a: str, b: str, k: int, steps: int) -> dict[str, float]:
    """Mean and 95% CI of the per-task robust-accuracy difference ``a - b`` (same tasks, paired)."""
    ea, eb = held_out[family][a][k], held_out[family][b][k]
    i = ea.steps.index(steps)
    return evaluate.mean_ci95_record(ea.robust[:, i] - eb.robust[:, i])


def verdict(diff: dict[str, float]) -> str:
    """"ahead", "behind" or "tied" from a paired difference's 95% interval."""
    lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
    return "ahead" if lo > 0 else ("behind" if hi < 0 else "tied")


def ordering(result: dict[str, Any], family: str, k: int, steps: int) -> list[tuple[str, float, float]]:
    """Methods sorted by robust accuracy (best first) on ``family`` at ``k`` shots after ``steps`` steps:
    ``[(method, mean, ci95), ...]``."""
    rows = [(m, e[f"{k}shot"]["robust"][str(steps)]["mean"], e[f"{k}shot"]["robust"][str(steps)]["ci95"])
            for m, e in result["held_out"][family].items()]
    return sorted(rows, key=lambda r: -r[1])


# --------------------------------------------------------------------------------------------------
# Sanity checks of the test attacks against adapted models
# --------------------------------------------------------------------------------------------------
def sanity_checks(method: str, init: keras.Model, family: str, tasks: Tasks, settings: Any, *, l2_eps: float,
                  steps: int, change_limit: float = 0.05, large_limit: float = 0.1) -> dict[str, Any]:
    """Does the family's test attack measure what it claims, on ``init`` adapted as ``method`` (attacked support)?

    - gradient families: twice the attack steps and 3 random restarts (broken if any breaks it) lower robust
      accuracy by at most ``change_limit``; a 5x budget (L-inf eps 0.5, L2 5x eps) leaves at most ``large_limit``;
    - spatial: a grid twice as fine (2 * angle_steps - 1 angles, every whole-pixel shift) lowers it by at most
      ``change_limit``; a 6x budget (e.g. ±90°, ±12 px) leaves at most ``large_limit``.
    Returns the accuracies and a pass flag per check.
    """
    s = settings
    base_attacks = eval_attacks(family, s, l2_eps=l2_eps)
    how = method_adaptation(method, s)
    params = meta.params_of(init)

    def robust(query_attacks) -> float:
        ev = adapt_and_attack(init, tasks, params, query_attacks=query_attacks, steps=(steps,),
                              support_attack=base_attacks[0], **how)
        return float(ev.robust[:, 0].mean())

    out: dict[str, Any] = {"method": method, "family": family, "steps": steps, "base": robust(base_attacks)}
    if family == "spatial":
        finer = spatial_attack(s, angle_steps=2 * s.spatial_angle_steps - 1,
                               shift_steps=2 * int(round(s.spatial_max_shift)) + 1)
        out["stronger"] = robust((finer,))
        out["stronger_attack"] = finer.name
        out["large"] = robust((spatial_attack(s, scale=6.0),))
    else:
        stronger = eval_attacks(family, s, l2_eps=l2_eps, steps=2 * s.eval_pgd_steps)
        stronger = (stronger[0],) * 3 + stronger[1:]  # the PGD attack with 3 random starts, MIM (no randomness) once
        out["stronger"] = robust(stronger)
        out["stronger_attack"] = f"{stronger[0].name}, 3 restarts"
        out["large"] = robust(eval_attacks(family, s, l2_eps=l2_eps, scale=5.0))
    out["stronger_changes_little"] = bool(out["base"] - out["stronger"] <= change_limit)
    out["large_budget_breaks"] = bool(out["large"] <= large_limit)
    return out
