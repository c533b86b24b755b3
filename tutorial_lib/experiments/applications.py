"""Notebook 07's experiments: the adversarial sticker, the cross-checks with CleverHans and ART, the cost table.

Reads ``profile.applications`` (and the settings of notebooks 03 and 05 for their models); the patch is
:class:`tutorial_lib.attacks.AdversarialPatch`, the attacks are :mod:`tutorial_lib.attacks` and, when the
``peers`` extra is installed, CleverHans' and ART's own. Results go to ``build/results/07_applications.json``.
Introduced in notebooks/07_applications_and_results.ipynb.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from .. import attacks, evaluate, meta, runtime
from . import adversarial_training, robust_few_shot

RESULTS_NAME = "07_applications"
#: The models the patch is measured on, in table order.
MODELS = ("standard", "pgd_at", "aq")
LABELS = {"standard": "standard CNN (03)", "pgd_at": "PGD-AT CNN (03)", "aq": "AQ, adapted to digits 5-9 (05)"}
#: The digits the AQ model is adapted to (its meta-test digits); label i is digit AQ_DIGITS[i].
AQ_DIGITS = (5, 6, 7, 8, 9)
PEER_KEYS = ("ours_pgd", "cleverhans_pgd", "art_pgd", "ours_pgd100_restarts5", "art_apgd")
INSTALL_PEERS = "pip install -e '.[peers]'   (or: make peers)"


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def load_models(data, profile, *, verbose: bool = False) -> dict[str, keras.Model]:
    """The standard and PGD-AT CNNs of notebook 03 and the AQ initialisation of notebook 05, through their
    drivers (loaded from ``build/cache`` when notebooks 03 and 05 have run, trained otherwise).

    Returns ``{"standard", "pgd_at", "aq_init"}``; ``aq_init`` is a 5-way few-shot learner that still has to be
    adapted to a task (:func:`aq_classifier`).
    """
    at = adversarial_training
    s = profile.adv_training
    standard, _ = at.train_cached("03_none", data, at.recipe("none", s), verbose=verbose)
    pgd_at, _ = at.train_cached("03_pgd", data, at.recipe("pgd", s), verbose=verbose)
    aq, _ = robust_few_shot.meta_train("aq", data, profile.meta_adv, verbose=2 if verbose else 0)
    return {"standard": standard, "pgd_at": pgd_at, "aq_init": aq}


def digit_subset(x: np.ndarray, y: np.ndarray, digits=AQ_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``digits`` with labels renumbered 0..len(digits)-1 in the order given."""
    digits = list(digits)
    keep = np.isin(y, digits)
    lookup = np.full(10, -1, np.int64)
    lookup[digits] = np.arange(len(digits))
    return x[keep], lookup[y[keep]]


def aq_classifier(aq_init: keras.Model, data, settings, *, seed: int = 0) -> tuple[keras.Model, np.ndarray]:
    """The AQ learner adapted to one fixed 5-way task: digits 5, 6, 7, 8, 9 as labels 0..4.

    Its support set is ``settings.k_shot`` training images per digit drawn with ``seed``; it adapts as in
    notebook 05 (``settings.train_steps`` SGD steps at ``settings.inner_lr`` from its zero head). Returns the
    adapted model (a new Keras model; ``aq_init`` is unchanged) and the indices of the support images in
    ``data.x_train`` (leave them out when training or measuring a patch).
    """
    x, y = data.x_train, data.y_train
    rng = np.random.default_rng(seed)
    support = np.concatenate([rng.choice(np.flatnonzero(y == d), settings.k_shot, replace=False) for d in AQ_DIGITS])
    sx, sy = digit_subset(x[support], y[support])
    adapted = meta.inner_loop(aq_init, meta.params_of(aq_init), tf.constant(sx), tf.constant(sy, tf.int32),
                              steps=settings.train_steps, lr=settings.inner_lr, first_order=True)
    clone = keras.models.clone_model(aq_init)
    clone.set_weights(aq_init.get_weights())
    for var, value in zip(clone.trainable_variables, adapted):
        var.assign(value)
    return clone, support


