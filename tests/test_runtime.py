"""tutorial_lib.runtime: seeds and determinism, strategies, build paths, results files (profiles: test_profiles.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tutorial_lib import runtime


def test_setup_reads_the_profile_from_env(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "standard")
    assert runtime.setup(seed=0, verbose=False).name == "standard"
    monkeypatch.setenv(runtime.PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match="quick, standard, full"):
        runtime.setup(seed=0, verbose=False)


def test_build_dir_override_and_results_roundtrip(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.BUILD_ENV, str(tmp_path / "b"))
    import numpy as np

    path = runtime.save_results("99_test", {"acc": np.float32(0.5), "n": np.int64(3), "v": np.arange(2)})
    assert path == tmp_path / "b" / "results" / "99_test.json"
    assert runtime.load_results("99_test") == {"acc": 0.5, "n": 3, "v": [0, 1], "profile": "quick"}
    with pytest.raises(FileNotFoundError, match="run notebooks/98_missing.ipynb"):
        runtime.load_results("98_missing")


def test_build_dir_defaults_to_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.BUILD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # independent of the working directory
    assert runtime.build_dir() == runtime.project_root() / "build"


_FIRST_EPOCH_LOSS = textwrap.dedent(
    """
    import os, numpy as np
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tutorial_lib as tl
    tl.runtime.setup(seed=int(os.environ["SEED"]), verbose=False)
    d = tl.data.load_subset()
    m = tl.models.article_cnn()
    h = tl.models.train_classifier(m, d.x_train[:512], d.y_train[:512], epochs=1, batch_size=64, verbose=0)
    print(repr(h.history["loss"][0]))
    """
)


def _first_epoch_loss(seed: int) -> float:
    env = {**os.environ, "SEED": str(seed)}
    out = subprocess.run([sys.executable, "-c", _FIRST_EPOCH_LOSS], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_same_seed_same_first_epoch_loss():
    # Separate processes: nothing but the seed carries over.
    a, b, c = _first_epoch_loss(0), _first_epoch_loss(0), _first_epoch_loss(1)
    assert a == b
    assert a != c


def test_setup_reports_and_returns_profile(capsys):
    prof = runtime.setup(seed=0, profile="quick")
    out = capsys.readouterr().out
    assert prof.name == "quick"
    assert "profile      : quick" in out and "tensorflow" in out and "determinism  : on" in out


def test_bad_seed():
    with pytest.raises(TypeError, match="seed must be an int"):
        runtime.set_seed("0")


def test_strategy_on_cpu_is_default_strategy():
    import tensorflow as tf

    strat = runtime.strategy()
    assert strat.num_replicas_in_sync >= 1
    if not tf.config.list_physical_devices("GPU"):
        assert strat is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="at least one device"):
        runtime.strategy(devices=[])
    with pytest.raises(ValueError, match="unknown strategy 'multiworker'; valid names are auto, mirrored, multi-worker"):
        runtime.strategy("multiworker")
    assert runtime.strategy("mirrored").num_replicas_in_sync >= 1


def test_is_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert runtime.is_chief()
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert runtime.is_chief() is chief


def test_display_path_hides_absolute_paths():
    shown = runtime.display_path(runtime.project_root() / "build" / "x.json")
    assert shown == os.path.join("<project>", "build", "x.json")
