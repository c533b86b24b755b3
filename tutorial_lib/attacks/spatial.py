"""Geometric attacks: the worst of a grid of small image transforms per example, by forward passes only.

:func:`affine_transform` moves images (rotation, shift, zoom, shear about the centre); :func:`spatial_transform`
and :func:`spatial_grid` are its rotation + shift case. The specs keep, per example, the grid point that breaks
it: :class:`Spatial` (rotations x shifts), and one family each for notebook 06's held-out families,
:class:`Rotation`, :class:`Translation` and :class:`ZoomShear`. Their ``scale`` multiplies the whole grid (they
have no radius ``eps``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from ..checks import check_number, check_positive_int
from ._runner import Attack, keep_worst, score

__all__ = ["spatial_grid", "spatial_transform", "affine_transform", "AFFINE_PARAMS", "Spatial", "Rotation",
           "Translation", "ZoomShear"]

_INTERPOLATIONS = ("nearest", "bilinear")

#: The parameters of :func:`affine_transform`, in the column order of a geometric spec's ``affine_grid``.
AFFINE_PARAMS = ("angle", "dx", "dy", "zoom_x", "zoom_y", "shear")


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


def affine_transform(x: Any, *, angle: Any = 0.0, dx: Any = 0.0, dy: Any = 0.0, zoom_x: Any = 1.0, zoom_y: Any = 1.0,
                     shear: Any = 0.0, interpolation: str = "nearest", fill_value: float = 0.0) -> tf.Tensor:
    """Zoom and shear images about their centre, rotate them by ``angle`` degrees, then shift them; pixels from
    outside the image are ``fill_value``.

    A pixel at p (x right, y down, relative to the image centre c) goes to ``c + R(angle) U (p - c) + (dx, dy)``
    with ``U = [[zoom_x, shear], [0, zoom_y]]``: ``zoom_x``/``zoom_y`` stretch columns/rows (2: twice as wide/tall,
    1: unchanged), ``shear`` moves each row sideways by ``shear`` times its distance below the centre (a row
    one pixel below the centre moves ``shear`` pixels right), ``R`` turns counter-clockwise as displayed (as in
    :func:`spatial_transform`, which is this function with zoom 1 and shear 0). Every 2x2 matrix with a positive
    determinant is R U for one angle and one such U, so rotation and zoom/shear are complementary families.

    ``x``: float tensor (B, H, W, C). Each parameter: a scalar (the same for every image) or a (B,) tensor.
    ``zoom_x``, ``zoom_y`` must be > 0 (not checked inside graphs). ``interpolation``: "nearest" (every output
    pixel is an input pixel or ``fill_value``) or "bilinear". TensorFlow ops only (graph-compatible, no XLA
    kernel), no gradient with respect to ``x``. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    _check_interpolation(interpolation)
    x = _check_images(tf.convert_to_tensor(x), "x must be images")
    values = [tf.reshape(tf.convert_to_tensor(v, tf.float64), [-1]) for v in (angle, dx, dy, zoom_x, zoom_y, shear)]
    shape = tf.shape(values[0])
    for v in values[1:]:
        shape = tf.broadcast_dynamic_shape(shape, tf.shape(v))
    rows = _affine_rows(*(tf.broadcast_to(v, shape) for v in values), x.shape[1], x.shape[2])
    return _apply_transforms(x, rows, interpolation, fill_value)