def patch_data(name: str, model: keras.Model, data, settings, *, support: np.ndarray | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Training and measuring images for the patch on model ``name``.

    Training: the training images (AQ: digits 5-9 relabelled, its support images left out). Measuring: up to
    ``settings.patch_eval_size`` test images the model classifies correctly (so a success is the patch's doing),
    drawn at random with ``seed``. Returns ``{"x_train", "y_train", "x_eval", "y_eval"}``.
    """
    xt, yt, xe, ye = data.x_train, data.y_train, data.x_test, data.y_test
    if name == "aq":
        if support is not None:
            keep = np.ones(len(xt), bool)
            keep[support] = False
            xt, yt = xt[keep], yt[keep]
        xt, yt = digit_subset(xt, yt)
        xe, ye = digit_subset(xe, ye)
    ok = evaluate.correct(model, xe, ye)
    idx = np.flatnonzero(ok)
    idx = np.sort(np.random.default_rng(seed).permutation(idx)[:settings.patch_eval_size])
    return {"x_train": xt, "y_train": yt, "x_eval": xe[idx], "y_eval": ye[idx]}


def target_label(name: str, digit: int) -> int:
    """The label of ``digit`` for model ``name`` (the AQ classifier numbers digits 5-9 as 0..4)."""
    if name == "aq":
        if digit not in AQ_DIGITS:
            raise ValueError(f"the AQ classifier knows digits {AQ_DIGITS}; choose a target among them, got {digit}")
        return AQ_DIGITS.index(digit)
    return int(digit)


# --------------------------------------------------------------------------------------------------
# The adversarial patch
# --------------------------------------------------------------------------------------------------
def patch_spec(settings, size: int, *, target: int | None = None, seed: int = 0) -> attacks.AdversarialPatch:
    """The :class:`~tutorial_lib.attacks.AdversarialPatch` of the profile at ``size`` pixels."""
    return attacks.AdversarialPatch(size=size, target=target, steps=settings.patch_steps,
                                    batch_size=settings.patch_batch, learning_rate=settings.patch_lr,
                                    max_angle=settings.patch_max_angle, seed=seed)


@contextlib.contextmanager
def _quiet_tf():
    """Silence TensorFlow's retracing warnings (one small graph per patch size is expected here)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def patch_curves(models: dict[str, keras.Model], sets: dict[str, dict[str, np.ndarray]], settings, *,
                 seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Train untargeted and targeted patches at every size of ``settings.patch_sizes`` for each model and measure
    them (success over one random placement per image), with the random patch of the same size as control.

    ``models`` and ``sets`` are keyed alike (``sets`` from :func:`patch_data`). Returns the ``"patch"`` entry of
    the results: ``sizes``, ``target`` (a digit), ``untargeted`` / ``targeted`` / ``random_patch``: ``{model:
    [fraction per size]}``, ``n_eval`` ``{model: images}``, ``seconds`` ``{model: training seconds}`` and the
    trained ``patches`` (``{model: {"untargeted"|"targeted": [array per size]}}``, dropped when saving).
    """
    sizes = [int(v) for v in settings.patch_sizes]
    out: dict[str, Any] = {"sizes": sizes, "target": int(settings.patch_target), "untargeted": {}, "targeted": {},
                           "random_patch": {}, "n_eval": {}, "seconds": {}, "patches": {}}
    with _quiet_tf():
        for name, model in models.items():
            d = sets[name]
            target = target_label(name, settings.patch_target)
            rows = {"untargeted": [], "targeted": [], "random_patch": []}
            kept: dict[str, list] = {"untargeted": [], "targeted": []}
            start = time.perf_counter()
            for size in sizes:
                for kind, tgt in (("untargeted", None), ("targeted", target)):
                    spec = patch_spec(settings, size, target=tgt, seed=seed)
                    patch = spec.fit(model, d["x_train"], d["y_train"])
                    kept[kind].append(patch)
                    rows[kind].append(spec.success_rate(model, d["x_eval"], d["y_eval"], patch))
                    if tgt is None:
                        rows["random_patch"].append(spec.success_rate(model, d["x_eval"], d["y_eval"],
                                                                      spec.random_patch(d["x_eval"].shape[-1])))
            seconds = time.perf_counter() - start
            for kind in rows:
                out[kind][name] = rows[kind]
            out["n_eval"][name] = int(len(d["x_eval"]))
            out["seconds"][name] = seconds
            out["patches"][name] = kept
            if verbose:
                print(f"{name}: {2 * len(sizes)} patches trained and measured in {seconds:.0f} s")
    return out


def patch_table(patch: dict[str, Any]) -> str:
    """Markdown: success rate (95% interval) per model and size, untargeted, targeted and the random control."""
    sizes, target = patch["sizes"], patch["target"]
    lines = ["| model | patch | " + " | ".join(f"{s} x {s}" for s in sizes) + " |", "|---" * (len(sizes) + 2) + "|"]
    for name in patch["untargeted"]:
        n = patch["n_eval"][name]
        for kind, label in (("untargeted", "trained, misread"), ("targeted", f"trained, read as {target}"),
                            ("random_patch", "random (control), misread")):
            if name in patch.get(kind, {}):
                cells = [_pct_ci(v, n) for v in patch[kind][name]]
                lines.append(f"| {LABELS.get(name, name)} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def success_ci(patch: dict[str, Any], name: str, kind: str, index: int) -> tuple[float, float]:
    """(success fraction, half-width of its 95% interval) of model ``name``'s ``kind`` patch ("untargeted",
    "targeted" or "random_patch") at size number ``index``, over its ``n_eval`` images (Wilson, as
    :func:`tutorial_lib.evaluate.accuracy_ci95`)."""
    value, n = float(patch[kind][name][index]), int(patch["n_eval"][name])
    return value, float(evaluate.accuracy_ci95(np.arange(n) < int(round(value * n)))[1])


def _pct_ci(fraction: float, n: int) -> str:
    hits = np.arange(n) < int(round(float(fraction) * n))
    _, half = evaluate.accuracy_ci95(hits)
    return f"{100 * fraction:.1f} ± {100 * half:.1f}%"


# --------------------------------------------------------------------------------------------------
# CleverHans and ART (the ``peers`` extra)
# --------------------------------------------------------------------------------------------------
def peers_available() -> bool:
    """True when CleverHans and the Adversarial Robustness Toolbox can be imported."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("cleverhans", "art"))
    except (ImportError, ValueError):  # a broken or blocked installation counts as missing
        return False


def _art(module: str):
    """Import ``art.<module>`` without ART's warning that PyTorch is missing (we use its TensorFlow side only)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"art.{module}")


def num_classes_of(model: keras.Model) -> int:
    """The number of classes ``model`` scores (the last axis of its output)."""
    classes = model.output_shape[-1]
    if not isinstance(classes, int) or classes < 2:
        raise ValueError(f"model must output one logit per class (at least 2), got output shape {model.output_shape}")
    return classes


def art_classifier(model: keras.Model, *, num_classes: int | None = None, input_shape: tuple[int, ...] = (28, 28, 1)):
    """``model`` (logits) wrapped as an ART ``TensorFlowV2Classifier`` with the cross-entropy on logits and pixel
    range [0, 1]; ``num_classes`` defaults to the model's output size. Needs the ``peers`` extra."""
    TensorFlowV2Classifier = _art("estimators.classification").TensorFlowV2Classifier
    return TensorFlowV2Classifier(model=model, nb_classes=num_classes or num_classes_of(model), input_shape=input_shape,
                                  loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                  clip_values=(0.0, 1.0))


def _one_hot(model: keras.Model, y: np.ndarray) -> np.ndarray:
    return np.eye(num_classes_of(model), dtype=np.float32)[y]


def peer_attacks(model: keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, steps: int,
                 step_size: float) -> dict[str, np.ndarray]:
    """Adversarial examples from three implementations of the same PGD (L-inf, ``steps`` steps of ``step_size``,
    no random start, so all three are deterministic and must agree): ``{"ours_pgd", "cleverhans_pgd", "art_pgd"}``.
    CleverHans and ART need the ``peers`` extra."""
    ours = attacks.PGD(eps=eps, steps=steps, step_size=step_size, random_start=False)
    out = {"ours_pgd": evaluate.adversarial_examples(model, x, y, ours)}
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    out["cleverhans_pgd"] = projected_gradient_descent(
        lambda z: model(z, training=False), tf.constant(x), eps, step_size, steps, np.inf, clip_min=0.0,
        clip_max=1.0, y=tf.constant(y), rand_init=False, sanity_checks=False).numpy()
    art_pgd = _art("attacks.evasion").ProjectedGradientDescent(art_classifier(model), norm=np.inf, eps=eps, eps_step=step_size,
                                       max_iter=steps, num_random_init=0, batch_size=len(x), verbose=False)
    out["art_pgd"] = art_pgd.generate(x, y=_one_hot(model, y))
    return out


def pgd_agreement(model: keras.Model, x: np.ndarray, y: np.ndarray, settings, *, eps: float) -> dict[str, Any]:
    """Our PGD, CleverHans' and ART's with identical settings (``settings.peer_pgd_steps`` steps of
    ``settings.peer_step_size``, no random start) on the same images: ``{"correct": {key: bool array},
    "accuracy": {key: fraction}, "max_pixel_gap": {peer: largest pixel difference to ours}, "images_differing":
    {peer: images with a pixel more than 1e-3 away from ours}, "clean": fraction}``
    with keys ``ours_pgd``, ``cleverhans_pgd``, ``art_pgd``. Works for any logits classifier (the AQ learner after
    adaptation has 5 classes). Needs the ``peers`` extra."""
    s = settings
    clean = evaluate.correct(model, x, y)
    with _quiet_tf():  # ART's classifier retraces its forward pass per batch shape and warns about it
        advs = peer_attacks(model, x, y, eps=eps, steps=s.peer_pgd_steps, step_size=s.peer_step_size)
    correct = {key: clean & evaluate.correct(model, np.asarray(xa), y) for key, xa in advs.items()}
    diff = {k: np.abs(np.asarray(advs[k]) - advs["ours_pgd"]).reshape(len(x), -1).max(axis=1)
            for k in ("cleverhans_pgd", "art_pgd")}
    return {"correct": correct, "accuracy": {k: float(np.mean(v)) for k, v in correct.items()},
            "max_pixel_gap": {k: float(d.max()) for k, d in diff.items()},
            "images_differing": {k: int(np.sum(d > 1e-3)) for k, d in diff.items()}, "clean": float(np.mean(clean))}


def apgd_examples(model: keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, steps: int,
                  restarts: int) -> dict[str, np.ndarray]:
    """ART's AutoAttack-style APGD with the cross-entropy and the DLR loss: ``{"ce": x_adv, "dlr": x_adv}``."""
    AutoProjectedGradientDescent = _art("attacks.evasion").AutoProjectedGradientDescent
    clf = art_classifier(model)
    out = {}
    for key, loss in (("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")):
        apgd = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                            nb_random_init=restarts, batch_size=len(x), loss_type=loss, verbose=False)
        out[key] = apgd.generate(x, y=_one_hot(model, y))
    return out


