"""Gather the notebooks' ``build/results/*.json`` into one Markdown file (``make tutorials`` calls this): the
series' headline numbers beside the published results they echo (:func:`published_table`), then every result.

    python -m tutorial_lib.report [RESULTS_DIR] [OUT_MD]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import runtime

#: The published numbers the series' results echo: each with its source, the exact setting it was measured in, and
#: where our number comes from (results file, keys). ``value`` None: the paper's figure was not checked here, so the
#: table names the source without quoting a number. Introduced in notebooks/07_applications_and_results.ipynb.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"key": "madry_pgd_at", "what": "PGD adversarial training, MNIST, robust accuracy at eps = 0.3",
     "value": 0.8962,
     "source": "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR); the figure is "
               "the MadryLab/mnist_challenge white-box leaderboard entry for their adversarially trained model (100-step PGD on the "
               "cross-entropy loss with 50 random restarts; 88.00% is the strongest attack listed there)",
     "setting": "full MNIST (60,000 training / 10,000 test images); CNN with two 5x5 conv layers (32, 64 filters) and a "
                "1,024-unit dense layer; trained with PGD-40 (step 0.01, random start) for 100,000 steps of 50 images; "
                "attacked with PGD-100 and 50 random restarts at eps = 0.3",
     "ours": ("03_adversarial_training", ("methods", "pgd", "worst_case"), None),
     "ours_what": "PGD-AT, the series' strong evaluation: worst case over APGD-CE, APGD-DLR and PGD-100, "
                  "notebook 03"},
    {"key": "wong_fast_at", "what": "fast adversarial training (FGSM with a random start), MNIST, eps = 0.3",
     "value": None,
     "claim": "their headline: FGSM with a random start trains models as robust as PGD training (their MNIST "
              "figure not checked here)",
     "source": "Wong, Rice and Kolter 2020, Fast is better than free: Revisiting adversarial training (ICLR), MNIST "
               "experiments, run with their public MNIST script (locuslab/fast_adversarial, MNIST/train_mnist.py)",
     "setting": "full MNIST (60,000 images); a 4-layer CNN (two stride-2 convolutions of 16 and 32 filters, a "
                "100-unit layer); FGSM with a random start, alpha 0.375, eps 0.3; Adam with a cyclic learning rate "
                "up to 0.005; 10 epochs of batches of 100; evaluated with PGD-50 (step 0.01) and 10 restarts",
     "ours": ("03_adversarial_training", ("wong_recipe", "wong_cyclic", "pgd100_restarts5"), "eval_size"),
     "ours_what": "their recipe (cyclic lr) on our data and CNN, PGD-100 x 5 restarts"},
    {"key": "finn_maml_1shot", "what": "MAML, 5-way 1-shot accuracy on held-out classes",
     "value": 0.987, "ci95": 0.004,
     "source": "Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks "
               "(ICML), Table 1 (Omniglot)",
     "setting": "Omniglot, 1,200 meta-training characters with rotations as extra classes; 4 conv blocks of 64 "
                "filters; 60,000 meta-steps of 32 tasks",
     "ours": ("04_meta_learning", ("methods", "maml", "1shot"), None),
     "ours_what": "MAML 5-way 1-shot, digits 5-9"},
    {"key": "finn_maml_5shot", "what": "MAML, 5-way 5-shot accuracy on held-out classes",
     "value": 0.999, "ci95": 0.001,
     "source": "Finn, Abbeel and Levine 2017 (ICML), Table 1 (Omniglot)",
     "setting": "as the 1-shot row",
     "ours": ("04_meta_learning", ("methods", "maml", "5shot"), None),
     "ours_what": "MAML 5-way 5-shot, digits 5-9"},
    {"key": "goldblum_aq", "what": "Adversarial Querying, robust few-shot accuracy",
     "value": None,
     "source": "Goldblum, Fowl and Goldstein 2020, Adversarially Robust Few-Shot Learning: A Meta-Learning Approach "
               "(NeurIPS), Table 1",
     "setting": "Mini-ImageNet 5-way few-shot, colour images, L-inf attacks",
     "ours": ("05_meta_adversarial", ("methods", "aq", "robust_restarts5"), None),
     "ours_what": "AQ 5-way 5-shot, digits 5-9, PGD-20 x 5 restarts at eps 0.1"},
)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], rows)
    elif isinstance(value, float):
        rows.append((prefix, f"{value:.4g}"))
    elif isinstance(value, list) and len(value) > 12:
        rows.append((prefix, f"[{len(value)} values]"))
    else:
        rows.append((prefix, json.dumps(value)))


def _dig(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _wilson_half(p: float, n: int) -> float:
    """Half-width of the 95% interval of accuracy ``p`` over ``n`` images (:func:`tutorial_lib.evaluate.accuracy_ci95`)."""
    import numpy as np

    from . import evaluate  # TensorFlow loads only when a results file needs an interval

    return float(evaluate.accuracy_ci95(np.arange(n) < int(round(p * n)))[1])


def our_number(entry: dict[str, Any], results_dir: Path) -> dict[str, Any] | None:
    """Our number for one :data:`PUBLISHED` entry: ``{"mean", "ci95", "profile", "n"}`` read from its results
    file, or None when that file (or the key) is missing. Accuracies over images get Wilson's 95% interval
    (as :func:`tutorial_lib.evaluate.accuracy_ci95`); few-shot results carry their own interval over tasks."""
    name, keys, n_key = entry["ours"]
    path = Path(results_dir) / f"{name}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    value = _dig(data, keys)
    if isinstance(value, dict) and "mean" in value:
        return {"mean": float(value["mean"]), "ci95": float(value.get("ci95", float("nan"))),
                "profile": data.get("profile"), "n": value.get("tasks", data.get("tasks"))}
    if isinstance(value, (int, float)) and n_key and isinstance(data.get(n_key), int):
        n = int(data[n_key])
        return {"mean": float(value), "ci95": _wilson_half(float(value), n), "profile": data.get("profile"), "n": n}
    return None


def accuracy_text(accuracy: float, n: int) -> str:
    """``"61.5% ± 6.9"``: an accuracy (fraction) measured on ``n`` images with its 95 % Wilson half-width in points.

    For accuracies known only as a fraction and a count; with one boolean per image use
    :func:`tutorial_lib.evaluate.accuracy_ci95`. Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n (the number of images behind the accuracy) must be >= 1, got {n}")
    if not 0.0 <= float(accuracy) <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
    return f"{100 * float(accuracy):.1f}% ± {100 * _wilson_half(float(accuracy), n):.1f}"


