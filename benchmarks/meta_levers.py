"""Measure what each lever does to notebook 04's few-shot accuracy: learned inner rates and longer meta-training.

    python benchmarks/meta_levers.py [--out build/bench] [--levers maml_500,metasgd_500,...] [--shots 1,5]

Notebook 04's exact setting (the `quick` profile: 5-way, meta-train digits 0-4 under 4 rotations, meta-test
digits 5-9, `eval_tasks` test tasks drawn with seed 0, so every row is scored on the same tasks as the notebook).
Rows: MAML with the profile's settings (the notebook's own run, loaded from its cache when present), Meta-SGD (one
learned rate per weight), MAML++'s per-layer per-step rates (LSLR) with k inner steps, and MAML meta-trained for
more steps. Each row: mean query accuracy with its 95% CI, the difference to the MAML baseline paired over the same
tasks (with its 95% CI), meta-training seconds (wall clock, measured when trained; a row loaded from the cache
reports the seconds of the run that trained it) and evaluation seconds. The machine is usually shared, so the
seconds are under load; the cost ratios come from seconds per meta-step timed in interleaved rounds (--timing-rounds). Results are cached in build/cache like the notebook's, so a re-run only evaluates.
Writes meta_levers.json and meta_levers.md to --out (the JSON after every row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import _results

#: name -> (method, overrides of profile.meta, description)
LEVERS = {
    "maml_500": ("maml", {}, "MAML, the notebook's setting"),
    "metasgd_500": ("metasgd", {}, "Meta-SGD: one learned rate per weight"),
    "lslr3_500": ("lslr", {"lslr_train_steps": 3, "lslr_inner_lr": 0.2}, "MAML++ LSLR, 3 inner steps"),
    "lslr5_500": ("lslr", {"lslr_train_steps": 5, "lslr_inner_lr": 0.1}, "MAML++ LSLR, 5 inner steps"),
    "maml3_500": ("maml", {"train_steps": 3, "inner_lr": 0.2}, "MAML, 3 inner steps at a fixed lr 0.2 (3-step LSLR's start)"),
    "lslr2_500": ("lslr", {"lslr_train_steps": 2, "lslr_inner_lr": 0.3}, "MAML++ LSLR, 2 inner steps (the notebook's)"),
    "lslr2_1000": ("lslr", {"lslr_train_steps": 2, "lslr_inner_lr": 0.3, "meta_steps": 1000},
                   "MAML++ LSLR, 2 inner steps, 1,000 meta-steps"),
    "maml_1000": ("maml", {"meta_steps": 1000}, "MAML, 1,000 meta-steps"),
    "maml_1500": ("maml", {"meta_steps": 1500}, "MAML, 1,500 meta-steps"),
    "metasgd_1500": ("metasgd", {"meta_steps": 1500}, "Meta-SGD, 1,500 meta-steps"),
    "metasgd_nozero_500": ("metasgd", {"zero_head": False}, "Meta-SGD without the zero head"),
}


def lever_settings(base, overrides: dict):
    """``base`` (profile.meta) with ``overrides``; the meta-steps are part of the name."""
    return dataclasses.replace(base, **overrides)


def run_lever(name: str, data, base, shots, test_tasks, baseline: dict | None) -> dict:
    """Meta-train (or load) one lever for every shot count and evaluate it on the notebook's test tasks."""
    import tutorial_lib as tl

    exp = tl.experiments.meta_learning
    method, overrides, description = LEVERS[name]
    settings = lever_settings(base, overrides)
    opts = exp.method_options(method, settings)
    row = {"method": method, "description": description, "meta_steps": settings.meta_steps,
           "inner_steps": opts["inner_steps"], "inner_lr_start": opts["inner_lr"], "zero_head": opts["zero_head"],
           "overrides": overrides, "shots": {}}
    for k in shots:
        model, info = exp.meta_train(method, k, data, settings, seed=0, verbose=0, keep_copy=False)
        start = time.perf_counter()
        ev = exp.evaluate_init(method, model, info, test_tasks[k], settings)
        cell = {**ev.to_dict(), "train_seconds": info.get("train_seconds"), "cached": bool(info.get("cached")),
                "eval_seconds": time.perf_counter() - start, "accuracies": ev.accuracies.tolist()}
        if baseline is not None:
            diff, ci = tl.evaluate.mean_ci95(ev.accuracies - baseline["shots"][k]["accuracies_array"])
            cell.update(difference_to_baseline=float(diff), difference_ci95=float(ci))
        if "rates" in info:
            cell["rates_summary"] = {f"weight_{i}": {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}
                                     for i, r in enumerate(info["rates"])}
        row["shots"][k] = cell
        print(f"{name} {k}-shot: {100 * ev.mean:.1f} +- {100 * ev.ci95:.1f}% "
              f"(train {cell['train_seconds']:.0f} s{', cached' if cell['cached'] else ''})", flush=True)
    return row