def peer_comparison(model: keras.Model, x: np.ndarray, y: np.ndarray, settings, *, eps: float,
                    use_peers: bool | None = None) -> dict[str, Any]:
    """Robust accuracies of ``model`` (the PGD-AT CNN) on the same images ``x, y`` under: our PGD, CleverHans' PGD
    and ART's PGD with identical settings; our PGD-``strong_steps`` x ``strong_restarts`` (random starts, broken if
    any restart breaks it); ART's APGD (broken if the CE or the DLR run breaks it).

    Returns ``{"accuracy": {key: fraction or None}, "correct": {key: bool array}, "max_pixel_gap": {...},
    "images_differing": {...}, "clean": fraction}`` (the middle two as :func:`pgd_agreement`) with the
    keys of :data:`PEER_KEYS` (None when the ``peers`` extra is missing or ``use_peers`` is False). An image counts
    as robust only if it is classified correctly both clean and attacked.
    """
    use_peers = peers_available() if use_peers is None else bool(use_peers)
    s = settings
    clean = evaluate.correct(model, x, y)
    correct: dict[str, np.ndarray] = {}
    gaps: dict[str, float] = {}
    differing: dict[str, int] = {}
    if use_peers:
        agreement = pgd_agreement(model, x, y, s, eps=eps)
        correct.update(agreement["correct"])
        gaps = agreement["max_pixel_gap"]
        differing = agreement["images_differing"]
        with _quiet_tf():
            apgd = apgd_examples(model, x, y, eps=eps, steps=s.apgd_steps, restarts=s.apgd_restarts)
        correct["art_apgd_ce"] = clean & evaluate.correct(model, apgd["ce"], y)
        correct["art_apgd_dlr"] = clean & evaluate.correct(model, apgd["dlr"], y)
        correct["art_apgd"] = correct["art_apgd_ce"] & correct["art_apgd_dlr"]
    else:
        ours = attacks.PGD(eps=eps, steps=s.peer_pgd_steps, step_size=s.peer_step_size, random_start=False)
        correct["ours_pgd"] = clean & evaluate.correct(model, evaluate.adversarial_examples(model, x, y, ours), y)
    strong = attacks.PGD(eps=eps, steps=s.strong_steps, step_size=2.5 * eps / s.strong_steps, random_start=True,
                         restarts=s.strong_restarts, seed=0)
    correct["ours_pgd100_restarts5"] = clean & evaluate.correct(model, evaluate.adversarial_examples(model, x, y, strong), y)
    accuracy = {k: (float(np.mean(correct[k])) if k in correct else None) for k in PEER_KEYS}
    return {"accuracy": accuracy, "correct": correct, "max_pixel_gap": gaps, "images_differing": differing,
            "clean": float(np.mean(clean))}


