"""Run-time setup shared by every notebook: seeds and determinism, run profiles, devices, build paths.

Every size, epoch count and step count a notebook uses comes from a :class:`Profile` here, so one
environment variable (``TUTORIAL_PROFILE=quick|standard|full``) scales the whole series.
Introduced in notebooks/00_setup_and_data.ipynb.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_ENV = "TUTORIAL_PROFILE"
BUILD_ENV = "TUTORIAL_BUILD_DIR"


# --------------------------------------------------------------------------------------------------
# Profiles. One frozen dataclass per chapter; each notebook reads only its own section.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineSettings:
    """Notebook 00: the seed's CNN trained on clean images."""

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
    # Reptile: inner SGD on each task's support + query images; SGD(eps) outer step
    reptile_inner_lr: float = 0.1
    reptile_train_steps: int = 5
    reptile_eps: float = 0.5
    # baselines: SGD on the support set from a random init / from a pre-trained backbone with a zero head
    scratch_steps: int = 50
    scratch_lr: float = 0.1
    pretrain_epochs: int = 3
    finetune_steps: int = 50
    finetune_lr: float = 0.02
    curve_steps: int = 20  # meta-learners' accuracy-vs-adaptation-steps curves go up to this many steps


@dataclass(frozen=True)
class MetaAdvSettings:
    """Notebooks 05-06: meta-adversarial training."""

    meta_steps: int
    eval_tasks: int
    # notebook 05 (robust few-shot learning; driver tutorial_lib/experiments/robust_few_shot.py): 5-way 5-shot
    # tasks of notebook 04's split, second-order MAML with one inner step and a zero head, Adam on the meta-gradient
    n_way: int = 5
    k_shot: int = 5
    q_queries: int = 15
    meta_batch: int = 4
    inner_lr: float = 0.4
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
    at_epochs: int = 3
    at_finetune_steps: int = 50
    at_finetune_lr: float = 0.1
    # pure AQ's collapse and the clean-mix fix: short runs
    collapse_steps: int = 300
    collapse_clean_weight: float = 0.5
    # accuracy-against-eps curves and sanity checks: fewer tasks
    curve_eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    curve_tasks: int = 100
    sanity_tasks: int = 50


@dataclass(frozen=True)
class UnseenAttackSettings:
    """Notebook 06: adapting to an attack family left out of meta-training (driver
    tutorial_lib/experiments/unseen_attacks.py). Meta-test tasks are notebook 05's (5-way, digits 5-9); the
    models of notebook 05 are reused and one leave-one-out initialisation per family is meta-trained."""

    eval_tasks: int = 100  # meta-test tasks per cell (mean and 95% CI over tasks)
    q_queries: int = 5  # queries per class in the meta-test tasks
    k_shots: tuple[int, ...] = (1, 5)
    adapt_steps: tuple[int, ...] = (0, 1, 5, 10)  # robust accuracy after this many adaptation steps
    adapt_lr: float = 0.4  # meta-learners adapt every layer: first step at adapt_lr (as meta-trained) ...
    adapt_later_lr: float = 0.1  # ... later steps at this rate (0.4 throughout overshoots after one step)
    at_lr: float = 0.4  # the adversarially trained classifier adapts its head only, at this rate
    # the families: L-inf (eps linf_eps), L2 (eps chosen among l2_eps_candidates), spatial (grid below)
    linf_eps: float = 0.1
    l2_eps_candidates: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)
    eval_pgd_steps: int = 10  # gradient attacks at test time: PGD-k (+ MIM-k) (L-inf), PGD-k (L2), random start
    linf_mim: bool = False  # also MIM-k in the L-inf test family (a query is robust only if both fail)
    spatial_max_angle: float = 15.0
    spatial_max_shift: float = 2.0
    spatial_angle_steps: int = 5
    spatial_shift_steps: int = 3
    # leave-one-out meta-training: AQ on attacks drawn from the other families (PGD-3 / MIM-3 / FGSM,
    # a coarse spatial grid), eps ramp over ramp_fraction, clean_weight of clean-query loss, warm start from
    # notebook 05's MAML
    meta_steps: int = 300
    ramp_fraction: float = 0.5
    clean_weight: float = 0.2
    train_spatial_angle_steps: int = 3
    train_spatial_shift_steps: int = 3
    # the trained-on x tested-on matrix: K shots and adaptation steps of its cells; sanity checks: fewer tasks
    matrix_k: int = 5
    matrix_steps: int = 5
    sanity_tasks: int = 40
    l2_probe_tasks: int = 50


