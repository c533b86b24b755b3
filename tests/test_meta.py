"""Tests for tutorial_lib.meta against independent references (finite differences, Hessian-vector
products, a numpy Reptile), the article's step shown not to be MAML, the compiled step, bad input, memory."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from tutorial_lib import meta as M
from tutorial_lib import tasks as T


def tiny_mlp(dtype: str = "float64", seed: int = 0) -> keras.Model:
    """4 inputs -> 3 tanh -> 2 logits (tanh so the inner loss has a non-zero Hessian)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype=dtype), keras.layers.Dense(3, activation="tanh", dtype=dtype),
                             keras.layers.Dense(2, dtype=dtype)])


def tiny_task(seed: int, n: int = 6, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)).astype(dtype), rng.integers(0, 2, n).astype(np.int32),
            rng.normal(size=(n, 4)).astype(dtype), rng.integers(0, 2, n).astype(np.int32))


def meta_loss(model, params, task, steps, lr):
    sx, sy, qx, qy = task
    adapted = M.inner_loop(model, [tf.constant(p) for p in params], sx, sy, steps=steps, lr=lr)
    return float(M.loss_and_accuracy(model, adapted, qx, qy)[0])


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_gradient_matches_central_differences(steps):
    model, task, lr = tiny_mlp(), tiny_task(0), 0.5
    params = [v.numpy() for v in model.trainable_variables]
    grads, _, _ = M.maml_task_gradient(model, params, *task, steps=steps, lr=lr)
    flat = np.concatenate([g.numpy().ravel() for g in grads])
    theta = np.concatenate([p.ravel() for p in params])
    shapes, h = [p.shape for p in params], 1e-5

    def unflat(v):
        out, i = [], 0
        for s in shapes:
            out.append(v[i:i + int(np.prod(s))].reshape(s))
            i += int(np.prod(s))
        return out

    fd = np.zeros_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        fd[i] = (meta_loss(model, unflat(theta + e), task, steps, lr) - meta_loss(model, unflat(theta - e), task, steps, lr)) / (2 * h)
    rel = np.linalg.norm(flat - fd) / np.linalg.norm(fd)
    assert rel <= 1e-3, rel
    # and the first-order gradient is measurably different from it (so this test can tell them apart)
    fo, _, _ = M.maml_task_gradient(model, params, *task, steps=steps, lr=lr, first_order=True)
    fo = np.concatenate([g.numpy().ravel() for g in fo])
    assert np.linalg.norm(fo - fd) / np.linalg.norm(fd) > 1e-2


def test_first_order_is_maml_without_the_second_order_term():
    """One inner step: MAML = (I - lr * H_support) g_query(theta'), FOMAML = g_query(theta')."""
    model, (sx, sy, qx, qy), lr = tiny_mlp(), tiny_task(1), 0.7
    params = [tf.constant(v.numpy()) for v in model.trainable_variables]
    adapted = M.inner_loop(model, params, sx, sy, steps=1, lr=lr)
    with tf.GradientTape() as tape:
        tape.watch(adapted)
        loss, _ = M.loss_and_accuracy(model, adapted, qx, qy)
    g_query = tape.gradient(loss, adapted)
    # Hessian-vector product H_support(theta) @ g_query by forward-over-backward (an independent route)
    with tf.autodiff.ForwardAccumulator(params, g_query) as acc:
        with tf.GradientTape() as t2:
            t2.watch(params)
            inner, _ = M.loss_and_accuracy(model, params, sx, sy)
        g_support = t2.gradient(inner, params)
    hvp = acc.jvp(g_support)
    so, _, _ = M.maml_task_gradient(model, params, sx, sy, qx, qy, steps=1, lr=lr)
    fo, _, _ = M.maml_task_gradient(model, params, sx, sy, qx, qy, steps=1, lr=lr, first_order=True)
    for a, b, gq, hv in zip(so, fo, g_query, hvp):
        np.testing.assert_allclose(b.numpy(), gq.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.numpy(), (gq - lr * hv).numpy(), rtol=1e-8, atol=1e-10)
    assert max(float(tf.reduce_max(tf.abs(h))) for h in hvp) > 1e-3  # the dropped term is not negligible here


