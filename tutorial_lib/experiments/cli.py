"""Run a chapter's training from the shell: ``python -m tutorial_lib.experiments.<chapter> --profile standard
--strategy multi-worker``.

The command line shared by the chapter drivers: it builds the tf.distribute strategy before any other TensorFlow
work, meta-trains inside its scope with the driver's own cached-training functions (so the notebook then finds
the models in ``build/``), and on the chief evaluates and writes the results file the notebook writes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from .. import runtime
from ..profiles import PROFILES

#: What each chapter's command line does (one function per chapter with a ``__main__`` block).
CHAPTERS: dict[str, str] = {
    "robust_few_shot": "notebook 05: meta-train MAML, ADML, AQ, AQ + TRADES and the article's FGSM MAML, train the "
                       "AT-transfer classifier, choose its fine-tuning on validation tasks, evaluate every method "
                       "(and MAML and AQ under the strong attacks) and write build/results/05_meta_adversarial.json",
}


def parser(chapter: str) -> argparse.ArgumentParser:
    """The arguments every chapter takes: ``--profile``, ``--strategy``, ``--seed``, ``--verbose``."""
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; chapters with a command line: {', '.join(CHAPTERS)}")
    p = argparse.ArgumentParser(
        prog=f"python -m tutorial_lib.experiments.{chapter}", description=CHAPTERS[chapter][0].upper() + CHAPTERS[chapter][1:] + ".",
        epilog="Trained models are cached by configuration in build/ (or $TUTORIAL_BUILD_DIR), so the notebook finds "
               "them. multi-worker: start one process per machine, each with the same cluster in $TF_CONFIG and its "
               "own task index; worker 0 writes the results, the others cache their copies in build/workers/<index>; "
               "every worker must start with the same cached models (see docs/scaling_up.md).")
    p.add_argument("--profile", choices=list(PROFILES), default=None,
                   help=f"sizes to run at (default: ${runtime.PROFILE_ENV} or quick)")
    p.add_argument("--strategy", choices=list(runtime.STRATEGIES), default="auto",
                   help="auto: the local GPUs (or the CPU); mirrored: every local GPU; multi-worker: the machines "
                        "in $TF_CONFIG (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0, as in the notebook)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="progress output (default 1)")
    return p


def main(chapter: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), then train ``chapter`` with that profile and strategy."""
    args = parser(chapter).parse_args(argv)
    strategy = runtime.strategy(args.strategy)  # first: multi-worker must configure TensorFlow before other work
    chief = runtime.is_chief() if args.strategy == "multi-worker" else True
    if not chief:
        # workers other than the chief cache their (identical) copies apart, so that two workers sharing a disk
        # never write the same file
        index = runtime.tf_config()["task"]["index"]
        os.environ[runtime.BUILD_ENV] = str(runtime.build_dir() / "workers" / str(index))
    profile = runtime.setup(seed=args.seed, profile=args.profile, verbose=args.verbose > 0)
    if args.verbose:
        print(f"strategy     : {args.strategy} ({strategy.num_replicas_in_sync} replica(s)"
              f"{'' if chief else ', not the chief: trains, writes nothing the notebook reads'})")
    _RUNNERS[chapter](profile, strategy, chief=chief, seed=args.seed, verbose=args.verbose)
    return 0


def agree_on_cache(strategy: Any, cached: dict[str, bool]) -> None:
    """Check that every worker has the same models cached (else one would wait forever for the others to train).

    ``cached``: model name -> whether this worker has it in its ``build/cache``. Raises a RuntimeError naming the
    models on which the workers differ."""
    import tensorflow as tf

    if strategy.num_replicas_in_sync == 1 or not cached:
        return
    local = tf.constant([int(v) for v in cached.values()], tf.int32)

    @tf.function(autograph=False)
    def count():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(local,)), axis=None)

    total = count().numpy()
    differ = [name for name, n in zip(cached, total) if 0 < n < strategy.num_replicas_in_sync]
    if differ:
        raise RuntimeError(f"the workers' caches differ on {', '.join(differ)} (some have them trained, some not); "
                           "start every worker with the same build/cache (copy the chief's, or empty it)")


def _robust_few_shot(profile, strategy, *, chief: bool, seed: int, verbose: int) -> None:
    """Notebook 05's training (cells "meta-train" and "AT transfer") and, on the chief, its results file: the
    same calls as the notebook (AT transfer's fine-tuning chosen on validation tasks, training compute of every
    method, the strong column), so the file is the one the notebook writes."""
    from .. import data as _data
    from .. import models
    from . import robust_few_shot as rfs

    s = profile.meta_adv
    data = _data.load_mnist(profile.data_source)
    # the adversarial learners split each meta-batch across the strategy's replicas; plain MAML (meta.MAML,
    # notebook 04's learner) has no tf.distribute support, so the chief trains it alone, after the others
    shared = tuple(m for m in rfs.META_TRAINED if m != "maml")
    names = {m: f"05_{m}" for m in shared}
    agree_on_cache(strategy, {names[m]: models.cache_paths(names[m], rfs.meta_config(m, s, data, seed=seed))[0].is_file()
                              for m in shared})
    inits, infos = {}, {}
    for m in shared:
        with strategy.scope():
            inits[m], infos[m] = rfs.meta_train(m, data, s, seed=seed, verbose=2 if verbose else 0)
    if not chief:
        return
    for m in rfs.META_TRAINED:
        if m not in shared:
            inits[m], infos[m] = rfs.meta_train(m, data, s, seed=seed, verbose=2 if verbose else 0)
    # the AT-transfer classifier (plain Keras fit, no meta-batch to split), its fine-tuning chosen on validation
    # tasks, and the evaluation: the chief alone, with the notebook's calls, so that the results file is the same
    at_model, at_info = rfs.at_classifier(data, s, seed=seed, verbose=2 if verbose else 0)
    at_init = rfs.transfer_init(at_model, s.n_way)
    _, val_sampler = rfs.validation_samplers(data, s, seed=seed)
    val_tasks = val_sampler.sample(s.at_select_tasks, seed=0)
    selection, at_runs = rfs.select_at_finetuning(at_init, val_tasks, s)
    _, test_tasks = rfs.samplers(data, s, seed=seed)
    eval_tasks = test_tasks.sample(s.eval_tasks, seed=0)
    starts = {"maml_adv_finetune": inits["maml"], "at_transfer": at_init}
    recipes = {"at_transfer": selection.chosen}
    evals = {m: rfs.evaluate(m, starts.get(m, inits.get(m)), eval_tasks, s, recipe=recipes.get(m))
             for m in rfs.COMPARED}
    seconds = {**{m: infos[m]["train_seconds"] for m in rfs.META_TRAINED},
               "maml_adv_finetune": infos["maml"]["train_seconds"], "at_transfer": at_info["train_seconds"]}
    grad_evals = {**{m: rfs.training_compute(m, s) for m in rfs.COUNTED},
                  "at_transfer": at_info["plan"]["gradient_evaluations"]}
    at_record = rfs.selection_record(selection, at_runs, s, len(val_tasks))
    strong = rfs.strong_evaluation({**inits, "at_transfer": at_init}, eval_tasks, s, methods=rfs.STRONG_COLUMN,
                                   recipes=recipes)
    result = rfs.results(evals, seconds, s, strong=strong, gradient_evaluations=grad_evals, at_selection=selection,
                         at_selection_record=at_record)
    path = rfs.save(result)
    if verbose:
        print(rfs.results_table(result))
        print("results:", runtime.display_path(path))


_RUNNERS: dict[str, Callable[..., None]] = {"robust_few_shot": _robust_few_shot}
