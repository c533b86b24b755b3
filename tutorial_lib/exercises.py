"""Feedback on the notebooks' exercises: each ``check_*`` function tests a learner's answer.

A check prints a short verdict and returns True/False. ``None`` means "no answer yet" and gets a reminder of what
kind of answer is wanted; a wrong answer gets a hint that points to the idea, never the code or the solution.
Each chapter's checks live in its own section below, in notebook order. Teachers find worked answers in
:data:`SOLUTIONS` (``solution("03.1")`` prints one), tested against these checks in tests/test_exercises.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _missing(answer: Any, what: str) -> bool:
    """Print a reminder (what kind of answer, never the answer itself) when ``answer`` is None."""
    if answer is None:
        print(f"No answer yet: replace None with {what}, then run the cell again.")
        return True
    return False


def report(ok: bool, success: str, hint: str) -> bool:
    """Print a verdict for one exercise and return ``ok``."""
    print(("Correct: " + success) if ok else ("Not yet: " + hint))
    return bool(ok)


def close(a: Any, b: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """True when arrays/scalars ``a`` and ``b`` have the same shape and values within tolerance."""
    try:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol))


# ---------------------------------------------------------------------------------------------
# 00 setup and data
# ---------------------------------------------------------------------------------------------
def check_most_ink(answer: Any, x: np.ndarray, y: np.ndarray) -> bool:
    """Exercise 00.1: the digit whose training images have the largest mean pixel value ("most ink")."""
    if _missing(answer, "a digit 0-9"):
        return False
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    means = np.array([x[y == d].mean() for d in range(10)])
    best = int(means.argmax())
    return report(
        close(answer, best),
        f"digit {best} has the most ink (mean pixel {means[best]:.3f}; digit {int(means.argmin())} the least, "
        f"{means.min():.3f}).",
        "compare the mean pixel value of each digit's training images: which digit's images are brightest on average?",
    )


def check_weakest_digit(answer: Any, correct: Any, y: np.ndarray) -> bool:
    """Exercise 00.2: the digit on which the model is least accurate, from a boolean per test image."""
    if _missing(answer, "a digit 0-9"):
        return False
    ok, y = np.asarray(correct, dtype=bool), np.asarray(y)
    if ok.shape != y.shape:
        raise ValueError(f"correct must have one entry per label, got shapes {ok.shape} and {y.shape}")
    per_digit = np.array([ok[y == d].mean() for d in range(10)])
    worst = np.flatnonzero(per_digit == per_digit.min())
    return report(
        int(np.asarray(answer)) in worst.tolist(),
        f"the baseline is least accurate on digit {int(worst[0])} ({per_digit.min():.1%} of {int((y == worst[0]).sum())} "
        "test images); a few mistakes more or less move this, so look at the interval before calling one digit harder.",
        "measure the accuracy separately on the test images of each digit, then pick the digit where it is lowest.",
    )


def check_class_counts(counts: Any, y: np.ndarray) -> bool:
    """Exercise 00.1: the number of training images per digit, as a length-10 sequence."""
    if _missing(counts, "ten counts, one per digit"):
        return False
    expected = np.bincount(np.asarray(y), minlength=10)
    return report(
        close(counts, expected),
        f"each digit has {expected.min()}-{expected.max()} training images.",
        "count how many training labels equal each digit 0-9.",
    )


def check_pixel_range(lo: float, hi: float) -> bool:
    """Exercise 00.2: the range of pixel values the models see."""
    if _missing(lo, "the smallest pixel value") or _missing(hi, "the largest pixel value"):
        return False
    return report(
        close([lo, hi], [0.0, 1.0]),
        "pixels are float32 in [0, 1]; attacks clip to this range.",
        "look at the smallest and largest pixel value of the training images after loading.",
    )


# ---------------------------------------------------------------------------------------------
# 01 FGSM (attacks chapter adds its checks here)
# ---------------------------------------------------------------------------------------------
def check_linear_change(answer: Any, w: Any, eps: float) -> bool:
    """Exercise 01.1: the largest change of ``w @ x`` over perturbations with max-norm ``eps`` (eps * ||w||_1)."""
    if _missing(answer, "a number"):
        return False
    expected = float(eps * np.abs(np.asarray(w, dtype=np.float64)).sum())
    return report(
        close(answer, expected, rtol=1e-4),
        f"eps * ||w||_1 = {expected:.4g}, reached by eta = eps * sign(w); it grows with the number of inputs.",
        "each input may move by at most eps; move every one in the direction of its weight's sign and add up.",
    )


def check_fgsm_step(answer: Any, x: Any, grad: Any, eps: float) -> bool:
    """Exercise 01.2: one FGSM step by hand, clip(x + eps * sign(grad), 0, 1), as an array shaped like ``x``."""
    if _missing(answer, "an array shaped like x"):
        return False
    expected = np.clip(np.asarray(x, dtype=np.float64) + eps * np.sign(np.asarray(grad, dtype=np.float64)), 0.0, 1.0)
    if close(np.asarray(answer, dtype=np.float64), np.asarray(x) + eps * np.sign(grad)) \
            and not close(answer, expected):
        return report(False, "", "right direction, but some pixels left the valid range: an image the model sees must stay in [0, 1].")
    return report(
        close(answer, expected, atol=1e-6),
        "a step of eps along the gradient's sign, clipped to the valid pixel range.",
        "FGSM moves every pixel by the same amount eps; only the direction (up or down) comes from the gradient, "
        "and the result must still be a valid image.",
    )


def check_first_eps_below(answer: Any, sweep: Any, level: float = 0.5) -> bool:
    """Exercise 01.3: the smallest swept eps at which accuracy is below ``level`` (a SweepResult from the notebook)."""
    if _missing(answer, "an eps from sweep.eps"):
        return False
    below = np.flatnonzero(np.asarray(sweep.accuracy) < level)
    expected = float(sweep.eps[below[0]]) if len(below) else None
    if expected is None:
        return report(False, "", f"accuracy never drops below {level:.0%} in this sweep: widen the eps range.")
    return report(
        close(answer, expected),
        f"accuracy first drops below {level:.0%} at eps = {expected:g}.",
        f"read the sweep from the smallest eps upwards and stop at the first accuracy below {level:.0%}.",
    )


# ---------------------------------------------------------------------------------------------
# 02 iterative attacks
# ---------------------------------------------------------------------------------------------
def check_linf_projection(answer: Any, x: Any, z: Any, eps: float) -> bool:
    """Exercise 02.1: project ``z`` onto {|z - x|_inf <= eps} intersected with [0, 1] (PGD's projection)."""
    if _missing(answer, "an array shaped like x"):
        return False
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    expected = np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)
    return report(
        close(answer, expected, atol=1e-6),
        "clip to the eps-box around x, then to the pixel range (both are boxes, so the order does not matter).",
        "the projection moves each coordinate to the nearest value that is both within eps of x and a valid pixel; "
        "the coordinates do not interact.",
    )