def _numpy_sgd_linear(w, b, x, y, lr, steps):
    """SGD on mean softmax cross-entropy of logits x @ w + b, written out by hand."""
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d = (p - np.eye(w.shape[1])[y]) / len(x)
        w, b = w - lr * x.T @ d, b - lr * d.sum(0)
    return w, b


def test_reptile_update_matches_its_definition():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,), dtype="float64"), keras.layers.Dense(2, dtype="float64")])
    w0, b0 = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(4)
    batch = T.Tasks(support_x=rng.normal(size=(2, 4, 3)), support_y=rng.integers(0, 2, (2, 4)).astype(np.int32),
                    query_x=rng.normal(size=(2, 5, 3)), query_y=rng.integers(0, 2, (2, 5)).astype(np.int32),
                    classes=np.zeros((2, 2), np.int32))
    eps, lr, steps = 0.25, 0.2, 3  # eps exact in float32 (the optimizer stores its rate as float32)
    learner = M.Reptile(model, inner_lr=lr, inner_steps=steps, meta_optimizer=keras.optimizers.SGD(eps))
    learner.meta_step(batch)
    phis = [_numpy_sgd_linear(w0, b0, np.concatenate([batch.support_x[i], batch.query_x[i]]),
                              np.concatenate([batch.support_y[i], batch.query_y[i]]), lr, steps) for i in range(2)]
    w_ref = w0 + eps * np.mean([p[0] - w0 for p in phis], axis=0)
    b_ref = b0 + eps * np.mean([p[1] - b0 for p in phis], axis=0)
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), w_ref, rtol=1e-10)
    np.testing.assert_allclose(model.trainable_variables[1].numpy(), b_ref, rtol=1e-10)
    assert not np.allclose(w_ref, w0)


def test_compiled_meta_step_equals_mean_of_task_gradients():
    model = tiny_mlp()
    tasks = [tiny_task(s) for s in range(3)]
    batch = T.Tasks(*[np.stack([t[i] for t in tasks]) for i in range(4)], classes=np.zeros((3, 2), np.int32))
    before = [v.numpy() for v in model.trainable_variables]
    expected = [np.mean([M.maml_task_gradient(model, before, *t, steps=2, lr=0.5)[0][j].numpy() for t in tasks], axis=0)
                for j in range(len(before))]
    learner = M.MAML(model, inner_lr=0.5, inner_steps=2, meta_optimizer=keras.optimizers.SGD(1.0))
    learner.meta_step(batch)
    for v, b, g in zip(model.trainable_variables, before, expected):
        np.testing.assert_allclose(v.numpy(), b - g, rtol=1e-9, atol=1e-12)


def test_article_meta_step_is_not_the_maml_gradient():
    """The seed updates the weights in place inside the outer tape: its 'meta-gradient' is the sum of plain
    gradients at the sequentially updated weights / tasks, not d L(theta') / d theta."""
    model, lr = tiny_mlp(), 0.5
    tasks = [tiny_task(s) for s in range(3)]
    theta = [v.numpy() for v in model.trainable_variables]
    x = np.stack([t[0] for t in tasks])
    y = np.stack([t[1] for t in tasks])
    # the true MAML gradient on the same data (support = query = the task's images, as the seed has no query set)
    maml = [np.mean([M.maml_task_gradient(model, theta, x[i], y[i], x[i], y[i], steps=1, lr=lr)[0][j].numpy()
                     for i in range(3)], axis=0) for j in range(len(theta))]
    _, article_grads = M.article_meta_step(model, x, y, optimizer=keras.optimizers.SGD(lr),
                                           meta_optimizer=keras.optimizers.SGD(0.0))
    seed = np.concatenate([g.numpy().ravel() for g in article_grads])
    true = np.concatenate([g.ravel() for g in maml])
    assert np.linalg.norm(seed - true) / np.linalg.norm(true) > 0.1
    # what it actually computes: plain gradients at theta, theta_1, theta_2 (sequential SGD), averaged
    ref, w = [], [tf.constant(t) for t in theta]
    for i in range(3):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss, _ = M.loss_and_accuracy(model, w, tf.constant(x[i]), tf.constant(y[i]))
        g = tape.gradient(loss, w)
        ref.append([gi.numpy() for gi in g])
        w = [wi - lr * gi for wi, gi in zip(w, g)]
    explained = np.concatenate([np.mean([r[j] for r in ref], axis=0).ravel() for j in range(len(theta))])
    np.testing.assert_allclose(seed, explained, rtol=1e-5, atol=1e-9)  # Keras optimizers compute in float32 internally


