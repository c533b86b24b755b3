"""Meta-training across processes: tf.distribute.MultiWorkerMirroredStrategy (runtime.strategy("multi-worker"))
with two workers on 127.0.0.1 gives the weights of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
TIMEOUT = 240  # seconds for both workers (35 s of CPU in all, TF imports included: ~20 s on an idle 2-core machine)

# The meta-training both a worker and the single process run: AQ on a tiny MLP, a meta-batch of 4 tiny tasks
# (two per worker), Adam, a fresh batch each step. Written once, executed by the workers and by this test.
TRAINING = textwrap.dedent("""
    import keras
    import numpy as np
    from tutorial_lib import attacks, tasks
    from tutorial_lib import meta_adversarial as MA

    def tiny_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])

    def tiny_batch(step, n_tasks=4, n=6):
        rng = np.random.default_rng(step)
        pixels = lambda: rng.uniform(0.2, 0.8, (n_tasks, n, 4)).astype(np.float32)
        labels = lambda: rng.integers(0, 2, (n_tasks, n)).astype(np.int32)
        return tasks.Tasks(pixels(), labels(), pixels(), labels(), classes=np.zeros((n_tasks, 2), np.int32))

    def meta_train(strategy, steps):
        with strategy.scope():
            model = tiny_model()
            learner = MA.AdversarialQuerying(model, inner_lr=0.5, meta_optimizer=keras.optimizers.Adam(0.05),
                                             attack=attacks.PGD(eps=0.1, steps=3, step_size=0.08, random_start=True))
        start = [w.copy() for w in model.get_weights()]
        for step in range(steps):
            learner.meta_step(tiny_batch(step))
        return start, model.get_weights()
""")

WORKER = textwrap.dedent("""
    import json, os, sys
    from tutorial_lib import runtime
    strategy = runtime.strategy("multi-worker")  # first: before any other TensorFlow work
    runtime.setup(seed=0, verbose=False)
    exec(os.environ["TRAINING"])
    start, weights = meta_train(strategy, int(os.environ["STEPS"]))
    np.savez(sys.argv[1], *weights)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "chief": runtime.is_chief()}))
""")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_on_loopback_match_one_process(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), "TRAINING": TRAINING,
               "STEPS": str(STEPS), "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"worker{index}.npz")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        # meanwhile, the same training in this process with the default (one-device) strategy
        import tensorflow as tf

        from tutorial_lib import runtime

        runtime.setup(seed=0, verbose=False)
        namespace: dict = {}
        exec(TRAINING, namespace)
        start, expected = namespace["meta_train"](tf.distribute.get_strategy(), STEPS)
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["replicas"] for r in reports] == [2, 2]
    assert [r["chief"] for r in reports] == [True, False]
    assert max(float(np.abs(a - b).max()) for a, b in zip(expected, start)) > 1e-3  # training moved the weights
    for index in range(2):
        with np.load(tmp_path / f"worker{index}.npz") as saved:
            got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("config, message", [
    (None, "needs \\$TF_CONFIG"),
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "index in 0..0"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, config, message):
    from tutorial_lib import runtime

    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ValueError, match=message):
        runtime.strategy("multi-worker")
