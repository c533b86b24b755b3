"""The run profiles (quick, standard, full) as plain data: every size, epoch count and step count a notebook uses.

One frozen dataclass per chapter; a setting that a later chapter reuses is declared once, in the chapter that
introduces it, and copied into the later one by :data:`SHARED`. :func:`get_profile` picks a profile by name or
from ``$TUTORIAL_PROFILE``. Introduced in notebooks/00_setup_and_data.ipynb.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["PROFILE_ENV", "PROFILES", "SHARED", "Profile", "get_profile", "BaselineSettings", "AttackSettings",
           "AdvTrainingSettings", "MetaSettings", "MetaAdvSettings", "UnseenAttackSettings", "ApplicationSettings"]

PROFILE_ENV = "TUTORIAL_PROFILE"


@dataclass(frozen=True)
class BaselineSettings:
    """Notebook 00: the article's CNN trained on clean images."""

    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclass(frozen=True)
class AttackSettings:
    """Notebooks 01-02: how many test images are attacked and how hard."""

    eval_size: int  # test images used for robustness numbers
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    restarts: int = 5
    sweep_points: int = 7  # eps values in an accuracy-vs-eps sweep
    iterative_size: int = 1000  # test images for notebook 02's attack table and sanity checks
    sweep_size: int = 500  # test images for notebook 02's iterative-attack eps sweeps


@dataclass(frozen=True)
class AdvTrainingSettings:
    """Notebook 03: adversarial training (recipes in tutorial_lib.training.recipe)."""

    epochs: int
    eps: float = 0.3
    batch_size: int = 64
    train_pgd_steps: int = 7
    eval_size: int = 1000
    eval_pgd_steps: int = 40
    eval_restarts: int = 5
    standard_epochs: int = 10  # method "none"
    learning_rate: float = 1e-3  # Adam
    decay_epochs: int = 0  # last epochs at learning_rate / 10 (step schedule)
    ramp_epochs: int = 0  # eps warm-up epochs (linear)
    train_step_scale: float = 2.5  # PGD/TRADES training step = scale * eps / train_pgd_steps
    fast_alpha: float = 1.25  # fast AT step = fast_alpha * eps (Wong et al.)
    trades_beta: float = 6.0
    fast_epochs: int = 10  # FGSM-AT and fast AT (epochs above is for PGD-AT and TRADES)
    eval_strong_steps: int = 100  # the strong evaluation: PGD-eval_strong_steps x eval_restarts
    # the worst case over tl.evaluate.strong_attacks (APGD-CE, APGD-DLR, then PGD x strong_restarts, all
    # eval_strong_steps steps) on strong_eval_size of the eval_size test images, drawn at random; notebooks 05
    # and 06 use the same attacks against adapted weights
    strong_eval_size: int = 200
    strong_restarts: int = 5
    monitor_size: int = 500  # images the catastrophic-overfitting monitor attacks after each epoch
    monitor_pgd_steps: int = 10
    remedy_ramp_epochs: int = 5  # fast AT remedies "eps ramp" and N-FGSM with a ramp
    align_weight: float = 1.0  # fast AT remedy GradAlign: lambda
    nfgsm_noise: float = 2.0  # N-FGSM (de Jorge et al. 2022): noise U[-k eps, k eps] with k = nfgsm_noise
    nfgsm_alpha: float = 1.0  # N-FGSM step = nfgsm_alpha * eps (no projection onto the eps ball)


