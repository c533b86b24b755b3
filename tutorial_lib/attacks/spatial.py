"""Spatial attacks: the worst of a grid of rotations and translations, by forward passes only (no gradients).

:func:`spatial_transform` moves images, :func:`spatial_grid` lists the moves, and the spec :class:`Spatial` keeps,
per example, the move that breaks it; its ``scale`` multiplies the whole grid (it has no radius ``eps``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from ..checks import check_number, check_positive_int
from ._runner import Attack, keep_worst, score

__all__ = ["spatial_grid", "spatial_transform", "Spatial"]

_INTERPOLATIONS = ("nearest", "bilinear")


def spatial_grid(max_angle: float, max_shift: float, angle_steps: int, shift_steps: int) -> np.ndarray:
    """The grid of the spatial attack: float64 array (angle_steps * shift_steps**2, 3) of (angle, dx, dy).

    Angles in degrees, ``angle_steps`` values evenly spaced in [-max_angle, max_angle]; shifts in pixels,
    ``shift_steps`` values in [-max_shift, max_shift] for each of dx (right) and dy (down). Step counts are odd,
    so the identity (0, 0, 0) is a grid point. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    angle_steps, max_angle = _check_grid_axis("angle_steps", angle_steps, "max_angle", max_angle)
    shift_steps, max_shift = _check_grid_axis("shift_steps", shift_steps, "max_shift", max_shift)
    angles = np.linspace(-max_angle, max_angle, angle_steps)
    shifts = np.linspace(-max_shift, max_shift, shift_steps)
    a, dx, dy = np.meshgrid(angles, shifts, shifts, indexing="ij")
    return np.stack([a.ravel(), dx.ravel(), dy.ravel()], axis=1)


def _check_grid_axis(steps_name: str, steps: Any, max_name: str, maximum: Any) -> tuple[int, float]:
    """An odd number of grid values in [-maximum, maximum] (odd: the grid is symmetric and contains 0)."""
    maximum = check_number(max_name, maximum, low=0.0, hint=f"The grid spans -{max_name} .. +{max_name}.")
    steps = check_positive_int(steps_name, steps)
    if steps % 2 == 0:
        raise ValueError(f"{steps_name} must be odd so that the grid is symmetric and contains 0 (no change), "
                         f"got {steps}; use {steps - 1} or {steps + 1}")
    if steps == 1 and maximum != 0:
        raise ValueError(f"{steps_name}=1 leaves only the value 0, but {max_name}={maximum}: "
                         f"use {steps_name} >= 3 or {max_name}=0")
    if steps > 1 and maximum == 0:
        raise ValueError(f"{max_name}=0 with {steps_name}={steps} repeats the value 0: use {steps_name}=1")
    return steps, maximum


def spatial_transform(x: Any, angle: Any = 0.0, dx: Any = 0.0, dy: Any = 0.0, *, interpolation: str = "nearest",
                      fill_value: float = 0.0) -> tf.Tensor:
    """Rotate images by ``angle`` degrees (counter-clockwise as displayed) about their centre, then shift them
    ``dx`` pixels right and ``dy`` pixels down; pixels from outside the image are ``fill_value``.

    ``x``: float tensor (B, H, W, C). ``angle``, ``dx``, ``dy``: scalars (the same for every image) or (B,)
    tensors (one per image). ``interpolation``: "nearest" (every output pixel is an input pixel or
    ``fill_value``: no new grey levels) or "bilinear". TensorFlow ops only (graph-compatible, not XLA: TensorFlow
    has no XLA kernel for the image transform); no gradient with respect to ``x`` (the spatial attack needs
    forward passes only). Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    _check_interpolation(interpolation)
    x = _check_images(tf.convert_to_tensor(x), "x must be images")
    angle, dx, dy = (tf.reshape(tf.convert_to_tensor(v, tf.float64), [-1]) for v in (angle, dx, dy))
    shape = tf.broadcast_dynamic_shape(tf.broadcast_dynamic_shape(tf.shape(angle), tf.shape(dx)), tf.shape(dy))
    transforms = _transform_rows(*(tf.broadcast_to(v, shape) for v in (angle, dx, dy)), x.shape[1], x.shape[2])
    return _apply_transforms(x, transforms, interpolation, fill_value)


def _transform_rows(angle: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Rows (N, 8) for ImageProjectiveTransformV3: rotate about the image centre, then shift.

    An input pixel p goes to q = c + R(p - c) + t, with R a counter-clockwise rotation as displayed (rows grow
    downwards) and t = (dx, dy). The op needs the inverse map, output q -> input p = c + R^T (q - c - t).
    Computed in float64 (so 90 degrees and integer shifts land exactly on pixels), returned as float32.
    """
    theta = tf.cast(angle, tf.float64) * (np.pi / 180.0)
    dx, dy = tf.cast(dx, tf.float64), tf.cast(dy, tf.float64)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zero = tf.zeros_like(theta)
    rows = [cos, -sin, cx - cos * (cx + dx) + sin * (cy + dy),
            sin, cos, cy - sin * (cx + dx) - cos * (cy + dy), zero, zero]
    return tf.cast(tf.stack(rows, axis=-1), tf.float32)


