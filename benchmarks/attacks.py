"""Benchmark: our FGSM and PGD-40 against the 40-pass floor, the article's eager loop, CleverHans and ART, in one run.

Usage: python benchmarks/attacks.py [--out DIR] [--n N] [--repeats R] [--skip-restarts] [--xla-pgd]
Writes DIR/attacks.json and DIR/attacks.md (default DIR: build/bench). Every method attacks the same
quick-profile baseline CNN on the same N (1,000) test images, numpy in and numpy out; each is warmed up
once, then timed in R interleaved rounds (best round kept) so load from other processes hits all alike.
The floor is one forward+backward pass over the N-image batch in graph mode: PGD-40 cannot do the same
float32 work faster than 40 of them. Ratios (to the floor, to CleverHans, to ART, to the eager loop) are the
numbers to read; absolute seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tutorial_lib as tl

import _results

EPS, STEP, STEPS = 0.3, 0.01, 40


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------
def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


class PeakRSS:
    """Samples resident memory every few milliseconds while the block runs; ``.peak`` in MiB."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_mib()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def timed(fn: Callable[[], Any]) -> tuple[float, float, tuple[float, float], Any]:
    """(wall seconds, CPU seconds of this process, (peak RSS, growth of RSS during the call) in MiB, result)."""
    with PeakRSS() as mem:
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, (mem.peak, mem.peak - mem.start), result


# --------------------------------------------------------------------------------------------------
# The competitors
# --------------------------------------------------------------------------------------------------
def floor_pass(model, *, jit_compile: bool = False):
    """One forward+backward pass (gradient of the summed loss w.r.t. the input), graph mode."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x, training=False))
        return tape.gradient(loss, x)

    return grad


def eager_loop(model, x, y, *, steps: int, step_size: float, batch: int = 100) -> np.ndarray:
    """The article's style: an eager Python loop, one GradientTape per step and batch (with clipping)."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    out = []
    for start in range(0, len(x), batch):
        xb, yb = tf.constant(x[start:start + batch]), tf.constant(y[start:start + batch])
        x_adv = xb
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = loss_fn(yb, model(x_adv, training=False))
            x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, xb - EPS, xb + EPS), 0.0, 1.0)
        out.append(x_adv.numpy())
    return np.concatenate(out)


def cleverhans_methods(model, x, y) -> dict[str, tuple[str, Callable[[int], np.ndarray], Callable[[], Any]]]:
    import tensorflow as tf
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    def batched(attack, batch):
        def run():
            return np.concatenate([attack(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch])).numpy()
                                   for i in range(0, len(x), batch)])
        return run

    def fgsm(xb, yb):
        return fast_gradient_method(model, xb, EPS, np.inf, clip_min=0.0, clip_max=1.0, y=yb)

    def pgd(steps):
        def attack(xb, yb):
            return projected_gradient_descent(model, xb, EPS, STEP, steps, np.inf, clip_min=0.0, clip_max=1.0,
                                              y=yb, rand_init=False, sanity_checks=False)
        return attack

    methods = {}
    for batch in (100, len(x)):
        methods[f"CleverHans FGSM, batch {batch}"] = ("fgsm", batched(fgsm, batch), batched(fgsm, batch))
        methods[f"CleverHans PGD-40, batch {batch}"] = ("pgd", batched(pgd(STEPS), batch), batched(pgd(2), batch))
    return methods


def art_methods(model, x, y) -> dict[str, tuple[str, Callable[[], np.ndarray], Callable[[], Any]]]:
    import keras
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    methods = {}
    for batch in (100, len(x)):
        fgsm = FastGradientMethod(classifier, norm=np.inf, eps=EPS, batch_size=batch)
        pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=STEP, max_iter=STEPS,
                                       num_random_init=0, batch_size=batch, verbose=False)
        warm = ProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=STEP, max_iter=2,
                                        num_random_init=0, batch_size=batch, verbose=False)
        methods[f"ART FGSM, batch {batch}"] = ("fgsm", (lambda a=fgsm: a.generate(x, y)), (lambda a=fgsm: a.generate(x, y)))
        methods[f"ART PGD-40, batch {batch}"] = ("pgd", (lambda a=pgd: a.generate(x, y)), (lambda a=warm: a.generate(x, y)))
    return methods