def sweep_table(sweeps: Any, n: int) -> str:
    """Markdown: accuracy (with its 95 % Wilson interval over ``n`` images) at each eps of one or more sweeps.

    ``sweeps``: a :class:`~tutorial_lib.evaluate.SweepResult` or a list of them over the same eps values (one
    column each). Introduced in notebooks/01_fgsm.ipynb.
    """
    import numpy as np

    sweeps = [sweeps] if hasattr(sweeps, "accuracy") else list(sweeps)
    if not sweeps:
        raise ValueError("sweeps is empty: pass a SweepResult or a list of them")
    eps = np.asarray(sweeps[0].eps)
    if any(len(s.eps) != len(eps) or not np.allclose(s.eps, eps) for s in sweeps):
        raise ValueError("every sweep must use the same eps values to share one table")
    n = int(n)
    if n < 1:
        raise ValueError(f"n (the number of images behind each accuracy) must be >= 1, got {n}")
    head = "| eps | " + " | ".join(f"{s.label} accuracy (95% interval)" for s in sweeps) + " |"
    rows = [f"| {e:.3g} | " + " | ".join(_pct(float(s.accuracy[i]), _wilson_half(float(s.accuracy[i]), n))
                                       for s in sweeps) + " |" for i, e in enumerate(eps)]
    return "\n".join([head, "|---" * (len(sweeps) + 1) + "|", *rows])


#: The accuracies a sanity report measures, in the order of its table.
_SANITY_ACCURACIES = (("clean", "clean"), ("fgsm", "FGSM"), ("pgd", "PGD, 1 run"), ("pgd_restarts", "PGD, restarts"),
                      ("pgd_large_eps", "PGD at the large eps"), ("noise", "random noise"),
                      ("transfer", "transfer attack"))