def _apply_transforms(x: tf.Tensor, transforms: tf.Tensor, interpolation: str, fill_value: Any) -> tf.Tensor:
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(x, tf.float32), transforms=transforms, output_shape=tf.shape(x)[1:3],
        fill_value=tf.cast(fill_value, tf.float32), interpolation=interpolation.upper(), fill_mode="CONSTANT")
    return tf.cast(out, x.dtype)


def _check_interpolation(interpolation: Any) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


def _check_images(x: tf.Tensor, what: str) -> tf.Tensor:
    if x.shape.rank != 4 or x.shape[1] is None or x.shape[2] is None:
        raise ValueError(f"{what} of shape (batch, height, width, channels) with known height and width, "
                         f"got shape {x.shape}")
    return x


# --------------------------------------------------------------------------------------------------
# The attack: the worst grid point per example (forward passes only)
# --------------------------------------------------------------------------------------------------
def _spatial_attack(model: Any, x: tf.Tensor, y: tf.Tensor, *, grid: np.ndarray, scale: Any, targeted: bool,
                    interpolation: str, fill_value: float) -> tf.Tensor:
    """The worst grid point per example, as TensorFlow ops: a tf.while_loop of one forward pass per point.

    A grid point that succeeds (misclassifies; targeted: predicts the target) beats one that does not; among
    equals the higher loss (targeted: the lower loss on the target) wins
    (:func:`~tutorial_lib.attacks._runner.keep_worst`). So an example counts as broken if any grid point
    breaks it. ``scale`` multiplies every angle and shift.
    """
    x = _check_images(tf.convert_to_tensor(x), "the spatial attack needs images")
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    points = tf.constant(grid, tf.float64) * tf.cast(scale, tf.float64)
    transforms = _transform_rows(points[:, 0], points[:, 1], points[:, 2], x.shape[1], x.shape[2])

    def body(i: tf.Tensor, *kept: tf.Tensor) -> tuple:
        cand = _apply_transforms(x, transforms[i][None], interpolation, fill_value)
        return (i + 1, *keep_worst(*kept, cand, *score(model, cand, y, targeted)))

    batch = tf.shape(x)[:1]
    start = [tf.constant(0), x, tf.zeros(batch, tf.bool), tf.fill(batch, tf.constant(-np.inf, tf.float32))]
    _, best, _, _ = tf.while_loop(lambda i, *_: i < len(grid), body, start)
    return tf.stop_gradient(tf.cast(best, in_dtype))


def _spatial_ops(model: Any, x: tf.Tensor, y: tf.Tensor, *, scale: tf.Tensor, seed: tf.Tensor, max_angle: float,
                 max_shift: float, angle_steps: int, shift_steps: int, targeted: bool, interpolation: str,
                 fill_value: float) -> tf.Tensor:
    """The runner's compiled ops for :class:`Spatial` (``seed`` is unused: the attack has no randomness)."""
    grid = spatial_grid(max_angle, max_shift, angle_steps, shift_steps)
    return _spatial_attack(model, x, y, grid=grid, scale=scale, targeted=targeted, interpolation=interpolation,
                           fill_value=fill_value)