@dataclass(frozen=True)
class ApplicationSettings:
    """Notebook 07: the adversarial sticker and the cross-checks with CleverHans and ART (driver
    tutorial_lib/experiments/applications.py). The models are those of notebooks 03 and 05."""

    patch_sizes: tuple[int, ...] = (6, 10, 14)  # side of the square patch in pixels
    patch_target: int = 8  # the digit targeted patches aim for (also one of the AQ model's digits 5-9)
    patch_steps: int = 120  # Adam steps on the patch, each on patch_batch images at random places
    patch_batch: int = 64
    patch_lr: float = 0.05
    patch_max_angle: float = 0.0  # random turns of the patch while training and measuring (degrees)
    patch_eval_size: int = 1000  # correctly classified test images the patch is measured on
    # CleverHans / ART / tl.attacks on the PGD-AT model of notebook 03, on the same images, at its eps
    peer_size: int = 300
    peer_pgd_steps: int = 40
    peer_step_size: float = 0.01
    strong_steps: int = 100  # our strong attack: PGD-strong_steps x strong_restarts
    strong_restarts: int = 5
    apgd_steps: int = 50  # ART's APGD with the cross-entropy and the DLR loss
    apgd_restarts: int = 1


@dataclass(frozen=True)
class Profile:
    """All sizes for one run of the series. Read it, don't build it: use :func:`get_profile`."""

    name: str
    data_source: str  # argument for data.load_mnist: "subset" or "auto"
    description: str
    baseline: BaselineSettings
    attacks: AttackSettings
    adv_training: AdvTrainingSettings
    meta: MetaSettings
    meta_adv: MetaAdvSettings
    unseen: UnseenAttackSettings = field(default_factory=UnseenAttackSettings)
    applications: ApplicationSettings = field(default_factory=ApplicationSettings)
    expected_minutes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        data_source="subset",
        description="CI and a first look: the bundled 5,000-image subset, every notebook in minutes on 2 CPU cores.",
        baseline=BaselineSettings(epochs=10),
        attacks=AttackSettings(eval_size=1000, iterative_size=200, sweep_size=100),
        adv_training=AdvTrainingSettings(epochs=15, ramp_epochs=3, decay_epochs=3),
        meta=MetaSettings(meta_steps=500, eval_tasks=200),
        meta_adv=MetaAdvSettings(meta_steps=600, eval_tasks=100, curve_eps=(0.0, 0.05, 0.1, 0.2, 0.3), curve_tasks=50,
                                 sanity_tasks=50, collapse_steps=200, at_epochs=2),
    ),
    "standard": Profile(
        name="standard",
        data_source="auto",
        description="A laptop CPU in well under an hour; full MNIST when it can be found or downloaded.",
        baseline=BaselineSettings(epochs=5, batch_size=128),
        attacks=AttackSettings(eval_size=2000),
        adv_training=AdvTrainingSettings(epochs=10, batch_size=128, ramp_epochs=2, decay_epochs=2),
        meta=MetaSettings(meta_steps=5000, eval_tasks=600),
        meta_adv=MetaAdvSettings(meta_steps=3000, eval_tasks=600, curve_tasks=200, sanity_tasks=100, collapse_steps=500,
                                 at_epochs=5),
        unseen=UnseenAttackSettings(eval_tasks=300, q_queries=15, eval_pgd_steps=20, linf_mim=True, meta_steps=1500,
                                    spatial_angle_steps=7, spatial_shift_steps=5, sanity_tasks=100),
        applications=ApplicationSettings(patch_sizes=(5, 8, 11, 14), patch_steps=400, peer_size=1000,
                                         apgd_steps=100),
    ),
    "full": Profile(
        name="full",
        data_source="full",
        description="Paper settings on a GPU (Madry et al.: PGD-40 adversarial training at eps 0.3); not run in CI.",
        baseline=BaselineSettings(epochs=10, batch_size=128),
        attacks=AttackSettings(eval_size=10000, restarts=10, iterative_size=10000, sweep_size=2000),
        adv_training=AdvTrainingSettings(epochs=80, batch_size=50, train_pgd_steps=40, train_step_scale=4 / 3,
                                         learning_rate=1e-4, eval_size=10000, eval_pgd_steps=40,
                                         eval_restarts=5, fast_epochs=15, monitor_size=1000),
        meta=MetaSettings(meta_steps=60000, eval_tasks=1000, meta_batch=32),
        meta_adv=MetaAdvSettings(meta_steps=30000, eval_tasks=1000, meta_batch=32, curve_tasks=500, sanity_tasks=200,
                                 collapse_steps=1000, at_epochs=20),
        unseen=UnseenAttackSettings(eval_tasks=1000, q_queries=15, eval_pgd_steps=40, linf_mim=True, meta_steps=10000,
                                    spatial_angle_steps=31, spatial_shift_steps=5, sanity_tasks=200,
                                    l2_probe_tasks=200),
        applications=ApplicationSettings(patch_sizes=(5, 8, 11, 14), patch_steps=2000, patch_max_angle=15.0,
                                         patch_eval_size=10000, peer_size=10000, strong_restarts=20,
                                         apgd_steps=100, apgd_restarts=5),
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


# --------------------------------------------------------------------------------------------------
# Seeds, determinism, devices
# --------------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow/Keras global generators."""
    import keras

    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(int(seed))
    np.random.seed(int(seed))
    keras.utils.set_random_seed(int(seed))  # also seeds tf.random and Python's random


def setup(seed: int = 0, profile: str | None = None, *, deterministic: bool = True, verbose: bool = True) -> Profile:
    """Seed everything, switch on deterministic TF ops and report the profile and devices.

    Call this once at the top of a notebook; it returns the active :class:`Profile`.
    """
    import tensorflow as tf

    prof = get_profile(profile)
    set_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if verbose:
        print(environment_report(prof, seed=seed))
    return prof


def environment_report(prof: Profile | None = None, *, seed: int | None = None) -> str:
    """A few lines describing the profile, library versions and devices."""
    import keras
    import tensorflow as tf

    prof = prof or get_profile()
    gpus = tf.config.list_physical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    lines = [
        f"profile      : {prof.name} ({prof.description})",
        f"seed         : {seed}" if seed is not None else None,
        f"python       : {platform.python_version()}",
        f"tensorflow   : {tf.__version__}, keras {keras.__version__}, numpy {np.__version__}",
        f"devices      : {len(gpus)} GPU(s), {len(cpus)} logical CPU device(s), {os.cpu_count()} CPU cores",
        f"determinism  : {'on' if _determinism_enabled() else 'off'}",
        f"build dir    : {display_path(build_dir())}",
    ]
    return "\n".join(line for line in lines if line is not None)


def _determinism_enabled() -> bool:
    from tensorflow.python.framework import config as tf_config  # not exported in tf.config

    return bool(tf_config.is_op_determinism_enabled())


def strategy(devices: list[str] | None = None):
    """Return a tf.distribute strategy for the visible devices.

    Several GPUs (or an explicit list of two or more ``devices``): ``MirroredStrategy``; one GPU:
    ``OneDeviceStrategy`` on it; otherwise the default (no-op) strategy, which runs on the CPU.
    To try data parallelism on a CPU-only machine, split the CPU into logical devices first
    (``split_cpu(2)``) and pass ``devices=["/cpu:0", "/cpu:1"]``.
    """
    import tensorflow as tf

    if devices is not None:
        if not devices:
            raise ValueError("devices must name at least one device, e.g. ['/gpu:0'] or ['/cpu:0', '/cpu:1']")
        if len(devices) == 1:
            return tf.distribute.OneDeviceStrategy(devices[0])
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def split_cpu(n: int = 2) -> list[str]:
    """Split the physical CPU into ``n`` logical devices (must run before TF initialises its devices).

    Returns the device names. Used by tests and notebooks to exercise ``MirroredStrategy`` without a GPU.
    """
    import tensorflow as tf

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing is None or len(existing) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as err:
            raise RuntimeError(
                "TensorFlow's devices are already initialised; call split_cpu() before any other TF work "
                "(e.g. first thing in a fresh process)"
            ) from err
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def set_mixed_precision(enabled: bool = True) -> str:
    """Switch Keras' global dtype policy; returns the policy name now in force.

    On a GPU mixed precision uses float16 compute with float32 variables; on CPU it uses bfloat16
    (float16 matmuls are emulated and slow there). Models built afterwards pick the policy up; our
    model builders keep the final logits in float32 so losses stay accurate.
    """
    import keras
    import tensorflow as tf

    if not enabled:
        policy = "float32"
    elif tf.config.list_physical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# --------------------------------------------------------------------------------------------------
# Build directory (results, trained models, caches)
# --------------------------------------------------------------------------------------------------
def project_root() -> Path | None:
    """The checkout this package lives in (the folder holding pyproject.toml), or None for a wheel install."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "tutorial_lib").is_dir() else None


def build_dir() -> Path:
    """Where notebooks write results, models and caches.

    ``$TUTORIAL_BUILD_DIR`` if set; else ``build/`` at the project root (found from the package, so it is
    the same from any working directory); for a wheel install without a checkout, ``./build``.
    """
    env = os.environ.get(BUILD_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
    else:
        root = project_root()
        path = (root if root is not None else Path.cwd()) / "build"
    return path


def build_subdir(name: str) -> Path:
    """``build_dir()/name``, created if missing. Typical names: results, models, cache."""
    path = build_dir() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create {path}: {err.strerror}. Set {BUILD_ENV} to a writable folder "
            "(e.g. on a read-only checkout or a shared classroom server)."
        ) from err
    return path


def display_path(path: Path) -> str:
    """A path shown relative to the project root or home, so notebook outputs hold no user names."""
    path = Path(path)
    root = project_root()
    for base, label in ((root, "<project>"), (Path.home(), "~")):
        if base is not None:
            try:
                return str(Path(label) / path.resolve().relative_to(base.resolve()))
            except ValueError:
                pass
    return str(path)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist())
    if hasattr(value, "numpy"):
        return _to_jsonable(value.numpy())
    return value


def save_results(notebook: str, results: dict[str, Any]) -> Path:
    """Write a notebook's headline numbers to ``build/results/<notebook>.json`` and return the path.

    ``results`` may hold numpy scalars/arrays; they are converted to plain JSON. The active profile's
    name is added under ``"profile"`` unless present.
    """
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {type(results).__name__}")
    data = _to_jsonable(results)
    data.setdefault("profile", get_profile().name)
    path = build_subdir("results") / f"{notebook}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load_results(notebook: str) -> dict[str, Any]:
    """Read ``build/results/<notebook>.json`` written by :func:`save_results`."""
    path = build_dir() / "results" / f"{notebook}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{display_path(path)} does not exist; run notebooks/{notebook}.ipynb first")
    return json.loads(path.read_text())