def sanity_intervals(report: Any, n: int) -> str:
    """One Markdown line: each accuracy of a sanity report with its 95 % Wilson interval over ``n`` examples.

    ``report``: a :class:`~tutorial_lib.evaluate.SanityReport`; accuracies it did not measure are skipped.
    The check verdicts compare point values; this line says how far each could move from sampling alone.
    Introduced in notebooks/02_iterative_attacks.ipynb.
    """
    numbers = getattr(report, "numbers", None)
    if not isinstance(numbers, dict):
        raise TypeError("report must be a SanityReport (from tl.evaluate.sanity_checks)")
    parts = [f"{title} {_pct(float(numbers[key]), _wilson_half(float(numbers[key]), int(n)))}"
             for key, title in _SANITY_ACCURACIES if isinstance(numbers.get(key), (int, float))]
    return f"95% intervals over {int(n)} examples: " + "; ".join(parts) + "."


def lever_table(path: Path) -> str | None:
    """Markdown table of ``benchmarks/meta_levers.py``'s measurements (``build/bench/meta_levers.json``), or None
    when that file does not exist.

    One row per lever: meta-steps, inner steps, accuracy per shot with its 95 % interval and the paired difference
    to the notebook's MAML (when recorded), and seconds per 5-shot meta-step with its ratio to MAML's.
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        return None
    lv = json.loads(path.read_text())
    shots = lv["config"]["shots"]
    steps = lv.get("step_seconds", {})
    base = steps.get("maml_500", {}).get("5")
    lines = ["| lever | meta-steps | inner steps | " + " | ".join(f"{k}-shot (vs MAML 500, paired)" for k in shots)
             + " | s / meta-step, 5-shot (vs MAML 500) |", "|---|---|---|" + "---|" * (len(shots) + 1)]
    for name, row in lv["rows"].items():
        cells = [_pct(c["mean"], c["ci95"]) + (f" ({100 * c['difference_to_baseline']:+.1f} ± "
                                                f"{100 * c['difference_ci95']:.1f})" if "difference_to_baseline" in c else "")
                 for c in row["shots"].values()]
        step = steps.get(name, {}).get("5")
        cost = f"{step:.3f} ({step / base:.1f}x)" if step and base else ""
        lines.append(f"| {row['description']} | {row['meta_steps']} | {row['inner_steps']} | " + " | ".join(cells)
                     + f" | {cost} |")
    return "\n".join(lines)


def _differences(entry: dict[str, Any], data: dict[str, Any] | None, profile: Any,
                 results_dir: Path | None = None) -> str:
    """How our setting differs from the paper's, from the profile our number was produced with."""
    if profile is None:
        return "-"
    key = entry["key"]
    if key in ("madry_pgd_at", "wong_fast_at"):
        s = profile.adv_training
        images = (data or {}).get("train_images")
        size = f"{images:,} training images" if images else f"data '{profile.data_source}'"
        if key == "madry_pgd_at":
            train = f"PGD-{s.train_pgd_steps} training for {s.epochs} epochs"
        else:
            train = "their recipe otherwise (attack, step, learning-rate schedule, epochs, batch size)"
        if key == "madry_pgd_at":
            attack = (f"worst case over APGD-CE-{s.eval_strong_steps}, APGD-DLR-{s.eval_strong_steps} and "
                      f"PGD-{s.eval_strong_steps} x {s.strong_restarts} on {s.strong_eval_size:,} test images")
        else:
            attack = f"PGD-{s.eval_strong_steps} x {s.eval_restarts} restarts on {s.eval_size:,} test images"
        text = f"{size}; the article's CNN (two 3x3 conv layers, no hidden dense layer); {train}; {attack}"
        if key == "wong_fast_at" and results_dir is not None:
            text += _wong_verdict(Path(results_dir), s)
        return text
    if key.startswith("finn_maml"):
        m = profile.meta
        return (f"MNIST digits: 5 meta-training digits x {len(m.rotations)} rotations, tested on digits 5-9; "
                f"a {m.blocks}-block CNN of {m.filters} filters; {m.meta_steps:,} meta-steps of {m.meta_batch} tasks")
    if key == "goldblum_aq":
        a = profile.meta_adv
        return (f"MNIST digits 5-9 (grey, 28 x 28) instead of Mini-ImageNet; eps {a.eps}; {a.meta_steps:,} "
                f"meta-steps of {a.meta_batch} tasks; PGD-{a.eval_pgd_steps} x {a.eval_restarts} restarts against "
                "the adapted weights")
    return "-"


