"""Tests for tutorial_lib.experiments.meta_learning: options from the profile, baselines, tables."""

from __future__ import annotations

import dataclasses
import types

import keras
import numpy as np
import pytest

from tutorial_lib import meta, models, runtime
from tutorial_lib.experiments import meta_learning as exp


def test_method_options_and_config_follow_the_profile(mnist_subset):
    s = runtime.get_profile("quick").meta
    opts = exp.method_options("maml", s)
    assert opts["inner_lr"] == s.inner_lr and opts["inner_steps"] == s.train_steps
    assert isinstance(exp.method_options("reptile", s)["meta_optimizer"], keras.optimizers.SGD)
    with pytest.raises(ValueError, match="method must be one of"):
        exp.method_options("protonet", s)
    config = exp.meta_config("fomaml", 1, s, mnist_subset)
    assert config["method"] == "fomaml" and config["meta_steps"] == s.meta_steps
    assert config != exp.meta_config("fomaml", 5, s, mnist_subset)  # the shot count is part of the cache key


def test_finetune_init_keeps_the_body_and_zeroes_the_head():
    pretrained = models.few_shot_cnn(20, filters=8, blocks=2)
    model = exp.finetune_init(pretrained, 5)
    assert model.output_shape == (None, 5)
    for got, want in zip(model.get_weights()[:-2], pretrained.get_weights()[:-2]):
        np.testing.assert_array_equal(got, want)
    assert all(not np.any(w) for w in model.get_weights()[-2:])
    x = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_array_equal(model(x).numpy(), np.zeros((4, 5)))  # every class starts equal


def test_scratch_init_is_seeded():
    s = runtime.get_profile("quick").meta
    a, b, c = exp.scratch_init(s, seed=1), exp.scratch_init(s, seed=1), exp.scratch_init(s, seed=2)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_accuracy_and_gradient_tables():
    ev = types.SimpleNamespace(mean=0.5, ci95=0.02, steps=10, lr=0.4)
    table = exp.accuracy_table({"maml": {"1shot": ev, "5shot": ev}, "scratch": {"5shot": ev}})
    assert "| maml | 50.0 ± 2.0% (10 steps, lr 0.4) | 50.0 ± 2.0% (10 steps, lr 0.4) |" in table
    assert "| scratch |  | 50.0 ± 2.0%" in table
    g = {"maml": np.array([1.0, 0.0]), "fomaml": np.array([1.0, 1.0])}
    table = exp.gradient_table(g)
    assert "| fomaml | 1.4142 | 0.707 | 1.000 |" in table


def test_learned_rate_methods_train_cache_their_rates_and_evaluate(mnist_subset):
    s = dataclasses.replace(runtime.get_profile("quick").meta, meta_steps=3, filters=4, blocks=2, eval_tasks=4,
                            lslr_train_steps=2)
    opts = exp.method_options("lslr", s)
    assert opts["inner_steps"] == 2 and opts["inner_lr"] == s.lslr_inner_lr and opts["zero_head"] == s.zero_head
    assert exp.method_options("metasgd", s)["inner_steps"] == s.metasgd_train_steps
    assert exp.meta_config("lslr", 1, s, mnist_subset) != exp.meta_config("metasgd", 1, s, mnist_subset)
    model, info = exp.meta_train("lslr", 1, mnist_subset, s, verbose=0, keep_copy=False)
    assert not info["cached"] and [r.shape for r in info["rates"]] == [(2,)] * len(model.trainable_variables)
    assert not (runtime.build_subdir("models") / "04_lslr_1shot.keras").exists()  # keep_copy=False
    again, info2 = exp.meta_train("lslr", 1, mnist_subset, s, verbose=0)
    assert info2["cached"] and all(np.array_equal(a, b) for a, b in zip(info["rates"], info2["rates"]))
    tasks = exp.samplers(mnist_subset, s, 1)[1].sample(4, seed=0)
    ev = exp.evaluate_init("lslr", again, info2, tasks, s)
    assert ev.steps == 2 and np.isnan(ev.lr)
    table = exp.accuracy_table({"lslr": {"1shot": ev}})
    assert "(2 steps, learned rates)" in table
    # a plain method evaluates at its inner rate
    assert exp.evaluate_init("maml", again, {}, tasks, s).lr == s.inner_lr
