"""Benchmark the meta-learners' step: compiled (one tf.function per meta-batch) vs a plain eager loop.

    python benchmarks/meta.py [--out build/bench] [--repeats 10] [--only all|aq] [--aq-attack-steps 3]

Configuration of the issue: 5-way 5-shot, 15 queries, meta-batch 4, 5 inner SGD steps, the few-shot CNN.
Reports seconds per second-order MAML meta-step for the compiled step and for an eager Python loop over the
tasks (same functions, no tf.function), their ratio, the process's peak resident memory after the compiled
second-order runs, and the compiled first-order MAML and Reptile steps beside them. Timings on a shared
machine are noisy; compare the ratios measured in one run. Writes meta.json and meta.md to --out.

Adversarial Querying rows (notebook 05's setting: one inner step at lr 0.4): an AQ meta-step whose queries are
attacked with PGD-k (k = --aq-attack-steps, step 2.5 eps / k, eps 0.1) against the adapted weights, against a
plain second-order MAML meta-step with the same inner loop; the two are timed in interleaved rounds (wall and
process CPU time, median) and their ratio is compared with the target of (k + 2)x: the attack adds k forward and
backward passes through the adapted model to MAML's own. Peak RSS of the process after the AQ steps.
`--only aq` runs just these rows (meta-aq.json / meta-aq.md).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import _results


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _interleaved(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each fn, timed in alternating rounds (so load affects all alike)."""
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: {"wall_seconds": float(np.median(wall[k])), "cpu_seconds": float(np.median(cpu[k]))} for k in fns}


def aq_rows(batches, *, n_way: int, meta_batch: int, attack_steps: list[int], repeats: int) -> dict:
    """Compiled AQ meta-steps (PGD-k on the queries) against a compiled MAML meta-step, one inner step each."""
    import tutorial_lib as tl

    learners = {"maml": tl.meta.MAML(tl.models.few_shot_cnn(n_way), inner_lr=0.4, inner_steps=1, zero_head=True)}
    for k in attack_steps:
        attack = tl.attacks.PGD(eps=0.1, steps=k, step_size=2.5 * 0.1 / k, random_start=True)
        learners[f"aq_pgd{k}"] = tl.meta_adversarial.AdversarialQuerying(
            tl.models.few_shot_cnn(n_way), inner_lr=0.4, inner_steps=1, attack=attack, zero_head=True)
    first = {}
    for name, learner in learners.items():
        start = time.perf_counter()
        learner.meta_step(batches[0])  # traces and compiles
        first[name] = time.perf_counter() - start
    counter = {name: 0 for name in learners}

    def stepper(name):
        def run():
            counter[name] += 1
            learners[name].meta_step(batches[counter[name] % len(batches)])
        return run

    timings = _interleaved({name: stepper(name) for name in learners}, repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = {}
    for name, t in timings.items():
        rows[name] = {**t, "first_step_seconds": first[name]}
        if name != "maml":
            k = int(name[len("aq_pgd"):])
            rows[name].update(attack_steps=k, target_ratio=k + 2,
                              ratio_wall=t["wall_seconds"] / timings["maml"]["wall_seconds"],
                              ratio_cpu=t["cpu_seconds"] / timings["maml"]["cpu_seconds"])
    return {"rows": rows, "peak_rss_mib_after_aq": peak_mib, "inner_steps": 1, "inner_lr": 0.4, "eps": 0.1,
            "meta_batch": meta_batch}


def aq_markdown(aq: dict, header: str) -> list[str]:
    rows = aq["rows"]
    lines = [f"## Adversarial Querying vs MAML ({header}, 1 inner step at lr 0.4, eps 0.1)", "",
             "| step | wall s / meta-step | CPU s / meta-step | ratio to MAML (wall / CPU) | target |",
             "|---|---|---|---|---|",
             f"| MAML second order, compiled | {rows['maml']['wall_seconds']:.3f} | {rows['maml']['cpu_seconds']:.3f} "
             "| 1.0x | |"]
    for name, r in rows.items():
        if name == "maml":
            continue
        verdict = "met" if r["ratio_cpu"] <= r["target_ratio"] else "NOT met"
        lines.append(f"| AQ, queries attacked with PGD-{r['attack_steps']}, compiled | {r['wall_seconds']:.3f} | "
                     f"{r['cpu_seconds']:.3f} | {r['ratio_wall']:.2f}x / {r['ratio_cpu']:.2f}x | "
                     f"<= {r['target_ratio']}x ({verdict}, CPU time) |")
    lines += ["", f"Peak resident memory of the process after the AQ steps: **{aq['peak_rss_mib_after_aq']:.0f} MiB** "
              "(target <= 2048 MiB). Steps timed in interleaved rounds (median); first calls (tracing): "
              + ", ".join(f"{k} {v['first_step_seconds']:.1f} s" for k, v in rows.items()) + ".", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--repeats", type=int, default=10, help="timed compiled steps per method (median)")
    parser.add_argument("--eager-repeats", type=int, default=3, help="timed eager steps (median)")
    parser.add_argument("--only", choices=("all", "aq"), default="all", help="aq: only the Adversarial Querying rows")
    parser.add_argument("--aq-attack-steps", default="3",
                        help="comma-separated PGD steps k of the AQ training attack (default 3)")
    args = parser.parse_args(argv)
    attack_steps = [int(k) for k in args.aq_attack_steps.split(",") if k.strip()]

    import keras
    import tensorflow as tf

    import tutorial_lib as tl

    tl.runtime.set_seed(0)
    n_way, k_shot, queries, meta_batch, inner_steps = 5, 5, 15, 4, 5
    data = tl.data.load_mnist("subset")
    sampler, _ = tl.tasks.digit_splits(data, n_way=n_way, k_shot=k_shot, q_queries=queries)
    batches = [sampler.sample(meta_batch) for _ in range(4)]
    rows: dict[str, dict] = {}
    machine = _results.machine()
    header = f"{n_way}-way {k_shot}-shot, {queries} queries, meta-batch {meta_batch}"
    if args.only == "aq":
        aq = aq_rows(batches, n_way=n_way, meta_batch=meta_batch, attack_steps=attack_steps, repeats=args.repeats)
        _results.write(args.out, "meta-aq", {"adversarial_querying": aq, "machine": machine},
                       "\n".join(aq_markdown(aq, header)))
        return 0

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
    aq = aq_rows(batches, n_way=n_way, meta_batch=meta_batch, attack_steps=attack_steps, repeats=args.repeats)

    result = {
        "config": {"n_way": n_way, "k_shot": k_shot, "queries": queries, "meta_batch": meta_batch,
                   "inner_steps": inner_steps, "model": "few_shot_cnn(5): 3 x Conv32 stride 2 + Dense"},
        "timings": rows,
        "speedup_compiled_vs_eager": eager_s / maml_s,
        "peak_rss_mib_after_compiled_maml": peak_mib,
        "adversarial_querying": aq,
        "machine": machine,
        "note": "median of repeated steps; the machine may be shared, so compare ratios from one run",
    }
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
        *aq_markdown(aq, header),
    ]
    _results.write(args.out, "meta", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
