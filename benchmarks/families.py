"""Benchmark: time per 500 images of one attack of each family notebook 06 can hold out, on the two CNNs.

Usage: python benchmarks/families.py [--out DIR] [--n 500] [--repeats 3]
Writes DIR/families.json and DIR/families.md (default DIR: build/bench). One spec per family with the package's
defaults where it has them (SLIDE, Rotation, Translation, ZoomShear, Spatial) and notebook 06's L-inf/L2 form
(PGD-20, step 2.5 eps / 20, random start) at eps 0.1 and 1.5; on ``tl.models.few_shot_cnn(5)`` (5 logits) and
``tl.models.article_cnn()`` (10 logits), freshly initialised (the time of an attack does not depend on the
weights' values), ``n`` real MNIST test images in one batch, numpy in and out. Each attack is warmed up once
(tracing), then timed in ``--repeats`` interleaved rounds; the best round is kept. Wall and process CPU time;
read the ratios, absolute seconds depend on the machine and its load. A forward pass and a forward+backward pass
over the batch are timed in the same rounds as units: a gradient attack costs about steps x one
forward+backward pass, a grid attack about grid points x one forward pass.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tutorial_lib as tl

import _results


def family_specs() -> dict[str, Any]:
    """family -> the spec timed for it."""
    A = tl.attacks
    return {
        "linf": A.PGD(eps=0.1, steps=20, step_size=2.5 * 0.1 / 20),
        "l2": A.PGD(eps=1.5, steps=20, step_size=2.5 * 1.5 / 20, norm=2),
        "l1": A.SparseL1Descent(eps=10.0),
        "rotation": A.Rotation(),
        "translation": A.Translation(),
        "zoom_shear": A.ZoomShear(),
        "spatial": A.Spatial(),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def units(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    """One graph-mode forward pass and one forward+backward pass (input gradient) over the batch."""
    import tensorflow as tf

    xt, yt = tf.constant(x), tf.constant(y)
    forward = tf.function(lambda a: model(a, training=False))

    @tf.function
    def gradient(a, b):
        with tf.GradientTape() as tape:
            tape.watch(a)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=b, logits=model(a)))
        return tape.gradient(loss, a)

    return {"forward pass": lambda: forward(xt).numpy(), "forward+backward pass": lambda: gradient(xt, yt).numpy()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tl.runtime.build_dir() / "bench")
    parser.add_argument("--n", type=int, default=500, help="test images attacked (one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best kept)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("need --n >= 1 and --repeats >= 1")

    profile = tl.runtime.setup(seed=0, verbose=False, deterministic=False)
    data = tl.data.load_mnist(profile.data_source)
    x = data.x_test[: args.n]
    models = {"few_shot_cnn(5)": (tl.models.few_shot_cnn(5), data.y_test[: args.n].astype(np.int64) % 5),
              "article_cnn()": (tl.models.article_cnn(), data.y_test[: args.n].astype(np.int64))}
    specs = family_specs()
    methods: dict[tuple[str, str], Callable[[], Any]] = {}
    for model_name, (model, y) in models.items():
        for unit, run in units(model, x, y).items():
            methods[(model_name, unit)] = run
        for family, spec in specs.items():
            methods[(model_name, family)] = (lambda s=spec, m=model, labels=y: s(m, x, labels))
    first = {key: timed(run)[0] for key, run in methods.items()}  # warm-up: tracing and first-call costs
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in methods}
    cpu_seconds: dict[tuple[str, str], list[float]] = {key: [] for key in methods}
    for round_ in range(args.repeats):
        for key, run in methods.items():
            s, cpu = timed(run)
            seconds[key].append(s)
            cpu_seconds[key].append(cpu)
            print(f"round {round_ + 1}: {key[0]:16s} {key[1]:22s} {s:7.3f} s (CPU {cpu:6.3f} s)", flush=True)

    rows = []
    for (model_name, what), _ in methods.items():
        spec = specs.get(what)
        unit = "forward+backward pass" if spec is not None and spec.family in ("linf", "l2", "l1") else "forward pass"
        best, best_cpu = min(seconds[(model_name, what)]), min(cpu_seconds[(model_name, what)])
        unit_s, unit_cpu = min(seconds[(model_name, unit)]), min(cpu_seconds[(model_name, unit)])
        rows.append({"model": model_name, "family": what if spec is not None else None, "what": what,
                     "spec": None if spec is None else repr(spec), "name": what if spec is None else spec.name,
                     "passes": None if spec is None else (spec.steps * getattr(spec, "restarts", 1)
                                                           if hasattr(spec, "steps") else spec.grid_points),
                     "unit": None if spec is None else unit, "seconds": best, "cpu_seconds": best_cpu,
                     "seconds_per_500": best * 500 / args.n, "first_call_seconds": first[(model_name, what)],
                     "x_unit": None if spec is None else best / unit_s,
                     "cpu_x_unit": None if spec is None else best_cpu / unit_cpu,
                     "all_seconds": seconds[(model_name, what)], "all_cpu_seconds": cpu_seconds[(model_name, what)]})
    result = {"benchmark": "families", "n": args.n, "rows": rows, "process_peak_rss_mib": _results.peak_rss_mib(),
              "machine": _results.machine()}
    _results.write(args.out, "families", result, markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = ", ".join(f"{v:.1f}" for v in m["load_average"])
    lines = [
        f"One attack per family (notebook 06's held-out families) on {result['n']} MNIST test images in one batch, "
        f"numpy in and out; best of the timing rounds; {m['cpu_count']} CPU cores (load average {load} at the end), "
        f"TF {m['tensorflow']}, {m['when']}.",
        "",
        "| model | family | attack | passes | wall s / 500 images | CPU s / 500 images | first call s "
        "| x one pass (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["family"] is None:
            lines.append(f"| {r['model']} | (unit) | {r['what']} | 1 | {r['seconds_per_500']:.3f} | "
                         f"{r['cpu_seconds'] * 500 / result['n']:.3f} | {r['first_call_seconds']:.2f} | |")
        else:
            lines.append(f"| {r['model']} | {r['family']} | `{r['spec']}` | {r['passes']} | "
                         f"{r['seconds_per_500']:.2f} | "
                         f"{r['cpu_seconds'] * 500 / result['n']:.2f} | {r['first_call_seconds']:.2f} | "
                         f"{r['cpu_x_unit']:.1f} x {r['unit']} |")
    lines += ["", "passes: gradient steps (x restarts) or grid points. x one pass: the attack's process CPU time over "
              "that of one forward+backward pass (gradient attacks) or one forward pass (grid attacks) over the same "
              "batch (CPU time: wall times swing with other jobs on a shared machine). First call: the warm-up call, "
              "tracing included.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
