"""Benchmark the meta-step of AttackAdaptiveMAML against Adversarial Querying and LSLR-MAML.

    python benchmarks/meta_adaptive.py [--out build/bench] [--repeats 5] [--inner-steps 3]

The quick profile's few-shot setting: 5-way 5-shot, 15 queries per class, meta-batch 4, the few-shot CNN (32
filters, 3 blocks), eps 0.1, PGD-3 (step 2.5 eps / 3, random start) as the training attack. Rows, each one
compiled meta-step (second order):

- LSLR-MAML (``meta.LSLR``), ``--inner-steps`` steps on the clean support set: the same inner loop without attacks;
- AQ (``meta_adversarial.AdversarialQuerying``) with one inner step (notebook 05's setting) and with
  ``--inner-steps`` steps (equal steps), queries attacked with PGD-3 against the adapted weights;
- AttackAdaptiveMAML with a pool of PGD-3 alone, ``--inner-steps`` steps: PGD-3 on the support set before every
  inner step (against the current inner weights) and on the queries after the last;
- AttackAdaptiveMAML with notebook 06's training pool (PGD-3 L-inf, PGD-3 L2 at eps 1.5, a 3x3x3 spatial grid
  at +-15 deg, +-2 px), each task drawing one;
- AttackAdaptiveMAML with the spatial grid alone, its support copies re-crafted (the worst grid point per image
  against the current inner weights) or every grid transform of each image (``spatial_support="grid"``).

The learners are timed in interleaved rounds (median wall and process CPU seconds per meta-step; the machine is
shared, so read the ratios). Writes meta_adaptive.json and meta_adaptive.md to --out.
"""

from __future__ import annotations

import argparse
import time

import _results
from meta import _interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-steps per learner (median)")
    parser.add_argument("--inner-steps", type=int, default=3, help="inner steps of LSLR, AQ (equal) and ours")
    args = parser.parse_args(argv)

    import tutorial_lib as tl

    tl.runtime.set_seed(0)
    profile = tl.profiles.get_profile("quick")
    meta, adv, unseen = profile.meta, profile.meta_adv, profile.unseen
    n_way, k_shot, queries, meta_batch, steps = adv.n_way, adv.k_shot, adv.q_queries, adv.meta_batch, args.inner_steps
    data = tl.data.load_mnist("subset")
    sampler, _ = tl.tasks.digit_splits(data, n_way=n_way, k_shot=k_shot, q_queries=queries)
    batches = [sampler.sample(meta_batch) for _ in range(4)]
    eps = adv.eps
    pgd = tl.attacks.PGD(eps=eps, steps=adv.train_pgd_steps, step_size=adv.train_step_scale * eps / adv.train_pgd_steps,
                         random_start=True)
    l2 = tl.attacks.PGD(eps=1.5, norm=2, steps=3, step_size=2.5 * 1.5 / 3, random_start=True)
    spatial = tl.attacks.Spatial(max_angle=unseen.spatial_max_angle, max_shift=unseen.spatial_max_shift,
                                 angle_steps=unseen.train_spatial_angle_steps,
                                 shift_steps=unseen.train_spatial_shift_steps)

    def cnn():
        return tl.models.few_shot_cnn(n_way, filters=meta.filters, blocks=meta.blocks)

    mad = tl.meta_adversarial
    common = dict(zero_head=True)
    learners = {
        f"lslr_{steps}": tl.meta.LSLR(cnn(), inner_lr=meta.lslr_inner_lr, inner_steps=steps, **common),
        "aq_1": mad.AdversarialQuerying(cnn(), inner_lr=adv.inner_lr, inner_steps=1, attack=pgd, **common),
        f"aq_{steps}": mad.AdversarialQuerying(cnn(), inner_lr=0.3, inner_steps=steps, attack=pgd, **common),
        f"ours_pgd_{steps}": mad.AttackAdaptiveMAML(cnn(), pool=pgd, inner_steps=steps, **common),
        f"ours_pool_{steps}": mad.AttackAdaptiveMAML(cnn(), pool=tl.attacks.AttackPool([pgd, l2, spatial]),
                                                     inner_steps=steps, **common),
        f"ours_spatial_{steps}": mad.AttackAdaptiveMAML(cnn(), pool=spatial, inner_steps=steps, **common),
        f"ours_grid_{steps}": mad.AttackAdaptiveMAML(cnn(), pool=spatial, inner_steps=steps, spatial_support="grid",
                                                     **common),
    }
    labels = {
        f"lslr_{steps}": f"LSLR-MAML, {steps} inner steps, clean support",
        "aq_1": "AQ, 1 inner step (notebook 05), PGD-3 queries",
        f"aq_{steps}": f"AQ, {steps} inner steps, PGD-3 queries",
        f"ours_pgd_{steps}": f"AttackAdaptiveMAML, {steps} inner steps, pool = PGD-3",
        f"ours_pool_{steps}": f"AttackAdaptiveMAML, {steps} inner steps, pool = PGD-3 / L2 PGD-3 / spatial 27",
        f"ours_spatial_{steps}": f"AttackAdaptiveMAML, {steps} inner steps, pool = spatial 27, re-crafted",
        f"ours_grid_{steps}": f"AttackAdaptiveMAML, {steps} inner steps, pool = spatial 27, every grid transform",
    }
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

    timings = _interleaved({name: stepper(name) for name in learners}, args.repeats)
    base = {"lslr": timings[f"lslr_{steps}"], "aq": timings["aq_1"], "aq_equal": timings[f"aq_{steps}"]}
    rows = {}
    for name, t in timings.items():
        rows[name] = {"label": labels[name], **t, "first_step_seconds": first[name],
                      **{f"cpu_ratio_to_{k}": t["cpu_seconds"] / v["cpu_seconds"] for k, v in base.items()},
                      **{f"wall_ratio_to_{k}": t["wall_seconds"] / v["wall_seconds"] for k, v in base.items()}}
    result = {"config": {"n_way": n_way, "k_shot": k_shot, "queries_per_class": queries, "meta_batch": meta_batch,
                         "inner_steps": steps, "eps": eps, "model": f"few_shot_cnn({meta.filters} filters, "
                         f"{meta.blocks} blocks)", "repeats": args.repeats},
              "rows": rows, "peak_rss_mib": _results.peak_rss_mib(), "machine": _results.machine(),
              "note": "median of interleaved steps; the machine may be shared, so compare ratios from one run"}
    lines = [f"# AttackAdaptiveMAML meta-step vs AQ and LSLR-MAML ({n_way}-way {k_shot}-shot, {queries} queries per "
             f"class, meta-batch {meta_batch}, eps {eps})", "",
             "| learner | wall s / meta-step | CPU s / meta-step | CPU ratio to LSLR | to AQ (1 step) | "
             f"to AQ ({steps} steps) |", "|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['label']} | {r['wall_seconds']:.3f} | {r['cpu_seconds']:.3f} | {r['cpu_ratio_to_lslr']:.2f}x "
                     f"| {r['cpu_ratio_to_aq']:.2f}x | {r['cpu_ratio_to_aq_equal']:.2f}x |")
    lines += ["", f"Median of {args.repeats} interleaved meta-steps each; first calls (tracing): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in first.items())
              + f". Peak resident memory of the process: {result['peak_rss_mib']:.0f} MiB.", ""]
    _results.write(args.out, "meta_adaptive", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