def check_masking_diagnosis(answer: Any, model: Any, x: np.ndarray, y: np.ndarray, eps: float, *,
                            temperature: float, **sanity_options: Any) -> bool:
    """Exercise 02.2: the names of the sanity checks that ``model`` with logits times ``temperature`` fails.

    The check runs :func:`tutorial_lib.evaluate.sanity_checks` itself (with ``sanity_options``, e.g. steps,
    step_size, restarts), so it costs one sanity-check run, and only once an answer is given.
    """
    if _missing(answer, "a list of check names (an empty list if every check passes)"):
        return False
    if isinstance(answer, str):
        answer = [answer]
    from tutorial_lib import evaluate  # here, not at import time: the exercises module stays light

    masked = evaluate.saturated_model(model, temperature=temperature)
    expected = set(evaluate.sanity_checks(masked, x, y, eps, **sanity_options).failed())
    got = {str(a) for a in answer}
    return report(
        got == expected,
        f"at temperature {temperature:g} the failed checks are {sorted(expected) or 'none'}.",
        "run the sanity checks on the scaled copy with the settings of the notebook and read the verdict column; "
        "give the names exactly as the table writes them.",
    )


# ---------------------------------------------------------------------------------------------
# 03 adversarial training
# ---------------------------------------------------------------------------------------------
def check_article_perturbation(x_article: Any, x: np.ndarray, eps: float) -> bool:
    """Exercise 03.1: the input the article's formula L(x + eps, y) evaluates, as the model would see it."""
    if _missing(x_article, "an array shaped like x"):
        return False
    expected = np.clip(np.asarray(x, dtype=np.float64) + eps, 0.0, 1.0)
    return report(
        close(x_article, expected, atol=1e-6),
        "the article's formula adds eps to every pixel: one fixed corner of the eps-ball, the same for every image and "
        "chosen without looking at the loss; clipped to [0, 1] it barely changes the bright strokes.",
        "the formula adds the same number to every pixel, and the model only ever sees valid images.",
    )