def _wong_verdict(results_dir: Path, s: Any) -> str:
    """How their recipe compares with PGD-AT trained and attacked the same way on our data (notebook 03)."""
    path = results_dir / "03_adversarial_training.json"
    if not path.is_file():
        return ""
    r03 = json.loads(path.read_text())
    ours, pgd_at = _dig(r03, ("wong_recipe", "wong_cyclic")), _dig(r03, ("methods", "pgd"))
    n = r03.get("eval_size")
    key = f"pgd{s.eval_strong_steps}_restarts{s.eval_restarts}"
    if not isinstance(ours, dict) or not isinstance(pgd_at, dict) or key not in pgd_at or not isinstance(n, int):
        return ""
    words = {1: "above", -1: "below", 0: "within the intervals of"}
    side = words.get(ours.get("vs_pgd_at"), "?")
    return (f". Does the headline reproduce here? Their recipe is {side} PGD-AT in the same setting "
            f"({_pct(pgd_at[key], _wilson_half(pgd_at[key], n))}, same attack)")


def published_rows(results_dir: Path) -> list[dict[str, Any]]:
    """One row per :data:`PUBLISHED` entry: ``entry``, ``ours`` (:func:`our_number` or None), ``differences`` and
    ``missing`` (the notebook to run when our number is not there yet)."""
    results_dir = Path(results_dir)
    r00 = results_dir / "00_setup_and_data.json"
    data00 = json.loads(r00.read_text()) if r00.is_file() else None
    rows = []
    for entry in PUBLISHED:
        ours = our_number(entry, results_dir)
        profile = None
        if ours is not None and ours.get("profile") in runtime.PROFILES:
            profile = runtime.get_profile(ours["profile"])
        rows.append({"entry": entry, "ours": ours, "differences": _differences(entry, data00, profile, results_dir),
                     "missing": None if ours is not None else f"run notebooks/{entry['ours'][0]}.ipynb"})
    return rows


def _pct(mean: float, ci95: float | None = None) -> str:
    if ci95 is None or ci95 != ci95:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f} ± {100 * ci95:.1f}%"


def published_table(results_dir: Path) -> str:
    """Markdown: our number (95% interval, profile) beside the published number, its source and setting, and how
    the settings differ. Missing results say which notebook produces them."""
    lines = ["| result | ours | published | source and setting | how our setting differs |", "|---|---|---|---|---|"]
    for row in published_rows(results_dir):
        e, ours = row["entry"], row["ours"]
        ours_cell = (f"{_pct(ours['mean'], ours['ci95'])} ({e['ours_what']}; profile {ours['profile']})"
                     if ours else f"not yet: {row['missing']}")
        pub = (e.get("claim") or "number not checked here") if e["value"] is None else _pct(e["value"], e.get("ci95"))
        lines.append(f"| {e['what']} | {ours_cell} | {pub} | {e['source']}: {e['setting']} | {row['differences']} |")
    return "\n".join(lines)


def results_markdown(results_dir: Path) -> str:
    """The table of :func:`published_table`, then one section per notebook with its flattened results."""
    files = sorted(Path(results_dir).glob("*.json"))
    parts = ["# Results of the notebook series", "", "## Ours vs published", "", published_table(results_dir), ""]
    if not files:
        parts.append("No results yet: run `make tutorials`.")
    for path in files:
        rows: list[tuple[str, str]] = []
        _flatten("", json.loads(path.read_text()), rows)
        parts += [f"## {path.stem}", "", "| field | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in rows]
        parts.append("")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = Path(argv[0]) if argv else runtime.build_dir() / "results"
    out = Path(argv[1]) if len(argv) > 1 else runtime.build_dir() / "results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_markdown(results_dir))
    print(f"wrote {out} from {len(list(results_dir.glob('*.json')))} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