PEER_TITLES = {
    "ours_pgd": "tl.attacks.PGD",
    "cleverhans_pgd": "CleverHans projected_gradient_descent",
    "art_pgd": "ART ProjectedGradientDescent",
    "ours_pgd100_restarts5": "tl.attacks.PGD-100 x restarts (random starts)",
    "art_apgd": "ART APGD, CE and DLR (broken if either breaks it)",
    "art_apgd_ce": "ART APGD, cross-entropy",
    "art_apgd_dlr": "ART APGD, DLR",
}


def peers_table(comparison: dict[str, Any], settings, *, keys: tuple[str, ...] | None = None) -> str:
    """Markdown: robust accuracy with its 95% interval per attack implementation ("not installed" when missing).

    ``comparison`` is a :func:`peer_comparison` or :func:`pgd_agreement` result; ``keys`` picks rows (default: all
    of :func:`peer_comparison`'s)."""
    s = settings
    lines = ["| attack | settings | robust accuracy |", "|---|---|---|"]
    same = f"PGD-{s.peer_pgd_steps}, step {s.peer_step_size}, no random start"
    how = {"ours_pgd": same, "cleverhans_pgd": same, "art_pgd": same,
           "ours_pgd100_restarts5": f"PGD-{s.strong_steps}, step 2.5 eps / {s.strong_steps}, {s.strong_restarts} restarts",
           "art_apgd": f"{s.apgd_steps} iterations, {s.apgd_restarts} random start(s) per loss",
           "art_apgd_ce": f"{s.apgd_steps} iterations", "art_apgd_dlr": f"{s.apgd_steps} iterations"}
    for key in keys or (*PEER_KEYS[:4], "art_apgd_ce", "art_apgd_dlr", "art_apgd"):
        c = comparison["correct"].get(key)
        if c is None and key in ("art_apgd_ce", "art_apgd_dlr"):
            continue
        cell = "not installed: " + INSTALL_PEERS if c is None else _acc_ci(c)
        lines.append(f"| {PEER_TITLES[key].replace('restarts', str(s.strong_restarts) + ' restarts') if key == 'ours_pgd100_restarts5' else PEER_TITLES[key]} | {how[key]} | {cell} |")
    return "\n".join(lines)


