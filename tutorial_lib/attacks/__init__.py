"""Adversarial attacks on logits models, as specs (values) that evaluation, training and meta-learning take.

``gradient``: FGSM, BIM, PGD, MIM (PGD's math first); ``apgd``: Auto-PGD; ``sparse``: the L1 attack (SLIDE);
``spatial``: geometric attacks (rotations and shifts, and the rotation-, translation- and zoom/shear-only
families); ``pool``: an attack drawn per task; ``patch``: a universal sticker. They share one private runner
(checks, compiled cache, batches).
"""

from __future__ import annotations

from . import apgd, gradient, patch, pool, sparse, spatial
from ._runner import RANGE_TOLERANCE, Attack, clear_cache, trace_count
from .apgd import APGD, apgd_ascent, dlr_loss
from .gradient import BIM, FGSM, LOOP_CHUNK, MIM, PGD, bim, fgsm, gradient_ascent, mim, pgd
from .patch import AdversarialPatch, paste_patch
from .pool import FAMILIES, GEOMETRIC_FAMILIES, AttackPool
from .sparse import SparseL1Descent, project_l1_box, sparse_l1_ascent, sparse_l1_descent
from .spatial import (AFFINE_PARAMS, Rotation, Spatial, Translation, ZoomShear, affine_transform, spatial_grid,
                      spatial_transform)

__all__ = ["Attack", "clear_cache", "trace_count", *gradient.__all__, *sparse.__all__, *spatial.__all__,
           *pool.__all__, *patch.__all__, "APGD", "apgd_ascent", "dlr_loss"]