def _tiny_batch(seeds, dtype=np.float64):
    tasks = [tiny_task(s, dtype=dtype) for s in seeds]
    return T.Tasks(*[np.stack([t[i] for t in tasks]) for i in range(4)], classes=np.zeros((len(seeds), 2), np.int32))


def _hessian_term(model, params, sx, sy, qx, qy, lr):
    """(g_query at the adapted weights, H_support(theta) @ that) for one inner SGD step, by forward-over-backward."""
    adapted = [p - lr * g for p, g in zip(params, _grad(model, params, sx, sy))]
    g_query = _grad(model, adapted, qx, qy)
    with tf.autodiff.ForwardAccumulator(params, g_query) as acc:
        g_support = _grad(model, params, sx, sy)
    return g_query, acc.jvp(g_support)


def _grad(model, params, x, y):
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss, _ = M.loss_and_accuracy(model, params, x, y)
    return tape.gradient(loss, params)


def test_fomaml_step_is_the_maml_step_without_the_hessian_term():
    batch, lr = _tiny_batch(range(3)), 0.6
    steps = {}
    for method in ("maml", "fomaml"):
        model = tiny_mlp()
        before = [v.numpy() for v in model.trainable_variables]
        M.make_learner(method, model, inner_lr=lr, inner_steps=1, meta_optimizer=keras.optimizers.SGD(1.0)).meta_step(batch)
        steps[method] = [b - v.numpy() for b, v in zip(before, model.trainable_variables)]
    params = [tf.constant(b) for b in before]
    terms = [_hessian_term(tiny_mlp(), params, *(tf.constant(a[i]) for a in (batch.support_x, batch.support_y,
                                                                              batch.query_x, batch.query_y)), lr)
             for i in range(3)]
    for j in range(len(params)):
        g_query = np.mean([t[0][j].numpy() for t in terms], axis=0)
        hvp = np.mean([t[1][j].numpy() for t in terms], axis=0)
        np.testing.assert_allclose(steps["fomaml"][j], g_query, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(steps["maml"][j], g_query - lr * hvp, rtol=1e-7, atol=1e-11)
    diff = np.concatenate([(a - b).ravel() for a, b in zip(steps["maml"], steps["fomaml"])])
    assert np.linalg.norm(diff) > 1e-3 * np.linalg.norm(np.concatenate([a.ravel() for a in steps["maml"]]))


@pytest.mark.parametrize("method, lr", [("maml", 0.5), ("fomaml", 0.5), ("reptile", 0.2)])
def test_meta_steps_lower_the_query_loss_after_adaptation(method, lr):
    batch = _tiny_batch(range(4))
    model = tiny_mlp()
    optimizer = keras.optimizers.SGD(0.5 if method == "reptile" else 0.3)
    learner = M.make_learner(method, model, inner_lr=lr, inner_steps=2, meta_optimizer=optimizer)

    def query_loss():  # mean over the tasks of the query loss after two SGD steps on the support set
        params = M.params_of(model)
        return np.mean([meta_loss(model, [p.numpy() for p in params], tuple(a[i] for a in (
            batch.support_x, batch.support_y, batch.query_x, batch.query_y)), 2, lr) for i in range(4)])

    start = query_loss()
    for _ in range(30):
        learner.meta_step(batch)
    assert query_loss() < start - 0.05


def test_adapt_returns_params_and_leaves_model_untouched(mnist_subset):
    from tutorial_lib import models

    _, te = T.digit_splits(mnist_subset, n_way=3, k_shot=2, q_queries=3, meta_train=range(3), meta_test=range(3, 6))
    model = models.few_shot_cnn(3, filters=4, blocks=2)
    learner = M.MAML(model, inner_lr=0.5, inner_steps=1, test_steps=3)
    t = te.sample(1, seed=0)
    before = [v.numpy().copy() for v in model.trainable_variables]
    params = learner.adapt(t.support_x[0], t.support_y[0])
    assert len(params) == len(before)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    assert learner.predict(params, t.query_x[0]).shape == (9, 3)
    clone = learner.adapted_model(params)
    np.testing.assert_allclose(clone(t.query_x[0]).numpy(), learner.predict(params, t.query_x[0]), rtol=1e-5, atol=1e-5)
    # adaptation lowers the support loss, and evaluate_adaptation's curve starts at the unadapted accuracy
    l0 = M.loss_and_accuracy(model, M.params_of(model), t.support_x[0], t.support_y[0])[0]
    l1 = M.loss_and_accuracy(model, params, t.support_x[0], t.support_y[0])[0]
    assert float(l1) < float(l0)
    ev = learner.meta_evaluate(te, tasks=6, steps=3)
    assert list(ev.curve_steps) == [0, 1, 2, 3] and ev.per_task.shape == (6, 4) and len(ev.accuracies) == 6
    # the curve at 0 steps is the unadapted accuracy, task by task
    t6 = te.sample(6, seed=0)
    unadapted = [np.mean(np.argmax(model(t6.query_x[i]).numpy(), 1) == t6.query_y[i]) for i in range(6)]
    np.testing.assert_allclose(ev.per_task[:, 0], unadapted)
    # and after 3 steps it is the accuracy of adapt()'s parameters
    adapted = [np.mean(np.argmax(learner.predict(learner.adapt(t6.support_x[i], t6.support_y[i], 3), t6.query_x[i]), 1)
                       == t6.query_y[i]) for i in range(6)]
    np.testing.assert_allclose(ev.accuracies, adapted)
    assert ev.low == pytest.approx(ev.mean - ev.ci95) and ev.high == pytest.approx(ev.mean + ev.ci95)


def test_evaluation_at_reads_off_a_recorded_step():
    per_task = np.array([[0.2, 0.4, 0.6], [0.2, 0.6, 1.0], [0.4, 0.6, 0.8]])
    ev = M.Evaluation(mean=0.8, ci95=0.1, accuracies=per_task[:, -1], steps=5, lr=0.3, curve_steps=np.array([0, 1, 5]),
                      per_task=per_task)
    one = ev.at(1)
    assert one.steps == 1 and one.lr == 0.3 and list(one.curve_steps) == [0, 1]
    np.testing.assert_array_equal(one.accuracies, [0.4, 0.6, 0.6])
    assert one.mean == pytest.approx(1.6 / 3)
    assert one.ci95 == pytest.approx(1.96 * np.std([0.4, 0.6, 0.6], ddof=1) / np.sqrt(3))
    np.testing.assert_allclose(ev.curve, [0.8 / 3, 1.6 / 3, 0.8])
    with pytest.raises(ValueError, match="recorded after"):
        ev.at(2)


def test_head_only_adaptation_changes_only_the_last_layer():
    model, lr, steps = tiny_mlp(), 0.8, 3
    batch = _tiny_batch(range(5))
    head = M.evaluate_adaptation(model, batch, steps=steps, lr=lr, head_only=True, record=[])
    full = M.evaluate_adaptation(model, batch, steps=steps, lr=lr, record=[])
    expected = []
    for i in range(5):  # by hand: SGD on the last kernel and bias, the hidden layer fixed
        params = M.params_of(model)
        for _ in range(steps):
            g = _grad(model, params, batch.support_x[i], batch.support_y[i])
            params = params[:2] + [p - lr * gi for p, gi in zip(params[2:], g[2:])]
        _, acc = M.loss_and_accuracy(model, params, batch.query_x[i], batch.query_y[i])
        expected.append(float(acc))
    np.testing.assert_allclose(head.accuracies, expected)
    assert not np.allclose(head.per_task, full.per_task)  # adapting everything gives other answers here


def test_article_vs_maml_gradients():
    model, lr = tiny_mlp(), 0.5
    batch = _tiny_batch(range(3))
    before = [v.numpy().copy() for v in model.trainable_variables]
    out = M.article_vs_maml(model, batch, inner_lr=lr)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))  # untouched
    flat = lambda gs: np.concatenate([np.ravel(g) for g in gs])
    tasks = [tuple(tf.constant(a[i]) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
             for i in range(3)]
    maml = np.mean([flat(M.maml_task_gradient(model, before, *t, steps=1, lr=lr)[0]) for t in tasks], axis=0)
    np.testing.assert_allclose(out["maml"], maml, rtol=1e-10)
    terms = [_hessian_term(model, [tf.constant(b) for b in before], *t, lr) for t in tasks]
    np.testing.assert_allclose(out["fomaml"], np.mean([flat(t[0]) for t in terms], axis=0), rtol=1e-8, atol=1e-12)
    # the article's step computes sequential SGD gradients (in float32 inside Keras' optimizers)
    np.testing.assert_allclose(out["article"], out["sequential_sgd"], rtol=1e-5, atol=1e-8)
    assert np.linalg.norm(out["article"] - out["maml"]) > 0.1 * np.linalg.norm(out["maml"])


def test_refuses_batch_norm_softmax_and_bad_options():
    bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="non-trainable state.*BatchNormalization"):
        M.MAML(bn)
    soft = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="softmax"):
        M.MAML(soft)
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        M.MAML(tiny_mlp("float32"), inner_lr=-1.0)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        M.Reptile(tiny_mlp("float32"), inner_steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        M.make_learner("protonet", tiny_mlp("float32"))
    with pytest.raises(TypeError, match="FewShotSampler"):
        M.MAML(tiny_mlp("float32")).meta_fit([1, 2], 3)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_meta_step_traces_once_and_memory_does_not_grow(mnist_subset):
    """In the spirit of learn2learn's test_memory_consumption: many meta-steps, no retracing, flat memory."""
    from tutorial_lib import models

    tr, _ = T.digit_splits(mnist_subset, n_way=3, k_shot=1, q_queries=2, meta_train=range(3), meta_test=range(3, 6))
    learner = M.MAML(models.few_shot_cnn(3, filters=4, blocks=2), inner_lr=0.3, inner_steps=2)
    learner.meta_fit(tr, 20, 2, verbose=0)
    start = _rss_mib()
    learner.meta_fit(tr, 150, 2, verbose=0)
    grown = _rss_mib() - start
    assert learner._step_fn.experimental_get_tracing_count() == 1
    assert grown < 30, f"resident memory grew by {grown:.1f} MiB over 150 meta-steps"


def test_zero_head_starts_each_task_from_a_zero_last_layer():
    model, task = tiny_mlp(), tiny_task(5)
    params = [v.numpy() for v in model.trainable_variables]
    grads, loss, _ = M.maml_task_gradient(model, params, *task, steps=2, lr=0.5, zero_head=True)
    assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in grads[-2:])  # the head's value is never used
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 0
    zeroed = params[:-2] + [np.zeros_like(p) for p in params[-2:]]
    np.testing.assert_allclose(float(loss), meta_loss(model, zeroed, task, 2, 0.5), rtol=1e-12)
    learner = M.MAML(model, inner_lr=0.5, first_order=True, zero_head=True)
    assert learner.method == "fomaml" and not np.any(model.trainable_variables[-2].numpy())