def mixed_precision_copy(model):
    """The same weights in a model built under Keras' mixed_bfloat16 policy (float32 logits)."""
    import keras

    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        copy = tl.models.article_cnn()
    finally:
        keras.mixed_precision.set_global_policy(old)
    copy.set_weights(model.get_weights())
    return copy


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def build_methods(model, x, y, *, xla_pgd: bool) -> tuple[dict, list[str]]:
    """label -> (kind, run, warm-up); and notes about peers that could not be used."""
    attacks = tl.attacks
    pgd_kw = dict(step_size=STEP, steps=STEPS, random_start=False)
    mp_model = mixed_precision_copy(model)
    methods: dict[str, tuple[str, Callable[[], np.ndarray], Callable[[], Any] | None]] = {
        "ours FGSM": ("fgsm", lambda: attacks.fgsm(model, x, y, EPS), None),
        "ours PGD-40": ("pgd", lambda: attacks.pgd(model, x, y, EPS, **pgd_kw), None),
        "ours PGD-40, batch 100": ("pgd", lambda: attacks.pgd(model, x, y, EPS, batch_size=100, **pgd_kw), None),
        "ours PGD-40, mixed bfloat16": ("pgd", lambda: attacks.pgd(mp_model, x, y, EPS, **pgd_kw), None),
        "seed-style eager FGSM, batch 100": ("fgsm", lambda: eager_loop(model, x, y, steps=1, step_size=EPS),
                                             lambda: eager_loop(model, x[:100], y[:100], steps=1, step_size=EPS)),
        "seed-style eager PGD-40, batch 100": ("pgd", lambda: eager_loop(model, x, y, steps=STEPS, step_size=STEP),
                                               lambda: eager_loop(model, x[:100], y[:100], steps=2, step_size=STEP)),
    }
    if xla_pgd:
        methods["ours PGD-40 (XLA)"] = (
            "pgd", lambda: attacks.pgd(model, x, y, EPS, jit_compile=True, **pgd_kw), None)
    notes = []
    for name, factory in (("CleverHans", cleverhans_methods), ("ART", art_methods)):
        try:
            methods.update(factory(model, x, y))
        except ImportError as err:
            notes.append(f"{name} skipped: not installed ({err}); pip install -e '.[peers]'")
        except Exception as err:  # installed but incompatible with this TF/Keras
            notes.append(f"{name} skipped: cannot be used with this TensorFlow/Keras ({type(err).__name__}: {err})")
    return methods, notes


def mixed_precision_strength(model, x, y, *, eps: float = 0.1) -> dict[str, Any]:
    """Is PGD-40 computed on the bfloat16 copy as strong? Accuracy on the float32 model at an eps where it is not 0."""
    mp_model = mixed_precision_copy(model)
    out = {"eps": eps}
    for label, attacked in (("float32", model), ("mixed_bfloat16", mp_model)):
        x_adv = tl.attacks.pgd(attacked, x, y, eps, step_size=STEP, steps=STEPS, random_start=False)
        out[label] = float((np.argmax(model.predict(x_adv, batch_size=1000, verbose=0), 1) == y).mean())
    return out