def _transform_rows(angle: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Rows (N, 8) for ImageProjectiveTransformV3 of a rotation about the image centre followed by a shift."""
    one = tf.ones_like(tf.cast(angle, tf.float64))
    return _affine_rows(angle, dx, dy, one, one, tf.zeros_like(one), height, width)


def _affine_rows(angle: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, zoom_x: tf.Tensor, zoom_y: tf.Tensor,
                 shear: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Rows (N, 8) for ImageProjectiveTransformV3: p -> q = c + R U (p - c) + t (see :func:`affine_transform`).

    The op needs the inverse map, output q -> input p = c + U^-1 R^T (q - c - t), with R^T = [[cos, -sin],
    [sin, cos]] (a counter-clockwise turn as displayed, rows growing downwards) and U^-1 = [[1/zx, -s/(zx zy)],
    [0, 1/zy]]. Computed in float64 (so 90 degrees, integer shifts and zoom 1/2 land exactly on pixels; with
    zoom 1 and shear 0 every product is exact, so rotations alone are as exact as before zoom existed),
    returned as float32.
    """
    theta = tf.cast(angle, tf.float64) * (np.pi / 180.0)
    dx, dy, zx, zy, s = (tf.cast(v, tf.float64) for v in (dx, dy, zoom_x, zoom_y, shear))
    cos, sin = tf.cos(theta), tf.sin(theta)
    off = -s / (zx * zy)
    m11, m12 = cos / zx + off * sin, -sin / zx + off * cos
    m21, m22 = sin / zy, cos / zy
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zero = tf.zeros_like(theta)
    rows = [m11, m12, cx - m11 * (cx + dx) - m12 * (cy + dy),
            m21, m22, cy - m21 * (cx + dx) - m22 * (cy + dy), zero, zero]
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
def _worst_transform(model: Any, x: tf.Tensor, y: tf.Tensor, *, moves: np.ndarray, scale: Any, targeted: bool,
                     interpolation: str, fill_value: float) -> tf.Tensor:
    """The worst grid point per example, as TensorFlow ops: a tf.while_loop of one forward pass per point.

    ``moves``: (grid_points, 6) offsets from the identity, (angle, dx, dy, zoom_x - 1, zoom_y - 1, shear); the
    attack tries ``affine_transform`` at ``1 + scale * offset`` for zooms, ``scale * offset`` for the rest. A grid
    point that succeeds (misclassifies; targeted: predicts the target) beats one that does not; among equals the
    higher loss (targeted: the lower loss on the target) wins (:func:`~tutorial_lib.attacks._runner.keep_worst`).
    So an example counts as broken if any grid point breaks it.
    """
    x = _check_images(tf.convert_to_tensor(x), "a geometric attack needs images")
    in_dtype = x.dtype
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.int32)
    m = tf.constant(moves, tf.float64) * tf.cast(scale, tf.float64)
    transforms = _affine_rows(m[:, 0], m[:, 1], m[:, 2], 1.0 + m[:, 3], 1.0 + m[:, 4], m[:, 5], x.shape[1], x.shape[2])

    def body(i: tf.Tensor, *kept: tf.Tensor) -> tuple:
        cand = _apply_transforms(x, transforms[i][None], interpolation, fill_value)
        return (i + 1, *keep_worst(*kept, cand, *score(model, cand, y, targeted)))

    batch = tf.shape(x)[:1]
    start = [tf.constant(0), x, tf.zeros(batch, tf.bool), tf.fill(batch, tf.constant(-np.inf, tf.float32))]
    _, best, _, _ = tf.while_loop(lambda i, *_: i < len(moves), body, start)
    return tf.stop_gradient(tf.cast(best, in_dtype))


def _geometric_ops(model: Any, x: tf.Tensor, y: tf.Tensor, *, scale: tf.Tensor, seed: tf.Tensor, moves: tuple,
                   targeted: bool, interpolation: str, fill_value: float) -> tf.Tensor:
    """The runner's compiled ops for every geometric spec (``seed`` is unused: the attacks have no randomness)."""
    return _worst_transform(model, x, y, moves=np.asarray(moves, np.float64), scale=scale, targeted=targeted,
                            interpolation=interpolation, fill_value=fill_value)