@dataclass(frozen=True)
class MetaSettings:
    """Notebook 04: few-shot meta-learning (MAML, first-order MAML, Reptile and two baselines)."""

    meta_steps: int
    eval_tasks: int
    n_way: int = 5
    q_queries: int = 15
    meta_batch: int = 4
    shots: tuple[int, ...] = (1, 5)
    rotations: tuple[int, ...] = (0, 90, 180, 270)  # meta-train classes: digits 0-4 under these rotations
    flips: bool = False  # also mirrored copies as classes (x2)
    filters: int = 32  # few_shot_cnn width and depth
    blocks: int = 3
    # MAML and first-order MAML (same settings): inner SGD while meta-training and at test time, each task
    # starting from a zero last layer (zeroing trick; without it FOMAML collapsed to chance in our probes);
    # Adam on the meta-gradient
    inner_lr: float = 0.4
    train_steps: int = 1
    test_steps: int | None = None  # None: test with as many steps as in meta-training (matched)
    meta_lr: float = 3e-3
    zero_head: bool = True
    # learned inner learning rates, starting at *_inner_lr and meta-learned with Adam(meta_lr) beside the
    # initialisation (zero head as MAML): Meta-SGD (one rate per weight) and MAML++'s per-layer per-step rates
    metasgd_inner_lr: float = 0.4
    metasgd_train_steps: int = 1
    lslr_inner_lr: float = 0.3
    lslr_train_steps: int = 2  # 3 or 5 steps gave no more accuracy, at more cost (benchmarks/meta_levers.py)
    # Reptile: inner SGD on each task's support + query images; outer step SGD(reptile_outer_lr)
    reptile_inner_lr: float = 0.1
    reptile_train_steps: int = 5
    reptile_outer_lr: float = 0.5
    # baselines: SGD on the support set from a random init / from a pre-trained backbone with a zero head
    scratch_steps: int = 50
    scratch_lr: float = 0.1
    pretrain_epochs: int = 3
    finetune_steps: int = 50
    finetune_lr: float = 0.02
    curve_steps: int = 20  # meta-learners' accuracy-vs-adaptation-steps curves go up to this many steps


@dataclass(frozen=True, kw_only=True)
class MetaAdvSettings:
    """Notebook 05: meta-adversarial training (notebook 06 reuses its models). ``n_way``, ``q_queries``,
    ``meta_batch`` and ``inner_lr`` are notebook 04's (see :data:`SHARED`)."""

    meta_steps: int
    eval_tasks: int
    # robust few-shot learning (driver tutorial_lib/experiments/robust_few_shot.py): N-way 5-shot tasks of
    # notebook 04's split, second-order MAML with one inner step and a zero head, Adam on the meta-gradient
    n_way: int  # notebook 04's
    k_shot: int = 5
    q_queries: int  # notebook 04's
    meta_batch: int  # notebook 04's
    inner_lr: float  # notebook 04's
    train_steps: int = 1
    meta_lr: float = 1e-3
    eps: float = 0.1
    # meta-steps per method (None: meta_steps); every meta-trained method is also evaluated on eval_tasks tasks
    maml_meta_steps: int | None = None
    adml_meta_steps: int | None = None
    aq_trades_meta_steps: int | None = None
    seed_fgsm_meta_steps: int | None = None
    # training attack: PGD-train_pgd_steps, step train_step_scale * eps / steps, random start; eps ramps up
    # linearly over the first ramp_fraction of meta-training
    train_pgd_steps: int = 3
    train_step_scale: float = 2.5
    ramp_fraction: float = 0.5
    trades_beta: float = 6.0
    # test attack: PGD-eval_pgd_steps, step 2.5 * eps / steps, random start, against the adapted weights
    eval_pgd_steps: int = 20
    eval_restarts: int = 5
    # baselines: adversarial fine-tuning of MAML at test time (PGD on the support set in the inner loop) and
    # "AT transfer" (a PGD-trained classifier of the meta-train classes, its head fine-tuned per task)
    adv_finetune_steps: int = 3  # chosen on meta-TRAIN tasks among 1/3/10 steps at lr 0.4/0.1 (best robust accuracy)
    adv_finetune_lr: float = 0.1
    # AT transfer trains on the meta-train images outside the at_validation share (held out for validation tasks)
    at_validation: float = 0.2
    at_epochs: int | None = None  # None: as many PGD training examples as spend AQ's training compute (tl.compute)
    at_finetune_steps: int = 50  # fine-tuning when no recipe is chosen on validation tasks (rfs.evaluate's default)
    at_finetune_lr: float = 0.1
    # AT transfer's fine-tuning recipe, chosen on at_select_tasks validation tasks (robust accuracy under the test
    # attack, one run, and APGD-DLR: rfs.select_at_finetuning): head only or every layer, from a zero or a prototype
    # head, each rate, each step count
    at_select_tasks: int = 20
    at_select_lrs: tuple[float, ...] = (0.1, 0.4)
    at_select_steps: tuple[int, ...] = (0, 10, 50)  # 0: the prototype head without fine-tuning
    at_select_tolerance: float = 0.01  # the cheapest candidate within this of the best validation score
    at_masking_tolerance: float = 0.02  # eligible if APGD-DLR finds at most this much more than the test attack
    # pure AQ's collapse and the clean-mix fix: short runs
    collapse_steps: int = 300
    collapse_clean_weight: float = 0.5
    # accuracy-against-eps curves and sanity checks: fewer tasks
    curve_eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    curve_tasks: int = 100
    sanity_tasks: int = 50
    # the strong column: notebook 03's strong attacks (tl.evaluate.strong_attacks at eps, eval_strong_steps
    # steps, strong_restarts PGD restarts) against the adapted weights, on the first strong_tasks of eval_tasks
    strong_tasks: int = 100
    strong_steps: int  # notebook 03's eval_strong_steps
    strong_restarts: int  # notebook 03's


