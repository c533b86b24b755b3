"""Benchmark: seconds per epoch of each adversarial-training method relative to standard training, in one run.

Usage: python benchmarks/training.py [--out DIR] [--train-size N] [--epochs E] [--repeats R]
Writes DIR/training.json and DIR/training.md (default DIR: build/bench). Each method trains the article's CNN
on the same images; the first epoch (tracing) is dropped. The methods are timed in interleaved rounds so a
change in machine load hits them alike, and each method's fastest epoch is reported (as timeit does: on a
shared machine the minimum is the least disturbed measurement; the median is in the JSON). Ratios are what to read.
Expected: fast AT <= 2.5x standard; PGD-k about (k + 1)x (k attack steps plus the training step).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import tutorial_lib as tl

import _results

METHODS = {  # label: adversarial_fit options (eps 0.3, quick-profile batch size)
    "standard": {"method": "none"},
    "FGSM-AT": {"method": "fgsm"},
    "fast AT (FGSM-RS)": {"method": "fgsm_rs"},
    "fast AT + GradAlign": {"method": "fgsm_rs", "align_weight": 1.0},
    "PGD-3 AT": {"method": "pgd", "steps": 3},
    "PGD-7 AT": {"method": "pgd", "steps": 7},
    "TRADES-7": {"method": "trades", "steps": 7},
}
EXPECTED = {"FGSM-AT": "about 2x", "fast AT (FGSM-RS)": "<= 2.5x", "fast AT + GradAlign": "",
            "PGD-3 AT": "about 4x", "PGD-7 AT": "about 8x", "TRADES-7": "about 9x"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tl.runtime.build_dir() / "bench")
    parser.add_argument("--train-size", type=int, default=2000, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per method and round (first is dropped)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all methods")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.train_size < 64 or args.repeats < 1:
        parser.error("need --epochs >= 2 (the first is tracing), --train-size >= 64 and --repeats >= 1")

    profile = tl.runtime.setup(seed=0, verbose=False)
    s = profile.adv_training
    data = tl.data.load_mnist(profile.data_source)
    x, y = data.x_train[: args.train_size], data.y_train[: args.train_size]
    seconds: dict[str, list[float]] = {label: [] for label in METHODS}
    for _ in range(args.repeats):
        for label, options in METHODS.items():
            tl.runtime.set_seed(0)
            _, info = tl.training.adversarial_fit(tl.models.article_cnn(), x, y, eps=s.eps, epochs=args.epochs,
                                                  batch_size=s.batch_size, verbose=0, **options)
            seconds[label].extend(info["epoch_seconds"][1:])
            print(f"{label:22s} {min(info['epoch_seconds'][1:]):6.2f} s/epoch", flush=True)
    base, base_median = min(seconds["standard"]), float(np.median(seconds["standard"]))
    rows = [{"method": label, "seconds_per_epoch": min(v), "ratio": min(v) / base,
             "median_seconds_per_epoch": float(np.median(v)), "median_ratio": float(np.median(v)) / base_median,
             "expected": EXPECTED.get(label, "1x")} for label, v in seconds.items()]
    result = {"benchmark": "training", "train_size": args.train_size, "batch_size": s.batch_size, "eps": s.eps,
              "epochs_timed": (args.epochs - 1) * args.repeats, "machine": _results.machine(), "rows": rows}
    lines = [f"Seconds per epoch, article's CNN, {args.train_size} MNIST images, batch {s.batch_size}, eps {s.eps}, "
             f"{os.cpu_count()} CPU cores (fastest of {result['epochs_timed']} epochs per method; medians in brackets)", "",
             "| method | s / epoch | x standard | expected |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['seconds_per_epoch']:.2f} ({r['median_seconds_per_epoch']:.2f}) | "
              f"{r['ratio']:.2f}x ({r['median_ratio']:.2f}x) | {r['expected']} |" for r in rows]
    _results.write(args.out, "training", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
