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

    assert ex.check_article_perturbation(_run("03.1", x_500=x, s=S)["x_article"], x[:8], 0.3)
    assert ex.check_trades_loss(_run("03.2")["trades_loss"])
    assert ex.check_ramp_value(_run("03.3")["answer_ramp"], eps=0.3, ramp_epochs=4, epoch=1)
    assert ex.check_pgd_cost(_run("03.4")["answer_cost"], steps=40)
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
    assert ex.check_article_perturbation(None, x, 0.3) is False
    assert ex.check_most_ink(None, x, np.arange(2)) is False
    out = capsys.readouterr().out
    assert "No answer yet" in out and "np.clip" not in out and "eps" not in out


def test_wrong_answers_get_a_hint():
    assert ex.check_ramp_value(0.3, eps=0.3, ramp_epochs=4, epoch=1) is False
    assert ex.check_pgd_cost(40, steps=40) is False


def test_solution_prints_and_rejects_unknown_keys(capsys):
    assert ex.solution("04.1") == ex.SOLUTIONS["04.1"] and "40" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no solution"):
        ex.solution("99.9")


def test_every_check_treats_none_as_no_answer_yet(capsys):
    """None never gets a hint (which could give the answer away), only the reminder."""
    x, y = np.zeros((2, 4, 4, 1)), np.arange(2)

    class Sweep:
        eps, accuracy = np.array([0.0, 0.1]), np.array([0.9, 0.4])

    calls = [
        lambda: ex.check_most_ink(None, x, y), lambda: ex.check_weakest_digit(None, np.ones(2, bool), y),
        lambda: ex.check_class_counts(None, y), lambda: ex.check_pixel_range(None, None),
        lambda: ex.check_linear_change(None, np.ones(3), 0.1), lambda: ex.check_fgsm_step(None, np.zeros(3), np.ones(3), 0.1),
        lambda: ex.check_first_eps_below(None, Sweep), lambda: ex.check_linf_projection(None, np.zeros(3), np.ones(3), 0.1),
        lambda: ex.check_masking_diagnosis(None, None, x, y, 0.3, temperature=10.0),
        lambda: ex.check_article_perturbation(None, x, 0.3), lambda: ex.check_trades_loss(None),
        lambda: ex.check_ramp_value(None), lambda: ex.check_pgd_cost(None),
        lambda: ex.check_interval_verdict(None, None, {"pgd40": 0.5}, n=100),
        lambda: ex.check_interval_verdict(None, {"pgd40": 0.5}, {"pgd40": 0.5}, n=100),
        lambda: ex.check_meta_train_classes(None), lambda: ex.check_ci95(None, np.ones(5)),
        lambda: ex.check_maml_quadratic(None, theta=1.0, a=3.0, b=-1.0, alpha=0.25),
        lambda: ex.check_uniform_loss(None), lambda: ex.check_worst_case_accuracy(None, np.ones((2, 3), bool)),
        lambda: ex.check_meta_eps_ramp(None, eps=0.1, ramp_steps=300, step=150),
        lambda: ex.check_attacked_set(None), lambda: ex.check_adapted_fgsm(None, None, x, y, 0.1),
        lambda: ex.check_grid_points(None, angle_steps=9, shift_steps=5), lambda: ex.check_patch_area(None, size=14),
        lambda: ex.check_extra_breaks(None, np.ones(2, bool), np.ones(2, bool)),
        lambda: ex.check_projected_hours(None, seconds_per_epoch=2.0, data_scale=15.0, epochs=80),
        lambda: ex.check_center_patch(None, None, x, y, np.zeros((2, 2, 1))),
    ]
    for call in calls:
        assert call() is False
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(calls) and all(line.startswith("No answer yet") for line in lines)
    assert not any("np." in line or "Not yet" in line for line in lines)