@dataclass(frozen=True, kw_only=True)
class UnseenAttackSettings:
    """Notebook 06: adapting to an attack family held out of training, against fair baselines (driver
    tutorial_lib/experiments/unseen_attacks.py). Test tasks are notebook 05's (5-way, digits 5-9); validation
    tasks come from held-out images of the meta-train digits; the models of notebooks 04/05 are reused.
    ``adapt_lr`` and ``linf_eps`` are notebook 05's ``inner_lr`` and ``eps`` (see :data:`SHARED`)."""

    held_out: tuple[str, ...] = ("linf", "rotation")  # families held out one at a time (all six in standard)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of the headline models (attack-adaptive, union AT)
    oracle_seeds: int = 1  # the oracle (not a headline model) is trained with the first oracle_seeds seeds
    eval_tasks: int = 40  # test tasks per cell
    q_queries: int = 5  # queries per class in test and validation tasks
    shots: tuple[int, ...] = (1, 5)  # K of the test tasks (the results file calls them "k_shots")
    validation_fraction: float = 0.2  # of the meta-train digits' images, kept for validation tasks
    validation_tasks: int = 20
    # budgets: plain MAML loses about as much under each as under L-inf PGD at eps 0.1
    # (benchmarks/family_budgets.py --maml; notebook 06 re-measures it)
    linf_eps: float  # notebook 05's eps
    l2_eps: float = 1.41
    l1_eps: float = 8.1
    rotation_max_angle: float = 23.9
    translation_max_shift: float = 1.25
    max_zoom: float = 0.15
    max_shear: float = 0.225
    # test attacks: PGD-k / SLIDE-k from a random start; grids (rotation angles; per axis for translation, zoom/shear)
    eval_pgd_steps: int = 10
    eval_restarts: int = 1
    linf_mim: bool = False  # also MIM-k in the L-inf test family (a query is robust only if both fail)
    rotation_steps: int = 31  # angles
    translation_steps: int = 9  # shifts per axis (81 points)
    zoom_shear_steps: int = 5  # zooms per axis and shears (125 points)
    # training attacks: cheaper versions of the same families
    train_pgd_steps: int = 3
    train_rotation_steps: int = 7
    train_grid_steps: int = 3  # translation and zoom/shear per axis
    # the attack-adaptive learner (and the oracle): from notebook 05's MAML, LSLR rates, attacked support
    meta_steps: int = 50
    train_k_shot: int = 5
    inner_steps: int = 3
    inner_lr: float = 0.3
    clean_weight: float = 0.2
    ramp_fraction: float = 0.5
    meta_lr: float = 1e-3
    # union adversarial training: same gradient evaluations as the attack-adaptive learner
    union_epochs: int = 4
    union_batch_size: int = 64
    union_lr: float = 1e-3
    # adaptation recipes tried on validation tasks (K = select_k)
    adapt_lr: float  # notebook 05's inner_lr (the first step of plain MAML / AQ, as meta-trained)
    later_lrs: tuple[float, ...] = (0.1, 0.4)
    finetune_lrs: tuple[float, ...] = (0.01, 0.1)
    select_steps: tuple[int, ...] = (1, 3, 5, 10)
    select_k: int = 5
    select_tolerance: float = 0.005
    curve_steps: tuple[int, ...] = (0, 1, 3, 5, 10)
    # checks: the trained-on x tested-on matrix, sanity checks of the test attacks, the strong column (L-inf)
    matrix_tasks: int = 20
    sanity_tasks: int = 20
    large_scales: tuple[tuple[str, float], ...] = (("linf", 5.0), ("l2", 5.0), ("l1", 5.0), ("rotation", 4.0),
                                                   ("translation", 6.0), ("zoom_shear", 3.0))
    strong_tasks: int = 20
    strong_steps: int  # notebook 03's eval_strong_steps
    strong_restarts: int  # notebook 03's


