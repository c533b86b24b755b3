"""Few-shot tasks for meta-learning: N-way K-shot samplers over disjoint meta-train / meta-test classes.

A *class* here is a digit, optionally seen through a fixed transformation (a rotation by 0/90/180/270
degrees, optionally after a left-right flip), so digits 0-4 can give 20 or 40 meta-training classes.
:mod:`tutorial_lib.meta` consumes the task tensors sampled here. Introduced in notebooks/04_meta_learning.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .checks import check_number, check_positive_int

ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class Tasks:
    """A batch of few-shot tasks, as numpy arrays.

    ``support_x``: float32 (tasks, n_way*k_shot, H, W, C) in [0, 1]; ``support_y``: int32 (tasks, n_way*k_shot)
    with labels 0..n_way-1 renumbered per task; ``query_x`` / ``query_y`` the same with q_queries per class;
    ``classes``: int32 (tasks, n_way), index into the sampler's ``class_names`` of the class behind label i.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.support_x)

    def __getitem__(self, index) -> "Tasks":
        """Tasks ``index`` (an int keeps a task axis of length 1; slices and index arrays work too)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return Tasks(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index],
                     self.classes[index])


@dataclass(frozen=True)
class ClassSpec:
    """One class: a digit seen through a rotation (degrees, counter-clockwise) and an optional left-right flip."""

    digit: int
    rotation: int = 0
    flip: bool = False

    @property
    def name(self) -> str:
        return f"{self.digit}" + ("f" if self.flip else "") + (f"@{self.rotation}" if self.rotation else "")


def transformed_classes(digits: Iterable[int], *, rotations: Sequence[int] = (0,), flips: bool = False) -> list[ClassSpec]:
    """Every (digit, rotation, flip) combination as a list of :class:`ClassSpec`.

    ``rotations`` are multiples of 90 degrees from ``ROTATIONS``; ``flips=True`` adds a mirrored copy of each.
    Digits 0-4 with 4 rotations give 20 classes, with flips 40. Note: a few of these are near-duplicates
    (a 0 rotated by 180 degrees still looks like a 0, a 1 like a 1), which makes some tasks ambiguous;
    they are kept because removing them by eye would be a hand-made choice the reader cannot reproduce.
    """
    digits = [int(d) for d in digits]
    bad = [r for r in rotations if r not in ROTATIONS]
    if bad:
        raise ValueError(f"rotations must be taken from {ROTATIONS} (degrees), got {list(rotations)}")
    if len(set(rotations)) != len(rotations) or len(set(digits)) != len(digits):
        raise ValueError(f"digits and rotations must not repeat, got digits={digits}, rotations={list(rotations)}")
    flip_values = (False, True) if flips else (False,)
    return [ClassSpec(d, int(r), f) for d in digits for f in flip_values for r in rotations]


def _as_specs(classes: Iterable[int | ClassSpec]) -> list[ClassSpec]:
    specs = []
    for c in classes:
        if isinstance(c, ClassSpec):
            specs.append(c)
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            specs.append(ClassSpec(int(c)))
        else:
            raise TypeError(f"classes must be digits (int) or ClassSpec, got {type(c).__name__}: {c!r}")
    return specs


def _transform(images: np.ndarray, spec: ClassSpec) -> np.ndarray:
    out = images[:, :, ::-1] if spec.flip else images
    return np.ascontiguousarray(np.rot90(out, k=spec.rotation // 90, axes=(1, 2)))


def check_disjoint(meta_train: Iterable[int | ClassSpec], meta_test: Iterable[int | ClassSpec]) -> None:
    """Raise ValueError if a digit appears on both sides (a rotated digit is the same digit for this check)."""
    train = {s.digit for s in _as_specs(meta_train)}
    test = {s.digit for s in _as_specs(meta_test)}
    shared = sorted(train & test)
    if shared:
        raise ValueError(
            f"meta-train and meta-test share digits {shared}: the test would measure memorised classes, not "
            "learning new ones. Use disjoint digit sets, e.g. meta_train=range(5), meta_test=range(5, 10)."
        )


class FewShotSampler:
    """Samples N-way K-shot tasks with Q queries per class from labelled images, vectorised and deterministic.

    ``x``: float32 (n, H, W, C) images; ``y``: int (n,) digit labels; ``classes``: the digits (or
    :class:`ClassSpec` for transformed digits) tasks are drawn from. Each task picks ``n_way`` distinct
    classes, renumbers them 0..n_way-1 in a random order, and draws ``k_shot + q_queries`` distinct images
    of each (support and query never share an image). The same ``seed`` gives the same sequence of tasks.

    Introduced in notebooks/04_meta_learning.ipynb.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, n_way: int, k_shot: int, q_queries: int,
                 classes: Iterable[int | ClassSpec], seed: int = 0) -> None:
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim != 4 or x.shape[0] != y.shape[0] or y.ndim != 1:
            raise ValueError(f"x must be (n, H, W, C) and y (n,) with the same n, got x {x.shape} and y {y.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must be float images in [0, 1] (e.g. from tl.data.load_mnist), got dtype {x.dtype}")
        n_way, k_shot, q_queries = (check_positive_int(name, value) for name, value in
                                    (("n_way", n_way), ("k_shot", k_shot), ("q_queries", q_queries)))
        if n_way < 2:
            raise ValueError(f"n_way must be >= 2 (a task tells classes apart), got {n_way}")
        self.specs = _as_specs(classes)
        if len(set(self.specs)) != len(self.specs):
            raise ValueError("classes contains duplicates; each class must appear once")
        if any(s.rotation and x.shape[1] != x.shape[2] for s in self.specs):
            raise ValueError(f"rotated classes need square images, got {x.shape[1:3]}")
        if n_way > len(self.specs):
            raise ValueError(
                f"n_way={n_way} is larger than the {len(self.specs)} classes available ({self.class_names}); "
                "lower n_way or add classes (e.g. rotations via transformed_classes)"
            )
        self.n_way, self.k_shot, self.q_queries = int(n_way), int(k_shot), int(q_queries)
        per_class = [np.flatnonzero(y == s.digit) for s in self.specs]
        counts = np.array([len(i) for i in per_class])
        need = self.k_shot + self.q_queries
        if counts.min() < need:
            short = [self.specs[i].name for i in np.flatnonzero(counts < need)]
            raise ValueError(
                f"k_shot + q_queries = {need} images per class are needed but classes {short} have only "
                f"{counts.min()}; lower k_shot or q_queries, or pool more images (e.g. train and test)"
            )
        # One padded array (classes, max_count, H, W, C): sampling is then pure fancy indexing.
        self.counts = counts
        self.pool = np.zeros((len(self.specs), counts.max(), *x.shape[1:]), dtype=np.float32)
        for i, (spec, idx) in enumerate(zip(self.specs, per_class)):
            self.pool[i, : len(idx)] = _transform(x[idx].astype(np.float32), spec)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def class_names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def num_classes(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return (f"FewShotSampler({self.n_way}-way {self.k_shot}-shot, {self.q_queries} queries, "
                f"{self.num_classes} classes {self.class_names}, seed={self.seed})")

    def labelled_images(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image of every class, transformed, as ``(x, y)`` with ``y`` int64 in 0..num_classes-1.

        This is what a pre-training baseline sees: the same classes as meta-training, as one ordinary
        classification problem.
        """
        x = np.concatenate([self.pool[i, :c] for i, c in enumerate(self.counts)])
        y = np.repeat(np.arange(self.num_classes, dtype=np.int64), self.counts)
        return x, y

    def sample(self, tasks: int, *, seed: int | None = None) -> Tasks:
        """Draw ``tasks`` tasks as a :class:`Tasks` of numpy arrays.

        Without ``seed`` the sampler's own generator advances (successive calls give new tasks, the sequence
        fixed by the constructor's seed). With ``seed`` a fresh generator is used and the sampler's state is
        untouched: ``sample(200, seed=0)`` is the same fixed test set every time, for every method.
        """
        tasks = check_positive_int("tasks", tasks)
        rng = self._rng if seed is None else np.random.default_rng([self.seed, int(seed)])
        n, k, q = self.n_way, self.k_shot, self.q_queries
        # n_way distinct classes per task, in random order (the order is the renumbering).
        cls = np.argsort(rng.random((tasks, self.num_classes)), axis=1)[:, :n]
        # k + q distinct images per chosen class: random keys, padding slots pushed to the end.
        keys = rng.random((tasks, n, self.counts.max()))
        keys[np.arange(self.counts.max()) >= self.counts[cls][..., None]] = np.inf
        img = np.argsort(keys, axis=2)[:, :, : k + q]
        images = self.pool[cls[..., None], img]  # (tasks, n, k+q, H, W, C)
        labels = np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None], (tasks, n, k + q))
        shape = images.shape[3:]
        return Tasks(
            support_x=images[:, :, :k].reshape(tasks, n * k, *shape),
            support_y=np.ascontiguousarray(labels[:, :, :k].reshape(tasks, n * k)),
            query_x=images[:, :, k:].reshape(tasks, n * q, *shape),
            query_y=np.ascontiguousarray(labels[:, :, k:].reshape(tasks, n * q)),
            classes=cls.astype(np.int32),
        )


def digit_splits(data, *, n_way: int, k_shot: int, q_queries: int, meta_train: Iterable[int] = range(5),
                 meta_test: Iterable[int] = range(5, 10), rotations: Sequence[int] = ROTATIONS,
                 flips: bool = False, pool_train_test: bool = True, seed: int = 0) -> tuple[FewShotSampler, FewShotSampler]:
    """The series' standard split: (meta-train sampler, meta-test sampler) over disjoint digits.

    ``data`` is a :class:`tutorial_lib.data.MNIST`. Meta-train classes are ``meta_train`` digits under every
    rotation in ``rotations`` (and flipped copies with ``flips``); meta-test classes are the ``meta_test``
    digits upright and unflipped, i.e. the ordinary test distribution of those digits. With
    ``pool_train_test`` the train and test images of each digit are pooled (safe: the two samplers never
    share a digit). The test sampler uses seed ``seed + 1``.
    """
    check_disjoint(meta_train, meta_test)
    if pool_train_test:
        x = np.concatenate([data.x_train, data.x_test])
        y = np.concatenate([data.y_train, data.y_test])
    else:
        x, y = data.x_train, data.y_train
    common = dict(n_way=n_way, k_shot=k_shot, q_queries=q_queries)
    train = FewShotSampler(x, y, classes=transformed_classes(meta_train, rotations=rotations, flips=flips),
                           seed=seed, **common)
    test = FewShotSampler(x, y, classes=list(meta_test), seed=seed + 1, **common)
    return train, test


def split_images(x: np.ndarray, y: np.ndarray, *, fraction: float, seed: int = 0
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split labelled images into ``((x_rest, y_rest), (x_held, y_held))``, holding out ``fraction`` of each label.

    Stratified: every label keeps ``round(fraction * count)`` of its images apart (at least one, at most all but
    one), drawn at random with ``seed``; the two parts share no image and keep the input order within each part.
    Used to hold out *validation* images of the meta-training classes (see :func:`digit_splits_with_validation`).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x must be (n, ...) images and y (n,) labels with the same n, got x {x.shape} and y {y.shape}")
    fraction = check_number("fraction", fraction, low=0.0, high=1.0, low_inclusive=False,
                            hint="It is the share of each label's images held out, e.g. 0.2.")
    if fraction == 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1 (a share of each label's images), got {fraction}")
    rng = np.random.default_rng(int(seed))
    held = np.zeros(len(y), bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        if len(idx) < 2:
            raise ValueError(f"label {label} has {len(idx)} image; each label needs at least 2 to split")
        n = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        held[rng.choice(idx, n, replace=False)] = True
    return (x[~held], y[~held]), (x[held], y[held])


def digit_splits_with_validation(data, *, n_way: int, k_shot: int, q_queries: int, validation: float = 0.2,
                                 meta_train: Iterable[int] = range(5), meta_test: Iterable[int] = range(5, 10),
                                 rotations: Sequence[int] = ROTATIONS, flips: bool = False, seed: int = 0
                                 ) -> tuple[FewShotSampler, FewShotSampler, FewShotSampler]:
    """(meta-train, validation, meta-test) samplers: :func:`digit_splits` with validation tasks.

    The images of the ``meta_train`` digits (train and test images pooled) are split by :func:`split_images`:
    ``validation`` of each digit's images go to the validation sampler, the rest to the meta-train sampler. Both
    draw tasks from the same classes (the digits under every rotation), so validation tasks measure the
    learner on *unseen images* of the training classes without touching the meta-test digits: adaptation steps,
    fine-tuning rates and recipes are chosen on them, then evaluated once on the test digits. An image is never in
    both samplers, under any rotation. The meta-test sampler is :func:`digit_splits`' (seed ``seed + 1``); the
    validation sampler uses seed ``seed + 2``.
    """
    check_disjoint(meta_train, meta_test)
    x = np.concatenate([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    train_digits = sorted({int(d) for d in meta_train})
    mine = np.isin(y, train_digits)
    (x_fit, y_fit), (x_val, y_val) = split_images(x[mine], y[mine], fraction=validation, seed=seed)
    common = dict(n_way=n_way, k_shot=k_shot, q_queries=q_queries)
    classes = transformed_classes(train_digits, rotations=rotations, flips=flips)
    train = FewShotSampler(x_fit, y_fit, classes=classes, seed=seed, **common)
    val = FewShotSampler(x_val, y_val, classes=classes, seed=seed + 2, **common)
    test = FewShotSampler(x, y, classes=list(meta_test), seed=seed + 1, **common)
    return train, val, test
