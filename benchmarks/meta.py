"""Benchmark the meta-learners' step: compiled (one tf.function per meta-batch) vs a plain eager loop.

    python benchmarks/meta.py [--out build/bench] [--repeats 10]

Configuration of the issue: 5-way 5-shot, 15 queries, meta-batch 4, 5 inner SGD steps, the few-shot CNN.
Reports seconds per second-order MAML meta-step for the compiled step and for an eager Python loop over the
tasks (same functions, no tf.function), their ratio, the process's peak resident memory after the compiled
second-order runs, and the compiled first-order MAML and Reptile steps beside them. Timings on a shared
machine are noisy; compare the ratios measured in one run. Writes meta.json and meta.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--repeats", type=int, default=10, help="timed compiled steps per method (median)")
    parser.add_argument("--eager-repeats", type=int, default=3, help="timed eager steps (median)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import tutorial_lib as tl

    tl.runtime.set_seed(0)
    n_way, k_shot, queries, meta_batch, inner_steps = 5, 5, 15, 4, 5
    data = tl.data.load_mnist("subset")
    sampler, _ = tl.tasks.digit_splits(data, n_way=n_way, k_shot=k_shot, q_queries=queries)
    batches = [sampler.sample(meta_batch) for _ in range(4)]
    rows: dict[str, dict] = {}

    def compiled(method: str, **opts) -> float:
        learner = tl.meta.make_learner(method, tl.models.few_shot_cnn(n_way), inner_steps=inner_steps, **opts)
        start = time.perf_counter()
        learner.meta_step(batches[0])  # traces and compiles
        trace = time.perf_counter() - start
        it = iter(range(10 ** 9))
        seconds = _median_seconds(lambda: learner.meta_step(batches[next(it) % 4]), args.repeats)
        rows[method] = {"seconds_per_step": seconds, "first_step_seconds": trace}
        return seconds

    maml_s = compiled("maml", inner_lr=0.1)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # The same second-order meta-gradient, as a plain eager Python loop over the tasks.
    model = tl.models.few_shot_cnn(n_way)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    def eager_step(batch) -> None:
        params = tl.meta.params_of(model)
        grads = []
        for i in range(meta_batch):
            g, _, _ = tl.meta.maml_task_gradient(
                model, params, tf.constant(batch.support_x[i]), tf.constant(batch.support_y[i]),
                tf.constant(batch.query_x[i]), tf.constant(batch.query_y[i]), steps=inner_steps, lr=0.1)
            grads.append(g)
        optimizer.apply_gradients(zip([tf.add_n(list(gs)) / meta_batch for gs in zip(*grads)], model.trainable_variables))

    eager_step(batches[0])  # warm-up (kernel selection)
    it = iter(range(10 ** 9))
    eager_s = _median_seconds(lambda: eager_step(batches[next(it) % 4]), args.eager_repeats)
    rows["maml_eager"] = {"seconds_per_step": eager_s}
    compiled("fomaml", inner_lr=0.1)
    compiled("reptile", inner_lr=0.1)

    result = {
        "config": {"n_way": n_way, "k_shot": k_shot, "queries": queries, "meta_batch": meta_batch,
                   "inner_steps": inner_steps, "model": "few_shot_cnn(5): 3 x Conv32 stride 2 + Dense"},
        "timings": rows,
        "speedup_compiled_vs_eager": eager_s / maml_s,
        "peak_rss_mib_after_compiled_maml": peak_mib,
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                    "cpus": __import__("os").cpu_count()},
        "note": "median of repeated steps; the machine may be shared, so compare ratios from one run",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# Meta-learning step ({n_way}-way {k_shot}-shot, {queries} queries, meta-batch {meta_batch}, "
        f"{inner_steps} inner steps)", "",
        "| step | s / meta-step | relative to compiled MAML |", "|---|---|---|",
        f"| MAML second order, compiled (one tf.function) | {maml_s:.3f} | 1.0x |",
        f"| MAML second order, eager Python loop over tasks | {eager_s:.3f} | {eager_s / maml_s:.1f}x slower |",
        f"| first-order MAML, compiled | {rows['fomaml']['seconds_per_step']:.3f} | "
        f"{rows['fomaml']['seconds_per_step'] / maml_s:.2f}x |",
        f"| Reptile, compiled | {rows['reptile']['seconds_per_step']:.3f} | "
        f"{rows['reptile']['seconds_per_step'] / maml_s:.2f}x |", "",
        f"Compiled vs eager speed-up: **{eager_s / maml_s:.1f}x**. Peak resident memory after the compiled "
        f"second-order steps: **{peak_mib:.0f} MiB** (whole process: TensorFlow, data and the model). "
        f"First call (tracing) of the compiled MAML step: {rows['maml']['first_step_seconds']:.1f} s.", "",
    ]
    (out / "meta.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