def _acc_ci(correct: np.ndarray) -> str:
    mean, half = evaluate.accuracy_ci95(np.asarray(correct, bool))
    return f"{100 * mean:.1f} ± {100 * half:.1f}%"


# --------------------------------------------------------------------------------------------------
# TensorFlow features, measured small
# --------------------------------------------------------------------------------------------------
def time_call(fn: Callable[[], Any], *, repeats: int = 5) -> tuple[float, float]:
    """(first call seconds, median of ``repeats`` later calls in seconds) of ``fn``."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def gradient_step_timings(model_fn: Callable[[], keras.Model], x: np.ndarray, y: np.ndarray, *,
                          repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Time one forward + backward pass (gradients with respect to the weights) of a fresh model from
    ``model_fn`` on ``x, y``: eagerly, in one ``tf.function``, in one XLA-compiled ``tf.function`` (``jit_compile``),
    and in a ``tf.function`` under Keras' mixed-precision policy (bfloat16 on CPU, float16 on GPU); and one forward
    pass in a ``tf.function`` with and without XLA.

    Returns ``{variant: {"first_seconds", "seconds"}}`` (the first call includes tracing and compiling), or
    ``{variant: {"error": message}}`` when TensorFlow refuses to run a variant (e.g. XLA has no deterministic
    gradient for max-pooling, so it fails while ``tl.runtime.setup`` keeps ops deterministic).
    """
    xt, yt = tf.constant(x), tf.constant(y)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def backward(model):
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(yt, tf.cast(model(xt, training=True), tf.float32))
            return tape.gradient(loss, model.trainable_variables)
        return step

    def forward(model):
        return lambda: model(xt, training=False)

    def measure(fn):
        try:
            first, sec = time_call(fn, repeats=repeats)
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as err:
            return {"error": str(err.message).splitlines()[0]}
        return {"first_seconds": first, "seconds": sec}

    model = model_fn()
    graph = {"autograph": False}
    out = {"forward + backward, eager": measure(backward(model)),
           "forward + backward, tf.function": measure(tf.function(backward(model), **graph)),
           "forward + backward, tf.function + XLA": measure(tf.function(backward(model), jit_compile=True, **graph)),
           "forward, tf.function": measure(tf.function(forward(model), **graph)),
           "forward, tf.function + XLA": measure(tf.function(forward(model), jit_compile=True, **graph))}
    previous = keras.mixed_precision.global_policy().name
    try:
        policy = runtime.set_mixed_precision(True)
        out[f"forward + backward, tf.function, {policy}"] = measure(tf.function(backward(model_fn()), **graph))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return out


