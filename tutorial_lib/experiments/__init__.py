"""Notebook drivers: each module reads a profile, trains with caching and tabulates results for one chapter.

``adversarial_training`` (notebook 03), ``meta_learning`` (04), ``robust_few_shot`` (05), ``unseen_attacks`` (06)
and ``applications`` (07); submodules load on first use, e.g. ``tl.experiments.meta_learning.meta_train``.
"""

from __future__ import annotations

from .. import lazy_submodules

_SUBMODULES = ("adversarial_training", "meta_learning", "robust_few_shot", "unseen_attacks", "applications")
__getattr__, __dir__ = lazy_submodules(__name__, _SUBMODULES, globals())
