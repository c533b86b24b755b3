"""Training compute counted in gradient evaluations, the same way for every method, so baselines get equal compute.

The unit: one **gradient evaluation** is one image through one forward and one backward pass of the network. A
forward pass alone (a geometric attack trying one grid point, or choosing the worst of several attacked copies)
counts :data:`FORWARD_COST` of one: a backward pass costs about twice a forward pass (Griewank & Walther, 2008,
the "cheap gradient principle"); on this project's CPUs a forward pass of the few-shot CNN measured 0.4 of a
gradient evaluation (benchmarks/families.py). A second-order meta-gradient differentiates each inner step once
more (a Hessian-vector product per image, :data:`HVP_COST` gradient evaluations; Pearlmutter, 1994).

The counts are computed from the method's settings (expected values over an attack pool's draws), not timed:
seconds depend on the machine and on what else runs, counts do not. Results files record both.
"""

from __future__ import annotations

from typing import Any

from . import attacks as _attacks
from .checks import check_count, check_positive_int

__all__ = ["FORWARD_COST", "HVP_COST", "attack_cost", "pool_cost", "meta_step_cost", "union_training_cost",
           "adversarial_training_cost"]

#: A forward pass alone, in gradient evaluations (forward + backward ~ 3 forward passes).
FORWARD_COST = 1.0 / 3.0
#: Differentiating one inner step again (second-order MAML), per image, in gradient evaluations.
HVP_COST = 2.0


def attack_cost(attack: Any) -> float:
    """Gradient evaluations per image for one run of ``attack`` (a spec of :mod:`tutorial_lib.attacks`).

    Gradient attacks (FGSM, PGD, BIM, MIM, APGD, SparseL1Descent): one per step (FGSM: 1). Geometric attacks
    (Spatial, Rotation, Translation, ZoomShear): one forward pass per grid point. An
    :class:`~tutorial_lib.attacks.AttackPool` is its expected cost per draw (:func:`pool_cost`).
    """
    if isinstance(attack, _attacks.AttackPool):
        return pool_cost(attack)
    if not isinstance(attack, _attacks.Attack):
        raise TypeError(f"attack must be an attack spec or an AttackPool, got {type(attack).__name__}")
    points = getattr(attack, "grid_points", None)
    if points is not None:
        return float(points) * FORWARD_COST
    return float(getattr(attack, "steps", 1))


def pool_cost(pool: _attacks.AttackPool) -> float:
    """Expected gradient evaluations per image when each task draws one spec of ``pool`` (its probabilities)."""
    if not isinstance(pool, _attacks.AttackPool):
        raise TypeError(f"pool must be an AttackPool, got {type(pool).__name__}")
    return float(sum(p * attack_cost(a) for p, a in zip(pool.probabilities, pool)))


def meta_step_cost(learner: Any, *, n_support: int, n_query: int, meta_batch: int) -> float:
    """Gradient evaluations of one meta-step of ``learner`` on ``meta_batch`` tasks of ``n_support`` support and
    ``n_query`` query images.

    Per task, by the learner's ``method``:

    - MAML family (MAML, FOMAML, Meta-SGD, LSLR): per inner step one gradient per support image plus, second
      order, :data:`HVP_COST` more when the outer gradient flows back through it; one gradient per query;
    - AQ (``aq``, ``aq_pool``): the same, plus the query attack and, with a clean share, one gradient per clean
      query; AQ + TRADES (``aq_trades``) always takes the clean queries too;
    - ADML (``adml``): the support attack crafted against one clean step (a gradient per support image for that
      step), two inner loops (clean and attacked support), the query attack, and two outer losses (attacked
      queries on the clean adaptation, clean queries on the attacked one);
    - MAML on attacked support and queries (``seed_fgsm``, the article's idea done right): the support attack
      against one clean step, one inner loop on the attacked support, the query attack, one outer loss;
    - attack-adaptive MAML (``attack_adaptive``): per inner step the support attack (re-crafted against the
      current weights) and a gradient (+ HVP) on the clean and the attacked support images; the query attack;
      the outer loss, plus the clean queries with a clean share.

    An attack pool counts its expected cost per draw (:func:`pool_cost`).
    """
    n_s = check_positive_int("n_support", n_support)
    n_q = check_positive_int("n_query", n_query)
    meta_batch = check_positive_int("meta_batch", meta_batch)
    method = str(getattr(learner, "method", "")).removesuffix("_fo")
    if method in ("reptile", ""):
        raise ValueError(f"no gradient-evaluation count for learner {type(learner).__name__} (method {method!r}); "
                         "meta_step_cost knows the MAML family and the learners of tutorial_lib.meta_adversarial")
    steps = int(learner.inner_steps)
    per_step = 1.0 + (0.0 if getattr(learner, "first_order", False) else HVP_COST)
    pool = getattr(learner, "pool", None)
    spec = pool if pool is not None else getattr(learner, "attack", None)
    attack = attack_cost(spec) if spec is not None else 0.0
    clean_share = float(getattr(learner, "clean_weight", 0.0) or 0.0) > 0
    if spec is None:  # the MAML family
        task = steps * n_s * per_step + n_q
    elif method == "adml":
        task = n_s * (1.0 + attack) + 2 * steps * n_s * per_step + n_q * attack + 2 * n_q
    elif method == "seed_fgsm":
        task = n_s * (1.0 + attack) + steps * n_s * per_step + n_q * attack + n_q
    elif method.startswith("attack_adaptive"):
        task = steps * (n_s * attack + 2 * n_s * per_step) + n_q * attack + n_q + (n_q if clean_share else 0.0)
    else:  # Adversarial Querying
        clean = method == "aq_trades" or clean_share
        task = steps * n_s * per_step + n_q * attack + n_q + (n_q if clean else 0.0)
    return meta_batch * task


def union_training_cost(pool: _attacks.AttackPool) -> float:
    """Gradient evaluations per training example of multi-perturbation adversarial training (the "max" strategy,
    ``training.AdversarialTrainer(method="union")``): every spec of ``pool`` attacks the example, a forward pass
    per attacked copy picks the one with the highest loss, and one gradient trains on it."""
    if not isinstance(pool, _attacks.AttackPool):
        raise TypeError(f"pool must be an AttackPool, got {type(pool).__name__}")
    return float(sum(attack_cost(a) for a in pool)) + len(pool) * FORWARD_COST + 1.0


def adversarial_training_cost(attack: Any, examples: int) -> float:
    """Gradient evaluations of adversarial training on ``examples`` examples (epochs x training-set size): per
    example, the training attack (a spec: :func:`attack_cost`; an AttackPool: the "union" method's
    :func:`union_training_cost`; None: clean training) and one gradient of the loss."""
    examples = check_count("examples", examples)
    if attack is None:
        return float(examples)
    if isinstance(attack, _attacks.AttackPool):
        return examples * union_training_cost(attack)
    return examples * (attack_cost(attack) + 1.0)