class _GeometricAttack(Attack):
    """What the geometric specs share: a grid of moves from the identity, the grid multiplier ``scale``, the
    worst-of-grid search of :func:`_worst_transform`, and no radius. Subclasses are frozen dataclasses with the
    fields ``scale``, ``targeted``, ``interpolation``, ``clip_min``, ``clip_max``, ``batch_size`` besides their
    grid's, and define ``_moves`` (the offsets at scale 1), ``_budget`` (repr parts) and ``_name``."""

    _ops = staticmethod(_geometric_ops)
    _family: ClassVar[str]
    #: Never XLA: TensorFlow has no XLA kernel for the image transform.
    jit_compile = False
    scale: float
    interpolation: str
    batch_size: int | None

    def _validate_geometric(self) -> None:
        self._validate_common()
        object.__setattr__(self, "scale", _check_scale(self.scale))
        _check_interpolation(self.interpolation)

    def _moves(self) -> np.ndarray:
        raise NotImplementedError

    def _budget(self) -> list[str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        parts = self._budget()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("scale", "targeted", "interpolation", "clip_min", "clip_max", "batch_size"):
            if getattr(self, name) != defaults[name]:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def family(self) -> str:
        """The threat model, for attack pools and held-out families."""
        return self._family

    @property
    def grid_points(self) -> int:
        """Forward passes per image: the number of grid points."""
        return len(self._moves())

    @property
    def affine_grid(self) -> np.ndarray:
        """The transforms the attack tries, at its ``scale``: float64 (grid_points, 6), columns in the order of
        :data:`AFFINE_PARAMS` (angle, dx, dy, zoom_x, zoom_y, shear), so ``affine_transform(x, **dict(zip(
        AFFINE_PARAMS, row)))`` is one candidate. The identity is always one of the rows."""
        grid = self._moves() * self.scale
        grid[:, 3:5] += 1.0
        return grid

    def with_scale(self, scale: float) -> "_GeometricAttack":
        """The same attack with its grid multiplied by ``scale`` instead (other settings unchanged)."""
        return dataclasses.replace(self, scale=scale)

    def with_eps(self, eps: float) -> "Attack":
        """Refused: a geometric attack has no radius; :meth:`with_scale` resizes its grid."""
        raise TypeError(f"{type(self).__name__} has no radius eps: use with_scale(scale) to multiply its grid")

    def _settings(self) -> dict[str, Any]:
        return dict(moves=tuple(map(tuple, self._moves().tolist())), targeted=self.targeted,
                    interpolation=self.interpolation, fill_value=self.clip_min)

    def _scalars(self) -> dict[str, float]:
        return {"scale": self.scale}

    def _scaled(self, factor: Any) -> dict[str, Any]:
        """``generate`` options for this attack with its grid times ``factor``."""
        return {"scale": self.scale * factor}

    def _check_inputs(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise ValueError(f"the {type(self).__name__} attack needs images of shape (batch, height, width, "
                             f"channels), got shape {x.shape}; add a channel axis with x[..., None]")

    def generate(self, model: Any, x: Any, y: Any, *, scale: Any = None, seed: Any = None, eps: Any = None,
                 step_size: Any = None) -> tf.Tensor:
        """The worst grid point per example as a tensor, from TensorFlow ops only.

        ``model``: any callable ``f(x, training=False) -> logits`` (e.g. a meta-learner's adapted weights).
        ``x``: float tensor (B, H, W, C); ``y``: int class ids (B,). ``scale``: multiplier of the grid overriding
        ``self.scale`` (Python float or scalar tensor; no retracing when it is a tensor). ``seed`` is accepted
        and ignored (the attack is deterministic), and so are ``eps=None`` and ``step_size=None``, so generic
        code that forwards "no override" can call any spec; a value for either is a TypeError (no radius, no
        steps). Returns x_adv (dtype of x, gradient stopped), each image one of the grid's transforms of its
        input.
        """
        if eps is not None or step_size is not None:
            raise TypeError(f"{type(self).__name__} has no radius eps or step_size: pass scale= to resize its grid")
        return _worst_transform(model, tf.convert_to_tensor(x), tf.convert_to_tensor(y), moves=self._moves(),
                                scale=self.scale if scale is None else scale, targeted=self.targeted,
                                interpolation=self.interpolation, fill_value=self.clip_min)


def _offsets(n: int, **columns: np.ndarray) -> np.ndarray:
    """(n, 6) offsets from the identity with the given columns (names of :data:`AFFINE_PARAMS`), zeros elsewhere."""
    out = np.zeros((n, len(AFFINE_PARAMS)))
    for name, values in columns.items():
        out[:, AFFINE_PARAMS.index(name)] = values
    return out


_GRID_DOC = """Every image is tried at each grid point; per example the attack keeps a grid point that misclassifies
    (targeted: that predicts the target ``y``) if there is one, the highest-loss one among them, else the
    highest-loss point overall, so an example is broken if any grid point breaks it. Forward passes only (one
    per grid point and batch, in one compiled ``tf.while_loop``, never XLA), no gradients, no randomness.
    ``scale`` multiplies the grid's distance from the identity (1: the grid as given, 0: no change; a ramp
    0 -> 1 grows it); the attack has no radius ``eps``. ``interpolation="nearest"`` (default) moves pixels
    without blending them; pixels moved in from outside the image are ``clip_min``."""


@dataclass(frozen=True, repr=False)
class Spatial(_GeometricAttack):
    """The worst of a grid of rotations and translations (Engstrom et al., ICML 2019, "Exploring the Landscape
    of Spatial Robustness"): ``Spatial(max_angle=30, max_shift=3)(model, x, y)``.

    Every image is rotated by each of ``angle_steps`` angles in [-max_angle, max_angle] degrees and shifted by
    each of ``shift_steps`` x ``shift_steps`` offsets in [-max_shift, max_shift] pixels (see
    :func:`spatial_grid`, :func:`spatial_transform`); per example the attack keeps a grid point that
    misclassifies (targeted: that predicts the target ``y``) if there is one, the highest-loss one among them,
    else the highest-loss point overall. So an example is broken if any grid point breaks it. Forward passes
    only (one per grid point and batch, in one compiled ``tf.while_loop``, never XLA: TensorFlow has no XLA
    kernel for the image transform), no gradients, no randomness. Family "spatial"; :class:`Rotation` and
    :class:`Translation` are its two halves as families of their own.

    ``interpolation="nearest"`` (default): every output pixel is an input pixel or the fill, so the attack
    changes geometry only, 90-degree turns and whole-pixel shifts are exact, and no blur (a second, photometric
    perturbation the model might react to) is mixed in; "bilinear" gives smoother rotations. Pixels moved in
    from outside the image are ``clip_min`` (black; 0 for the series' images). ``scale`` multiplies the whole
    grid: angles and shifts are multiplied by it, so 1 (default) is the grid as given, ``with_scale(0.5)``
    halves the budget and a ramp 0 -> 1 grows the grid from the identity. The attack has no radius ``eps``.
    Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "Spatial"
    _family: ClassVar[str] = "spatial"
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
        self._validate_geometric()
        _set_axis(self, "angle_steps", "max_angle")
        _set_axis(self, "shift_steps", "max_shift")

    def _budget(self) -> list[str]:
        return [f"max_angle={self.max_angle:g}", f"max_shift={self.max_shift:g}",
                f"grid=({self.angle_steps}, {self.shift_steps}, {self.shift_steps})"]

    @property
    def grid(self) -> np.ndarray:
        """The (angle, dx, dy) grid points at scale 1, shape (grid_points, 3); see :func:`spatial_grid`."""
        return spatial_grid(self.max_angle, self.max_shift, self.angle_steps, self.shift_steps)

    def _moves(self) -> np.ndarray:
        grid = self.grid
        return _offsets(len(grid), angle=grid[:, 0], dx=grid[:, 1], dy=grid[:, 2])

    def _name(self) -> str:
        return (f"Spatial {self.max_angle * self.scale:g}deg {self.max_shift * self.scale:g}px "
                f"({self.angle_steps}x{self.shift_steps}x{self.shift_steps})")


@dataclass(frozen=True, repr=False)
class Rotation(_GeometricAttack):
    """The worst of a grid of rotations about the image centre: ``Rotation(max_angle=30)(model, x, y)``.

    ``angle_steps`` (odd) angles evenly spaced in [-max_angle, max_angle] degrees, counter-clockwise as
    displayed (default: 31 angles, every 2 degrees, Engstrom et al.'s rotation grid). Family "rotation".
    {grid}
    ``grid``: the angles (angle_steps,). Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "Rotation"
    _family: ClassVar[str] = "rotation"
    max_angle: float = 30.0
    angle_steps: int = 31
    scale: float = 1.0
    targeted: bool = False
    interpolation: str = "nearest"
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self._validate_geometric()
        _set_axis(self, "angle_steps", "max_angle")

    def _budget(self) -> list[str]:
        return [f"max_angle={self.max_angle:g}", f"angle_steps={self.angle_steps}"]

    @property
    def grid(self) -> np.ndarray:
        """The angles in degrees at scale 1, float64 (angle_steps,)."""
        return np.linspace(-self.max_angle, self.max_angle, self.angle_steps)

    def _moves(self) -> np.ndarray:
        return _offsets(self.angle_steps, angle=self.grid)

    def _name(self) -> str:
        return f"Rotation {self.max_angle * self.scale:g}deg ({self.angle_steps})"


@dataclass(frozen=True, repr=False)
class Translation(_GeometricAttack):
    """The worst of a grid of shifts: ``Translation(max_shift=3)(model, x, y)``.

    ``shift_steps`` (odd) offsets evenly spaced in [-max_shift, max_shift] pixels for each of dx (right) and dy
    (down): shift_steps ** 2 grid points (default: 7 x 7, every whole pixel up to 3). Family "translation".
    {grid}
    ``grid``: the (dx, dy) points (shift_steps ** 2, 2). Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "Translation"
    _family: ClassVar[str] = "translation"
    max_shift: float = 3.0
    shift_steps: int = 7
    scale: float = 1.0
    targeted: bool = False
    interpolation: str = "nearest"
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self._validate_geometric()
        _set_axis(self, "shift_steps", "max_shift")

    def _budget(self) -> list[str]:
        return [f"max_shift={self.max_shift:g}", f"shift_steps={self.shift_steps}"]

    @property
    def grid(self) -> np.ndarray:
        """The (dx, dy) shifts in pixels at scale 1, float64 (shift_steps ** 2, 2)."""
        shifts = np.linspace(-self.max_shift, self.max_shift, self.shift_steps)
        dx, dy = np.meshgrid(shifts, shifts, indexing="ij")
        return np.stack([dx.ravel(), dy.ravel()], axis=1)

    def _moves(self) -> np.ndarray:
        grid = self.grid
        return _offsets(len(grid), dx=grid[:, 0], dy=grid[:, 1])

    def _name(self) -> str:
        return f"Translation {self.max_shift * self.scale:g}px ({self.shift_steps}x{self.shift_steps})"


@dataclass(frozen=True, repr=False)
class ZoomShear(_GeometricAttack):
    """The worst of a grid of zooms and shears about the image centre (the affine maps without rotation or
    shift): ``ZoomShear(max_zoom=0.2, max_shear=0.3)(model, x, y)``.

    Grid: ``zoom_steps`` (odd) zoom factors evenly spaced in [1 - max_zoom, 1 + max_zoom] for each of the width
    (zoom_x) and the height (zoom_y), times ``shear_steps`` (odd) shears in [-max_shear, max_shear]
    (:func:`affine_transform`: a row ``r`` pixels below the centre moves ``shear * r`` pixels right):
    zoom_steps ** 2 * shear_steps points (default 5 x 5 x 5 = 125). Uneven zooms and shears stretch and slant
    digits the way handwriting varies; with :class:`Rotation` they span all small affine maps. ``max_zoom`` < 1
    (zoom factors stay positive) and ``max_shear`` are fractions, not pixels or degrees. Family "zoom_shear".
    {grid}
    ``grid``: the (zoom_x, zoom_y, shear) points (grid_points, 3). Introduced in notebooks/06_unseen_attacks.ipynb.
    """

    label: ClassVar[str] = "ZoomShear"
    _family: ClassVar[str] = "zoom_shear"
    max_zoom: float = 0.2
    max_shear: float = 0.3
    zoom_steps: int = 5
    shear_steps: int = 5
    scale: float = 1.0
    targeted: bool = False
    interpolation: str = "nearest"
    clip_min: float = 0.0
    clip_max: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self._validate_geometric()
        _set_axis(self, "zoom_steps", "max_zoom")
        _set_axis(self, "shear_steps", "max_shear")
        if self.max_zoom * self.scale >= 1:
            raise ValueError(f"max_zoom * scale = {self.max_zoom * self.scale:g} must be < 1: the smallest zoom "
                             f"factor 1 - max_zoom * scale would not be positive (max_zoom=0.2 shrinks to 80 % and "
                             f"stretches to 120 %)")

    def _budget(self) -> list[str]:
        return [f"max_zoom={self.max_zoom:g}", f"max_shear={self.max_shear:g}",
                f"grid=({self.zoom_steps}, {self.zoom_steps}, {self.shear_steps})"]

    @property
    def grid(self) -> np.ndarray:
        """The (zoom_x, zoom_y, shear) points at scale 1, float64 (zoom_steps ** 2 * shear_steps, 3)."""
        zooms = 1.0 + np.linspace(-self.max_zoom, self.max_zoom, self.zoom_steps)
        shears = np.linspace(-self.max_shear, self.max_shear, self.shear_steps)
        zx, zy, s = np.meshgrid(zooms, zooms, shears, indexing="ij")
        return np.stack([zx.ravel(), zy.ravel(), s.ravel()], axis=1)

    def _moves(self) -> np.ndarray:
        grid = self.grid
        return _offsets(len(grid), zoom_x=grid[:, 0] - 1.0, zoom_y=grid[:, 1] - 1.0, shear=grid[:, 2])

    def _name(self) -> str:
        return (f"ZoomShear {100 * self.max_zoom * self.scale:g}% shear {self.max_shear * self.scale:g} "
                f"({self.zoom_steps}x{self.zoom_steps}x{self.shear_steps})")


for _spec in (Rotation, Translation, ZoomShear):
    _spec.__doc__ = _spec.__doc__.replace("{grid}", _GRID_DOC)


def _set_axis(spec: Attack, steps_name: str, max_name: str) -> None:
    """Validate one grid axis of a frozen spec and store the canonical values."""
    steps, maximum = _check_grid_axis(steps_name, getattr(spec, steps_name), max_name, getattr(spec, max_name))
    object.__setattr__(spec, steps_name, steps)
    object.__setattr__(spec, max_name, maximum)


def _check_scale(scale: Any) -> float:
    return check_number("scale", scale, low=0.0, hint="It multiplies the grid's distance from the identity; 1 is "
                                                      "the grid as given, 0 the identity.")
