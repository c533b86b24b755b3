"""Argument checks shared by every module: numbers, counts, radii, flags, and batches of images with labels.

Each check takes Python values (before anything is traced), returns the value in a canonical type, and raises a
``TypeError`` or ``ValueError`` whose message says what was wrong and how to fix it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["check_number", "check_positive_int", "check_count", "check_eps", "check_bool",
           "check_images_and_labels"]


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, hint: str = "") -> float:
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_inclusive=False``; None: no bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        bounds = []
        if low is not None:
            bounds.append(f"{'>=' if low_inclusive else '>'} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        rule = " and ".join(bounds) if bounds else "finite"
        raise ValueError(f"{name} must be {rule}, got {value}. {hint}".rstrip())
    return value


def check_positive_int(name: str, value: Any, *, hint: str = "") -> int:
    """``value`` as an int if it is an int >= 1 (not a bool): steps, restarts, epochs, batch sizes, tasks."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}){hint}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}{hint}")
    return int(value)


def check_count(name: str, value: Any, *, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int in 0..``high`` (no upper bound when None): ramp or decay epochs, restarts where 0 = none."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}){hint}")
    if value < 0 or (high is not None and value > high):
        rule = f"in 0..{high}" if high is not None else ">= 0"
        raise ValueError(f"{name} must be an int {rule}, got {value}{hint}")
    return int(value)


def check_eps(eps: Any, *, positive: bool = False) -> float:
    """An attack radius: a finite number >= 0 (> 0 with ``positive=True``, where a radius of 0 means no attack).

    The same rule for every norm and module; L2 radii above 1 are common, so there is no upper bound.
    """
    hint = ("It is the radius of the perturbation ball, e.g. 0.3 for L-inf on MNIST pixels in [0, 1]; "
            "a radius of 0 attacks nothing." if positive else "It is the radius of the perturbation ball.")
    return check_number("eps", eps, low=0.0, low_inclusive=not positive, hint=hint)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool if it is True or False (numpy bools too); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # e.g. ragged nested lists
        raise TypeError(f"{name} must be an array or tensor, got {type(value).__name__}: {err}") from err


def check_images_and_labels(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch of images and integer labels; return float32 images and int64 labels.

    ``x``: (batch, ...) numbers, finite, at least one; ``y``: integer class ids of shape (batch,). One-hot or
    float labels and mismatched batch sizes are errors that say how to fix them.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    x = _as_numpy(x, "x")
    y = _as_numpy(y, "y")
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs, shape (batch, ...) e.g. (B, 28, 28, 1); got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("x is empty: pass at least one image")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values")
    if y.ndim == 2 and y.shape[0] == x.shape[0] and y.shape[1] > 1:
        raise ValueError(
            f"y has shape {y.shape}: it looks one-hot. tutorial_lib takes integer class ids of shape (batch,); "
            "convert with y = np.argmax(y, axis=1)"
        )
    if y.ndim != 1:
        raise ValueError(f"y must be integer class ids of shape (batch,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}; convert with y.astype(int)")
    if len(y) != len(x):
        raise ValueError(f"x and y have different batch sizes: {len(x)} images but {len(y)} labels; "
                         "pass matching slices")
    return x, y.astype(np.int64, copy=False)