# --------------------------------------------------------------------------------------------------
# Learned inner learning rates: Meta-SGD and MAML++'s per-layer per-step rates (LSLR)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, steps", [(M.MetaSGD, 1), (M.MetaSGD, 2), (M.LSLR, 3)])
def test_learned_rates_start_as_maml(cls, steps):
    """With every rate at inner_lr, the first meta-step moves the weights exactly as MAML's does."""
    batch, lr = _tiny_batch(range(3)), 0.5
    maml_model, rate_model = tiny_mlp(), tiny_mlp()
    maml = M.MAML(maml_model, inner_lr=lr, inner_steps=steps, meta_optimizer=keras.optimizers.SGD(1.0))
    learner = cls(rate_model, inner_lr=lr, inner_steps=steps, meta_optimizer=keras.optimizers.SGD(1.0))
    assert len(learner.meta_variables) == 2 * len(rate_model.trainable_variables)
    maml.meta_step(batch)
    learner.meta_step(batch)
    for a, b in zip(maml_model.trainable_variables, rate_model.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-13)
    # ... and the rates themselves moved (they are meta-variables)
    assert any(not np.allclose(r.numpy(), lr) for r in learner.rates)


@pytest.mark.parametrize("cls, steps", [(M.MetaSGD, 1), (M.LSLR, 2)])
def test_rate_gradients_match_central_differences(cls, steps):
    model, task = tiny_mlp(), tiny_task(2)
    learner = cls(model, inner_lr=0.5, inner_steps=steps)
    rng = np.random.default_rng(0)
    learner.set_rates([0.5 + 0.2 * rng.uniform(-1, 1, r.shape) for r in learner.rates])  # not all equal
    params = [v.numpy() for v in model.trainable_variables]
    rates = [r.numpy() for r in learner.rates]
    grads, _, _ = M.learned_rate_task_gradient(model, params, rates, *task, steps=steps)
    got = np.concatenate([g.numpy().ravel() for g in grads[len(params):]])

    def loss(flat_rates):
        out, i = [], 0
        for r in rates:
            out.append(tf.constant(flat_rates[i:i + r.size].reshape(r.shape)))
            i += r.size
        sx, sy, qx, qy = task
        adapted = M.learned_rate_inner_loop(model, [tf.constant(p) for p in params], sx, sy, rates=out, steps=steps)
        return float(M.loss_and_accuracy(model, adapted, qx, qy)[0])

    flat, h = np.concatenate([r.ravel() for r in rates]), 1e-6
    fd = np.array([(loss(flat + h * e) - loss(flat - h * e)) / (2 * h) for e in np.eye(len(flat))])
    assert np.linalg.norm(got - fd) <= 1e-5 * np.linalg.norm(fd), (got, fd)
    assert np.linalg.norm(fd) > 1e-3  # the rates do matter on this task


