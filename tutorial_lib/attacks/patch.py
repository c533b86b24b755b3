"""Adversarial patch: one universal sticker, trained over random placements, that makes a model misread images.

:func:`paste_patch` pastes (and turns) a patch; :class:`AdversarialPatch` trains one (Brown et al. 2017), pastes it
and measures how often it fools the model. Not a per-example attack: the patch is trained once, then reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from .. import compiled
from ..checks import check_bool, check_count, check_images_and_labels, check_number, check_positive_int
from ._runner import check_clip, check_in_range, num_classes, prepare

__all__ = ["paste_patch", "AdversarialPatch"]

_PATCH_OPTIMIZERS = ("adam", "sign")


def paste_patch(x: Any, patch: Any, rows: Any, cols: Any, angles: Any = None) -> tf.Tensor:
    """Paste ``patch`` into each image with its top-left corner at (rows[i], cols[i]); TensorFlow ops only.

    ``x``: float tensor (B, H, W, C); ``patch``: (s, s, C); ``rows``, ``cols``: int (B,), each in
    0..H-s / 0..W-s. ``angles`` (radians, (B,) or None) turns the patch counter-clockwise (as displayed) about
    the centre of its square, nearest-pixel: the turned patch is cut to its square, and square pixels it no
    longer covers keep the image. Pixels outside the square are never changed. Differentiable with respect to
    ``patch`` (a gather), so it can be trained through. Introduced in notebooks/07_applications.ipynb.
    """
    x = tf.convert_to_tensor(x)
    patch = tf.cast(tf.convert_to_tensor(patch), x.dtype)
    size, height, width = patch.shape[0], x.shape[1], x.shape[2]
    r = tf.range(height, dtype=tf.float32)[None, :, None]
    c = tf.range(width, dtype=tf.float32)[None, None, :]
    top = tf.cast(rows, tf.float32)[:, None, None]
    left = tf.cast(cols, tf.float32)[:, None, None]
    inside = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)  # (B, H, W)
    half = (size - 1) / 2.0
    dr, dc = r - top - half, c - left - half  # offsets from the square's centre
    if angles is None:
        pr, pc = dr + 0.0 * dc + half, dc + 0.0 * dr + half
    else:  # the output pixel q shows the patch pixel R^T q (R: the turn), as in spatial_transform
        cos = tf.cos(tf.cast(angles, tf.float32))[:, None, None]
        sin = tf.sin(tf.cast(angles, tf.float32))[:, None, None]
        pr, pc = tf.round(sin * dc + cos * dr + half), tf.round(cos * dc - sin * dr + half)
    valid = inside & (pr >= 0) & (pr <= size - 1) & (pc >= 0) & (pc <= size - 1)
    index = (tf.cast(tf.clip_by_value(pr, 0, size - 1), tf.int32) * size
             + tf.cast(tf.clip_by_value(pc, 0, size - 1), tf.int32))
    canvas = tf.gather(tf.reshape(patch, [size * size, -1]), index)  # (B, H, W, C)
    return tf.where(valid[..., None], canvas, x)


@dataclass(frozen=True, repr=False)
class AdversarialPatch:
    """A universal adversarial patch (Brown et al. 2017, "Adversarial Patch"): one ``size`` x ``size`` sticker
    that, pasted anywhere on an image, makes the model misread it (``target=None``) or read ``target``.

    :meth:`fit` trains the patch over random images and random placements (expectation over placements; and
    over turns in [-max_angle, max_angle] degrees when ``max_angle`` > 0): each of ``steps`` steps draws
    ``batch_size`` images and a position (and angle) per image, and moves the patch to raise the
    cross-entropy of the true class (targeted: lower that of the target) with Adam (``optimizer="adam"``,
    rate ``learning_rate``) or signed steps of ``learning_rate`` (``"sign"``), then clips it to
    [clip_min, clip_max]. One compiled ``tf.function`` step, traced once per fit. The start is a uniform random
    patch from ``seed``, the same patch :meth:`random_patch` gives as the control.
    :meth:`apply` pastes a patch at given positions; :meth:`success_rate` measures it over random placements.
    ``jit_compile``: XLA for the compiled step or not (None: :func:`tutorial_lib.compiled.use_xla` decides).
    Not an :class:`Attack`: a patch is trained once on many images, then reused (universal, not per example).
    Introduced in notebooks/07_applications.ipynb.
    """

    size: int
    target: int | None = None
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: str = "adam"
    max_angle: float = 0.0
    clip_min: float = 0.0
    clip_max: float = 1.0
    seed: int = 0
    jit_compile: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_positive_int("size", self.size))
        if self.target is not None:
            if isinstance(self.target, bool) or not isinstance(self.target, (int, np.integer)) or self.target < 0:
                raise ValueError(f"target must be None (untargeted) or a class id >= 0, got {self.target!r}")
            object.__setattr__(self, "target", int(self.target))
        object.__setattr__(self, "steps", check_positive_int("steps", self.steps))
        object.__setattr__(self, "batch_size", check_positive_int("batch_size", self.batch_size))
        object.__setattr__(self, "learning_rate", check_number("learning_rate", self.learning_rate, low=0.0,
                                                               low_inclusive=False))
        if self.optimizer not in _PATCH_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_PATCH_OPTIMIZERS}, got {self.optimizer!r}")
        angle = check_number("max_angle", self.max_angle)
        if not 0 <= angle <= 180:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {angle}")
        object.__setattr__(self, "max_angle", angle)
        clip_min, clip_max = check_clip(self.clip_min, self.clip_max)
        object.__setattr__(self, "clip_min", clip_min)
        object.__setattr__(self, "clip_max", clip_max)
        object.__setattr__(self, "seed", check_count("seed", self.seed))
        if self.jit_compile is not None:
            object.__setattr__(self, "jit_compile", check_bool("jit_compile", self.jit_compile))

    def __repr__(self) -> str:
        parts = [f"size={self.size}"]
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default or f.name in ("target", "steps"):
                parts.append(f"{f.name}={value!r}")
        return f"AdversarialPatch({', '.join(parts)})"

    @property
    def targeted(self) -> bool:
        """Whether the patch aims at a class (``target`` is not None)."""
        return self.target is not None

    @property
    def family(self) -> str:
        """Always "patch" (not one of the pool families: a patch is not a per-example attack)."""
        return "patch"

    @property
    def name(self) -> str:
        """E.g. "Patch 9x9" or "Patch 9x9 -> 3"."""
        return f"Patch {self.size}x{self.size}" + ("" if self.target is None else f" -> {self.target}")

    # ----------------------------------------------------------------------------------------------
    def random_patch(self, channels: int = 1, *, seed: int | None = None) -> np.ndarray:
        """A uniform random patch (size, size, channels) in [clip_min, clip_max]: the control, and fit's start."""
        channels = check_positive_int("channels", channels)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return rng.uniform(self.clip_min, self.clip_max, (self.size, self.size, channels)).astype(np.float32)

    def random_positions(self, n: int, image_shape: tuple[int, ...], *, seed: int | None = None) -> np.ndarray:
        """``n`` top-left corners (row, col), int64 (n, 2), uniform over the places the patch fits."""
        height, width = self._check_fits(image_shape)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        return np.stack([rng.integers(0, height - self.size + 1, n), rng.integers(0, width - self.size + 1, n)], 1)

    def _check_fits(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        if len(image_shape) != 3:
            raise ValueError(f"the patch needs images of shape (batch, height, width, channels), got images of "
                             f"shape (batch, {', '.join(map(str, image_shape))}); add a channel axis with x[..., None]")
        height, width = int(image_shape[0]), int(image_shape[1])
        if self.size > min(height, width):
            raise ValueError(f"a {self.size} x {self.size} patch does not fit in {height} x {width} images; "
                             "use a smaller size")
        return height, width

    def _check_patch(self, patch: Any, channels: int) -> np.ndarray:
        patch = np.asarray(patch).astype(np.float32)
        if patch.shape != (self.size, self.size, channels):
            raise ValueError(f"patch must have shape {(self.size, self.size, channels)} (size, size, channels of "
                             f"the images), got {patch.shape}")
        if not np.all(np.isfinite(patch)) or patch.min() < self.clip_min or patch.max() > self.clip_max:
            raise ValueError(f"patch pixels must be finite and in [{self.clip_min}, {self.clip_max}]")
        return patch

    def _random_placements(self, seed: tf.Tensor, n: Any, height: int, width: int) -> tuple:
        fold = tf.random.experimental.stateless_fold_in
        rows = tf.random.stateless_uniform([n], fold(seed, 1), 0, height - self.size + 1, dtype=tf.int32)
        cols = tf.random.stateless_uniform([n], fold(seed, 2), 0, width - self.size + 1, dtype=tf.int32)
        angles = None
        if self.max_angle > 0:
            limit = self.max_angle * np.pi / 180.0
            angles = tf.random.stateless_uniform([n], fold(seed, 3), -limit, limit)
        return rows, cols, angles

    def _loss(self, model: Any, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(loss to minimise, success per example) of patched images x."""
        logits = tf.cast(model(x, training=False), tf.float32)
        labels = tf.fill(tf.shape(y), self.target) if self.targeted else tf.cast(y, tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return (tf.reduce_mean(ce), hit) if self.targeted else (-tf.reduce_mean(ce), tf.logical_not(hit))

    def _prepare_images(self, model: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
        x, y = prepare(model, x, y, self.clip_min, self.clip_max)
        height, width = self._check_fits(x.shape[1:])
        if self.targeted:
            n_classes = num_classes(model, x)
            if self.target >= n_classes:
                raise ValueError(f"target must be in 0..{n_classes - 1} (the model has {n_classes} outputs), "
                                 f"got {self.target}")
        return x, y, height, width

    # ----------------------------------------------------------------------------------------------
    def fit(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Train the patch on images ``x`` (B, H, W, C) in range with true labels ``y`` (B,); numpy patch out.

        Returns float32 (size, size, C) in [clip_min, clip_max]. Same seed, same patch.
        """
        x, y, height, width = self._prepare_images(model, x, y)
        patch = tf.Variable(self.random_patch(x.shape[-1]), name="patch")
        optimizer = None
        if self.optimizer == "adam":
            import keras

            optimizer = keras.optimizers.Adam(self.learning_rate)
            optimizer.build([patch])
        images, labels = tf.constant(x), tf.constant(y)
        n, batch = len(x), self.batch_size

        def step(seed: tf.Tensor) -> tf.Tensor:
            compiled.count_trace(model)  # Python side effect: runs only while tracing
            pick = tf.random.stateless_uniform([batch], seed, 0, n, dtype=tf.int32)
            xb, yb = tf.gather(images, pick), tf.gather(labels, pick)
            rows, cols, angles = self._random_placements(seed, batch, height, width)
            with tf.GradientTape() as tape:
                loss, _ = self._loss(model, paste_patch(xb, patch, rows, cols, angles), yb)
            grad = tape.gradient(loss, patch)
            if optimizer is None:
                patch.assign_sub(self.learning_rate * tf.sign(grad))
            else:
                optimizer.apply_gradients([(grad, patch)])
            patch.assign(tf.clip_by_value(patch, self.clip_min, self.clip_max))
            return loss

        step_fn = tf.function(step, input_signature=[tf.TensorSpec((2,), tf.int64)],
                              jit_compile=compiled.use_xla(self.jit_compile))
        seeds = np.random.default_rng(self.seed).integers(0, 2**62, size=(self.steps, 2))
        for seed in seeds:
            step_fn(tf.constant(seed))
        return patch.numpy()

    def apply(self, x: Any, patch: Any, positions: Any, angles: Any = None) -> np.ndarray:
        """Paste ``patch`` at ``positions`` (int (B, 2) top-left (row, col)); ``angles`` in degrees (B,) or None.

        Numpy in and out; see :func:`paste_patch`. Pixels outside each square are returned unchanged.
        """
        x = check_images_and_labels(x, np.zeros(len(np.asarray(x)), np.int64))[0]
        x = check_in_range(x, self.clip_min, self.clip_max)
        height, width = self._check_fits(x.shape[1:])
        patch = self._check_patch(patch, x.shape[-1])
        positions = np.asarray(positions)
        if positions.shape != (len(x), 2) or not np.issubdtype(positions.dtype, np.integer):
            raise ValueError(f"positions must be integer (row, col) pairs of shape ({len(x)}, 2), got "
                             f"{positions.dtype} {positions.shape}")
        if (positions.min(0) < 0).any() or positions[:, 0].max() > height - self.size or positions[:, 1].max() > width - self.size:
            raise ValueError(f"positions must keep the patch inside the image: rows in 0..{height - self.size}, "
                             f"cols in 0..{width - self.size}")
        if angles is not None:
            angles = tf.constant(np.radians(np.asarray(angles).astype(np.float64)).reshape(len(x)), tf.float32)
        return paste_patch(tf.constant(x), patch, positions[:, 0], positions[:, 1], angles).numpy()

    def success_rate(self, model: Any, x: Any, y: Any, patch: Any, *, placements: int = 1,
                     seed: int | None = None, batch_size: int = 1000) -> float:
        """Fraction of (image, random placement) pairs the patch fools: misread (targeted: read as ``target``).

        Each image gets ``placements`` random positions (and turns in [-max_angle, max_angle] when max_angle > 0,
        as in training), drawn from ``seed`` (default: the spec's seed + 1, not the training draws). Targeted:
        images whose true class is the target are left out. Pass correctly classified images to measure what
        the patch adds to the model's own errors.
        """
        x, y, height, width = self._prepare_images(model, x, y)
        patch = tf.constant(self._check_patch(patch, x.shape[-1]))
        placements = check_positive_int("placements", placements)
        batch_size = check_positive_int("batch_size", batch_size)
        if self.targeted:
            keep = y != self.target
            if not keep.any():
                raise ValueError(f"every image is of the target class {self.target}: nothing to measure")
            x, y = x[keep], y[keep]

        @tf.function(input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32),
                                      tf.TensorSpec((None,), tf.int64), tf.TensorSpec((2,), tf.int64)],
                     jit_compile=compiled.use_xla(self.jit_compile))
        def fooled(xb: tf.Tensor, yb: tf.Tensor, seed_t: tf.Tensor) -> tf.Tensor:
            rows, cols, angles = self._random_placements(seed_t, tf.shape(xb)[0], height, width)
            return self._loss(model, paste_patch(xb, patch, rows, cols, angles), yb)[1]

        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        hits = 0
        for _ in range(placements):
            for start in range(0, len(x), batch_size):
                seed_t = tf.constant(rng.integers(0, 2**62, size=2), tf.int64)
                hits += int(tf.reduce_sum(tf.cast(fooled(tf.constant(x[start:start + batch_size]),
                                                         tf.constant(y[start:start + batch_size]), seed_t), tf.int32)))
        return hits / (len(x) * placements)

    def __call__(self, model: Any, x: Any, y: Any) -> np.ndarray:
        """Fit the patch on (x, y), then paste it at random positions (from the spec's seed + 1): numpy out."""
        patch = self.fit(model, x, y)
        x = np.asarray(x).astype(np.float32)
        positions = self.random_positions(len(x), x.shape[1:], seed=self.seed + 1)
        return self.apply(x, patch, positions)
