"""Notebook drivers: each module reads a profile, trains with caching and tabulates results for one chapter.

``adversarial_training`` (notebook 03), ``meta_learning`` (04), ``robust_few_shot`` (05); submodules load on
first use, e.g. ``tl.experiments.meta_learning.meta_train``.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("adversarial_training", "meta_learning", "robust_few_shot", "unseen_attacks")


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tutorial_lib.experiments' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
