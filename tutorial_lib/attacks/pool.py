"""Attack pools: a set of attack specs with sampling weights, from which each meta-training task draws its attack.

:class:`AttackPool` holds specs of several threat models (:data:`FAMILIES`: "linf", "l2", "l1" and the geometric
ones), can leave one family out for a held-out test, and runs the drawn spec inside a compiled step
(``tf.switch_case``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from ..checks import check_number, check_positive_int
from ._runner import Attack, seed_generator

__all__ = ["FAMILIES", "GEOMETRIC_FAMILIES", "AttackPool"]

#: The geometric families (specs with a grid ``scale`` and no radius ``eps``): Spatial (rotations x shifts),
#: Rotation, Translation, ZoomShear.
GEOMETRIC_FAMILIES = ("spatial", "rotation", "translation", "zoom_shear")
#: Attack families an :class:`AttackPool` can hold (see :attr:`Attack.family`): the norm balls (PGD, FGSM, MIM,
#: BIM, APGD: "linf" or "l2"; SparseL1Descent: "l1") and :data:`GEOMETRIC_FAMILIES`.
FAMILIES = ("linf", "l2", "l1", *GEOMETRIC_FAMILIES)


@dataclass(frozen=True, repr=False)
class AttackPool:
    """A set of attack specs with sampling weights; each meta-training task draws one of them.

    ``AttackPool([FGSM(eps=0.1), PGD(eps=0.1, steps=10, step_size=0.025), PGD(eps=1.5, norm=2, ...)],
    weights=[1, 2, 1])``. ``weights`` (default: equal) are positive and need not sum to 1. ``held_out``
    names the family kept out of training (e.g. "spatial"): a pool holding a spec of that family is an error,
    so a leave-one-out experiment cannot leak the held-out attack into training; :meth:`without` builds such a
    pool from a full one. All specs must share one pixel range (clip_min, clip_max).

    Drawing: :meth:`sample` gives one index per task (numpy, seeded); :meth:`draw` gives one index as a tensor
    inside a ``tf.function``; :meth:`generate` runs the drawn spec with ``tf.switch_case`` (graph mode, the
    model may be any ``f(x, training=False) -> logits``, e.g. adapted weights). Introduced in
    notebooks/06_unseen_attacks.ipynb.
    """

    attacks: tuple[Attack, ...]
    weights: tuple[float, ...] | None = None
    held_out: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attacks, Attack):
            raise TypeError("attacks must be a list of attack specs, got a single spec; wrap it: [spec]")
        specs = tuple(self.attacks)
        if not specs:
            raise ValueError("an AttackPool needs at least one attack spec, got none")
        for spec in specs:
            if not isinstance(spec, Attack):
                raise TypeError(f"every pool member must be an attack spec (FGSM, PGD, MIM, BIM, APGD, "
                                f"SparseL1Descent, Spatial, Rotation, Translation, ZoomShear), "
                                f"got {type(spec).__name__}: {spec!r}")
        weights = (1.0,) * len(specs) if self.weights is None else tuple(self.weights)
        if len(weights) != len(specs):
            raise ValueError(f"got {len(weights)} weights for {len(specs)} attacks: pass one weight per attack "
                             "(or weights=None for equal weights)")
        weights = tuple(check_number("weight", w) for w in weights)
        if min(weights) <= 0:
            raise ValueError(f"weights must be > 0, got {list(weights)}; drop an attack instead of giving it weight 0")
        ranges = sorted({(s.clip_min, s.clip_max) for s in specs})
        if len(ranges) > 1:
            raise ValueError(f"the specs disagree on the pixel range (clip_min, clip_max): {ranges}; give every "
                             "spec the clip_min/clip_max of your data")
        held_out = self.held_out
        if held_out is not None:
            if held_out not in FAMILIES:
                raise ValueError(f"held_out must be one of {FAMILIES} or None, got {held_out!r}")
            leaks = [s for s in specs if s.family == held_out]
            if leaks:
                raise ValueError(f"held-out family {held_out!r} is also in the pool: {leaks}; remove those specs "
                                 f"(pool.without({held_out!r}) does it)")
        object.__setattr__(self, "attacks", specs)
        object.__setattr__(self, "weights", weights)

    def __repr__(self) -> str:
        members = ", ".join(f"{s!r}: {w:g}" for s, w in zip(self.attacks, self.weights))
        held = "" if self.held_out is None else f", held_out={self.held_out!r}"
        return f"AttackPool({{{members}}}{held})"

    def __len__(self) -> int:
        """The number of specs."""
        return len(self.attacks)

    def __getitem__(self, index: int) -> Attack:
        """The spec number ``index``."""
        return self.attacks[index]

    def __iter__(self) -> Iterator[Attack]:
        """The specs in order."""
        return iter(self.attacks)

    @property
    def families(self) -> tuple[str, ...]:
        """The family of each spec, in order (one of :data:`FAMILIES`)."""
        return tuple(s.family for s in self.attacks)

    @property
    def probabilities(self) -> np.ndarray:
        """The weights normalised to sum to 1, float64 (len(pool),)."""
        weights = np.asarray(self.weights, np.float64)
        return weights / weights.sum()

    @property
    def clip_min(self) -> float:
        """The pixel range's lower end, shared by every spec."""
        return self.attacks[0].clip_min

    @property
    def clip_max(self) -> float:
        """The pixel range's upper end, shared by every spec."""
        return self.attacks[0].clip_max

    def without(self, family: str) -> "AttackPool":
        """The same pool minus every spec of ``family`` (weights kept), with ``held_out=family``."""
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        kept = [(s, w) for s, w in zip(self.attacks, self.weights) if s.family != family]
        if not kept:
            raise ValueError(f"every spec of the pool is in family {family!r}: nothing would be left to train on")
        return AttackPool([s for s, _ in kept], [w for _, w in kept], held_out=family)

    def sample(self, n_tasks: int, seed: int | None = None) -> np.ndarray:
        """One spec index per task, drawn with the pool's probabilities: int64 (n_tasks,); same seed, same draws."""
        n_tasks = check_positive_int("n_tasks", n_tasks)
        return seed_generator(seed).choice(len(self), size=n_tasks, p=self.probabilities).astype(np.int64)

    def draw(self, seed: Any) -> tf.Tensor:
        """One spec index as an int32 scalar tensor, from a shape-(2,) int seed tensor (stateless, graph mode)."""
        logits = tf.math.log(tf.constant(self.probabilities[None], tf.float32))
        return tf.cast(tf.random.stateless_categorical(logits, 1, seed)[0, 0], tf.int32)

    def generate(self, model: Any, x: Any, y: Any, index: Any, *, scale: Any = None, seed: Any = None) -> tf.Tensor:
        """Adversarial examples of spec ``index`` (int or int tensor) as a tensor; graph mode, gradient stopped.

        Every spec is traced once into a ``tf.switch_case`` and only the drawn one runs. ``scale`` (Python
        float or scalar tensor, e.g. a ramp 0 -> 1) multiplies the drawn spec's budget: a gradient attack's eps
        and step_size (so steps shrink with the ball), a geometric attack's grid scale (Spatial, Rotation,
        Translation, ZoomShear); None leaves every spec as it is. ``seed``: as in ``spec.generate``. ``x``,
        ``y``, ``model`` as there.
        """
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)

        def branch(spec: Attack) -> Callable[[], tf.Tensor]:
            options = {} if scale is None else spec._scaled(tf.cast(scale, tf.float32))
            return lambda: tf.cast(spec.generate(model, x, y, seed=seed, **options), x.dtype)

        if len(self) == 1:
            return branch(self.attacks[0])()
        return tf.switch_case(tf.cast(index, tf.int32), [branch(s) for s in self.attacks])
