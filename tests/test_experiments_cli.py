"""tutorial_lib.experiments.cli: a chapter's training from the shell (``python -m
tutorial_lib.experiments.robust_few_shot --profile ... --strategy ...``) writes the models and results the notebook
reads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tutorial_lib import data as tl_data
from tutorial_lib import models, profiles, runtime
from tutorial_lib.experiments import cli
from tutorial_lib.experiments import robust_few_shot as rfs


def test_help_names_profiles_and_strategies(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main("robust_few_shot", ["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "python -m tutorial_lib.experiments.robust_few_shot" in out
    assert "{quick,standard,full}" in out and "{auto,mirrored,multi-worker}" in out and "TF_CONFIG" in out


def test_bad_arguments_say_what_is_valid(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main("robust_few_shot", ["--strategy", "multiworker"])
    assert stop.value.code == 2 and "invalid choice: 'multiworker'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="chapters with a command line: robust_few_shot"):
        cli.parser("robust-few-shot")


def test_tiny_run_writes_what_the_notebook_reads(monkeypatch, mnist_subset, tmp_path, capsys):
    monkeypatch.setenv(runtime.BUILD_ENV, str(tmp_path))
    quick = profiles.PROFILES["quick"]
    tiny = dataclasses.replace(quick.meta_adv, meta_steps=2, eval_tasks=2, eval_pgd_steps=2, eval_restarts=5,
                               at_epochs=1, at_finetune_steps=2, q_queries=3, at_select_tasks=2,
                               at_select_steps=(0, 2), at_select_lrs=(0.1,), strong_tasks=2, strong_steps=2,
                               strong_restarts=1)
    monkeypatch.setitem(profiles.PROFILES, "quick", dataclasses.replace(quick, meta_adv=tiny))
    small = {}
    for split in ("train", "test"):
        x, y = getattr(mnist_subset, f"x_{split}"), getattr(mnist_subset, f"y_{split}")
        keep = np.concatenate([np.flatnonzero(y == d)[:30] for d in range(10)])
        small[f"x_{split}"], small[f"y_{split}"] = x[keep], y[keep]
    data = dataclasses.replace(mnist_subset, **small)
    monkeypatch.setattr(tl_data, "load_mnist", lambda source="auto", **_: data)

    assert cli.main("robust_few_shot", ["--profile", "quick", "--verbose", "0"]) == 0
    result = json.loads((tmp_path / "results" / f"{rfs.RESULTS_NAME}.json").read_text())
    assert set(result["methods"]) == set(rfs.COMPARED) and result["tasks"] == 2 and result["profile"] == "quick"
    # the fields the notebook passes: AT transfer's fine-tuning chosen on validation tasks, every method's training
    # compute, the strong column
    at = result["methods"]["at_transfer"]
    assert at["selection"]["chosen_on"] == "validation" and at["selection"]["validation_tasks"] == 2
    assert (at["test_steps"], at["inner_lr"]) == (at["selection"]["steps"], at["selection"]["lr"])
    assert all(isinstance(row["gradient_evaluations"], int) for row in result["methods"].values())
    assert result["strong_eval"]["methods"] == list(rfs.STRONG_COLUMN) and result["strong_eval"]["tasks"] == 2
    assert {p.name for p in (tmp_path / "models").glob("05_*.keras")} == \
        {f"05_{m}.keras" for m in (*rfs.META_TRAINED, "at_transfer")}
    # the notebook's own calls now load these models instead of training them
    inits = {m: rfs.meta_train(m, data, tiny, verbose=0) for m in rfs.META_TRAINED}
    assert all(info["cached"] for _, info in inits.values())
    assert rfs.at_classifier(data, tiny, verbose=0)[1]["cached"]
    saved = models.load_model(tmp_path / "models" / "05_aq.keras")
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), inits["aq"][0].get_weights()))


def test_workers_other_than_the_chief_cache_apart(monkeypatch, tmp_path):
    import tensorflow as tf

    monkeypatch.setenv(runtime.BUILD_ENV, str(tmp_path))
    seen = []
    monkeypatch.setattr(runtime, "strategy", lambda kind: tf.distribute.get_strategy())  # no cluster needed here
    monkeypatch.setitem(cli._RUNNERS, "robust_few_shot",
                        lambda profile, strategy, *, chief, seed, verbose: seen.append((chief, runtime.build_dir())))
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index in (0, 1):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        cli.main("robust_few_shot", ["--strategy", "multi-worker", "--verbose", "0"])
    assert seen == [(True, tmp_path), (False, tmp_path / "workers" / "1")]
    # one strategy's worth of agreement: a single replica has nothing to compare
    cli.agree_on_cache(tf.distribute.get_strategy(), {"05_aq": True})
