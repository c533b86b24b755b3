"""tutorial_lib.data: the bundled subset, checksums, truncated files and the fallback order."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from tutorial_lib import data


def _write_mnist_npz(path: Path, n_train: int = 20, n_test: int = 10) -> Path:
    rng = np.random.default_rng(1)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=(np.arange(n_train) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=(np.arange(n_test) % 10).astype(np.uint8),
    )
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No data dir, an empty keras cache and a download that fails like it does without internet."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_network(*args, **kwargs):
        raise data.urllib.error.URLError("no network in tests")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    return tmp_path


def test_subset_shapes_dtype_range_and_balance(mnist_subset):
    d = mnist_subset
    assert d.source == "subset"
    assert d.x_train.shape == (4000, 28, 28, 1) and d.x_test.shape == (1000, 28, 28, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_train.max() == 1.0
    assert np.array_equal(np.bincount(d.y_train, minlength=10), np.full(10, 400))
    assert np.array_equal(np.bincount(d.y_test, minlength=10), np.full(10, 100))
    (x_train, y_train), (x_test, y_test) = d  # unpacks like keras.datasets.mnist.load_data
    assert x_train is d.x_train and y_test is d.y_test


def test_subset_is_real_mnist_not_noise(mnist_subset):
    # Real digits: mostly background, a few bright strokes; class means differ clearly.
    x = mnist_subset.x_train[..., 0]
    assert 0.1 < (x > 0.5).mean() < 0.25
    means = np.stack([x[mnist_subset.y_train == c].mean(0) for c in range(10)])
    assert np.abs(means[0] - means[1]).sum() > 20


def test_subset_checksum_matches_file_and_readme():
    path = data.subset_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.SUBSET_SHA256
    readme = (Path(__file__).resolve().parents[1] / "data" / "README.md").read_text()
    assert data.SUBSET_SHA256 in readme and data.FULL_SHA256 in readme


def test_checksum_mismatch_names_file(tmp_path):
    bad = _write_mnist_npz(tmp_path / "mnist.npz")
    with pytest.raises(data.DataError, match=re.escape(str(bad)) + ".*corrupt or truncated"):
        data.verify_sha256(bad, data.FULL_SHA256)


def test_truncated_file_is_an_error_not_used(tmp_path):
    good = _write_mnist_npz(tmp_path / "good.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.load_mnist("full", path=cut)


def test_corrupt_file_in_data_dir_is_rejected_by_sha256(offline, monkeypatch, tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    _write_mnist_npz(folder / "mnist.npz")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    with pytest.raises(data.DataError, match="sha256"):
        data.load_mnist("auto")


def test_explicit_path_is_used_first(offline, tmp_path):
    path = _write_mnist_npz(tmp_path / "mine.npz", n_train=30, n_test=10)
    d = data.load_mnist("auto", path=path)
    assert d.x_train.shape == (30, 28, 28, 1) and d.origin == str(path)


def test_wrong_arrays_are_reported(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match="missing arrays"):
        data.load_mnist("full", path=path)


def test_auto_falls_back_to_subset_with_one_visible_note(offline):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = data.load_mnist("auto")
    notes = [w for w in caught if "bundled" in str(w.message)]
    assert d.source == "subset" and len(notes) == 1


def test_full_unavailable_says_how_to_get_it(offline):
    with pytest.raises(data.DataError, match=f"{data.DATA_DIR_ENV}.*subset"):
        data.load_mnist("full")


def test_failed_download_leaves_no_partial_file(offline):
    with pytest.raises(data.urllib.error.URLError):
        data.download_full()
    folder = data.keras_cache_path().parent
    assert not list(folder.glob("*")), "a failed download must not leave a partial or unverified file"


@pytest.mark.parametrize("source", ["mnist", "", None, 3])
def test_bad_source(source):
    with pytest.raises(ValueError, match="source must be one of"):
        data.load_mnist(source)


def test_subset_with_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="path is only used"):
        data.load_mnist("subset", path=tmp_path / "x.npz")


def test_no_pickle_anywhere():
    src = Path(data.__file__).read_text()
    assert "allow_pickle=True" not in src and "import pickle" not in src


def test_wheel_ships_the_subset(tmp_path):
    """A wheel install must find the bundled file (force-included from the single copy in data/)."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)]
    try:  # offline: build with the backend already installed here instead of fetching it into an isolated env
        import hatchling  # noqa: F401

        command.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        unreachable = ("No matching distribution found for hatchling", "Could not find a version that satisfies",
                       "Failed to establish a new connection", "Temporary failure in name resolution",
                       "Network is unreachable", "ConnectTimeout", "ReadTimeout")
        if "--no-build-isolation" not in command and any(m in done.stderr for m in unreachable):
            pytest.skip("the build backend (hatchling) is not installed here and the package index is unreachable; "
                        "install it (pip install hatchling) to run this test offline")
        raise AssertionError(f"pip wheel failed:\n{done.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("tutorial_lib-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read("tutorial_lib/_data/mnist_subset.npz")
    assert hashlib.sha256(blob).hexdigest() == data.SUBSET_SHA256
