"""The run-time environment of every notebook: seeds and determinism, devices and tf.distribute strategies,
mixed precision, the build folder and results files.

:func:`setup` returns the active profile (the sizes live in :mod:`tutorial_lib.profiles`; ``get_profile`` and
``Profile`` are re-exported here). Introduced in notebooks/00_setup_and_data.ipynb.
"""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import PROFILE_ENV, PROFILES, Profile, get_profile  # noqa: F401  (re-exported: tl.runtime.get_profile)

BUILD_ENV = "TUTORIAL_BUILD_DIR"


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


#: The names :func:`strategy` takes (also the choices of ``--strategy`` in the chapters' command lines).
STRATEGIES = ("auto", "mirrored", "multi-worker")
TF_CONFIG_ENV = "TF_CONFIG"


def strategy(kind: str | list[str] | None = None, *, devices: list[str] | None = None):
    """Return a tf.distribute strategy: ``"auto"`` (default), ``"mirrored"`` or ``"multi-worker"``.

    ``"auto"``: several GPUs (or an explicit list of two or more ``devices``): ``MirroredStrategy``; one GPU:
    ``OneDeviceStrategy`` on it; otherwise the default (no-op) strategy, which runs on the CPU.
    ``"mirrored"``: ``MirroredStrategy`` over ``devices`` (default: every local GPU, else the CPU).
    ``"multi-worker"``: ``MultiWorkerMirroredStrategy`` over the machines listed in ``$TF_CONFIG`` (one process
    per machine, each with its own ``task`` index; see :func:`tf_config`); create it first thing in the process.
    A list as the first argument is ``devices`` (``strategy(["/cpu:0", "/cpu:1"])``). To try data parallelism
    on a CPU-only machine, split the CPU into logical devices first (``split_cpu(2)``).
    Learners and models built inside ``with strategy.scope():`` split each batch across its replicas.
    """
    import tensorflow as tf

    if isinstance(kind, (list, tuple)):
        kind, devices = "auto", list(kind)
    kind = "auto" if kind is None else kind
    if not isinstance(kind, str) or kind not in STRATEGIES:
        raise ValueError(f"unknown strategy {kind!r}; valid names are {', '.join(STRATEGIES)}")
    if devices is not None and not devices:
        raise ValueError("devices must name at least one device, e.g. ['/gpu:0'] or ['/cpu:0', '/cpu:1']")
    if kind == "multi-worker":
        if devices is not None:
            raise ValueError("multi-worker uses every local GPU (or the CPU) of each worker; leave devices out")
        return _multi_worker_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if devices is not None:
        if len(devices) == 1:
            return tf.distribute.OneDeviceStrategy(devices[0])
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def tf_config() -> dict[str, Any]:
    """The cluster description in ``$TF_CONFIG``, checked: ``{"cluster": {"worker": ["host:port", ...]},
    "task": {"type": "worker", "index": i}}`` (the same cluster on every machine, each its own index;
    worker 0 is the chief, the one that writes results)."""
    raw = os.environ.get(TF_CONFIG_ENV, "").strip()
    how = ('set TF_CONFIG on each machine, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}} on host1 and index 1 on host2')
    if not raw:
        raise ValueError(f"the multi-worker strategy needs ${TF_CONFIG_ENV}; {how}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"${TF_CONFIG_ENV} is not valid JSON ({err}); {how}") from None
    workers = config.get("cluster", {}).get("worker") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not (isinstance(workers, list) and workers and all(isinstance(w, str) and ":" in w for w in workers)):
        raise ValueError(f"${TF_CONFIG_ENV} must list the workers as \"host:port\" strings under cluster.worker; {how}")
    if not (isinstance(task, dict) and task.get("type") in ("worker", "chief") and isinstance(task.get("index"), int)
            and 0 <= task["index"] < len(config["cluster"].get(task.get("type"), []))):
        raise ValueError(f"${TF_CONFIG_ENV} must say which worker this process is: task.type \"worker\" and an "
                         f"index in 0..{len(workers) - 1}; {how}")
    return config


def is_chief() -> bool:
    """Whether this process writes results: always, except a multi-worker task other than worker 0 (or the
    chief) in ``$TF_CONFIG``."""
    raw = os.environ.get(TF_CONFIG_ENV, "").strip()
    if not raw:
        return True
    task = tf_config()["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0
                                        and "chief" not in tf_config()["cluster"])


def _multi_worker_strategy():
    import tensorflow as tf

    tf_config()  # a clear error before TensorFlow's own
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        raise RuntimeError(f"{err}. Create the multi-worker strategy first thing in the process, before any other "
                           "TensorFlow work (e.g. before runtime.setup or loading data)") from err


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