def timings_table(timings: dict[str, dict[str, Any]]) -> str:
    """Markdown of :func:`gradient_step_timings`: milliseconds per call and first call (tracing included)."""
    lines = ["| variant | ms per call | first call, ms |", "|---|---|---|"]
    for name, t in timings.items():
        if "error" in t:
            lines.append(f"| {name} | fails: {t['error'][:90]} | - |")
        else:
            lines.append(f"| {name} | {1000 * t['seconds']:.1f} | {1000 * t['first_seconds']:.0f} |")
    return "\n".join(lines)


def bench_numbers(bench_dir: Path | None = None) -> dict[str, Any]:
    """Numbers of the benchmark scripts found under ``build/bench`` (empty when ``make bench`` has not run):
    ``compiled_vs_eager_meta_step`` (benchmarks/meta.py) and any XLA rows of benchmarks/attacks.py."""
    bench_dir = Path(bench_dir) if bench_dir is not None else runtime.build_dir() / "bench"
    out: dict[str, Any] = {}
    meta_file = bench_dir / "meta.json"
    if meta_file.is_file():
        data = json.loads(meta_file.read_text())
        if "speedup_compiled_vs_eager" in data:
            out["compiled_vs_eager_meta_step"] = float(data["speedup_compiled_vs_eager"])
    attacks_file = bench_dir / "attacks.json"
    if attacks_file.is_file():
        data = json.loads(attacks_file.read_text())
        rows = data.get("rows", data) if isinstance(data, dict) else data
        items = rows.items() if isinstance(rows, dict) else ((r.get("method", str(i)), r) for i, r in enumerate(rows))
        xla = {str(k): r.get("seconds") for k, r in items if isinstance(r, dict) and "XLA" in str(k) + str(r.get("method", ""))}
        if xla:
            out["attacks_xla_rows"] = xla
    return out