def test_hints_do_not_contain_the_answer_key(capsys):
    """A wrong answer's hint names the idea; it never repeats the code of the worked answer."""
    ex.check_linf_projection(np.zeros(4), np.array([0.0, 0.5, 0.95, 0.3]), np.array([-0.2, 0.7, 1.2, 0.35]), eps=0.1)
    ex.check_fgsm_step(np.zeros(4), np.array([0.0, 0.5, 0.95, 1.0]), np.array([-0.3, 2.0, 0.1, -1e-3]), eps=0.2)
    ex.check_ci95(0.5, np.linspace(0, 1, 20))
    ex.check_article_perturbation(np.zeros((2, 4, 4, 1)), np.ones((2, 4, 4, 1)) * 0.5, 0.3)
    out = capsys.readouterr().out
    assert out.count("Not yet") == 4
    assert "np.clip" not in out and "np.sign" not in out and "np.std" not in out and "ddof=1" not in out


def test_interval_verdict():
    ref = {"pgd40": 0.50}
    assert ex.check_interval_verdict("higher", {"pgd40": 0.70}, ref, n=1000)
    assert ex.check_interval_verdict("lower", {"pgd40": 0.30}, ref, n=1000)
    assert ex.check_interval_verdict("no difference", {"pgd40": 0.51}, ref, n=1000)
    assert not ex.check_interval_verdict("higher", {"pgd40": 0.51}, ref, n=1000)


def _tiny_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])


def test_adapted_fgsm_matches_a_hand_written_step():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (5, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 5)
    params = [tf.constant(w) * 0.5 for w in model.get_weights()]   # "adapted" weights that differ from the model's
    logits_fn = lambda xb: model.stateless_call(params, [], xb)[0]   # noqa: E731
    scope = _run("05.5", tl=type("tl", (), {"meta": type("meta", (), {"forward": staticmethod(
        lambda m, p, xb: m.stateless_call(p, [], xb)[0])})}), inits={"aq": model}, params=params, s=type("S", (), {"eps": 0.1}),
        eval_tasks=type("T", (), {"query_x": x[None], "query_y": y[None]}))
    assert ex.check_adapted_fgsm(scope["x_fgsm"], logits_fn, x, y, 0.1)
    # the same step against the model's own weights is a different answer
    own = _run("05.5", tl=type("tl", (), {"meta": type("meta", (), {"forward": staticmethod(
        lambda m, p, xb: m(xb))})}), inits={"aq": model}, params=params, s=type("S", (), {"eps": 0.1}),
        eval_tasks=type("T", (), {"query_x": x[None], "query_y": y[None]}))["x_fgsm"]
    if not np.array_equal(own, scope["x_fgsm"]):
        assert not ex.check_adapted_fgsm(own, logits_fn, x, y, 0.1)


def test_center_patch_and_masking_checks_run_their_own_reference():
    import tutorial_lib as tl

    model = _tiny_model(1)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1, (12, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 12)
    patch = rng.uniform(0, 1, (2, 2, 1)).astype("float32")
    pasted = x.copy()
    pasted[:, 2:4, 2:4] = patch
    expected = float(np.mean(model.predict(pasted, verbose=0).argmax(-1) != y))
    assert ex.check_center_patch(expected, model, x, y, patch)
    assert not ex.check_center_patch(expected + 0.5, model, x, y, patch)
    failed = tl.evaluate.sanity_checks(tl.evaluate.saturated_model(model, temperature=10.0), x, y, 0.3, steps=2,
                                       restarts=2).failed()
    assert ex.check_masking_diagnosis(failed, model, x, y, 0.3, temperature=10.0, steps=2, restarts=2)
    assert not ex.check_masking_diagnosis([*failed, "no_such_check"], model, x, y, 0.3, temperature=10.0, steps=2,
                                          restarts=2)


def test_every_exercise_of_the_notebooks_has_a_solution():
    import json
    import pathlib
    import re

    keys = set()
    for path in sorted(pathlib.Path(__file__).parents[1].glob("notebooks/0[0-7]_*.ipynb")):
        number = path.name[:2]
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code" and "tl.exercises.check_" in "".join(cell["source"]):
                keys.add(number)
    assert keys, "no exercise cells found"
    assert all(any(k.startswith(n + ".") for k in ex.SOLUTIONS) for n in keys)
    assert all(re.fullmatch(r"0[0-7]\.[0-9]", k) for k in ex.SOLUTIONS)
