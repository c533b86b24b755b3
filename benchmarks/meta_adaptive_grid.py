"""Which support copies help AttackAdaptiveMAML against a spatial attack: re-crafted or every grid transform?

    python benchmarks/meta_adaptive_grid.py [--out build/bench] [--meta-steps 300] [--tasks 100] [--start PATH]

Notebook 06's quick setting for its spatial family: meta-training starts from notebook 05's MAML (``--start``, a
``.keras`` file; default build/models/05_maml.keras) and takes ``--meta-steps`` meta-steps on notebook 05's
5-way 5-shot tasks (meta-batch 4, Adam 1e-3, zero head, budget ramp over the first half, clean-query weight 0.2)
with the training grid (+-15 deg, +-2 px, 3 x 3 x 3 points). Two AttackAdaptiveMAML learners, 3 inner steps each,
differ only in the support copies: ``spatial_support="recraft"`` (the worst grid point per image against the
current inner weights, at every inner step) or ``"grid"`` (all 27 transforms of each image). Both are measured on
``--tasks`` meta-test tasks (digits 5-9, 5 queries per class) against the test grid (+-15 deg, +-2 px, 5 x 3 x 3
points) run against the adapted weights, after 3 adaptation steps with the learned rates on: the clean support;
the support + re-crafted copies (``adaptation.adapt_and_evaluate``); the support + every test-grid transform (a
per-task loop here: the evaluator has no grid mode). Baseline row "start": notebook 05's MAML itself, adapted
as notebook 06 adapts it (3 steps at 0.4, then 0.1) on the clean or the clean + re-crafted support. Mean and
95 % interval over tasks. Writes meta_adaptive_grid.json and .md to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--meta-steps", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=100, help="meta-test tasks")
    parser.add_argument("--start", default="build/models/05_maml.keras", help="notebook 05's MAML (.keras)")
    parser.add_argument("--only", choices=("recraft", "grid", "both", "start"), default="both",
                        help="start: only the baseline, notebook 05's MAML adapted as notebook 06 adapts it")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import tutorial_lib as tl
    from tutorial_lib.experiments import robust_few_shot as rfs

    mad = tl.meta_adversarial
    profile = tl.profiles.get_profile("quick")
    ms, us = profile.meta_adv, profile.unseen
    data = tl.data.load_mnist(profile.data_source)
    start = tl.models.load_model(Path(args.start))
    train_grid = tl.attacks.Spatial(max_angle=us.spatial_max_angle, max_shift=us.spatial_max_shift,
                                    angle_steps=us.train_spatial_angle_steps, shift_steps=us.train_spatial_shift_steps)
    test_grid = tl.attacks.Spatial(max_angle=us.spatial_max_angle, max_shift=us.spatial_max_shift,
                                   angle_steps=us.spatial_angle_steps, shift_steps=us.spatial_shift_steps)
    sampler, _ = rfs.samplers(data, ms, seed=0)
    _, test_sampler = tl.tasks.digit_splits(data, n_way=ms.n_way, k_shot=ms.k_shot, q_queries=us.q_queries)
    tasks = test_sampler.sample(args.tasks, seed=0)
    steps = 3
    rows = {}
    if args.only in ("both", "start"):  # the baseline: the starting MAML, notebook 06's rates (0.4, then 0.1)
        rows["start"] = {}
        for name, attack in (("clean_support", None), ("recrafted_support", test_grid)):
            support = {} if attack is None else dict(support="clean+attacked", support_attack=attack, recraft=True)
            res = tl.adaptation.adapt_and_evaluate(start, tasks, checkpoints=(steps,), query_attacks=[test_grid],
                                                   lr=us.adapt_lr, later_lr=us.adapt_later_lr, **support)
            rows["start"][name] = res.at(steps)
    for support in {"both": ("recraft", "grid"), "start": ()}.get(args.only, (args.only,)):
        tl.runtime.set_seed(0)
        model = tl.models.few_shot_cnn(ms.n_way)
        model.set_weights(start.get_weights())
        learner = mad.AttackAdaptiveMAML(model, pool=train_grid, inner_steps=steps, spatial_support=support,
                                         clean_weight=us.clean_weight, ramp_steps=int(round(us.ramp_fraction * args.meta_steps)),
                                         zero_head=True, meta_optimizer=keras.optimizers.Adam(ms.meta_lr), seed=0)
        began = time.perf_counter()
        history = learner.meta_fit(sampler, args.meta_steps, ms.meta_batch, verbose=2)
        train_seconds = time.perf_counter() - began
        row = {"train_seconds": train_seconds, "final_loss": float(np.mean(history.loss[-20:]))}
        for name, attack in (("clean_support", None), ("recrafted_support", test_grid)):
            res = tl.adaptation.adapt_and_evaluate(model, tasks, checkpoints=(steps,), query_attacks=[test_grid],
                                                   **learner.evaluation_options(attack))
            row[name] = res.at(steps)
        row["grid_support"] = grid_evaluation(learner, tasks, test_grid, steps)
        rows[support] = row
        print(support, {k: v for k, v in row.items()})
    result = {"config": {"meta_steps": args.meta_steps, "tasks": args.tasks, "inner_steps": steps,
                         "train_grid": repr(train_grid), "test_grid": repr(test_grid), "start": args.start,
                         "clean_weight": us.clean_weight},
              "rows": rows, "machine": _results.machine()}
    pct = lambda r: f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}"  # noqa: E731
    lines = [f"# AttackAdaptiveMAML against a spatial attack: re-crafted support copies or every grid transform", "",
             f"{args.meta_steps} meta-steps from notebook 05's MAML, {args.tasks} meta-test tasks (5-way 5-shot), "
             f"3 adaptation steps with the learned rates; test attack {test_grid!r} against the adapted weights.", "",
             "| meta-trained with | adapted on | clean % | robust % |", "|---|---|---|---|"]
    for support, row in rows.items():
        for name in ("clean_support", "recrafted_support", "grid_support")[:2 if support == "start" else 3]:
            lines.append(f"| {support} | {name.replace('_', ' ')} | {pct(row[name]['clean'])} | {pct(row[name]['robust'])} |")
    lines += ["", "Meta-training seconds: " + ", ".join(f"{k} {v['train_seconds']:.0f} s" for k, v in rows.items()
                                                    if "train_seconds" in v), ""]
    _results.write(args.out, "meta_adaptive_grid", result, "\n".join(lines))
    return 0


def grid_evaluation(learner, tasks, attack, steps: int) -> dict:
    """Clean and robust query accuracy (mean, 95 % interval over tasks) after adapting on the support set plus every
    grid transform of it, queries attacked against the adapted weights; one compiled function, a loop over tasks."""
    import tensorflow as tf

    import tutorial_lib as tl

    mad, model = tl.meta_adversarial, learner.model
    rates = learner.rate_schedule()

    @tf.function
    def one(sx, sy, qx, qy):
        adapted = mad.attacked_support_inner_loop(model, tl.meta.params_of(model), sx, sy, attack=None, rates=rates,
                                                  steps=steps, first_order=True,
                                                  support_copies=mad.grid_support(attack, sx, sy))
        adapted = [tf.stop_gradient(p) for p in adapted]
        ok = tf.equal(tf.argmax(tl.meta.forward(model, adapted, qx), -1, output_type=tf.int32), qy)
        x_adv = mad.attack_adapted(attack, model, adapted, qx, qy)
        ok_adv = tf.equal(tf.argmax(tl.meta.forward(model, adapted, x_adv), -1, output_type=tf.int32), qy)
        return tf.reduce_mean(tf.cast(ok, tf.float32)), tf.reduce_mean(tf.cast(ok & ok_adv, tf.float32))

    clean, robust = [], []
    for i in range(len(tasks)):
        c, r = one(*(tf.constant(a[i]) for a in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)))
        clean.append(float(c))
        robust.append(float(r))
    return {k: tl.evaluate.mean_ci95_record(np.array(v)) for k, v in (("clean", clean), ("robust", robust))}


if __name__ == "__main__":
    raise SystemExit(main())
