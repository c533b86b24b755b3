"""Benchmark: the series' strong evaluation (PGD-100 x 5, APGD-CE, APGD-DLR and their worst case) against ART's APGD.

Usage: python benchmarks/strong_eval.py [--out DIR] [--n N] [--profile NAME] [--skip-art]
Writes DIR/strong_eval.json and DIR/strong_eval.md (default DIR: build/bench). The model is notebook 03's PGD-AT
CNN (loaded from the model cache, trained if missing), attacked at the profile's eps (0.3) on N (1,000) test
images with classes interleaved (``tl.evaluate.eval_subset``, as notebook 07). Every attack is traced once on a
few images first, so the times are attack time, not tracing. Read:

* the worst case over ``tl.evaluate.strong_attacks`` next to ART's APGD (cross-entropy and DLR, broken if either
  breaks an image) on the same images, at 50 iterations (notebook 07) and at our 100;
* APGD-CE: ours against ART's with the same iterations (two implementations of one algorithm should agree);
* the time of the whole worst case against PGD-100 x 5 alone (the same run, the same machine and load).
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
from tutorial_lib.experiments import adversarial_training as at
from tutorial_lib.experiments import applications as app

import _results


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def record(correct: np.ndarray, seconds: float | None = None) -> dict[str, Any]:
    mean, half = tl.evaluate.accuracy_ci95(correct)
    out: dict[str, Any] = {"accuracy": float(mean), "ci95": float(half)}
    if seconds is not None:
        out["seconds"] = round(float(seconds), 2)
    return out


def art_apgd(model, x, y, clean: np.ndarray, *, eps: float, steps: int) -> tuple[dict, dict, np.ndarray]:
    """ART's AutoProjectedGradientDescent with the cross-entropy and the DLR loss, as notebook 07 runs it: table
    rows, per-loss correctness masks, and correctness under both (broken if either breaks an image)."""
    rows, masks = {}, {}
    for key, loss in (("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")):
        attack = app._art("attacks.evasion").AutoProjectedGradientDescent(
            app.art_classifier(model), norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, nb_random_init=1,
            batch_size=len(x), loss_type=loss, verbose=False)
        seconds, x_adv = timed(lambda: attack.generate(x, y=app._one_hot(model, y)))
        masks[key] = clean & tl.evaluate.correct(model, x_adv, y)
        rows[f"ART APGD-{key.upper()}-{steps}"] = record(masks[key], seconds)
    both = masks["ce"] & masks["dlr"]
    rows[f"ART APGD-CE+DLR-{steps}"] = record(both, sum(r["seconds"] for r in rows.values()))
    return rows, masks, both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "build" / "bench"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--skip-art", action="store_true", help="only our attacks (no peers extra needed)")
    args = parser.parse_args()

    profile = tl.runtime.setup(seed=0, profile=args.profile, verbose=False)
    s = profile.adv_training
    data = tl.data.load_mnist(profile.data_source)
    model, _ = at.train_cached("03_pgd", data, at.recipe("pgd", s), verbose=True)
    x, y = tl.evaluate.eval_subset(data, args.n)
    eps = float(s.eps)
    ours = tl.evaluate.strong_attacks(eps)
    ours_50 = [tl.attacks.APGD(eps=eps, steps=50, loss=loss, seed=0) for loss in ("ce", "dlr")]
    for attack in ours + ours_50:  # trace every compiled attack once (any batch size reuses the graph)
        attack(model, x[:4], y[:4])

    result = tl.evaluate.worst_case(model, x, y, ours)
    print(result)
    ce_name, dlr_name, pgd_name = result.attacks  # strong_attacks: APGD-CE, APGD-DLR, PGD x restarts
    rows: dict[str, dict[str, Any]] = {"clean": record(result.clean)}
    rows.update({name: record(result.per_attack[name], result.seconds[name]) for name in result.attacks})
    total = sum(result.seconds.values())
    rows["worst case (all three)"] = record(result.correct, total)
    apgd_only = result.per_attack[ce_name] & result.per_attack[dlr_name]
    rows["APGD-CE+DLR-100 (ours)"] = record(apgd_only, result.seconds[ce_name] + result.seconds[dlr_name])
    short = tl.evaluate.worst_case(model, x, y, ours_50)
    rows.update({name: record(short.per_attack[name], short.seconds[name]) for name in short.attacks})
    rows["APGD-CE+DLR-50 (ours)"] = record(short.correct, sum(short.seconds.values()))

    checks: dict[str, Any] = {
        "time_ratio_worst_case_to_pgd": round(total / result.seconds[pgd_name], 3),
        "time_target_met (<= 2)": total / result.seconds[pgd_name] <= 2.0,
    }
    art_masks: dict[int, Any] = {}
    if not args.skip_art and app.peers_available():
        with app._quiet_tf():
            for steps in (50, 100):
                art_rows, masks, both = art_apgd(model, x, y, result.clean, eps=eps, steps=steps)
                rows.update(art_rows)
                art_masks[steps] = (masks, both)
        combined = float(result.correct.mean())
        for steps, (masks, both) in art_masks.items():
            ours_ce = result.per_attack[ce_name] if steps == 100 else short.per_attack[short.attacks[0]]
            checks[f"worst_case_minus_art_apgd_{steps} (points)"] = round(100 * (combined - both.mean()), 2)
            checks[f"accuracy_target_met_vs_art_{steps} (<= +0.5)"] = bool(100 * (combined - both.mean()) <= 0.5)
            checks[f"apgd_ce_ours_minus_art_{steps} (points)"] = round(100 * (ours_ce.mean() - masks["ce"].mean()), 2)
            checks[f"apgd_ce_agreement_{steps} (within 1 point)"] = bool(abs(ours_ce.mean() - masks["ce"].mean()) <= 0.01)
            checks[f"apgd_ce_images_decided_differently_{steps}"] = int(np.sum(ours_ce != masks["ce"]))
        checks["worst_case_record_07"] = tl.evaluate.worst_case_record(result, art_masks[50][1])

    out = {"machine": _results.machine(), "profile": args.profile, "n": int(len(x)), "eps": eps,
           "model": "notebook 03 PGD-AT CNN (03_pgd)", "rows": rows, "checks": checks,
           "peak_rss_mib": round(_results.peak_rss_mib(), 1)}
    lines = [f"Strong evaluation of notebook 03's PGD-AT CNN at eps {eps:g} on {len(x)} test images "
             f"(profile {args.profile}; {out['machine']['when']}, load {out['machine']['load_average'][0]:.2f})", "",
             "| attack | robust accuracy | 95 % interval | seconds |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} % | ± {100 * r['ci95']:.1f} | {r.get('seconds', '')} |")
    lines += ["", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in checks.items() if k != "worst_case_record_07"]
    _results.write(args.out, "strong_eval", out, "\n".join(lines))


if __name__ == "__main__":
    main()