def test_lslr_uses_each_steps_rates_and_evaluation_follows_them():
    model, (sx, sy, qx, qy) = tiny_mlp(), tiny_task(3)
    learner = M.LSLR(model, inner_lr=0.5, inner_steps=2, test_steps=3)
    learner.set_rates([np.array([0.3, 0.7])] * len(learner.rates))
    params = M.params_of(model)
    by_hand = M.inner_loop(model, M.inner_loop(model, params, sx, sy, steps=1, lr=0.3), sx, sy, steps=2, lr=0.7)
    for a, b in zip(M.learned_rate_inner_loop(model, params, sx, sy, rates=learner.rate_schedule(), steps=3), by_hand):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)  # step 3 reuses the last step's rates
    batch = _tiny_batch(range(4))
    ev = M.evaluate_adaptation(model, batch, steps=3, lr=None, rates=learner.rate_schedule(), record=[0, 1, 2, 3])
    for i in range(4):
        s = [tf.constant(a[i]) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)]
        adapted = M.learned_rate_inner_loop(model, params, s[0], s[1], rates=learner.rate_schedule(), steps=2)
        assert ev.per_task[i, 2] == float(M.loss_and_accuracy(model, adapted, s[2], s[3])[1])
    assert np.isnan(ev.lr) and ev.to_dict()["inner_lr"] is None
    # constant rates evaluate exactly like plain SGD at that rate
    learner.set_rates([np.full(r.shape, 0.4) for r in learner.rates])
    same = M.evaluate_adaptation(model, batch, steps=3, lr=None, rates=learner.rate_schedule())
    plain = M.evaluate_adaptation(model, batch, steps=3, lr=0.4)
    np.testing.assert_allclose(same.per_task, plain.per_task)


