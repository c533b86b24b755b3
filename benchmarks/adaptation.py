"""Benchmark the evaluator of adapted learners on notebook 06's workload: today's one-task path against adaptation.py.

    git worktree add /tmp/before-evaluator a6cdd6c   # the code before adaptation.py existed
    python benchmarks/adaptation.py [--out build/bench] [--tasks 100] [--rounds 2] --old-path /tmp/before-evaluator

Workload (notebook 06, one evaluation cell): 100 tasks, 5-way 5-shot, 5 queries per class (25 queries), support =
clean + PGD-10 copies crafted once, 10 adaptation steps of every layer (lr 0.4 then 0.1), queries attacked by
L-inf PGD-10 (eps 0.1, random start) against the adapted weights at checkpoints 0, 1, 5, 10; the few-shot CNN
with a zero head (as the meta-learners of notebook 05 have, so step 0 needs no attack). Images are uniform noise
in [0, 1] (speed does not depend on the pixels).

"old" runs ``experiments.unseen_attacks.adapt_and_attack`` from ``--old-path`` (a checkout of commit a6cdd6c,
the last one before the evaluator; notebook 06's driver has since been rewritten) in a
subprocess with that PYTHONPATH; "new" runs ``tutorial_lib.adaptation.adapt_and_evaluate`` from this checkout
in its own subprocess, for each tasks-per-compiled-call setting (chunk) and parallel map width. Each
subprocess times a first call (tracing included) and a second call (the compiled function cached), and reports
its peak RSS; rounds alternate old and new so machine load hits both alike. Writes adaptation.json and
adaptation.md to --out.

What was measured before choosing the layout (prototypes on 25 tasks of this workload without the support attack,
same machine, loaded by other jobs; second call): tf.map_fn over tasks with Keras' stateless_call (the layout
kept) 4.7 s; tasks stacked into one batch with per-task kernels as a grouped convolution 6.3 s; the same with
im2col (tf.image.extract_patches) + batched matmul 13.2 s; im2col by strided slices under map_fn 36 s and under
tf.vectorized_map 108 s (pfor has no vectorised form for per-task convolution filters or stateless random ops and
falls back to loops). One forward + input-gradient pass of the few-shot CNN cost the same per image at batch 25,
625 and 2,500 (400, 400, 456 us): on these CPUs the evaluation is bound by arithmetic, not by per-operation
overhead, so putting tasks into the batch dimension does not pay. The evaluator keeps one compiled call per chunk
of tasks with the tasks mapped in parallel, and writes short adaptations out step by step (a tf.while_loop per
segment measured 0.56-0.69x of main's speed; written out, 0.94-0.99x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def workload(tasks: int):
    import tensorflow as tf

    import tutorial_lib as tl
    from tutorial_lib.tasks import Tasks

    tf.keras.utils.set_random_seed(0)
    model = tl.models.few_shot_cnn(5)
    for v in model.trainable_variables[-2:]:
        v.assign(tf.zeros_like(v))
    rng = np.random.default_rng(0)
    sy = np.tile(np.repeat(np.arange(5), 5), (tasks, 1)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(5), 5), (tasks, 1)).astype(np.int32)
    batch = Tasks(rng.random((tasks, 25, 28, 28, 1), np.float32), sy, rng.random((tasks, 25, 28, 28, 1), np.float32),
                  qy, np.tile(np.arange(5), (tasks, 1)))
    pgd = tl.attacks.PGD(eps=0.1, steps=10, step_size=0.025, random_start=True)
    return model, batch, pgd


def child(kind: str, tasks: int, chunk: int, parallel: int) -> dict:
    """Run one path twice in this process; return seconds, peak RSS and a checksum of the result."""
    model, batch, pgd = workload(tasks)
    if kind == "old":
        from tutorial_lib.experiments import unseen_attacks as ua
        from tutorial_lib import meta

        def call():
            res = ua.adapt_and_attack(model, batch, meta.params_of(model), query_attacks=[pgd], steps=(0, 1, 5, 10),
                                      lr=0.4, later_lr=0.1, support_attack=pgd, chunk=chunk)
            return res.clean, res.robust
    else:
        from tutorial_lib import adaptation

        def call():
            res = adaptation.adapt_and_evaluate(model, batch, checkpoints=(0, 1, 5, 10), lr=0.4, later_lr=0.1,
                                                support="clean+attacked", support_attack=pgd, query_attacks=[pgd],
                                                chunk=chunk, parallel_tasks=parallel)
            return res.clean, res.robust
    out = {}
    for name in ("first_call_seconds", "second_call_seconds"):
        start = time.perf_counter()
        clean, robust = call()
        out[name] = time.perf_counter() - start
    out["peak_rss_mib"] = _results.peak_rss_mib()
    out["clean_mean"] = float(clean.mean())
    out["robust_mean"] = float(robust.mean())
    return out


def run_child(kind: str, args, chunk: int, parallel: int) -> dict:
    path = args.old_path if kind == "old" else str(ROOT)
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{HERE}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--tasks", str(args.tasks),
           "--chunk", str(chunk), "--parallel", str(parallel)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old-path", required=True, help="a checkout of commit a6cdd6c (before the evaluator)")
    parser.add_argument("--settings", default="50x4,50x8",
                        help="new-path settings, chunk x parallel map width, comma-separated")
    parser.add_argument("--child", choices=("old", "new"))
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tasks, args.chunk, args.parallel)))
        return
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    rows: dict[str, list[dict]] = {"old (main, chunk 50, map width 4)": []}
    rows.update({f"new (chunk {c}, map width {p})": [] for c, p in settings})
    for r in range(args.rounds):
        rows["old (main, chunk 50, map width 4)"].append(run_child("old", args, 50, 4))
        for (c, p), name in zip(settings, list(rows)[1:]):
            rows[name].append(run_child("new", args, c, p))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    summary = {}
    for name, runs in rows.items():
        summary[name] = {k: float(np.median([run[k] for run in runs])) for k in runs[0]}
        summary[name]["runs"] = runs
    old = summary["old (main, chunk 50, map width 4)"]
    lines = ["| path | first call s | second call s | speed-up (second call) | peak RSS MiB | clean | robust |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        s["speedup_second_call"] = old["second_call_seconds"] / s["second_call_seconds"]
        s["rss_ratio"] = s["peak_rss_mib"] / old["peak_rss_mib"]
        lines.append(f"| {name} | {s['first_call_seconds']:.1f} | {s['second_call_seconds']:.1f} | "
                     f"{s['speedup_second_call']:.2f}x | {s['peak_rss_mib']:.0f} | {100 * s['clean_mean']:.1f} | "
                     f"{100 * s['robust_mean']:.1f} |")
    result = {"machine": _results.machine(), "workload": {
        "tasks": args.tasks, "n_way": 5, "k_shot": 5, "queries": 25, "adapt_steps": 10, "checkpoints": [0, 1, 5, 10],
        "support": "clean+attacked (PGD-10, crafted once)", "query_attack": "PGD-10 Linf eps 0.1 random start",
        "rounds": args.rounds}, "paths": summary}
    md = (f"# Evaluator of adapted learners, notebook 06's workload ({args.tasks} tasks x 25 queries, 10 steps, "
          "PGD-10 at 4 checkpoints)\n\nMedians of the rounds; each path in its own process.\n\n" + "\n".join(lines))
    _results.write(args.out, "adaptation", result, md)


if __name__ == "__main__":
    main()