@dataclass(frozen=True, repr=False)
class Spatial(Attack):
    """The worst of a grid of rotations and translations (Engstrom et al., ICML 2019, "Exploring the Landscape
    of Spatial Robustness"): ``Spatial(max_angle=30, max_shift=3)(model, x, y)``.

    Every image is rotated by each of ``angle_steps`` angles in [-max_angle, max_angle] degrees and shifted by
    each of ``shift_steps`` x ``shift_steps`` offsets in [-max_shift, max_shift] pixels (see
    :func:`spatial_grid`, :func:`spatial_transform`); per example the attack keeps a grid point that
    misclassifies (targeted: that predicts the target ``y``) if there is one, the highest-loss one among them,
    else the highest-loss point overall. So an example is broken if any grid point breaks it. Forward passes
    only (one per grid point and batch, in one compiled ``tf.while_loop``, never XLA: TensorFlow has no XLA
    kernel for the image transform), no gradients, no randomness.

    ``interpolation="nearest"`` (default): every output pixel is an input pixel or the fill, so the attack
    changes geometry only, 90-degree turns and whole-pixel shifts are exact, and no blur (a second, photometric
    perturbation the model might react to) is mixed in; "bilinear" gives smoother rotations. Pixels moved in
    from outside the image are ``clip_min`` (black; 0 for the series' images). ``scale`` multiplies the whole
    grid: angles and shifts are multiplied by it, so 1 (default) is the grid as given, ``with_scale(0.5)``
    halves the budget and a ramp 0 -> 1 grows the grid from the identity. The attack has no radius ``eps``.
    Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "Spatial"
    _ops = staticmethod(_spatial_ops)
    max_angle: float = 30.0
    max_shift: float = 3.0
    angle_steps: int = 7
    shift_steps: int = 5
    scale: float = 1.0
    targeted: bool = False
    interpolation: str = "nearest"
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self._validate_common()
        object.__setattr__(self, "scale", _check_scale(self.scale))
        angle_steps, max_angle = _check_grid_axis("angle_steps", self.angle_steps, "max_angle", self.max_angle)
        shift_steps, max_shift = _check_grid_axis("shift_steps", self.shift_steps, "max_shift", self.max_shift)
        for name, value in (("angle_steps", angle_steps), ("max_angle", max_angle),
                            ("shift_steps", shift_steps), ("max_shift", max_shift)):
            object.__setattr__(self, name, value)
        _check_interpolation(self.interpolation)

    def __repr__(self) -> str:
        parts = [f"max_angle={self.max_angle:g}", f"max_shift={self.max_shift:g}",
                 f"grid=({self.angle_steps}, {self.shift_steps}, {self.shift_steps})"]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("scale", "targeted", "interpolation", "clip_min", "clip_max", "batch_size"):
            if getattr(self, name) != defaults[name]:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"Spatial({', '.join(parts)})"

    @property
    def family(self) -> str:
        """Always "spatial"."""
        return "spatial"

    @property
    def grid(self) -> np.ndarray:
        """The (angle, dx, dy) grid points at scale 1, shape (grid_points, 3); see :func:`spatial_grid`."""
        return spatial_grid(self.max_angle, self.max_shift, self.angle_steps, self.shift_steps)

    @property
    def grid_points(self) -> int:
        """Forward passes per image: angle_steps * shift_steps ** 2."""
        return self.angle_steps * self.shift_steps ** 2

    def with_scale(self, scale: float) -> "Spatial":
        """The same attack with its grid multiplied by ``scale`` instead (other settings unchanged)."""
        return dataclasses.replace(self, scale=scale)

    def with_eps(self, eps: float) -> "Attack":
        """Refused: a spatial attack has no radius; :meth:`with_scale` resizes its grid."""
        raise TypeError("Spatial has no radius eps: use with_scale(scale) to multiply its grid of angles and shifts")

    def _name(self) -> str:
        return (f"Spatial {self.max_angle * self.scale:g}deg {self.max_shift * self.scale:g}px "
                f"({self.angle_steps}x{self.shift_steps}x{self.shift_steps})")

    def _settings(self) -> dict[str, Any]:
        return dict(max_angle=self.max_angle, max_shift=self.max_shift, angle_steps=self.angle_steps,
                    shift_steps=self.shift_steps, targeted=self.targeted, interpolation=self.interpolation,
                    fill_value=self.clip_min)

    def _scalars(self) -> dict[str, float]:
        return {"scale": self.scale}

    def _scaled(self, factor: Any) -> dict[str, Any]:
        """``generate`` options for this attack with its grid times ``factor``."""
        return {"scale": self.scale * factor}

    def _check_inputs(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise ValueError(f"the spatial attack needs images of shape (batch, height, width, channels), "
                             f"got shape {x.shape}; add a channel axis with x[..., None]")

    def generate(self, model: Any, x: Any, y: Any, *, scale: Any = None, seed: Any = None, eps: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """The worst grid point per example as a tensor, from TensorFlow ops only.

        ``model``: any callable ``f(x, training=False) -> logits`` (e.g. a meta-learner's adapted weights).
        ``x``: float tensor (B, H, W, C); ``y``: int class ids (B,). ``scale``: multiplier of the grid overriding
        ``self.scale`` (Python float or scalar tensor; no retracing when it is a tensor). ``seed`` is accepted
        and ignored (the attack is deterministic), and so are ``eps=None`` and ``step_size=None``, so generic
        code that forwards "no override" can call any spec; a value for either is a TypeError (no radius, no
        steps). Returns x_adv (dtype of x, gradient stopped), each image an exact rotation/translation of its
        input.
        """
        if eps is not None or step_size is not None:
            raise TypeError("Spatial has no radius eps or step_size: pass scale= to resize its grid")
        return _spatial_attack(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), grid=self.grid,
                               scale=self.scale if scale is None else scale, targeted=self.targeted,
                               interpolation=self.interpolation, fill_value=self.clip_min)


def _check_scale(scale: Any) -> float:
    return check_number("scale", scale, low=0.0, hint="It multiplies the grid's angles and shifts; 1 is the grid "
                                                      "as given, 0 the identity.")