@dataclass(frozen=True, kw_only=True)
class ApplicationSettings:
    """Notebook 07: the adversarial sticker and the cross-checks with CleverHans and ART (driver
    tutorial_lib/experiments/applications.py). The models are those of notebooks 03 and 05; the peers' PGD is
    notebook 02's and the strong attack's steps are notebook 03's (see :data:`SHARED`)."""

    patch_sizes: tuple[int, ...] = (6, 10, 14)  # side of the square patch in pixels
    patch_target: int = 8  # the digit targeted patches aim for (also one of the AQ model's digits 5-9)
    patch_steps: int = 120  # Adam steps on the patch, each on patch_batch images at random places
    patch_batch: int = 64
    patch_lr: float = 0.05
    patch_max_angle: float = 0.0  # random turns of the patch while training and measuring (degrees)
    patch_eval_size: int = 1000  # correctly classified test images the patch is measured on
    # CleverHans / ART / tl.attacks on the PGD-AT model of notebook 03, on the same images, at its eps
    peer_size: int = 300
    peer_pgd_steps: int  # notebook 02's pgd_steps
    peer_step_size: float  # notebook 02's pgd_step_size
    strong_steps: int  # notebook 03's eval_strong_steps. Our strong attack: PGD-strong_steps x strong_restarts
    strong_restarts: int = 5
    apgd_steps: int = 50  # ART's APGD with the cross-entropy and the DLR loss
    apgd_restarts: int = 1


@dataclass(frozen=True)
class Profile:
    """All sizes for one run of the series, one section per chapter. Read it, don't build it: use
    :func:`get_profile`."""

    name: str
    data_source: str  # argument for data.load_mnist: "subset" or "auto"
    description: str
    baseline: BaselineSettings
    attacks: AttackSettings
    adv_training: AdvTrainingSettings
    meta: MetaSettings
    meta_adv: MetaAdvSettings
    unseen: UnseenAttackSettings
    applications: ApplicationSettings

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (nested dicts), e.g. for a JSON file."""
        return dataclasses.asdict(self)


#: Settings a later chapter reuses, each declared once: ``(section, field)`` of the later chapter ->
#: ``(section, field)`` it is copied from. A profile that sets one of the left-hand fields itself is an error.
SHARED: dict[tuple[str, str], tuple[str, str]] = {
    ("meta_adv", "n_way"): ("meta", "n_way"),  # notebook 05's tasks and inner loop are notebook 04's
    ("meta_adv", "q_queries"): ("meta", "q_queries"),
    ("meta_adv", "meta_batch"): ("meta", "meta_batch"),
    ("meta_adv", "inner_lr"): ("meta", "inner_lr"),
    ("meta_adv", "strong_steps"): ("adv_training", "eval_strong_steps"),  # notebook 03's strong evaluation
    ("meta_adv", "strong_restarts"): ("adv_training", "strong_restarts"),
    ("unseen", "strong_steps"): ("adv_training", "eval_strong_steps"),
    ("unseen", "strong_restarts"): ("adv_training", "strong_restarts"),
    ("unseen", "adapt_lr"): ("meta_adv", "inner_lr"),  # notebook 06 adapts 05's models at the rate they learned with
    ("unseen", "linf_eps"): ("meta_adv", "eps"),  # ... and tests the L-inf family at 05's radius
    ("applications", "peer_pgd_steps"): ("attacks", "pgd_steps"),  # notebook 07's peer check: notebook 02's PGD
    ("applications", "peer_step_size"): ("attacks", "pgd_step_size"),
    ("applications", "strong_steps"): ("adv_training", "eval_strong_steps"),  # notebook 03's strong attack
}

#: The sections of a profile in chapter order (a section may copy settings only from an earlier one).
SECTIONS: dict[str, type] = {
    "baseline": BaselineSettings,
    "attacks": AttackSettings,
    "adv_training": AdvTrainingSettings,
    "meta": MetaSettings,
    "meta_adv": MetaAdvSettings,
    "unseen": UnseenAttackSettings,
    "applications": ApplicationSettings,
}


def _profile(name: str, data_source: str, description: str, **sections: dict[str, Any]) -> Profile:
    """Build a profile from each section's own values, copying the :data:`SHARED` ones from earlier sections."""
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = dict(sections.pop(section, {}))
        for (target, key), (source, source_key) in SHARED.items():
            if target != section:
                continue
            if key in values:
                raise ValueError(f"profile {name!r}: {section}.{key} is {source}.{source_key} (declared once); "
                                 f"set {source}.{source_key} instead")
            values[key] = getattr(built[source], source_key)
        built[section] = cls(**values)
    if sections:
        raise ValueError(f"profile {name!r}: unknown sections {sorted(sections)}; valid ones are {', '.join(SECTIONS)}")
    return Profile(name=name, data_source=data_source, description=description, **built)