def check_trades_loss(trades_loss: Any) -> bool:
    """Exercise 03.2: ``trades_loss(logits_clean, logits_adv, y, beta)`` -> the mean TRADES objective."""
    if _missing(trades_loss, "a function of (logits_clean, logits_adv, y, beta)"):
        return False
    rng = np.random.default_rng(3)
    clean, adv = rng.normal(size=(8, 10)).astype(np.float32), rng.normal(size=(8, 10)).astype(np.float32)
    y, beta = rng.integers(0, 10, 8), 6.0

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(clean), log_softmax(adv)
    expected = -lp[np.arange(8), y].mean() + beta * (np.exp(lp) * (lp - lq)).sum(axis=1).mean()
    try:
        got = float(np.asarray(trades_loss(clean, adv, y, beta)))
    except Exception as err:  # a learner's function may fail in any way; show it as feedback
        print(f"Not yet: your function raised {type(err).__name__}: {err}")
        return False
    return report(
        close(got, expected, atol=1e-4),
        "cross-entropy on clean images plus beta times KL(p(x) || p(x')), averaged over the batch.",
        "two terms: the usual cross-entropy on the clean images, plus beta times how far the prediction on the "
        "attacked image moves from the clean one (a KL divergence between the two softmax distributions, clean "
        "first), both averaged over the batch.",
    )


def check_ramp_value(answer: Any, eps: float = 0.3, ramp_epochs: int = 4, epoch: int = 1) -> bool:
    """Exercise 03.3: the radius EpsilonRamp(eps, ramp_epochs) trains with in 0-based ``epoch``."""
    if _missing(answer, "a number"):
        return False
    expected = eps * min(1.0, (epoch + 1) / ramp_epochs)
    return report(close(answer, expected), f"epoch {epoch} trains at eps {expected:g}.",
                  "the radius grows in equal steps and reaches eps in the last ramp epoch; epochs are counted "
                  "from 0, and epoch 0 already trains at a radius above 0.")


def check_pgd_cost(answer: Any, steps: int = 40) -> bool:
    """Exercise 03.4: forward-backward passes per batch of PGD-``steps`` adversarial training."""
    if _missing(answer, "an integer"):
        return False
    return report(close(answer, steps + 1), f"{steps} attack steps plus one training step: {steps + 1} forward-backward "
                  "passes per batch. Measured time grows less than that, because attack steps need no weight "
                  "gradients and no optimizer update.",
                  "count the gradient computations: one per attack step, one for the weight update.")


def check_interval_verdict(answer: Any, new: Any, reference: Any, *, n: int, key: str = "pgd40") -> bool:
    """Exercise 03.5: is ``new[key]`` higher than, lower than or not shown different from ``reference[key]``?

    ``new`` and ``reference`` are rows of accuracies (fractions, e.g. from robustness_summary) measured on the same
    ``n`` images; the answer is "higher", "lower" or "no difference" (95 % Wilson intervals, apart or overlapping).
    """
    if _missing(new, "the robustness_summary of your retrained model"):
        return False
    if _missing(answer, "'higher', 'lower' or 'no difference'"):
        return False
    from tutorial_lib import evaluate

    def interval(fraction: float) -> tuple[float, float]:
        mean, half = evaluate.accuracy_ci95(np.arange(n) < round(float(fraction) * n))
        return mean - half, mean + half

    (lo_new, hi_new), (lo_ref, hi_ref) = interval(new[key]), interval(reference[key])
    expected = "higher" if lo_new > hi_ref else ("lower" if hi_new < lo_ref else "no difference")
    got = str(answer).strip().lower()
    return report(got == expected,
                  f"{key} {float(new[key]):.1%} against {float(reference[key]):.1%} on {n} images: "
                  + ("the intervals are apart." if expected != "no difference" else
                     "the intervals overlap, so this run shows no difference."),
                  "compare the two 95% intervals, not the point values: a difference counts only when they do not "
                  "overlap.")