def step_timings(names, data, base, shots, rounds: int) -> dict:
    """Median wall seconds per meta-step of every lever and shot count, timed in interleaved rounds (one step of
    each learner per round) so that the machine's load affects all alike: the cost ratio between levers."""
    import numpy as np

    import tutorial_lib as tl

    exp = tl.experiments.meta_learning
    learners, batches = {}, {}
    for k in shots:
        sampler = exp.samplers(data, base, k)[0]
        batches[k] = [sampler.sample(base.meta_batch, seed=100 + i) for i in range(4)]
        for name in names:
            method, overrides, _ = LEVERS[name]
            settings = lever_settings(base, overrides)
            model = tl.models.few_shot_cnn(settings.n_way, filters=settings.filters, blocks=settings.blocks)
            learners[name, k] = tl.meta.make_learner(method, model, **exp.method_options(method, settings))
            learners[name, k].meta_step(batches[k][0])  # traces and compiles
    times = {key: [] for key in learners}
    for r in range(rounds):
        for (name, k), learner in learners.items():
            start = time.perf_counter()
            learner.meta_step(batches[k][r % 4])
            times[name, k].append(time.perf_counter() - start)
    out = {}
    for (name, k), t in times.items():
        out.setdefault(name, {})[str(k)] = float(np.median(t))
    return out


def markdown(result: dict) -> str:
    shots = result["config"]["shots"]
    lines = [f"# Meta-learning levers (notebook 04's quick setting: {result['config']['n_way']}-way, "
             f"{result['config']['tasks']} test tasks on digits 5-9, 95% CIs)", "",
             "| lever | meta-steps | inner steps | " + " | ".join(
                 f"{k}-shot accuracy | {k}-shot vs MAML 500 (paired) | {k}-shot train s" for k in shots) + " |",
             "|---|---|---|" + "---|---|---|" * len(shots)]
    for name, row in result["rows"].items():
        cells = []
        for k in shots:
            c = row["shots"][str(k)] if str(k) in row["shots"] else row["shots"][k]
            diff = (f"{100 * c['difference_to_baseline']:+.1f} ± {100 * c['difference_ci95']:.1f}"
                    if "difference_to_baseline" in c else "")
            secs = f"{c['train_seconds']:.0f}" + (" (cached)" if c["cached"] else "")
            cells += [f"{100 * c['mean']:.1f} ± {100 * c['ci95']:.1f}%", diff, secs]
        lines.append(f"| {row['description']} | {row['meta_steps']} | {row['inner_steps']} | " + " | ".join(cells) + " |")
    if "step_seconds" in result:
        base = result["step_seconds"]["maml_500"]
        lines += ["", f"Seconds per meta-step (median of {result['config']['timing_rounds']} interleaved rounds, so the load "
                  "hits every lever alike; relative to MAML 500):", "",
                  "| lever | " + " | ".join(f"{k}-shot s / meta-step" for k in shots) + " |", "|---|" + "---|" * len(shots)]
        for name, row in result["step_seconds"].items():
            lines.append(f"| {result['rows'][name]['description']} | " + " | ".join(
                f"{row[str(k)]:.3f} ({row[str(k)] / base[str(k)]:.1f}x)" for k in shots) + " |")
    lines += ["", "Train seconds are wall clock on a shared 2-core CPU (other jobs running), measured when the row was "
              "trained; a cached row reports its training run's seconds. Paired differences are over the same test tasks.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--levers", default="maml_500,maml_1000,maml_1500,maml3_500,metasgd_500,lslr2_500,lslr3_500,lslr5_500,lslr2_1000",
                        help=f"comma-separated rows, from {', '.join(LEVERS)} (maml_500, the baseline, is always run)")
    parser.add_argument("--shots", default="1,5", help="comma-separated shot counts (default 1,5)")
    parser.add_argument("--timing-rounds", type=int, default=15,
                        help="interleaved rounds timing one meta-step per lever (0: skip)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.levers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        parser.error(f"unknown levers {unknown}; choose from {list(LEVERS)}")
    names = ["maml_500"] + [n for n in names if n != "maml_500"]
    shots = [int(k) for k in args.shots.split(",")]

    import numpy as np

    import tutorial_lib as tl

    profile = tl.runtime.setup(seed=0, profile="quick", verbose=False)
    base = profile.meta
    data = tl.data.load_mnist(profile.data_source)
    test_tasks = {k: tl.experiments.meta_learning.samplers(data, base, k_shot=k)[1].sample(base.eval_tasks, seed=0)
                  for k in shots}
    result = {"config": {"profile": profile.name, "n_way": base.n_way, "tasks": base.eval_tasks, "shots": shots,
                         "q_queries": base.q_queries, "meta_batch": base.meta_batch, "meta_lr": base.meta_lr,
                         "test_tasks_seed": 0, "timing_rounds": args.timing_rounds},
              "machine": {**_results.machine(), "note": "shared machine: seconds measured under load"},
              "rows": {}}
    baseline = None
    for name in names:
        row = run_lever(name, data, base, shots, test_tasks, baseline)
        if name == "maml_500":
            baseline = {"shots": {k: {"accuracies_array": np.array(row["shots"][k]["accuracies"])} for k in shots}}
        result["rows"][name] = row
        save(args.out, result)  # after every row, so a long run leaves its finished rows behind
    if args.timing_rounds > 0:
        result["step_seconds"] = step_timings(names, data, base, shots, args.timing_rounds)
        save(args.out, result)
    return 0


def save(out: str, result: dict) -> None:
    """meta_levers.json and .md in ``out`` (the Markdown is made from the JSON form, where shot keys are strings)."""
    _results.write(out, "meta_levers", result, markdown(json.loads(json.dumps(result))))


if __name__ == "__main__":
    raise SystemExit(main())
