"""Benchmark: the spatial attack (worst of a grid of rotations and shifts) against its forward-pass floor.

Usage: python benchmarks/spatial.py [--out DIR] [--n N] [--repeats R]
Writes DIR/spatial.json and DIR/spatial.md (default DIR: build/bench). The quick-profile baseline CNN, the
same N (1,000) test images, numpy in and numpy out. The attack needs one forward pass over the N images per grid
point (plus the image transforms and the per-example bookkeeping), so its floor is G forward passes, timed as
G calls of a graph-mode forward pass over the N-image batch in the same interleaved rounds (best round kept).
Target: attack time <= 1.3 x G x one forward pass. Wall time and process CPU time are both reported; absolute
seconds depend on the machine and its load, read the ratios.
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

TARGET = 1.3
GRIDS = {  # label -> Spatial settings
    "45 points: 15 deg x 2 px, grid (5, 3, 3)": dict(max_angle=15, max_shift=2, angle_steps=5, shift_steps=3),
    "45 points, bilinear": dict(max_angle=15, max_shift=2, angle_steps=5, shift_steps=3, interpolation="bilinear"),
    "175 points: 30 deg x 3 px, grid (7, 5, 5)": dict(max_angle=30, max_shift=3, angle_steps=7, shift_steps=5),
}


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tl.runtime.build_dir() / "bench")
    parser.add_argument("--n", type=int, default=1000, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best kept)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("need --n >= 1 and --repeats >= 1")
    import tensorflow as tf

    profile = tl.runtime.setup(seed=0, verbose=False, deterministic=False)
    data = tl.data.load_mnist(profile.data_source)
    model, _ = tl.models.baseline_model(data, profile, verbose=False)
    x, y = data.x_test[: args.n], data.y_test[: args.n].astype(np.int64)
    clean_accuracy = float((np.argmax(model.predict(x, verbose=0), 1) == y).mean())

    forward = tf.function(lambda images: model(images, training=False))
    xt = tf.constant(x)
    specs = {label: tl.attacks.Spatial(**settings) for label, settings in GRIDS.items()}
    passes = {label: spec.grid_points for label, spec in specs.items()}
    methods: dict[str, tuple[int, Callable[[], Any]]] = {
        "floor: 45 x forward pass (graph)": (45, lambda: [forward(xt).numpy() for _ in range(45)][-1]),
        **{f"Spatial {label}": (passes[label], (lambda s=spec: s(model, x, y))) for label, spec in specs.items()},
    }
    first: dict[str, float] = {}
    for label, (_, run) in methods.items():  # warm-up: tracing and first-call costs
        first[label] = timed(run)[0]
    seconds = {label: [] for label in methods}
    cpu_seconds = {label: [] for label in methods}
    accuracy: dict[str, float] = {}
    for round_ in range(args.repeats):
        for label, (_, run) in methods.items():
            s, cpu, out = timed(run)
            seconds[label].append(s)
            cpu_seconds[label].append(cpu)
            if round_ == 0 and not label.startswith("floor"):
                accuracy[label] = float((np.argmax(model.predict(out, batch_size=1000, verbose=0), 1) == y).mean())
            print(f"round {round_ + 1}: {label:55s} {s:7.2f} s (CPU {cpu:6.2f} s)", flush=True)

    floor_label = "floor: 45 x forward pass (graph)"
    floor, floor_cpu = min(seconds[floor_label]) / 45, min(cpu_seconds[floor_label]) / 45
    rows = []
    for label, (n_passes, _) in methods.items():
        best, best_cpu = min(seconds[label]), min(cpu_seconds[label])
        ratio, ratio_cpu = best / (n_passes * floor), best_cpu / (n_passes * floor_cpu)
        rows.append({"method": label, "grid_points": n_passes, "seconds": best, "cpu_seconds": best_cpu,
                     "first_call_seconds": first[label], "x_floor": ratio, "cpu_x_floor": ratio_cpu,
                     "robust_accuracy": accuracy.get(label), "met_wall": None if label.startswith("floor") else ratio <= TARGET,
                     "met_cpu": None if label.startswith("floor") else ratio_cpu <= TARGET,
                     "all_seconds": seconds[label], "all_cpu_seconds": cpu_seconds[label]})
    result = {"benchmark": "spatial", "n": args.n, "clean_accuracy": clean_accuracy, "target": TARGET,
              "floor_seconds": floor, "floor_cpu_seconds": floor_cpu, "rows": rows,
              "process_peak_rss_mib": _results.peak_rss_mib(), "machine": _results.machine()}
    _results.write(args.out, "spatial", result, markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    n, floor = result["n"], result["floor_seconds"]
    load = ", ".join(f"{v:.1f}" for v in result["machine"]["load_average"])
    lines = [
        f"Spatial attack (worst of a grid of rotations and shifts, `tl.attacks.Spatial`) on the quick-profile "
        f"baseline CNN (clean accuracy {result['clean_accuracy']:.1%}), {n} MNIST test images in one batch, numpy "
        f"in and out; best of the timing rounds; {result['machine']['cpu_count']} CPU cores (load average {load} at the "
        f"end), TF {result['machine']['tensorflow']}, {result['machine']['when']}.",
        f"Floor: one forward pass over the {n}-image batch in graph mode = {floor * 1e3:.1f} ms wall, "
        f"{result['floor_cpu_seconds'] * 1e3:.1f} ms CPU (from 45 passes timed in the same rounds).",
        "",
        "| method | grid points | wall s | CPU s | first call s | x floor (wall) | x floor (CPU) | robust acc. | "
        f"<= {result['target']}x (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no", None: ""}
    for r in result["rows"]:
        acc = "" if r["robust_accuracy"] is None else f"{r['robust_accuracy']:.1%}"
        met = "" if r["met_wall"] is None else f"{yes[r['met_wall']]} / {yes[r['met_cpu']]}"
        lines.append(f"| {r['method']} | {r['grid_points']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['first_call_seconds']:.2f} | {r['x_floor']:.2f} | {r['cpu_x_floor']:.2f} | {acc} | {met} |")
    lines += ["", "x floor: time / (grid points x one forward pass). First call: the warm-up call, tracing included. "
              "CPU s: process CPU time, less sensitive than wall time to other processes on a shared machine.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