# ---------------------------------------------------------------------------------------------
# 04 meta-learning
# ---------------------------------------------------------------------------------------------
def check_meta_train_classes(answer: Any, *, digits: int = 5, rotations: int = 4, flips: bool = True) -> bool:
    """Exercise 04.1: meta-training classes from ``digits`` digits under ``rotations`` rotations (and flips)."""
    if _missing(answer, "a whole number"):
        return False
    expected = digits * rotations * (2 if flips else 1)
    return report(
        close(answer, expected),
        f"{digits} digits x {rotations} rotations" + (" x 2 (mirrored or not)" if flips else "") + f" = {expected} classes.",
        "every (digit, rotation, flip) combination is its own class: multiply the counts.",
    )


def check_ci95(answer: Any, accuracies: Any) -> bool:
    """Exercise 04.2: the 95% confidence half-width 1.96 * std(ddof=1) / sqrt(n) of per-task accuracies."""
    if _missing(answer, "a number (a fraction, like the accuracies)"):
        return False
    acc = np.asarray(accuracies, dtype=np.float64)
    expected = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc))
    return report(
        close(answer, expected, rtol=1e-4, atol=1e-6),
        f"the half-width is {expected:.4f}, i.e. ± {100 * expected:.1f} points over {len(acc)} tasks.",
        "the half-width is 1.96 standard errors of the mean over tasks; check the spread you used (the sample "
        "standard deviation) and the number you divided by.",
    )


def check_maml_quadratic(answer: Any, *, theta: float, a: float, b: float, alpha: float) -> bool:
    """Exercise 04.3: d/dtheta of 0.5 * (theta' - b)^2 with theta' = theta - alpha * (theta - a)."""
    if _missing(answer, "a number"):
        return False
    adapted = theta - alpha * (theta - a)
    expected = (adapted - b) * (1 - alpha)
    return report(
        close(answer, expected),
        f"theta' = {adapted:g} and d theta'/d theta = 1 - alpha, so the meta-gradient is "
        f"({adapted:g} - {b:g}) * {1 - alpha:g} = {expected:g}. First-order MAML would drop the factor {1 - alpha:g}.",
        "apply the chain rule: dL_Q/dtheta = L_Q'(theta') * d theta'/d theta, and differentiate the inner step.",
    )


# ---------------------------------------------------------------------------------------------
# 05 robust few-shot learning
# ---------------------------------------------------------------------------------------------
def check_uniform_loss(answer: Any, *, n_way: int = 5) -> bool:
    """Exercise 05.1: the cross-entropy of a model that gives every one of ``n_way`` classes the same logit."""
    if _missing(answer, "a number"):
        return False
    expected = float(np.log(n_way))
    return report(close(answer, expected, rtol=1e-4),
                  f"equal logits mean probability 1/{n_way} for the true class, so the loss is ln {n_way} = "
                  f"{expected:.4f} whatever the input: a query loss stuck there means the model has stopped "
                  "looking at the image.",
                  "softmax of equal logits is uniform; the cross-entropy is -log of the true class's probability.")


def check_worst_case_accuracy(answer: Any, runs: Any) -> bool:
    """Exercise 05.2: robust accuracy over restarts, a query broken if ANY run breaks it.

    ``runs``: bool (restarts, queries), True where the query is still classified correctly after that run.
    """
    if _missing(answer, "a fraction in [0, 1]"):
        return False
    runs = np.asarray(runs, dtype=bool)
    if runs.ndim != 2:
        raise ValueError(f"runs must be a bool array (restarts, queries), got shape {runs.shape}")
    expected = float(runs.all(axis=0).mean())
    return report(close(answer, expected, atol=1e-6),
                  f"{expected:.4f}: a query counts as robust only if it survives every run "
                  f"(the mean of the single runs is {runs.mean():.4f}, too optimistic).",
                  "a query survives only if it is correct after every run; decide that per query first, then "
                  "average over the queries.")


