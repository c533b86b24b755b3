"""Tests for tutorial_lib.viz: figures have the expected axes, and the explorer works headless."""

from __future__ import annotations

import keras
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tutorial_lib import evaluate, viz


@pytest.fixture(scope="module")
def tiny():
    """An untrained tiny model (enough for shapes and widgets) and 6 random images in [0, 1]."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    x = np.random.default_rng(0).uniform(0, 1, size=(6, 28, 28, 1)).astype("float32")
    y = np.arange(6) % 10
    return model, x, y


def _signs(eps):
    """A stand-in attack: fixed-sign perturbation, clipped (no tutorial_lib.attacks needed)."""

    def attack(model, x, y):
        return np.clip(x + eps * np.where(np.arange(x[0].size).reshape(x.shape[1:]) % 2, 1.0, -1.0), 0, 1).astype("float32")

    attack.name = "signs"
    return attack


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_adversarial_grid_has_three_rows(tiny):
    model, x, y = tiny
    fig = viz.adversarial_grid(model, x, _signs(0.1)(model, x, y), y, n=4)
    assert len(fig.axes) == 13  # 12 images + the perturbation colorbar
    assert "pred" in fig.axes[0].get_title() and "true" in fig.axes[0].get_title()
    assert "target" in viz.adversarial_grid(model, x, x, y, n=1, label_title="target").axes[0].get_title()
    fig = viz.adversarial_grid(model, x[:2], x[:2], n=8)  # fewer images than n
    assert len(fig.axes) == 7
    with pytest.raises(ValueError, match="same shape"):
        viz.adversarial_grid(model, x, x[:3])


def test_plot_sweep_one_and_many(tiny):
    model, x, y = tiny
    a = evaluate.SweepResult(eps=np.array([0.0, 0.1, 0.2]), accuracy=np.array([1.0, 0.5, 0.1]), label="A")
    b = evaluate.SweepResult(eps=np.array([0.0, 0.2]), accuracy=np.array([1.0, 0.3]), label="B")
    fig = viz.plot_sweep(a)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2  # curve + chance line
    fig, axes = plt.subplots(1, 2)
    assert viz.plot_sweep([a, b], ax=axes[1], chance=None) is fig
    assert len(axes[1].lines) == 2 and [t.get_text() for t in axes[1].get_legend().get_texts()] == ["A", "B"]
    with pytest.raises(TypeError, match="SweepResult"):
        viz.plot_sweep([1, 2])


def test_plot_sweep_band_is_the_95_percent_interval():
    a = evaluate.SweepResult(eps=np.array([0.0, 0.1]), accuracy=np.array([0.9, 0.5]), label="A")
    fig = viz.plot_sweep(a, n=200, chance=None)
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    half = evaluate.accuracy_ci95(np.arange(200) < 100)[1]
    assert band[:, 1].max() == pytest.approx(0.9 + evaluate.accuracy_ci95(np.arange(200) < 180)[1])
    assert np.isclose(band[:, 1], 0.5 - half).any() and np.isclose(band[:, 1], 0.5 + half).any()
    with pytest.raises(ValueError, match="n must be"):
        viz.plot_sweep(a, n=0)


def test_plot_probabilities_marks_true_class():
    probs = np.full(10, 0.1)
    fig = viz.plot_probabilities(probs, true_label=3)
    bars = fig.axes[0].patches
    assert len(bars) == 10 and bars[3].get_facecolor() != bars[0].get_facecolor()


def test_explorer_builds_and_updates_headless(tiny):
    model, x, y = tiny
    explorer = viz.attack_explorer(model, x, y, {"signs": _signs, "none": lambda e: (lambda m, xb, yb: xb)},
                                   eps=0.1, eps_max=0.5)
    assert explorer.state["index"] == 0 and explorer.state["linf"] == pytest.approx(0.1, abs=1e-6)
    explorer.image_slider.value = 3  # observers fire as in a browser
    assert explorer.state["index"] == 3 and explorer.state["label"] == int(y[3])
    explorer.eps_slider.value = 0.3
    assert explorer.state["linf"] == pytest.approx(0.3, abs=1e-6)
    explorer.attack_menu.value = "none"
    assert explorer.state["linf"] == 0.0 and explorer.state["adv_pred"] == explorer.state["clean_pred"]
    assert np.isclose(explorer.state["adv_prob"].sum(), 1.0)
    fig = explorer.render()
    assert len(fig.axes) == 5  # clean, adversarial, perturbation, its colorbar, probabilities
    assert fig.axes[2].images[0].get_clim() == (-0.5, 0.5)  # colour scale fixed to the slider's range
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "VBox" not in bundle["text/plain"]
    assert explorer.widget.children  # a real ipywidgets box
    with pytest.raises(ValueError, match="eps"):
        viz.attack_explorer(model, x, y, {"signs": _signs}, eps=0.9, eps_max=0.5)


def test_digit_grid_one_column_per_class():
    rng = np.random.default_rng(0)
    x = rng.random((40, 28, 28, 1), dtype=np.float32)
    y = np.arange(40) % 10
    fig = viz.digit_grid(x, y, per_class=3)
    assert len(fig.axes) == 30 and fig.axes[0].get_title() == "0"
    with pytest.raises(ValueError, match="per_class"):
        viz.digit_grid(x, y, per_class=0)


# --------------------------------------------------------------------------------------------------
# Figures of the training and meta-learning chapters: each returns a Figure with what it promises
# --------------------------------------------------------------------------------------------------
def test_training_figures_return_figures():
    results = {"none": {"clean": 0.99, "fgsm": 0.1, "pgd40": 0.0, "seconds_per_epoch": 3.0},
               "pgd": {"clean": 0.95, "fgsm": 0.8, "pgd40": 0.7, "seconds_per_epoch": 20.0}}
    fig = viz.plot_robustness(results, labels={"pgd": "mine"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["standard", "mine"]
    long = viz.plot_robustness(results, labels={"pgd": "fast AT, stop + restore best"})
    assert long.axes[0].get_xticklabels()[1].get_text() == "fast AT, stop\n+ restore best"
    hyphen = viz.plot_robustness(results, labels={"pgd": "fast AT (FGSM-RS)"})
    assert "FGSM-RS" in hyphen.axes[0].get_xticklabels()[1].get_text()   # never broken at the hyphen
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "FGSM", "PGD-40"]
    assert len(ax.patches) == 6 and max(p.get_height() for p in ax.patches) == pytest.approx(99.0)
    fig = viz.plot_robustness(results, n=1000)   # with 95% error bars
    bars = [c for c in fig.axes[0].containers if isinstance(c, matplotlib.container.BarContainer)]
    assert len(bars) == 3 and all(c.errorbar is not None for c in bars)
    history = [{"epoch": e, "fgsm": 0.5 + 0.1 * e, "pgd": 0.4 - 0.1 * e, "flagged": e == 2} for e in range(3)]
    fig = viz.plot_monitor(history, title="fast AT")
    assert len(fig.axes[0].lines) == 2 and "flagged" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_meta_learning_figures_return_figures(mnist_subset):
    from tutorial_lib import tasks

    sampler = tasks.FewShotSampler(mnist_subset.x_train, mnist_subset.y_train, n_way=3, k_shot=2, q_queries=4,
                                   classes=range(3))
    fig = viz.plot_task(sampler.sample(2), sampler, 1, queries_per_class=2)
    assert len(fig.axes) == 3 * (2 + 2)
    fig = viz.plot_histories({"maml": {"accuracy": np.linspace(0.2, 0.9, 100)}}, window=10)
    assert len(fig.axes[0].lines) == 1
    ev = type("Ev", (), {"curve_steps": np.array([0, 1, 5]), "curve": np.array([0.2, 0.6, 0.7]),
                              "curve_ci95": np.array([0.05, 0.04, 0.03]), "mean": 0.7, "ci95": 0.03})()
    fig = viz.plot_step_curves({"maml": ev})
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [20, 60, 70])
    assert fig.axes[0].get_xscale() == "linear"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "5"]   # the step numbers
    fig = viz.plot_few_shot_results({"maml": {"1shot": ev, "5shot": ev}, "scratch": {"1shot": ev, "5shot": ev}})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["5-way 1-shot", "5-way 5-shot"]


def test_notebook_05_figures_share_one_axis_style():
    method = {"clean": {"mean": 0.9, "ci95": 0.02}, "robust": {"mean": 0.4, "ci95": 0.05}}
    figs = [viz.plot_clean_vs_robust({"a": method}, title="clean vs robust"),
            viz.plot_accuracy_vs_eps({"a": ([0.0, 0.1], [0.9, 0.5], [0.02, 0.03])}, train_eps=0.1, title="eps"),
            viz.plot_meta_losses({"a": np.linspace(2, 1, 30)}, reference=1.6, title="losses")]
    for fig, xlabel in zip(figs, ("clean accuracy (%)", "attack radius eps (L-inf)", "meta-step")):
        ax = fig.axes[0]
        assert ax.get_xlabel() == xlabel and ax.xaxis.label.get_fontsize() == 12 == ax.yaxis.label.get_fontsize()
        assert ax.title.get_fontsize() == 12 and ax.get_title()
        assert ax.get_legend().get_texts()[0].get_fontsize() == 10
        assert ax.xaxis.get_major_ticks()[0].label1.get_fontsize() == 11
        assert ax.xaxis.get_gridlines()[0].get_visible()
        plt.close(fig)
    assert figs[1].axes[0].get_ylim() == (0, 100)


def test_tradeoff_scatter_gives_every_series_its_own_style():
    rows = {f"m{i}": {"clean": 0.9 + 0.005 * i, "pgd40": 0.05 * i} for i in range(11)}
    fig = viz.plot_tradeoff(rows, n=1000, labels={"m0": "standard"})
    ax = fig.axes[0]
    styles = {(line.get_color(), line.get_marker()) for line in ax.lines if line.get_marker() not in (None, "None", "", "_", "|")}
    assert len(styles) == 11
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "1  standard" and len(texts) == 11 and texts[0] and ax.get_legend().get_texts()[0].get_fontsize() >= 9
    with pytest.raises(ValueError, match="at most 11"):
        viz.plot_tradeoff({f"m{i}": {"clean": 0.5, "pgd40": 0.5} for i in range(12)}, n=10)


def test_meta_losses_legend_sits_below_the_axes():
    fig = viz.plot_meta_losses({"a": np.linspace(2, 1, 30)}, reference=1.6, reference_label="ln 5")
    legend = fig.axes[0].get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().y1 <= fig.axes[0].get_window_extent().y0 + 1


def test_tradeoff_draws_a_run_that_did_not_learn_at_the_bottom_edge():
    rows = {"a": {"clean": 0.96, "pgd40": 0.8}, "b": {"clean": 0.95, "pgd40": 0.0}, "c": {"clean": 0.11, "pgd40": 0.08}}
    ax = viz.plot_tradeoff(rows, n=1000).axes[0]
    assert ax.get_ylim()[0] > 11 and "below the axis" in ax.get_legend().get_texts()[2].get_text()
