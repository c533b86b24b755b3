"""The series' defaults on a GPU, emulated on the CPU: every attack, the trainer's step and meta-steps must run.

``tl.runtime.setup()`` turns TensorFlow's op determinism on, and XLA has no deterministic gradient for
max-pooling ("GPU MaxPool gradient ops do not yet have a deterministic XLA implementation"; the same error on
the CPU). So whatever the package compiles by default on a GPU must run with determinism on. A child process
(op determinism cannot be turned off once on, so it must not leak into other tests) calls ``setup()``, makes
TensorFlow's device lists report a GPU (what ``tutorial_lib.compiled.use_xla`` and Keras' ``jit_compile="auto"``
ask), and runs each entry point with the jit setting the code then chooses, on the series' real models
(``models.article_cnn``, with max-pooling, and ``models.few_shot_cnn``). A control case forces XLA and must fail,
so the emulation is known to expose the problem.
Run directly (``python tests/test_gpu_defaults.py``) it prints one JSON line of results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ["FGSM", "BIM", "PGD", "MIM", "Spatial", "AttackPool", "AdversarialPatch", "AdversarialTrainer.compile",
         "adversarial_fit pgd",
         "adversarial_fit trades", "MAML meta-step", "AdversarialQuerying meta-step", "PoolQuerying meta-step",
         "AttackAdaptiveMAML meta-step"]


def emulate_gpu(tf: Any) -> None:
    """Make ``tf.config.list_logical_devices`` / ``list_physical_devices`` report one GPU (nothing is placed on
    it: the code under test only asks whether there is one)."""
    logical, physical = tf.config.list_logical_devices, tf.config.list_physical_devices
    gpu_logical = tf.config.LogicalDevice(name="/device:GPU:0", device_type="GPU")
    gpu_physical = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")

    def list_logical_devices(device_type: str | None = None) -> list:
        found = [] if device_type == "GPU" else list(logical(device_type))
        return found + ([gpu_logical] if device_type in (None, "GPU") else [])

    def list_physical_devices(device_type: str | None = None) -> list:
        found = [] if device_type == "GPU" else list(physical(device_type))
        return found + ([gpu_physical] if device_type in (None, "GPU") else [])

    tf.config.list_logical_devices = list_logical_devices
    tf.config.list_physical_devices = list_physical_devices


def run_cases() -> dict[str, Any]:
    """Run every case in this (child) process; returns {case: "ok" or the error}, plus what the emulation saw."""
    import numpy as np
    import tensorflow as tf

    import tutorial_lib as tl
    from tutorial_lib import compiled, meta, meta_adversarial

    tl.runtime.setup(seed=0, verbose=False)  # the defaults: op determinism on
    emulate_gpu(tf)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    cnn = tl.models.article_cnn()  # max-pooling: the layer whose gradient XLA refuses under determinism
    A = tl.attacks
    spatial = A.Spatial(max_angle=10, max_shift=1, angle_steps=3, shift_steps=3)
    pool = A.AttackPool([A.FGSM(eps=0.1), A.PGD(eps=0.1, steps=2, step_size=0.05), spatial])

    def pool_step() -> None:  # the pool inside a compiled function, as the meta-learners use it
        fn = tf.function(lambda a, b, i: pool.generate(cnn, a, b, i, scale=0.5, seed=tf.constant([0, 1], tf.int64)),
                         jit_compile=compiled.use_xla())
        for i in range(len(pool)):
            fn(tf.constant(x), tf.constant(y), tf.constant(i)).numpy()

    def trainer_jit() -> None:  # what the trainer's own compile chooses (Keras' "auto" would ask for XLA on a GPU)
        trainer = tl.training.AdversarialTrainer(tl.models.article_cnn(), method="pgd", eps=0.1, steps=2)
        trainer.compile(optimizer="adam")
        if trainer.jit_compile:
            raise ValueError(f"AdversarialTrainer.compile chose jit_compile={trainer.jit_compile!r}")

    def fit(method: str) -> None:
        tl.training.adversarial_fit(tl.models.article_cnn(), x, y, epochs=1, batch_size=4, method=method, eps=0.1,
                                    steps=2, verbose=0)

    # 5-way tasks of 28x28 images, for the meta-learners (labels only need 5 classes with enough images)
    task_x = rng.uniform(0, 1, (60, 28, 28, 1)).astype(np.float32)
    task_y = np.repeat(np.arange(5), 12)
    tasks = tl.tasks.FewShotSampler(task_x, task_y, n_way=5, k_shot=1, q_queries=2, classes=range(5)).sample(2)

    def meta_step(make: Callable[[Any], Any]) -> None:
        for model in (tl.models.article_cnn(num_classes=5), tl.models.few_shot_cnn(5)):
            loss, _ = make(model).meta_step(tasks)
            if not np.isfinite(loss):
                raise ValueError(f"meta-step loss {loss}")

    cases: dict[str, Callable[[], Any]] = {
        "FGSM": lambda: A.FGSM(eps=0.1)(cnn, x, y),
        "BIM": lambda: A.BIM(eps=0.1, steps=2, step_size=0.05)(cnn, x, y),
        "PGD": lambda: A.PGD(eps=0.3, steps=5, step_size=0.1)(cnn, x, y),
        "MIM": lambda: A.MIM(eps=0.1, steps=2, step_size=0.05)(cnn, x, y),
        "Spatial": lambda: spatial(cnn, x, y),
        "AttackPool": pool_step,
        "AdversarialPatch": lambda: A.AdversarialPatch(5, steps=2, batch_size=4)(cnn, x, y),
        "AdversarialTrainer.compile": trainer_jit,
        "adversarial_fit pgd": lambda: fit("pgd"),
        "adversarial_fit trades": lambda: fit("trades"),
        "MAML meta-step": lambda: meta_step(lambda m: meta.MAML(m, inner_lr=0.1, inner_steps=1)),
        "AdversarialQuerying meta-step": lambda: meta_step(lambda m: meta_adversarial.AdversarialQuerying(
            m, attack=A.PGD(eps=0.1, steps=2, step_size=0.05), inner_lr=0.1, inner_steps=1)),
        "PoolQuerying meta-step": lambda: meta_step(lambda m: meta_adversarial.PoolQuerying(
            m, pool=pool, inner_lr=0.1, inner_steps=1)),
        "AttackAdaptiveMAML meta-step": lambda: meta_step(lambda m: meta_adversarial.AttackAdaptiveMAML(
            m, pool=pool, inner_lr=0.1, inner_steps=2)),
        # control: XLA forced, so the emulated GPU with determinism must refuse max-pooling's gradient
        "control: PGD with jit_compile=True": lambda: A.PGD(eps=0.3, steps=5, step_size=0.1, jit_compile=True)(cnn, x, y),
    }
    from tensorflow.python.framework import config as tf_config  # TensorFlow exports no getter

    results: dict[str, Any] = {"_emulation": {
        "gpu_listed": bool(tf.config.list_logical_devices("GPU")) and bool(tf.config.list_physical_devices("GPU")),
        "determinism": bool(tf_config.is_op_determinism_enabled())}}
    try:
        results["_emulation"]["use_xla"] = compiled.use_xla()
    except Exception as err:  # reported by the test of the emulation
        results["_emulation"]["use_xla"] = f"{type(err).__name__}: {err}"
    for name, case in cases.items():
        try:
            case()
            results[name] = "ok"
        except Exception as err:  # recorded, reported by the test that checks this case
            results[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
    return results


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the emulated-GPU child process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def test_the_child_sees_a_gpu_with_op_determinism_on(results):
    assert results["_emulation"] == {"gpu_listed": True, "determinism": True, "use_xla": False}


def test_the_emulation_exposes_xla_under_determinism(results):
    # without this the other cases could pass because the emulation hid the problem
    assert "deterministic XLA implementation" in results["control: PGD with jit_compile=True"]


@pytest.mark.parametrize("case", CASES)
def test_runs_with_the_defaults_a_gpu_gets(results, case):
    assert results[case] == "ok", f"{case} failed with the GPU defaults: {results[case]}"


if __name__ == "__main__":
    print(json.dumps(run_cases()))