def check_meta_eps_ramp(answer: Any, *, eps: float, ramp_steps: int, step: int) -> bool:
    """Exercise 05.3: the training eps at 0-based meta-step ``step`` of a linear ramp over ``ramp_steps`` steps."""
    if _missing(answer, "a number"):
        return False
    expected = eps * min(1.0, step / ramp_steps)
    return report(close(answer, expected), f"meta-step {step} attacks at eps {expected:g}.",
                  "the ramp is linear from 0 at step 0 to eps at step ramp_steps, then constant.")


def check_attacked_set(answer: Any) -> bool:
    """Exercise 05.4: which set of a task Adversarial Querying attacks during meta-training."""
    if _missing(answer, "'support', 'query' or 'both'"):
        return False
    ok = isinstance(answer, str) and answer.strip().lower() == "query"
    return report(ok, "the support set stays clean (adaptation needs no adversarial examples); the queries are "
                  "attacked against the adapted weights, and the meta-gradient flows through the adaptation.",
                  "look at aq_task_gradient: which images go into inner_loop, and which into attack_adapted?")


def check_adapted_fgsm(answer: Any, logits_fn: Any, x: Any, y: Any, eps: float) -> bool:
    """Exercise 05.5: one FGSM step against adapted weights, ``clip(x + eps * sign(dL/dx), 0, 1)``.

    ``logits_fn(x)`` returns the adapted model's logits (e.g. ``lambda x: tl.meta.forward(model, params, x)``);
    the reference gradient is taken here with its own ``tf.GradientTape`` on the mean cross-entropy.
    """
    if _missing(answer, "an array of attacked queries shaped like x"):
        return False
    import tensorflow as tf

    x_t, y_t = tf.convert_to_tensor(np.asarray(x, dtype=np.float32)), tf.convert_to_tensor(np.asarray(y))
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y_t, logits_fn(x_t)))
    expected = tf.clip_by_value(x_t + eps * tf.sign(tape.gradient(loss, x_t)), 0.0, 1.0).numpy()
    try:
        got = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        got = None
    if got is None or got.shape != expected.shape:
        return report(False, "", f"the answer must have the queries' shape {expected.shape}.")
    # float sums in another order can flip the sign of a gradient that is almost exactly zero: allow 0.1 % of pixels
    agree = float(np.mean(np.abs(got - expected) <= 1e-5))
    return report(agree >= 0.999,
                  f"the queries moved by eps along the sign of the gradient at the adapted weights "
                  f"({agree:.2%} of pixels equal to the reference).",
                  "differentiate the loss of the adapted model (not of the initialisation) with respect to the "
                  "queries, step by eps along the gradient's sign and keep pixels valid.")


def check_grid_points(answer: Any, *, angle_steps: int, shift_steps: int) -> bool:
    """Exercise 06.1: forward passes per image of a spatial attack: angle_steps * shift_steps ** 2 (dx and dy)."""
    if _missing(answer, "a whole number"):
        return False
    expected = int(angle_steps) * int(shift_steps) ** 2
    return report(close(answer, expected, atol=0),
                  f"{expected}: every angle with every horizontal and every vertical shift, one forward pass each.",
                  "the grid has one point per (angle, dx, dy) combination: multiply the three axes' lengths.")


# ---------------------------------------------------------------------------------------------
# 07 applications and results
# ---------------------------------------------------------------------------------------------
def check_patch_area(answer: Any, *, size: int, height: int = 28, width: int = 28) -> bool:
    """Exercise 07.1: the fraction of a ``height`` x ``width`` image a ``size`` x ``size`` patch covers."""
    if _missing(answer, "a fraction in [0, 1]"):
        return False
    expected = size * size / (height * width)
    return report(close(answer, expected, rtol=1e-4),
                  f"{expected:.3f} of the image: the patch may change these pixels by any amount, where an "
                  "eps-ball attack changes every pixel by at most eps.",
                  "count the patch's pixels and divide by the image's pixels.")


