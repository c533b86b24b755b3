"""Measurement: per attack family, the budget at which a trained CNN loses about as much accuracy as under L-inf
PGD at eps 0.1 (how notebook 06's families can be made comparable).

Usage: python benchmarks/family_budgets.py [--model FILE.keras] [--n 500] [--linf-eps 0.1] [--iterations 8] [--out DIR]
       python benchmarks/family_budgets.py --maml FILE.keras [--iterations 6] [--out DIR]
Writes DIR/family_budgets.json and DIR/family_budgets.md (default DIR: build/bench). The model: a ``.keras`` file
(loaded in safe mode, e.g. a cached ``build/cache/baseline-*.keras``), else the series' baseline CNN from
``tl.models.baseline_model`` (trained and cached in this build dir when it is not there). The reference is
notebook 06's L-inf test attack, PGD-20 with step 2.5 eps / 20 and a random start, at ``--linf-eps``; its
accuracy on the first ``n`` test images is the target. Each family's budget is a single number b (the radius,
or the multiplier of a wide base grid), found by bisection on [0, b_max] (``--iterations`` halvings) for the
accuracy closest to the target, every visited budget recorded. Gradient attacks keep their shape across budgets
(PGD-20 at step 2.5 b / 20; SLIDE-20 at step 2 b / 20, the authors' 1.0 at eps 10). Accuracy is over n images
(a 95 % interval of about +-4 points at n = 500), so budgets within one bisection step of each other are equal
for this purpose. With ``--maml`` (notebook 05's plain MAML, e.g. ``build/models/05_maml.keras``) the accuracy is
instead notebook 06's budget probe: robust query accuracy after one adaptation step at the profile's ``adapt_lr`` on
notebook 06's 5-shot test tasks (:func:`tutorial_lib.experiments.unseen_attacks.maml_probe`),
the reference is notebook 06's L-inf family at the profile's ``linf_eps`` and gradient attacks take the profile's
``eval_pgd_steps``; the output is DIR/family_budgets_maml.{json,md}. Not a test: a measurement for the notebook's
settings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tutorial_lib as tl

import _results

A = tl.attacks
STEPS = 20


def families(steps: int = STEPS) -> dict[str, tuple[str, float, Callable[[float], Any]]]:
    """family -> (what the budget b is, b_max, b -> spec); gradient attacks take ``steps`` steps."""
    rotation = A.Rotation(max_angle=90, angle_steps=31)
    translation = A.Translation(max_shift=8, shift_steps=9)
    bilinear = A.Translation(max_shift=8, shift_steps=9, interpolation="bilinear")
    zoom_shear = A.ZoomShear(max_zoom=0.6, max_shear=0.9, zoom_steps=5, shear_steps=5)
    spatial = A.Spatial(max_angle=60, max_shift=6, angle_steps=7, shift_steps=5)
    return {
        "l2": ("eps (L2)", 6.0, lambda b: A.PGD(eps=b, steps=steps, step_size=2.5 * b / steps, norm=2, seed=0)),
        "l1": ("eps (L1)", 40.0, lambda b: A.SparseL1Descent(eps=b, steps=steps, step_size=2 * b / steps, seed=0)),
        "rotation": (f"scale of {rotation!r}", 1.0, rotation.with_scale),
        "translation": (f"scale of {translation!r}", 1.0, translation.with_scale),
        # nearest interpolation moves whole pixels only, so the accuracy falls in steps; bilinear gives sub-pixels
        "translation_bilinear": (f"scale of {bilinear!r}", 1.0, bilinear.with_scale),
        "zoom_shear": (f"scale of {zoom_shear!r}", 1.0, zoom_shear.with_scale),
        "spatial": (f"scale of {spatial!r}", 1.0, spatial.with_scale),
    }


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(model.predict(x, batch_size=500, verbose=0), 1) == y).mean())


def find_budget(make: Callable[[float], Any], b_max: float, target: float, measure: Callable[[Any], float],
                iterations: int) -> dict[str, Any]:
    """Bisection for the budget whose accuracy ``measure(spec)`` is closest to ``target`` (accuracy falls as the
    budget grows)."""
    visited: dict[float, float] = {}

    def acc_at(b: float) -> float:
        if b not in visited:
            visited[b] = measure(make(b))
            print(f"  b={b:.4g}: accuracy {visited[b]:.3f}", flush=True)
        return visited[b]

    lo, hi = 0.0, b_max
    reached = acc_at(hi) <= target
    if reached:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if acc_at(mid) > target else (lo, mid)
    best = min(visited, key=lambda b: (abs(visited[b] - target), b))
    spec = make(best)
    return {"budget": best, "accuracy": visited[best], "reached": reached, "spec": repr(spec), "name": spec.name,
            "visited": {f"{b:.6g}": visited[b] for b in sorted(visited)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a .keras file (default: the baseline CNN)")
    parser.add_argument("--maml", type=Path, default=None, help="notebook 05's plain MAML (.keras): few-shot mode")
    parser.add_argument("--n", type=int, default=500, help="test images")
    parser.add_argument("--linf-eps", type=float, default=0.1)
    parser.add_argument("--iterations", type=int, default=8, help="bisection halvings per family")
    parser.add_argument("--only", default="", help="comma-separated families (default: all)")
    parser.add_argument("--out", type=Path, default=tl.runtime.build_dir() / "bench")
    args = parser.parse_args(argv)
    if args.n < 1 or args.iterations < 1:
        parser.error("need --n >= 1 and --iterations >= 1")

    profile = tl.runtime.setup(seed=0, verbose=False, deterministic=False)
    data = tl.data.load_mnist(profile.data_source)
    if args.maml is not None:
        return few_shot(args, profile, data)
    if args.model is not None:
        model, model_label = tl.models.load_model(args.model), args.model.name
    else:
        model, _ = tl.models.baseline_model(data, profile, verbose=False)
        model_label = "baseline_model (quick profile)"
    x, y = data.x_test[: args.n], data.y_test[: args.n].astype(np.int64)
    clean = accuracy(model, x, y)
    e = args.linf_eps
    reference = A.PGD(eps=e, steps=STEPS, step_size=2.5 * e / STEPS, seed=0)
    target = accuracy(model, reference(model, x, y), y)
    print(f"clean {clean:.3f}; {reference.name} at eps {e:g}: {target:.3f} (the target)", flush=True)
    chosen = [f for f in args.only.split(",") if f] or list(families())
    found = {}
    for family in chosen:
        what, b_max, make = families()[family]
        print(f"{family}: budget = {what}", flush=True)
        found[family] = {"budget_is": what, **find_budget(make, b_max, target, lambda spec: accuracy(model, spec(
            model, x, y), y), args.iterations)}
    result = {"benchmark": "family_budgets", "model": model_label, "data": data.source, "n": args.n, "clean": clean,
              "reference": {"spec": repr(reference), "name": reference.name, "accuracy": target}, "families": found,
              "machine": _results.machine()}
    _results.write(args.out, "family_budgets", result, markdown(result))
    return 0


def few_shot(args: argparse.Namespace, profile: Any, data: Any) -> int:
    """The budgets for notebook 05's plain MAML, measured as notebook 06's budget probe (see the module docstring)."""
    from tutorial_lib.experiments import unseen_attacks as ua

    s, ms = profile.unseen, profile.meta_adv
    maml = tl.models.load_model(args.maml)
    params = tl.meta.params_of(maml)
    probe = ua.eval_tasks(data, s, ms, 5)  # notebook 06's test tasks, as in its budget probe

    def adapt(specs: tuple[Any, ...]):
        return tl.adaptation.adapt_and_evaluate(maml, probe, params=params, checkpoints=(1,), lr=s.adapt_lr,
                                                query_attacks=specs)

    def robust(specs: tuple[Any, ...]) -> float:
        return float(adapt(specs).robust_under(range(len(specs)))[:, 0].mean())

    linf = ua.eval_attacks("linf", s)
    target = robust(linf)
    first = adapt(linf[:1])
    clean = float(first.clean[:, 0].mean())
    print(f"clean {clean:.3f}; {[a.name for a in linf]} at eps {s.linf_eps:g}: {target:.3f} (the target)", flush=True)
    chosen = [f for f in args.only.split(",") if f] or list(families())
    found = {}
    for family in chosen:
        what, b_max, make = families(s.eval_pgd_steps)[family]
        print(f"{family}: budget = {what}", flush=True)
        found[family] = {"budget_is": what, **find_budget(make, b_max, target, lambda spec: robust((spec,)),
                                                          args.iterations)}
    n = len(probe) * probe.query_y.shape[1]
    result = {"benchmark": "family_budgets_maml", "model": f"{args.maml.name} (plain MAML, 1 adaptation step at "
              f"lr {s.adapt_lr:g})", "data": data.source, "n": n, "tasks": len(probe), "clean": clean,
              "reference": {"spec": ", ".join(repr(a) for a in linf), "name": " + ".join(a.name for a in linf),
                            "accuracy": target}, "families": found, "machine": _results.machine()}
    _results.write(args.out, "family_budgets_maml", result, markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    ref = result["reference"]
    lines = [
        f"Budgets per family at which `{result['model']}` ({result['data']}, "
        + (f"{result['tasks']} 5-shot meta-test tasks, {result['n']} queries" if "tasks" in result
           else f"first {result['n']} test images")
        + f", clean accuracy {result['clean']:.1%}) loses about as much accuracy as under `{ref['spec']}` "
        f"({ref['accuracy']:.1%}); bisection, {result['machine']['when']}.",
        "",
        "| family | budget | attack at that budget | accuracy | budget is |",
        "|---|---|---|---|---|",
    ]
    for family, r in result["families"].items():
        note = "" if r["reached"] else " (target not reached at the largest budget)"
        lines.append(f"| {family} | {r['budget']:.4g} | {r['name']}: `{r['spec']}` | {r['accuracy']:.1%}{note} | "
                     f"{r['budget_is']} |")
    p, n = ref["accuracy"], result["n"]
    half = 1.96 * (p * (1 - p) / n) ** 0.5
    what = f"{n} queries of {result['tasks']} tasks" if "tasks" in result else f"{n} images"
    more = " (more: queries of one task fail together)" if "tasks" in result else ""
    lines += ["", f"Accuracy over {what}: a 95 % interval of about ±{100 * half:.1f} points around the target{more}, "
              "so budgets one bisection step apart are equal for this purpose.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
