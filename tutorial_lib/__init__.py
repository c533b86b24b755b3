"""tutorial_lib: helpers for the adversarial robustness and meta-learning notebook series.

Import as ``import tutorial_lib as tl`` and use the submodules: ``tl.runtime``, ``tl.data``,
``tl.models`` (and, as the series grows, ``tl.attacks``, ``tl.evaluate``, ``tl.training``, ``tl.tasks``,
``tl.meta``, ``tl.viz``, ``tl.exercises``).
"""

from __future__ import annotations

import importlib
import os

# Keep TensorFlow's C++ info and warning lines out of notebook outputs (errors still show).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_SUBMODULES = (
    "runtime", "data", "models", "attacks", "evaluate", "training", "tasks", "meta",
    "meta_adversarial", "viz", "exercises",
)


def __getattr__(name: str):
    # Submodules load on first use, so `import tutorial_lib` stays cheap and does not import TensorFlow.
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tutorial_lib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