# --------------------------------------------------------------------------------------------------
# Cost of every method of notebooks 03-06, from their results files
# --------------------------------------------------------------------------------------------------
def _load(name: str, results_dir: Path) -> dict[str, Any] | None:
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cost_rows(profile, *, results_dir: Path | None = None, full=None,
              train_images: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per method of notebooks 03-06 with its measured cost and that cost projected to the ``full`` profile.

    Rows: ``{"notebook", "method", "unit" ("epoch" or "meta-step"), "seconds" (per unit, measured),
    "units" (in this profile), "full_units", "full_seconds" (projected)}``. Projection: adversarial training
    scales per epoch with the data (60,000 / ``train_images``) and with the attack's forward-backward passes
    ((full PGD steps + 1) / (our steps + 1) for PGD-AT and TRADES); meta-training scales with meta-steps and the
    meta-batch. The second item lists the results files that are missing, with the notebook that writes them.
    """
    from ..runtime import get_profile

    results_dir = Path(results_dir) if results_dir is not None else runtime.build_dir() / "results"
    full = full or get_profile("full")
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    at, fa = profile.adv_training, full.adv_training
    r03 = _load("03_adversarial_training", results_dir)
    if r03 is None:
        missing.append("03_adversarial_training.json (run notebooks/03_adversarial_training.ipynb)")
    else:
        n_train = train_images or _train_images(results_dir)
        for method, row in r03.get("methods", {}).items():
            sec = row.get("seconds_per_epoch")
            if sec is None:
                continue
            rec = adversarial_training.recipe(method, at)
            rec_full = adversarial_training.recipe(method, fa)
            passes = (rec_full.get("steps", 1) + 1) / (rec.get("steps", 1) + 1) if method in ("pgd", "trades") else 1.0
            per_epoch_full = sec * (60000 / n_train if n_train else 1.0) * passes
            rows.append({"notebook": "03", "method": method, "unit": "epoch", "seconds": float(sec),
                         "units": rec["epochs"], "full_units": rec_full["epochs"],
                         "full_seconds": per_epoch_full * rec_full["epochs"]})
        # the remedies of fast AT record their total training time over fast AT's epochs; stop + restore is fast
        # AT's own run cut short, so it has no cost of its own
        remedies = adversarial_training.fast_at_remedies(at)
        remedies_full = adversarial_training.fast_at_remedies(fa)
        for name, row in r03.get("fast_at_remedies", {}).items():
            total = row.get("train_seconds")
            if not total or name not in remedies or name == "stop_restore":
                continue
            epochs, full_epochs = remedies[name]["epochs"], remedies_full[name]["epochs"]
            sec = float(total) / epochs
            rows.append({"notebook": "03", "method": name, "unit": "epoch", "seconds": sec, "units": epochs,
                         "full_units": full_epochs,
                         "full_seconds": sec * (60000 / n_train if n_train else 1.0) * full_epochs})
    r04 = _load("04_meta_learning", results_dir)
    if r04 is None:
        missing.append("04_meta_learning.json (run notebooks/04_meta_learning.ipynb)")
    else:
        steps = int(r04.get("meta_steps", profile.meta.meta_steps))
        scale = full.meta.meta_batch / profile.meta.meta_batch
        for key, sec in r04.get("train_seconds", {}).items():
            if sec:
                rows.append(_meta_row("04", key, sec / steps, steps, full.meta.meta_steps, scale))
        for shot, row in (r04.get("lslr") or {}).items():   # MAML++'s learned per-layer per-step rates (section 9)
            if row.get("train_seconds"):
                rows.append(_meta_row("04", f"lslr_{shot}", row["train_seconds"] / steps, steps, full.meta.meta_steps,
                                      scale))
    r05 = _load("05_meta_adversarial", results_dir)
    if r05 is None:
        missing.append("05_meta_adversarial.json (run notebooks/05_meta_adversarial.ipynb)")
    else:
        ma, fm = profile.meta_adv, full.meta_adv
        scale = fm.meta_batch / ma.meta_batch
        for method, row in r05.get("methods", {}).items():
            sec = row.get("train_seconds")
            if sec and method in robust_few_shot.META_TRAINED:
                steps = robust_few_shot.meta_steps(method, ma)
                rows.append(_meta_row("05", method, sec / steps, steps, robust_few_shot.meta_steps(method, fm), scale))
    r06 = _load("06_unseen_attacks", results_dir)
    if r06 is None:
        missing.append("06_unseen_attacks.json (run notebooks/06_unseen_attacks.ipynb)")
    else:
        rows06 = _rows_06(r06, profile, full)
        rows += rows06
        if not rows06:
            missing.append("training times of notebook 06 (06_unseen_attacks.json records none; run "
                           "notebooks/06_unseen_attacks.ipynb with an empty cache to measure them)")
    return rows, missing


def _meta_row(nb: str, method: str, per_step: float, steps: int, full_steps: int, batch_scale: float) -> dict[str, Any]:
    return {"notebook": nb, "method": method, "unit": "meta-step", "seconds": float(per_step), "units": int(steps),
            "full_units": int(full_steps), "full_seconds": float(per_step * batch_scale * full_steps)}


def _rows_06(r06: dict[str, Any], profile, full) -> list[dict[str, Any]]:
    """Meta-training seconds per meta-step of notebook 06's attack-adaptive learners (held-out family and oracle),
    from its results' ``compute`` record (seconds measured when each model was trained)."""
    rows = []
    here, there = getattr(profile, "unseen", None), getattr(full, "unseen", None)
    compute = r06.get("compute") or {}
    if here is None or there is None or not isinstance(compute, dict):
        return rows
    scale = full.meta_adv.meta_batch / profile.meta_adv.meta_batch
    for method in ("meta_adv", "oracle"):
        sec = (compute.get(method) or {}).get("train_seconds")
        if isinstance(sec, (int, float)) and sec > 0:
            rows.append(_meta_row("06", method, sec / here.meta_steps, here.meta_steps, there.meta_steps, scale))
    return rows


def _train_images(results_dir: Path) -> int | None:
    r00 = _load("00_setup_and_data", results_dir)
    return int(r00["train_images"]) if r00 and "train_images" in r00 else None


def patch_gaps(patch: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per model and patch size: the trained (untargeted) patch's success minus the random patch's, and whether
    their 95 % intervals are apart. ``{model: [{"size", "gap", "apart"}, ...]}`` in the order of ``patch["sizes"]``.
    Introduced in notebooks/07_applications_and_results.ipynb.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for name in patch["untargeted"]:
        rows = []
        for i, size in enumerate(patch["sizes"]):
            (m_t, h_t), (m_r, h_r) = success_ci(patch, name, "untargeted", i), success_ci(patch, name, "random_patch", i)
            rows.append({"size": int(size), "gap": m_t - m_r, "apart": m_t - h_t > m_r + h_r})
        out[name] = rows
    return out


def cost_table(rows: list[dict[str, Any]]) -> str:
    """Markdown of :func:`cost_rows`, times in seconds (projected totals also in hours)."""
    lines = ["| notebook | method | s per unit (measured) | units here | units in full | full profile, projected |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        hours = r["full_seconds"] / 3600
        lines.append(f"| {r['notebook']} | {r['method']} | {r['seconds']:.3g} s / {r['unit']} | {r['units']} | "
                     f"{r['full_units']} | {r['full_seconds']:.3g} s ({hours:.2g} h) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------
def results(patch: dict[str, Any], comparison: dict[str, Any], settings, *, eps: float,
            aq_agreement: dict[str, Any] | None = None, aq_eps: float | None = None,
            worst_case: dict[str, Any] | None = None) -> dict[str, Any]:
    """Notebook 07's results in the series' schema: ``patch`` (sizes, target, untargeted / targeted / random_patch
    success fractions per model) and ``peers`` (robust accuracies of the PGD-AT model, None when not run), with
    the settings behind them; ``peers_aq`` holds the same three-way PGD check on the adapted AQ learner
    (:func:`pgd_agreement` at ``aq_eps``; None when not run). ``worst_case``: the PGD-AT model's worst case over
    the series' strong attacks beside ART's APGD on the same images
    (:func:`tutorial_lib.evaluate.worst_case_record`), stored as given."""
    s = settings
    keep = ("sizes", "target", "untargeted", "targeted", "random_patch", "n_eval", "seconds")
    peers_aq = None
    if aq_agreement is not None:
        if aq_eps is None:
            raise ValueError("give aq_eps, the radius the AQ agreement was measured at")
        peers_aq = {**aq_agreement["accuracy"], "n_images": int(len(aq_agreement["correct"]["ours_pgd"])),
                    "eps": float(aq_eps), "clean": aq_agreement["clean"],
                    "max_pixel_gap_to_ours": aq_agreement["max_pixel_gap"],
                    "images_differing_from_ours": aq_agreement.get("images_differing", {})}
    out = {"patch": {k: patch[k] for k in keep if k in patch},
           "peers_aq": peers_aq,
            "peers": dict(comparison["accuracy"]),
            "peers_detail": {"n_images": int(len(next(iter(comparison["correct"].values())))), "eps": float(eps),
                             "clean": comparison["clean"],
                             "art_apgd_ce": _maybe_mean(comparison, "art_apgd_ce"),
                             "art_apgd_dlr": _maybe_mean(comparison, "art_apgd_dlr"),
                             "max_pixel_gap_to_ours": comparison["max_pixel_gap"],
                             "images_differing_from_ours": comparison.get("images_differing", {}),
                             "pgd": f"PGD-{s.peer_pgd_steps}, step {s.peer_step_size}, no random start",
                             "strong": f"PGD-{s.strong_steps} x {s.strong_restarts} restarts",
                             "apgd": f"{s.apgd_steps} iterations, {s.apgd_restarts} random start(s) per loss"}}
    if worst_case is not None:
        if set(worst_case) != {"attacks", "combined", "per_attack", "art_apgd"}:
            raise ValueError("worst_case must be tl.evaluate.worst_case_record(...): keys attacks, combined, "
                             f"per_attack, art_apgd; got {sorted(worst_case)}")
        out["worst_case"] = worst_case
    return out


def _maybe_mean(comparison: dict[str, Any], key: str) -> float | None:
    c = comparison["correct"].get(key)
    return None if c is None else float(np.mean(c))


def save(result: dict[str, Any]) -> Path:
    """Write ``result`` to ``build/results/07_applications.json``; returns the path."""
    return runtime.save_results(RESULTS_NAME, result)