PROFILES: dict[str, Profile] = {
    "quick": _profile(
        "quick",
        data_source="subset",
        description="A first look and the classroom: the bundled 5,000-image subset, every notebook in minutes on 2 CPU cores.",
        baseline=dict(epochs=10),
        attacks=dict(eval_size=1000, iterative_size=200, sweep_size=100),
        adv_training=dict(epochs=15, ramp_epochs=3, decay_epochs=3, strong_restarts=1),
        meta=dict(meta_steps=500, eval_tasks=200),
        meta_adv=dict(meta_steps=600, eval_tasks=100, curve_eps=(0.0, 0.05, 0.1, 0.2, 0.3), curve_tasks=50,
                      sanity_tasks=50, collapse_steps=200, strong_tasks=20),
    ),
    "standard": _profile(
        "standard",
        data_source="auto",
        description="A laptop CPU in well under an hour; full MNIST when it can be found or downloaded.",
        baseline=dict(epochs=5, batch_size=128),
        attacks=dict(eval_size=2000),
        adv_training=dict(epochs=10, batch_size=128, ramp_epochs=2, decay_epochs=2, strong_eval_size=1000),
        meta=dict(meta_steps=5000, eval_tasks=600),
        meta_adv=dict(meta_steps=3000, eval_tasks=600, curve_tasks=200, sanity_tasks=100, collapse_steps=500),
        unseen=dict(held_out=("linf", "l2", "l1", "rotation", "translation", "zoom_shear"), oracle_seeds=3,
                    eval_tasks=200, q_queries=15, validation_tasks=50, eval_pgd_steps=20, linf_mim=True,
                    meta_steps=1500, matrix_tasks=100, sanity_tasks=50, strong_tasks=100),
        applications=dict(patch_sizes=(5, 8, 11, 14), patch_steps=400, peer_size=1000, apgd_steps=100),
    ),
    "full": _profile(
        "full",
        data_source="full",
        description="Paper settings on a GPU (Madry et al.: PGD-40 adversarial training at eps 0.3); not run in CI.",
        baseline=dict(epochs=10, batch_size=128),
        attacks=dict(eval_size=10000, restarts=10, iterative_size=10000, sweep_size=2000),
        adv_training=dict(epochs=80, batch_size=50, train_pgd_steps=40, train_step_scale=4 / 3, learning_rate=1e-4,
                          eval_size=10000, eval_pgd_steps=40, eval_restarts=5, fast_epochs=15, monitor_size=1000,
                          strong_eval_size=10000),
        meta=dict(meta_steps=60000, eval_tasks=1000, meta_batch=32),
        meta_adv=dict(meta_steps=30000, eval_tasks=1000, curve_tasks=500, sanity_tasks=200, collapse_steps=1000),
        unseen=dict(held_out=("linf", "l2", "l1", "rotation", "translation", "zoom_shear"), oracle_seeds=3,
                    eval_tasks=1000, q_queries=15, validation_tasks=200, eval_pgd_steps=40, eval_restarts=5,
                    linf_mim=True, meta_steps=10000, rotation_steps=61, translation_steps=13, zoom_shear_steps=9,
                    matrix_tasks=300, sanity_tasks=200, strong_tasks=300),
        applications=dict(patch_sizes=(5, 8, 11, 14), patch_steps=2000, patch_max_angle=15.0, patch_eval_size=10000,
                          peer_size=10000, strong_restarts=20, apgd_steps=100, apgd_restarts=5),
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name``, or the one named by ``$TUTORIAL_PROFILE`` (default ``quick``)."""
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or "quick"
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from {PROFILE_ENV} or the profile argument); "
            f"valid names are {', '.join(PROFILES)}"
        )
    return PROFILES[key]