def test_learned_rate_learners_adapt_save_and_refuse_bad_input(mnist_subset, tmp_path):
    from tutorial_lib import models

    tr, te = T.digit_splits(mnist_subset, n_way=3, k_shot=1, q_queries=3, meta_train=range(3), meta_test=range(3, 6))
    model = models.few_shot_cnn(3, filters=4, blocks=2)
    learner = M.make_learner("metasgd", model, inner_lr=0.3, zero_head=True)
    assert isinstance(learner, M.MetaSGD) and learner.method == "metasgd"
    assert [tuple(r.shape) for r in learner.rates] == [(1, *v.shape) for v in model.trainable_variables]
    learner.meta_fit(tr, 3, 2, verbose=0)
    t = te.sample(1, seed=0)
    params = learner.adapt(t.support_x[0], t.support_y[0])
    expected = M.learned_rate_inner_loop(model, M.params_of(model), tf.constant(t.support_x[0]),
                                         tf.constant(t.support_y[0]), rates=learner.rate_schedule(), steps=1)
    assert all(np.allclose(a, b) for a, b in zip(params, expected))
    ev = learner.meta_evaluate(te, tasks=4)
    assert np.isnan(ev.lr) and ev.per_task.shape == (4, 2)
    learner.save_rates(tmp_path / "rates.npz")
    other = M.MetaSGD(models.few_shot_cnn(3, filters=4, blocks=2), inner_lr=0.3)
    other.load_rates(tmp_path / "rates.npz")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(learner.rates, other.rates))
    lslr = M.make_learner("lslr", models.few_shot_cnn(3, filters=4, blocks=2), inner_steps=2)
    assert [tuple(r.shape) for r in lslr.rates] == [(2,)] * len(model.trainable_variables)
    with pytest.raises(ValueError, match="shape"):
        lslr.load_rates(tmp_path / "rates.npz")
    with pytest.raises(ValueError, match="inner_lr must be > 0"):
        M.MetaSGD(tiny_mlp("float32"), inner_lr=0.0)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        M.LSLR(tiny_mlp("float32"), inner_steps=0)
    with pytest.raises(ValueError, match="either lr .* or rates"):
        M.evaluate_adaptation(model, te.sample(2), steps=1, lr=0.1, rates=learner.rate_schedule())
    with pytest.raises(ValueError, match="either lr .* or rates"):
        M.evaluate_adaptation(model, te.sample(2), steps=1, lr=None)
    with pytest.raises(ValueError, match="one schedule per parameter"):
        M.evaluate_adaptation(model, te.sample(2), steps=1, lr=None, rates=learner.rate_schedule()[:-1])
    with pytest.raises(ValueError, match=r"rates\[0\] must have shape"):
        M.evaluate_adaptation(model, te.sample(2), steps=1, lr=None, rates=[np.ones((1, 2))] * len(learner.rates))
