"""Tests for tutorial_lib.exercises: right answers pass, wrong or missing ones get a hint (never the answer),
and the teachers' answer key (SOLUTIONS) passes its own checks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tutorial_lib import exercises as ex


def _run(key: str, **names):
    """Execute the worked answer ``key`` with the notebook names it needs; return its namespace."""
    scope = {"np": np, "tf": tf, **names}
    exec(ex.SOLUTIONS[key], scope)  # noqa: S102 - our own answer key
    return scope


def test_answer_key_passes_the_checks(capsys):
    w = np.array([0.5, -1.0, 2.0, -0.25])
    assert ex.check_linear_change(_run("01.1", w=w)["answer_1"], w, eps=0.05)
    x0, g0 = np.array([0.0, 0.5, 0.95, 1.0]), np.array([-0.3, 2.0, 0.1, -1e-3])
    assert ex.check_fgsm_step(_run("01.2", x0=x0, g0=g0)["answer_2"], x0, g0, eps=0.2)
    x0, z0 = np.array([0.0, 0.5, 0.95, 0.3]), np.array([-0.2, 0.7, 1.2, 0.35])
    assert ex.check_linf_projection(_run("02.1", x0=x0, z0=z0)["answer_1"], x0, z0, eps=0.1)
    x = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 1))

    class S:
        eps = 0.3

    assert ex.check_seed_perturbation(_run("03.1", x=x, s=S)["x_seed"], x, 0.3)
    assert ex.check_trades_loss(_run("03.2")["trades_loss"])
    assert ex.check_ramp_value(_run("03.3")["answer_ramp"], eps=0.3, ramp_epochs=4, epoch=1)
    assert ex.check_pgd_cost(_run("03.4")["answer_cost"], steps=7)
    assert ex.check_meta_train_classes(_run("04.1")["answer_classes"], digits=5, rotations=4, flips=True)
    acc = np.random.default_rng(1).uniform(0, 1, 50)
    assert ex.check_ci95(_run("04.2", acc=acc)["answer_ci"], acc)
    answer_grad = eval(ex.SOLUTIONS["04.3"].split("answer_grad = ")[1].split("#")[0])  # noqa: S307
    assert ex.check_maml_quadratic(answer_grad, theta=1.0, a=3.0, b=-1.0, alpha=0.25)
    assert "Not yet" not in capsys.readouterr().out


def test_answer_key_for_chapter_00():
    rng = np.random.default_rng(2)
    y = np.arange(100) % 10
    x = rng.uniform(0, 0.5, (100, 4, 4, 1))
    x[y == 7] += 0.4

    class Data:
        x_train, y_train = x, y

    assert ex.check_most_ink(_run("00.1", data=Data)["answer_ink"], x, y)
    ok = np.ones(100, bool)
    ok[(y == 3)[:]] = [True] * 5 + [False] * 5
    assert ex.check_weakest_digit(3, ok, y)
    assert not ex.check_weakest_digit(4, ok, y)
    with pytest.raises(ValueError, match="one entry per label"):
        ex.check_weakest_digit(3, ok[:5], y)


def test_missing_answers_get_a_reminder_not_the_answer(capsys):
    x = np.zeros((2, 4, 4, 1))
    assert ex.check_seed_perturbation(None, x, 0.3) is False
    assert ex.check_most_ink(None, x, np.arange(2)) is False
    out = capsys.readouterr().out
    assert "No answer yet" in out and "np.clip" not in out and "eps" not in out


def test_wrong_answers_get_a_hint():
    assert ex.check_ramp_value(0.3, eps=0.3, ramp_epochs=4, epoch=1) is False
    assert ex.check_pgd_cost(7, steps=7) is False


def test_solution_prints_and_rejects_unknown_keys(capsys):
    assert ex.solution("04.1") == ex.SOLUTIONS["04.1"] and "40" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no solution"):
        ex.solution("99.9")
