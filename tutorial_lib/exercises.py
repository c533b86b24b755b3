"""Feedback on the notebooks' exercises: each ``check_*`` function tests a learner's answer.

A check prints a short verdict and returns True/False; a wrong answer gets a hint, not the solution.
Each chapter's checks live in its own section below, in notebook order.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def report(ok: bool, success: str, hint: str) -> bool:
    """Print a verdict for one exercise and return ``ok``."""
    print(("Correct: " + success) if ok else ("Not yet: " + hint))
    return bool(ok)


def close(a: Any, b: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """True when arrays/scalars ``a`` and ``b`` have the same shape and values within tolerance."""
    try:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))


# ---------------------------------------------------------------------------------------------
# 00 setup and data
# ---------------------------------------------------------------------------------------------
def check_class_counts(counts: Any, y: np.ndarray) -> bool:
    """Exercise 00.1: the number of training images per digit, as a length-10 sequence."""
    expected = np.bincount(np.asarray(y), minlength=10)
    return report(
        close(counts, expected),
        f"each digit has {expected.min()}-{expected.max()} training images.",
        "count the labels per class, e.g. with np.bincount(y_train, minlength=10).",
    )


def check_pixel_range(lo: float, hi: float) -> bool:
    """Exercise 00.2: the range of pixel values the models see."""
    return report(
        close([lo, hi], [0.0, 1.0]),
        "pixels are float32 in [0, 1]; attacks clip to this range.",
        "look at x_train.min() and x_train.max() after load_mnist (it scales 0-255 to [0, 1]).",
    )


# ---------------------------------------------------------------------------------------------
# 01 FGSM (attacks chapter adds its checks here)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 02 iterative attacks
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 03 adversarial training
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# 04 meta-learning
# ---------------------------------------------------------------------------------------------
