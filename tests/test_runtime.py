"""tutorial_lib.runtime: profiles, seeds and determinism, build paths, results files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tutorial_lib import runtime


def test_profiles_have_all_sections():
    for name, prof in runtime.PROFILES.items():
        assert prof.name == name
        for section in ("baseline", "attacks", "adv_training", "meta", "meta_adv"):
            assert getattr(prof, section) is not None
        json.dumps(prof.to_dict())  # plain data


def test_profiles_scale_up():
    q, s, f = (runtime.PROFILES[n] for n in ("quick", "standard", "full"))
    assert q.meta.meta_steps <= s.meta.meta_steps <= f.meta.meta_steps
    assert q.attacks.eval_size <= s.attacks.eval_size <= f.attacks.eval_size


def test_profile_from_env(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "standard")
    assert runtime.get_profile().name == "standard"
    monkeypatch.delenv(runtime.PROFILE_ENV)
    assert runtime.get_profile().name == "quick"


def test_unknown_profile_lists_valid_names(monkeypatch):
    monkeypatch.setenv(runtime.PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match="quick, standard, full"):
        runtime.get_profile()


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
    m = tl.models.seed_cnn()
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


def test_display_path_hides_absolute_paths():
    shown = runtime.display_path(runtime.project_root() / "build" / "x.json")
    assert shown == os.path.join("<project>", "build", "x.json")
