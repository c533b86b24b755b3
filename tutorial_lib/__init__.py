"""tutorial_lib: helpers for the adversarial robustness and meta-learning notebook series.

Import as ``import tutorial_lib as tl``; submodules load on first use. Algorithms, from the bottom up:
``tl.checks`` (argument checks), ``tl.runtime`` (seeds, profiles, devices), ``tl.data`` (MNIST),
``tl.models``, ``tl.attacks`` (FGSM, BIM, PGD, MIM as specs), ``tl.evaluate`` (robust accuracy, intervals,
masking checks), ``tl.training`` (adversarial training), ``tl.tasks`` (few-shot tasks), ``tl.meta`` (MAML,
Reptile), ``tl.meta_adversarial`` (robust few-shot learning), ``tl.compute`` (training compute in gradient
evaluations). On top: ``tl.viz`` (every figure),
``tl.experiments`` (one module of notebook drivers per chapter), ``tl.exercises`` (answer checks) and
``tl.report`` (gathers the results files).
"""

from __future__ import annotations

import importlib
import os
import sys

# Keep TensorFlow's C++ log lines out of notebook outputs. Level 3 also hides C++ "errors" such as the harmless
# "NodeDef mentions attribute use_unbounded_threadpool" printed by model.fit in TF 2.21; real failures still raise
# Python exceptions. Set TF_CPP_MIN_LOG_LEVEL yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and list its devices with the process's stderr (fd 2) muted.

    TensorFlow's C++ start-up lines (oneDNN notes, "could not find cuda drivers", cuInit on a machine
    without a GPU) are written before its log level applies; Jupyter would store them in every notebook.
    Python exceptions are unaffected: they propagate after stderr is restored.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (rare embedded interpreters): import normally
        import tensorflow as tf  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

__version__ = "0.1.0"

_SUBMODULES = (
    "checks", "compiled", "profiles", "runtime", "data", "models", "attacks", "evaluate", "adaptation", "training",
    "tasks", "meta",
    "meta_adversarial", "compute", "viz", "experiments", "exercises", "report",
)


def lazy_submodules(package: str, names: tuple[str, ...], namespace: dict):
    """``(__getattr__, __dir__)`` for a package whose submodules ``names`` load on first use."""

    def __getattr__(name: str):
        if name in names:
            module = importlib.import_module(f".{name}", package)
            namespace[name] = module
            return module
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(list(namespace) + list(names))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_submodules(__name__, _SUBMODULES, globals())