def restarts_run(model, x, y, *, tiles: int, restarts: int) -> dict[str, Any]:
    """PGD-40 with random starts and ``restarts`` restarts over ``tiles`` copies of the test images."""
    xs, ys = np.tile(x, (tiles, 1, 1, 1)), np.tile(y, tiles)
    run = lambda: tl.attacks.pgd(model, xs, ys, EPS, step_size=STEP, steps=STEPS, restarts=restarts,  # noqa: E731
                                 batch_size=len(x), seed=0)
    tl.attacks.pgd(model, xs[: len(x)], ys[: len(x)], EPS, step_size=STEP, steps=STEPS, restarts=restarts,
                   batch_size=len(x), seed=0)  # warm-up (tracing)
    seconds, cpu, peak, x_adv = timed(run)
    accuracy = float((np.argmax(model.predict(x_adv, batch_size=1000, verbose=0), 1) == ys).mean())
    return {"images": len(xs), "restarts": restarts, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak[0], "rss_growth_mib": peak[1],
            "robust_accuracy": accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tl.runtime.build_dir() / "bench")
    parser.add_argument("--n", type=int, default=1000, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timing rounds (best kept)")
    parser.add_argument("--skip-restarts", action="store_true", help="skip PGD-40 x5 restarts over 5n images")
    parser.add_argument("--xla-pgd", action="store_true", help="also time PGD-40 under XLA (slow on CPU)")
    parser.add_argument("--only", default="", help="comma-separated substrings: time only matching methods")
    args = parser.parse_args(argv)
    if args.n < 100 or args.n % 100 or args.repeats < 1:
        parser.error("need --n a multiple of 100 (>= 100) and --repeats >= 1")
    import tensorflow as tf

    profile = tl.runtime.setup(seed=0, verbose=False, deterministic=False)
    data = tl.data.load_mnist(profile.data_source)
    model, _ = tl.models.baseline_model(data, profile, verbose=False)
    x, y = data.x_test[: args.n], data.y_test[: args.n].astype(np.int64)
    clean_accuracy = float((np.argmax(model.predict(x, verbose=0), 1) == y).mean())

    methods, notes = build_methods(model, x, y, xla_pgd=args.xla_pgd)
    # the floor, timed in the same rounds as the attacks: forward+backward passes over the n-image batch
    xt, yt = tf.constant(x), tf.constant(y)
    grad, grad_xla = floor_pass(model), floor_pass(model, jit_compile=True)
    floor_methods = {
        "floor: 40 x forward+backward (graph)": ("floor", lambda: [grad(xt, yt).numpy() for _ in range(STEPS)][-1], None),
        "floor: 1 x forward+backward (graph)": ("floor1", lambda: grad(xt, yt).numpy(), None),
        "floor: 1 x forward+backward (XLA)": ("floor1", lambda: grad_xla(xt, yt).numpy(), None),
    }
    methods = {**floor_methods, **methods}
    if args.only:
        keys = [k.strip().lower() for k in args.only.split(",")]
        methods = {k: v for k, v in methods.items() if k.startswith("floor") or any(s in k.lower() for s in keys)}
    for label, (_, run, warm) in methods.items():  # warm-up: tracing and first-call costs
        (warm or run)()
    seconds: dict[str, list[float]] = {label: [] for label in methods}
    cpu_seconds: dict[str, list[float]] = {label: [] for label in methods}
    peaks: dict[str, float] = {label: 0.0 for label in methods}
    growth: dict[str, float] = {label: 0.0 for label in methods}
    accuracy: dict[str, float] = {}
    for round_ in range(args.repeats):
        for label, (kind, run, _) in methods.items():
            s, cpu, peak, x_adv = timed(run)
            seconds[label].append(s)
            cpu_seconds[label].append(cpu)
            peaks[label] = max(peaks[label], peak[0])
            growth[label] = max(growth[label], peak[1])
            if round_ == 0 and not kind.startswith("floor"):
                assert np.abs(x_adv - x).max() <= EPS + 1e-5, label
                accuracy[label] = float((np.argmax(model.predict(x_adv, batch_size=1000, verbose=0), 1) == y).mean())
            print(f"round {round_ + 1}: {label:40s} {s:7.2f} s (CPU {cpu:6.2f} s)", flush=True)

    floor = min(seconds["floor: 40 x forward+backward (graph)"]) / STEPS
    floor_cpu = min(cpu_seconds["floor: 40 x forward+backward (graph)"]) / STEPS
    rows = []
    for label, (kind, _, _) in methods.items():
        best, best_cpu = min(seconds[label]), min(cpu_seconds[label])
        passes = {"pgd": STEPS, "floor": STEPS}.get(kind, 1)
        rows.append({"method": label, "attack": kind, "seconds": best, "cpu_seconds": best_cpu,
                     "images_per_second": args.n / best, "x_floor": best / (passes * floor),
                     "cpu_x_floor": best_cpu / (passes * floor_cpu), "robust_accuracy": accuracy.get(label),
                     "peak_rss_mib": peaks[label], "rss_growth_mib": growth[label], "all_seconds": seconds[label], "all_cpu_seconds": cpu_seconds[label]})
    by = {r["method"]: r for r in rows}

    restarts = None
    if not args.skip_restarts:
        restarts = restarts_run(model, x, y, tiles=5, restarts=5)
        one = by.get("ours PGD-40", {}).get("seconds")
        restarts["x_one_run"] = restarts["seconds"] / one if one else None
        one_cpu = by.get("ours PGD-40", {}).get("cpu_seconds")
        restarts["cpu_x_one_run"] = restarts["cpu_seconds"] / one_cpu if one_cpu else None
        print(f"PGD-40 x5 restarts over {restarts['images']} images: {restarts['seconds']:.1f} s")

    strength = None
    if "ours PGD-40, mixed bfloat16" in by:
        strength = mixed_precision_strength(model, x, y)
        by["ours PGD-40, mixed bfloat16"]["strength_check"] = strength

    targets = evaluate_targets(by, restarts)
    result = {"benchmark": "attacks", "n": args.n, "eps": EPS, "step_size": STEP, "steps": STEPS,
              "clean_accuracy": clean_accuracy, "floor_seconds": floor, "floor_cpu_seconds": floor_cpu,
              "floor_xla_seconds": min(seconds["floor: 1 x forward+backward (XLA)"]),
              "rows": rows, "restarts": restarts, "mixed_precision_strength": strength, "targets": targets, "notes": notes,
              "process_peak_rss_mib": _results.peak_rss_mib(), "machine": _results.machine()}
    _results.write(args.out, "attacks", result, markdown(result))
    return 0


def evaluate_targets(by: dict[str, dict], restarts: dict | None) -> list[dict[str, Any]]:
    """The issue's targets: measured ratios in wall time and in CPU time, the goal, and whether it was met."""
    n = _n(by)
    ours_pgd, ours_fgsm = "ours PGD-40", "ours FGSM"
    checks = [  # (target, numerator row, denominator row or None for the x_floor column, goal, test)
        ("PGD-40 / (40 x floor pass)", ours_pgd, None, "<= 1.2", lambda r: r <= 1.2),
        ("CleverHans PGD-40 batch 1000 / ours", f"CleverHans PGD-40, batch {n}", ours_pgd, ">= 0.95 (on par)", lambda r: r >= 0.95),
        ("ART PGD-40 batch 1000 / ours", f"ART PGD-40, batch {n}", ours_pgd, ">= 2", lambda r: r >= 2),
        ("eager loop PGD-40 / ours", "seed-style eager PGD-40, batch 100", ours_pgd, ">= 2", lambda r: r >= 2),
        ("CleverHans FGSM batch 1000 / ours", f"CleverHans FGSM, batch {n}", ours_fgsm, ">= 0.9 (on par)", lambda r: r >= 0.9),
    ]
    out = []
    for name, num, den, goal, ok in checks:
        values = {}
        for clock, key, floor_key in (("wall", "seconds", "x_floor"), ("cpu", "cpu_seconds", "cpu_x_floor")):
            if num not in by or (den is not None and den not in by):
                values[clock] = None
            else:
                values[clock] = by[num][floor_key] if den is None else by[num][key] / by[den][key]
        out.append({"target": name, "wall": values["wall"], "cpu": values["cpu"], "goal": goal,
                    "met_wall": None if values["wall"] is None else bool(ok(values["wall"])),
                    "met_cpu": None if values["cpu"] is None else bool(ok(values["cpu"]))})
    if restarts and restarts.get("x_one_run"):
        ok = lambda r: r <= 27.5  # noqa: E731
        out.append({"target": "PGD-40 x5 restarts on 5n images / one run", "wall": restarts["x_one_run"],
                    "cpu": restarts["cpu_x_one_run"], "goal": "about 25 (<= 27.5)",
                    "met_wall": ok(restarts["x_one_run"]), "met_cpu": ok(restarts["cpu_x_one_run"])})
    return out


def _n(by: dict[str, dict]) -> int:
    labels = [k for k in by if k.startswith("CleverHans PGD-40, batch ") or k.startswith("ART PGD-40, batch ")]
    return max((int(k.rsplit(" ", 1)[1]) for k in labels), default=1000)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def markdown(result: dict[str, Any]) -> str:
    n, floor = result["n"], result["floor_seconds"]
    ours = next((r["seconds"] for r in result["rows"] if r["method"] == "ours PGD-40"), None)
    lines = [
        f"Attacks on the quick-profile baseline CNN (clean accuracy {result['clean_accuracy']:.1%}), {n} MNIST test "
        f"images, eps {result['eps']}, PGD step {result['step_size']}, no random start; numpy in and out; best of "
        f"the timing rounds; {result['machine']['cpu_count']} CPU cores, TF {result['machine']['tensorflow']}, {result['machine']['when']}.",
        f"Floor: one forward+backward pass over the {n}-image batch = {floor * 1e3:.0f} ms in graph mode "
        f"(from 40 passes timed in the same rounds); one pass under XLA {result['floor_xla_seconds'] * 1e3:.0f} ms.",
        "",
        "| method | wall s | CPU s | images/s | x floor (wall) | x floor (CPU) | time / ours PGD-40 | robust acc. | peak RSS MiB (+ growth) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        vs = f"{r['seconds'] / ours:.2f}x" if ours and r["attack"] == "pgd" else ""
        acc = "" if r["robust_accuracy"] is None else f"{r['robust_accuracy']:.1%}"
        lines.append(f"| {r['method']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['images_per_second']:.0f} | "
                     f"{r['x_floor']:.2f} | {r['cpu_x_floor']:.2f} | {vs} | {acc} | {r['peak_rss_mib']:.0f} (+{r['rss_growth_mib']:.0f}) |")
    lines.append("")
    lines.append("x floor: time / (passes x one pass), passes = 40 for PGD-40 and the 40-pass floor, else 1. CPU s: "
                 "process CPU time, less sensitive than wall time to other processes on a shared machine.")
    if result["restarts"]:
        r = result["restarts"]
        lines.append(f"PGD-40 with random start and {r['restarts']} restarts over {r['images']} images (batch {n}): "
                     f"{r['seconds']:.1f} s = {r['x_one_run']:.1f}x the one-run PGD-40 time (CPU time "
                     f"{r['cpu_x_one_run']:.1f}x); robust accuracy "
                     f"{r['robust_accuracy']:.1%}; peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f} MiB during the run).")
    if result.get("mixed_precision_strength"):
        m = result["mixed_precision_strength"]
        lines.append(f"Mixed bfloat16 strength check, PGD-40 at eps {m['eps']} scored on the float32 model: robust "
                     f"accuracy {m['float32']:.1%} when computed in float32, {m['mixed_bfloat16']:.1%} in bfloat16.")
    lines += ["", "| target | wall-time ratio | CPU-time ratio | goal | met (wall / CPU) |", "|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    yes = lambda v: "n/a" if v is None else ("yes" if v else "no")  # noqa: E731
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {fmt(t['wall'])} | {fmt(t['cpu'])} | {t['goal']} | "
                     f"{yes(t['met_wall'])} / {yes(t['met_cpu'])} |")
    lines += [""] + [f"Note: {note}" for note in result["notes"]]
    lines.append(f"Process peak RSS: {result['process_peak_rss_mib']:.0f} MiB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