def check_extra_breaks(answer: Any, weak: Any, strong: Any) -> bool:
    """Exercise 07.2: how many images the strong attack breaks that the weak one leaves correct.

    ``weak``, ``strong``: bool (images,), True where the image is still classified correctly after that attack.
    """
    if _missing(answer, "a whole number"):
        return False
    weak, strong = np.asarray(weak, dtype=bool), np.asarray(strong, dtype=bool)
    if weak.shape != strong.shape or weak.ndim != 1:
        raise ValueError(f"weak and strong must be bool arrays of the same length, got {weak.shape} and {strong.shape}")
    expected = int(np.sum(weak & ~strong))
    return report(close(answer, expected, atol=0),
                  f"{expected} images survive the weak attack but not the strong one (and "
                  f"{int(np.sum(~weak & strong))} the other way round): the paired view behind the gap of the two "
                  "robust accuracies.",
                  "an image counts when it is correct after the weak attack AND wrong after the strong one.")


def check_projected_hours(answer: Any, *, seconds_per_epoch: float, data_scale: float, epochs: int) -> bool:
    """Exercise 07.3: hours of ``epochs`` epochs when one epoch takes ``seconds_per_epoch`` on our data and the
    full data is ``data_scale`` times larger."""
    if _missing(answer, "a number of hours"):
        return False
    expected = seconds_per_epoch * data_scale * epochs / 3600
    return report(close(answer, expected, rtol=1e-3),
                  f"about {expected:.2g} h: time per epoch grows with the number of images, the total with the epochs.",
                  "time per epoch grows with the number of images, the total with the number of epochs; "
                  "an hour has 3,600 seconds.")


def check_center_patch(answer: Any, model: Any, x: Any, y: Any, patch: Any) -> bool:
    """Exercise 07.4: the fraction of images ``model`` misreads with ``patch`` pasted at the centre of each image."""
    if _missing(answer, "a fraction in [0, 1]"):
        return False
    from tutorial_lib import attacks

    x = np.asarray(x, dtype=np.float32)
    size, height, width = int(np.shape(patch)[0]), x.shape[1], x.shape[2]
    rows, cols = np.full(len(x), (height - size) // 2), np.full(len(x), (width - size) // 2)
    pasted = attacks.paste_patch(x, patch, rows, cols)
    expected = float(np.mean(np.asarray(model.predict(pasted, verbose=0)).argmax(-1) != np.asarray(y)))
    return report(close(answer, expected, atol=1e-6),
                  f"{expected:.1%} of the images are misread with the patch at the centre; compare with the "
                  "random positions the table uses.",
                  "paste the same patch into every image with its top-left corner at ((28 - side) // 2, "
                  "(28 - side) // 2), predict, and count the predictions that differ from the labels.")


# ---------------------------------------------------------------------------------------------
# The answer key (for teachers; learners should try first)
# ---------------------------------------------------------------------------------------------
#: Worked answers, keyed "<notebook>.<exercise>", as code or a short derivation that uses the notebook's names.
SOLUTIONS: dict[str, str] = {
    "00.1": "means = np.array([data.x_train[data.y_train == d].mean() for d in range(10)])\n"
            "answer_ink = int(means.argmax())",
    "00.2": "ok = tl.evaluate.correct(model, data.x_test, data.y_test)\n"
            "per_digit = np.array([ok[data.y_test == d].mean() for d in range(10)])\n"
            "answer_weakest = int(per_digit.argmin())",
    "01.1": "answer_1 = 0.05 * np.abs(w).sum()   # eps * ||w||_1 = 0.05 * 3.75 = 0.1875",
    "01.2": "answer_2 = np.clip(x0 + 0.2 * np.sign(g0), 0, 1)   # [0, 0.7, 1, 0.8]",
    "01.3": "answer_3 = sweep.eps[np.flatnonzero(sweep.accuracy < 0.5)[0]]",
    "02.1": "answer_1 = np.clip(np.clip(z0, x0 - 0.1, x0 + 0.1), 0, 1)   # [0, 0.6, 1, 0.35]",
    "02.2": "mild = tl.evaluate.saturated_model(model, temperature=10.0)\n"
            "answer_2 = tl.evaluate.sanity_checks(mild, x, y, 0.3, steps=a.pgd_steps, step_size=a.pgd_step_size,\n"
            "                                     restarts=a.restarts).failed()",
    "03.1": "x_article = np.clip(x_500[:8] + s.eps, 0, 1)",
    "03.2": "def trades_loss(logits_clean, logits_adv, y, beta):\n"
            "    log_p = tf.nn.log_softmax(logits_clean)\n"
            "    log_q = tf.nn.log_softmax(logits_adv)\n"
            "    ce = -tf.gather(log_p, y, batch_dims=1)\n"
            "    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)\n"
            "    return tf.reduce_mean(ce) + beta * tf.reduce_mean(kl)",
    "03.3": "answer_ramp = 0.3 * min(1, (1 + 1) / 4)   # = 0.15",
    "03.4": "answer_cost = 40 + 1   # forty attack steps, one weight update",
    "03.5": "model_ex, info_ex = tl.experiments.adversarial_training.train_cached(\n"
            "    \"03_ex_gradalign\", data, {**remedies[\"gradalign\"], \"align_weight\": 2 * s.align_weight})\n"
            "summary_ex = tl.evaluate.robustness_summary(model_ex, x_eval, y_eval, eps=s.eps, pgd_steps=s.eval_pgd_steps,\n"
            "                                            pgd_step_size=profile.attacks.pgd_step_size, restarts=0)\n"
            "# read the two intervals: apart and above -> 'higher', apart and below -> 'lower', overlapping -> 'no difference'\n"
            "answer_verdict = 'no difference'   # whatever the intervals of your run say",
    "04.1": "answer_classes = 5 * 4 * 2   # digits x rotations x (mirrored or not) = 40",
    "04.2": "answer_ci = 1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc))",
    "04.3": "theta' = 1 - 0.25 * (1 - 3) = 1.5 and d theta'/d theta = 1 - 0.25, so\n"
            "answer_grad = (1.5 - (-1)) * (1 - 0.25)   # = 1.875",
    "05.1": "answer_loss = np.log(5)   # equal logits: probability 1/5 for the true class",
    "05.2": "answer_robust = runs.all(axis=0).mean()   # survives every run",
    "05.3": "answer_eps = 0.1 * min(1, 150 / 300)   # = 0.05",
    "05.4": "answer_set = 'query'",
    "05.5": "qx, qy = tf.constant(eval_tasks.query_x[0]), tf.constant(eval_tasks.query_y[0])\n"
            "with tf.GradientTape() as tape:\n"
            "    tape.watch(qx)\n"
            "    logits = tl.meta.forward(inits[\"aq\"], params, qx)   # the ADAPTED weights\n"
            "    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(qy, logits))\n"
            "x_fgsm = tf.clip_by_value(qx + s.eps * tf.sign(tape.gradient(loss, qx)), 0.0, 1.0).numpy()",
    "06.1": "answer_points = 9 * 5 * 5   # = 225; the profile's grid: spatial.grid_points",
    "06.2": "answer_ci = 1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc))",
    "06.3": "answer_all = runs.all(axis=0).mean()   # survives every attack",
    "07.1": "answer_area = size * size / (28 * 28)",
    "07.2": "answer_extra = int(np.sum(weak & ~strong))",
    "07.3": "answer_hours = seconds_per_epoch * data_scale * epochs / 3600",
    "07.4": "side = big_patch.shape[0]\n"
            "corner = np.full(len(x_patch), (28 - side) // 2)\n"
            "pasted = tl.attacks.paste_patch(x_patch, big_patch, corner, corner)\n"
            "answer_center = float(np.mean(tl.evaluate.predict_logits(models[\"standard\"], pasted.numpy()).argmax(-1) != y_patch))",
    "07.5": "Open question: retrain with dataclasses.replace(s, patch_max_angle=15.0) and compare the untargeted success "
            "of the turned patch with the table's, at the same size, with the 95% intervals.",
}


def solution(key: str) -> str:
    """Print and return the worked answer of exercise ``key`` (e.g. ``"03.1"``), for teachers."""
    if key not in SOLUTIONS:
        raise ValueError(f"no solution for exercise {key!r}; known: {', '.join(sorted(SOLUTIONS))}")
    print(SOLUTIONS[key])
    return SOLUTIONS[key]
