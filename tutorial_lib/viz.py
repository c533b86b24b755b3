"""Every figure of the series: image grids with predictions, eps sweeps, an attack explorer, training and
meta-learning curves, result charts.

Plots what the other modules compute; every function returns a matplotlib ``Figure`` (small,
for stored notebook outputs). Introduced in notebooks/01_fgsm.ipynb.
"""

from __future__ import annotations

import textwrap
from typing import Any, Callable, Mapping, Sequence

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import evaluate

DIGITS = tuple(str(i) for i in range(10))
#: Resolution of every figure here: 144 dpi (twice the 72 of a plain inline figure), so a room can read labels
#: on a projector; PNG outputs stay a few tens of kB.
DPI = 144


def _probabilities(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return evaluate.probabilities(model, x).astype(np.float64)


def _image(ax, img: np.ndarray, title: str, **kw):
    im = ax.imshow(np.squeeze(img), interpolation="nearest", cmap=kw.pop("cmap", "gray"), vmin=kw.pop("vmin", 0.0), vmax=kw.pop("vmax", 1.0), **kw)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _check_images(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (n, height, width, channels), got shape {x.shape}")
    return x


def adversarial_grid(model: keras.Model, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray | None = None, *,
                     n: int = 8, class_names: Sequence[str] = DIGITS, figsize: tuple[float, float] | None = None,
                     label_title: str = "true") -> Figure:
    """Three rows for the first ``n`` examples: clean image, adversarial image, perturbation ``x_adv - x``.

    ``x``, ``x_adv``: float32 images in [0, 1], shape (m, 28, 28, 1), m >= 1; ``y``: optional int labels,
    shown on the clean row after ``label_title`` (e.g. "target" for a targeted attack's target classes).
    Titles give the predicted class and its softmax confidence (and the true label on the clean row);
    the perturbation uses a diverging map centred on 0 with a colorbar (one more axes). Returns a Figure with
    ``3 * min(n, m) + 1`` axes.
    Introduced in notebooks/01_fgsm.ipynb.
    """
    x, x_adv = _check_images(x, "x"), _check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = min(n, len(x))
    p_clean, p_adv = _probabilities(model, x[:k]), _probabilities(model, x_adv[:k])
    delta = x_adv[:k] - x[:k]
    bound = max(float(np.abs(delta).max()), 1e-6)
    fig, axes = plt.subplots(3, k, figsize=figsize or (1.1 * k + 1.2, 4.1), squeeze=False, dpi=DPI,
                             layout="constrained")
    for i in range(k):
        pc, pa = int(p_clean[i].argmax()), int(p_adv[i].argmax())
        truth = f"{label_title} {class_names[int(y[i])]}\n" if y is not None else ""
        _image(axes[0, i], x[i], f"{truth}pred {class_names[pc]} ({p_clean[i, pc]:.0%})")
        _image(axes[1, i], x_adv[i], f"pred {class_names[pa]} ({p_adv[i, pa]:.0%})")
        im = _image(axes[2, i], delta[i], f"max |d| {np.abs(delta[i]).max():.2f}", cmap="seismic", vmin=-bound, vmax=bound)
    for row, name in enumerate(("clean", "adversarial", "perturbation")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    cbar = fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.9, pad=0.01)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("x_adv - x", fontsize=7)
    return fig


def plot_sweep(results: Any, ax: matplotlib.axes.Axes | None = None, *, title: str | None = None,
               chance: float | None = 0.1, xlabel: str = r"$\epsilon$ ($L_\infty$)", n: int | None = None) -> Figure:
    """Accuracy against eps for one :class:`~tutorial_lib.evaluate.SweepResult` or a list of them.

    Draws on ``ax`` if given (and returns its figure), else on a new small figure with one axes. A dotted
    line marks ``chance`` accuracy (0.1 for ten classes; None to omit). ``n``: the number of images behind
    each point; if given, a shaded band shows each point's 95% interval (:func:`evaluate.accuracy_ci95`).
    Introduced in notebooks/01_fgsm.ipynb.
    """
    sweeps = [results] if isinstance(results, evaluate.SweepResult) else list(results)
    if not sweeps or not all(isinstance(s, evaluate.SweepResult) for s in sweeps):
        raise TypeError("results must be a SweepResult or a non-empty list of them (from tl.evaluate.epsilon_sweep)")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=DPI)
    else:
        fig = ax.figure
    for s in sweeps:
        line, = ax.plot(s.eps, s.accuracy, marker="o", markersize=3, label=s.label)
        if n is not None:
            half = np.array([_ci95_half_width(a, n) for a in s.accuracy])
            ax.fill_between(s.eps, np.clip(s.accuracy - half, 0, 1), np.clip(s.accuracy + half, 0, 1),
                            color=line.get_color(), alpha=0.2, linewidth=0)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _ci95_half_width(accuracy: float, n: int) -> float:
    """Half-width of the 95% interval of an accuracy measured on ``n`` examples (as evaluate.accuracy_ci95)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be the number of images behind each accuracy (>= 1), got {n}")
    hits = np.arange(n) < int(round(float(accuracy) * n))
    return float(evaluate.accuracy_ci95(hits)[1])


def plot_probabilities(probs: np.ndarray, ax: matplotlib.axes.Axes | None = None, *, true_label: int | None = None,
                       title: str | None = None, class_names: Sequence[str] = DIGITS) -> Figure:
    """Bar chart of one example's class probabilities (shape (classes,), summing to 1); the true class in green."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.2, 2.2), dpi=DPI)
    else:
        fig = ax.figure
    colors = ["tab:green" if i == true_label else "tab:blue" for i in range(len(probs))]
    ax.bar(range(len(probs)), probs, color=colors)
    ax.set_xticks(range(len(probs)), class_names[: len(probs)], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability", fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    return fig


class AttackExplorer:
    """An ipywidgets explorer: choose an image, an attack and eps; see the adversarial image and class probabilities.

    ``attacks`` maps a display name to a factory ``eps -> attack spec`` (e.g.
    ``{"FGSM": lambda e: tl.attacks.FGSM(eps=e)}``). ``x``: float32 images in [0, 1] (n, 28, 28, 1),
    ``y``: int labels. Display it in a notebook (``explorer`` as the last line of a cell): JupyterLab shows
    the live widget; viewers without a kernel or widget state (GitHub, nbconvert HTML) cannot, so show
    :meth:`render`'s static figure of the same view beside it.
    :meth:`update` recomputes, and runs headless (no browser needed), which is what tests and nbval
    exercise. The perturbation's colour scale is fixed to [-eps_max, eps_max], so it grows with eps.
    Introduced in notebooks/01_fgsm.ipynb.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray,
                 attacks: Mapping[str, Callable[[float], Any]], *, eps: float = 0.1, eps_max: float = 0.5,
                 eps_step: float = 0.01, index: int = 0) -> None:
        import ipywidgets as widgets

        self.x = _check_images(x, "x")
        self.y = np.asarray(y)
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise ValueError(f"x and y must be non-empty and the same length, got {len(self.x)} and {len(self.y)}")
        if not attacks or not all(callable(f) for f in attacks.values()):
            raise TypeError("attacks must be a non-empty dict {name: eps -> attack spec}")
        if not 0 <= eps <= eps_max:
            raise ValueError(f"eps must be in [0, eps_max={eps_max}], got {eps}")
        self.model, self.attacks = model, dict(attacks)
        self.eps_slider = widgets.FloatSlider(value=eps, min=0.0, max=eps_max, step=eps_step, description="eps",
                                              continuous_update=False, readout_format=".2f")
        self.image_slider = widgets.IntSlider(value=index, min=0, max=len(self.x) - 1, description="image",
                                              continuous_update=False)
        self.attack_menu = widgets.Dropdown(options=list(self.attacks), description="attack")
        self.output = widgets.Output()
        for w in (self.eps_slider, self.image_slider, self.attack_menu):
            w.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.attack_menu, self.eps_slider, self.image_slider]), self.output])
        self.state: dict[str, Any] = {}
        self.update()

    def update(self) -> dict[str, Any]:
        """Attack the chosen image with the chosen attack at the chosen eps; refresh the view; return the state.

        The state holds ``index``, ``attack``, ``eps``, ``label``, ``clean_pred``, ``adv_pred``, ``adv_prob``
        (class probabilities of the adversarial image) and ``linf`` (the perturbation's size).
        """
        from IPython.display import display

        i, name, eps = int(self.image_slider.value), self.attack_menu.value, float(self.eps_slider.value)
        x, y = self.x[i : i + 1], self.y[i : i + 1]
        x_adv = x if eps == 0 else np.asarray(self.attacks[name](eps)(self.model, x, y), dtype=np.float32)
        p_clean, p_adv = _probabilities(self.model, x)[0], _probabilities(self.model, x_adv)[0]
        self._x_adv = x_adv
        self.state = {"index": i, "attack": name, "eps": eps, "label": int(y[0]), "clean_pred": int(p_clean.argmax()),
                      "adv_pred": int(p_adv.argmax()), "adv_prob": p_adv, "clean_prob": p_clean,
                      "linf": float(np.abs(x_adv - x).max())}
        fig = self.render()
        self.output.clear_output(wait=True)
        with self.output:
            display(fig)
        plt.close(fig)
        return self.state

    def render(self) -> Figure:
        """A static figure of the current state: clean image, adversarial image, perturbation (colour scale fixed
        to the slider's range, with a colorbar), probability bars. Returns a Figure with 5 axes."""
        s, i = self.state, self.state["index"]
        fig, axes = plt.subplots(1, 4, figsize=(9.0, 2.4), gridspec_kw={"width_ratios": [1, 1, 1, 1.8]}, dpi=DPI,
                                 layout="constrained")
        delta = self._x_adv[0] - self.x[i]
        bound = float(self.eps_slider.max)
        _image(axes[0], self.x[i], f"clean: pred {s['clean_pred']} ({s['clean_prob'].max():.0%})")
        _image(axes[1], self._x_adv[0], f"{s['attack']} eps {s['eps']:.2f}:\npred {s['adv_pred']} ({s['adv_prob'].max():.0%})")
        im = _image(axes[2], delta, f"perturbation (max {s['linf']:.2f})", cmap="seismic", vmin=-bound, vmax=bound)
        cbar = fig.colorbar(im, ax=axes[2], shrink=0.85)
        cbar.ax.tick_params(labelsize=9)
        cbar.set_label("pixel change", fontsize=9)
        plot_probabilities(s["adv_prob"], axes[3], true_label=s["label"], title="adversarial image: probabilities")
        axes[3].set_xlabel("class (true class in green)", fontsize=9)
        axes[3].tick_params(labelsize=9)
        axes[3].set_ylabel("probability", fontsize=9)
        return fig

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The live widget for JupyterLab; for viewers without a kernel, a plain sentence instead of ``VBox(...)``."""
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = (f"AttackExplorer ({self.state['attack']}, eps {self.state['eps']:.2f}, image "
                                f"{self.state['index']}): a live widget when the notebook runs in JupyterLab; "
                                "render() draws the same view as a static figure")
        return bundle


def attack_explorer(model: keras.Model, x: np.ndarray, y: np.ndarray, attacks: Mapping[str, Callable[[float], Any]],
                    **options: Any) -> AttackExplorer:
    """Build an :class:`AttackExplorer` (same arguments). Introduced in notebooks/01_fgsm.ipynb."""
    return AttackExplorer(model, x, y, attacks, **options)


def digit_grid(x: np.ndarray, y: np.ndarray, *, per_class: int = 4, class_names: Sequence[str] = DIGITS) -> Figure:
    """The first ``per_class`` images of each class, one column per class, titled with the label.

    ``x``: images (n, 28, 28, 1) in [0, 1]; ``y``: int labels. Returns a Figure with
    ``per_class * len(class_names)`` axes. Introduced in notebooks/00_setup_and_data.ipynb.
    """
    x, y = _check_images(x, "x"), np.asarray(y)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    classes = range(len(class_names))
    fig, axes = plt.subplots(per_class, len(class_names), figsize=(0.75 * len(class_names), 0.8 * per_class),
                             squeeze=False, dpi=80)
    for c in classes:
        idx = np.flatnonzero(y == c)[:per_class]
        for r in range(per_class):
            ax = axes[r, c]
            if r < len(idx):
                _image(ax, x[idx[r]], class_names[c] if r == 0 else "")
            else:
                ax.axis("off")
    fig.tight_layout(pad=0.2)
    return fig


# --------------------------------------------------------------------------------------------------
# Adversarial training (notebook 03): robustness per method, the catastrophic-overfitting monitor
# --------------------------------------------------------------------------------------------------
def plot_robustness(results: Mapping[str, Mapping[str, float]], *, labels: Mapping[str, str] | None = None,
                    n: int | None = None) -> Figure:
    """Grouped bars: accuracy (%) under each attack per method, from :func:`tutorial_lib.evaluate.robustness_summary`.

    ``results``: ``{method: {column: fraction}}``; ``seconds_per_epoch`` and ``train_seconds`` columns are
    skipped. Bars are named by :func:`tutorial_lib.evaluate.summary_column_title`; rows by ``labels``, else by
    :data:`tutorial_lib.training.METHOD_TITLES`, else by their key. ``n``: the number of test images behind each
    accuracy; if given, error bars show 95% intervals (:func:`tutorial_lib.evaluate.accuracy_ci95`). The legend
    sits above the axes, clear of the bars. Returns the Figure.
    Introduced in notebooks/03_adversarial_training.ipynb.
    """
    from . import training

    if not results:
        raise ValueError("results is empty: pass {method: robustness_summary(...)}")
    keys = [k for k in next(iter(results.values())) if k not in ("seconds_per_epoch", "train_seconds")]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.35 * len(results)), 3.6), dpi=DPI)
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        values = [r[k] for r in results.values()]
        err = None if n is None else [100 * _ci95_half_width(v, n) for v in values]
        ax.bar(np.arange(len(results)) + i * width, [100 * v for v in values], width, yerr=err, capsize=2,
               error_kw={"linewidth": 0.8}, label=evaluate.summary_column_title(k))
    ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2)
    names = [(labels or {}).get(m, training.METHOD_TITLES.get(m, m)) for m in results]
    # long names on two or three lines, broken at spaces only ("FGSM-RS" stays whole)
    ax.set_xticklabels([textwrap.fill(name, 14, break_on_hyphens=False) for name in names], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=len(keys), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


#: Eleven distinguishable (colour, marker) pairs for scatter plots with many series (tab10 plus black).
_SERIES_STYLES = tuple(zip([*(f"C{i}" for i in range(10)), "black"], "osD^v<>pXh*"))


def plot_tradeoff(rows: Mapping[str, Mapping[str, float]], *, n: int, labels: Mapping[str, str] | None = None,
                  x_key: str = "pgd40", y_key: str = "clean", x_label: str = "PGD-40 accuracy (%)",
                  y_label: str = "clean accuracy (%)", outlier_gap: float = 0.3) -> Figure:
    """Clean against robust accuracy, one point per model with 95 % interval error bars (``n`` test images).

    ``rows``: ``{model: {x_key: fraction, y_key: fraction}}`` (e.g. robustness_summary rows). Each series gets its
    own colour and marker (up to 11), points are numbered on the plot and named in a legend beside the axes, so
    labels never collide even where points overlap. A model whose ``y_key`` lies more than ``outlier_gap`` below
    all the others (a run that did not learn) is drawn at the bottom edge, its value written beside it, so it does
    not squeeze the rest. Returns the Figure. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    if not rows:
        raise ValueError("rows is empty: pass {model: {x_key: fraction, y_key: fraction}}")
    if len(rows) > len(_SERIES_STYLES):
        raise ValueError(f"at most {len(_SERIES_STYLES)} series have distinct styles, got {len(rows)}")
    labels = dict(labels or {})
    ys = sorted(100 * float(r[y_key]) for r in rows.values())
    gaps = np.diff(ys)
    cut = None   # values below the largest jump, if that jump is big enough, are outliers
    if len(ys) > 2 and gaps.max() > 100 * outlier_gap:
        cut = ys[int(np.argmax(gaps)) + 1]
    bottom = None if cut is None else max(0.0, cut - 8.0)
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=DPI)
    drawn: list[tuple[float, float, str]] = []
    for i, ((m, row), (color, marker)) in enumerate(zip(rows.items(), _SERIES_STYLES)):
        xv, yv = 100 * float(row[x_key]), 100 * float(row[y_key])
        label = f"{i + 1}  {labels.get(m, m)}"
        if bottom is not None and yv < bottom:
            label += f" (clean {yv:.1f}%, below the axis)"
            yv = bottom + 0.6
            ax.errorbar(xv, yv, xerr=100 * _ci95_half_width(row[x_key], n), fmt="v", color=color, markersize=8,
                        capsize=2, label=label)
        else:
            ax.errorbar(xv, yv, xerr=100 * _ci95_half_width(row[x_key], n), yerr=100 * _ci95_half_width(row[y_key], n),
                        fmt=marker, color=color, markersize=7, capsize=2, label=label)
        drawn.append((xv, yv, color))
    if bottom is not None:
        ax.set_ylim(bottom, 100)
    ax.autoscale_view()
    # number each point where no other point or number sits (in screen pixels): eight directions, then farther out
    to_px = ax.transData.transform
    points_px = [to_px((xv, yv)) for xv, yv, _ in drawn]
    taken: list[np.ndarray] = list(points_px)
    for i, ((xv, yv, color), p) in enumerate(zip(drawn, points_px)):
        choice = None
        for radius in (16, 28, 40):
            for angle in np.linspace(0.25 * np.pi, 2.25 * np.pi, 8, endpoint=False):
                off = radius * np.array([np.cos(angle), np.sin(angle)])
                if all(np.linalg.norm(p + off - q) > 14 for q in taken):
                    choice = off
                    break
            if choice is not None:
                break
        choice = np.array([16.0, 16.0]) if choice is None else choice
        taken.append(p + choice)
        ax.annotate(str(i + 1), (xv, yv), xytext=(choice[0] * 72 / fig.dpi, choice[1] * 72 / fig.dpi),
                    textcoords="offset points", fontsize=9, ha="center", va="center", color=color, fontweight="bold")
    ax.set_xlabel(x_label, fontsize=11)
    ax.set_ylabel(y_label, fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_monitor(history: Sequence[Mapping[str, Any]], *, title: str = "") -> Figure:
    """FGSM and PGD accuracy per epoch from a :class:`~tutorial_lib.training.CatastrophicOverfittingMonitor`'s
    ``history``, flagged epochs circled. Returns the Figure. Introduced in notebooks/03_adversarial_training.ipynb.
    """
    fig, ax = plt.subplots(figsize=(5, 3), dpi=DPI)
    epochs = [h["epoch"] + 1 for h in history]
    ax.plot(epochs, [100 * h["fgsm"] for h in history], "o-", label="FGSM")
    ax.plot(epochs, [100 * h["pgd"] for h in history], "s-", label="PGD")
    flagged = [h for h in history if h["flagged"]]
    if flagged:
        ax.scatter([h["epoch"] + 1 for h in flagged], [100 * h["pgd"] for h in flagged], s=120, facecolors="none",
                   edgecolors="red", label="flagged", zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy on monitor batch (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Meta-learning (notebook 04): a task, training curves, accuracy against adaptation steps, the results
# --------------------------------------------------------------------------------------------------
def plot_task(tasks: Any, sampler: Any, index: int = 0, *, queries_per_class: int = 3) -> Figure:
    """One task of a :class:`~tutorial_lib.tasks.Tasks` batch: a row per label with its support images, then a few
    of its query images (in blue). ``sampler`` is the :class:`~tutorial_lib.tasks.FewShotSampler` it came from.

    Row labels give the renumbered label and the class behind it (e.g. ``2 = 4@90``). Returns the Figure.
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    t = tasks[index]
    n, k = sampler.n_way, sampler.k_shot
    qn = min(queries_per_class, sampler.q_queries)
    fig, axes = plt.subplots(n, k + qn, figsize=(1.1 * (k + qn), 1.2 * n), squeeze=False, dpi=DPI)
    for label in range(n):
        support = t.support_x[0][t.support_y[0] == label][:k]
        query = t.query_x[0][t.query_y[0] == label][:qn]
        for j, img in enumerate(list(support) + list(query)):
            ax = axes[label, j]
            ax.imshow(img[..., 0], cmap="gray" if j < k else "Blues_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{label} = {sampler.class_names[t.classes[0, label]]}", fontsize=8)
            if label == 0:
                ax.set_title("support" if j < k else "query", fontsize=8)
    fig.suptitle(f"{n}-way {k}-shot task (labels renumbered 0..{n - 1}; queries in blue)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_histories(histories: Mapping[str, Any], *, window: int = 50) -> Figure:
    """Query accuracy after adaptation during meta-training (moving average over ``window`` steps), one line per
    entry of ``histories`` (a :class:`~tutorial_lib.meta.MetaHistory` or a dict with ``"accuracy"``).
    Returns the Figure. Introduced in notebooks/04_meta_learning.ipynb.
    """
    fig, ax = plt.subplots(figsize=(6, 3), dpi=DPI)
    for name, hist in histories.items():
        acc = np.asarray(hist["accuracy"] if isinstance(hist, Mapping) else hist.accuracy, dtype=float)
        w = max(1, min(window, len(acc) // 5))
        ax.plot(np.arange(w, len(acc) + 1), np.convolve(acc, np.ones(w) / w, mode="valid"), label=name)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("query accuracy (meta-train tasks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_step_curves(curves: Mapping[str, Any], *, title: str = "") -> Figure:
    """Mean query accuracy (with its 95 % CI band) against the number of adaptation steps, one line per
    :class:`~tutorial_lib.meta.Evaluation`. Returns the Figure. Introduced in notebooks/04_meta_learning.ipynb."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=DPI)
    all_steps: set[int] = set()
    for name, ev in curves.items():
        steps = np.asarray(ev.curve_steps)
        all_steps.update(int(v) for v in steps)
        ax.plot(steps, 100 * ev.curve, marker=".", label=name)
        ax.fill_between(steps, 100 * (ev.curve - ev.curve_ci95), 100 * (ev.curve + ev.curve_ci95), alpha=0.2)
    # the steps are few and uneven (0, 1, 2, 3, 5, 10, 20): an even axis whose ticks are the measured steps
    ticks = sorted(all_steps)
    ax.set_xticks(ticks, [str(v) for v in ticks])
    ax.set_xlabel("adaptation steps on the support set", fontsize=10)
    ax.set_ylabel("query accuracy (%)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_few_shot_results(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Grouped bars (one group per shot setting such as ``"1shot"``) of mean query accuracy with 95 % CI error
    bars; ``results``: ``{method: {"<k>shot": Evaluation}}``. Returns the Figure.
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    shots = sorted({s for r in results.values() for s in r}, key=lambda s: int(s.rstrip("shot")))
    fig, ax = plt.subplots(figsize=(6.5, 3), dpi=DPI)
    width = 0.8 / len(results)
    for i, (method, row) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(shots))]
        ax.bar(xs, [100 * row[s].mean for s in shots], width, yerr=[100 * row[s].ci95 for s in shots],
               capsize=2, label=method)
    ax.set_xticks(range(len(shots)), [f"5-way {s[:-4]}-shot" for s in shots])
    ax.set_ylabel("query accuracy on digits 5-9 (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Robust few-shot learning (notebook 05): clean against robust accuracy, accuracy against eps, meta-losses
# --------------------------------------------------------------------------------------------------
def _mean_ci(entry: Any) -> tuple[float, float]:
    """(mean, ci95) from a ``{"mean", "ci95"}`` dict or an object with those attributes."""
    if isinstance(entry, Mapping):
        return float(entry["mean"]), float(entry["ci95"])
    return float(entry.mean), float(entry.ci95)


def _finish_axes(fig: Figure, ax: matplotlib.axes.Axes, xlabel: str, ylabel: str, title: str | None,
                 **legend: Any) -> Figure:
    """The axis styling of notebook 05's single-axes figures: labels at 12 pt, ticks at 11 pt, a light grid, the
    legend at 10 pt (``legend`` passes on, e.g. ``loc``), the title (if any) at 12 pt; then a tight layout."""
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, **legend)
    if title:
        ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return fig


def plot_clean_vs_robust(methods: Mapping[str, Mapping[str, Any]], *, labels: Mapping[str, str] | None = None,
                         robust_key: str = "robust", robust_label: str = "robust accuracy (%)",
                         title: str | None = None) -> Figure:
    """Clean accuracy (x) against robust accuracy (y), one point per method with 95% CI bars on both axes.

    ``methods``: ``{name: {"clean": {"mean", "ci95"}, robust_key: {"mean", "ci95"}}}`` with fractions in
    [0, 1] (the ``methods`` part of a results file); ``labels`` renames the points. Up and to the right is
    better. Returns the Figure. Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    if not methods:
        raise ValueError("methods is empty: pass at least one {name: {'clean': ..., 'robust': ...}}")
    labels = dict(labels or {})
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=DPI)
    for i, (name, row) in enumerate(methods.items()):
        (cx, cci), (ry, rci) = _mean_ci(row["clean"]), _mean_ci(row[robust_key])
        ax.errorbar(100 * cx, 100 * ry, xerr=100 * cci, yerr=100 * rci, fmt="o", ms=8, capsize=3, color=f"C{i}",
                    label=labels.get(name, name))
    return _finish_axes(fig, ax, "clean accuracy (%)", robust_label, title, loc="best")


def plot_accuracy_vs_eps(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], *,
                         train_eps: float | None = None, title: str | None = None) -> Figure:
    """Accuracy (%) against the attack radius, one line with a 95% CI band per entry of ``curves``.

    ``curves``: ``{name: (eps values, mean accuracies, ci95 half-widths)}``, accuracies as fractions.
    ``train_eps`` draws a dotted vertical line at the radius the models were trained for. Returns the Figure.
    Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    if not curves:
        raise ValueError("curves is empty: pass {name: (eps, mean, ci95)}")
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=DPI)
    for name, (eps, mean, ci) in curves.items():
        eps, mean, ci = (np.asarray(a, dtype=float) for a in (eps, mean, ci))
        if not eps.shape == mean.shape == ci.shape:
            raise ValueError(f"curve {name!r}: eps, mean and ci95 must have the same length, got "
                             f"{eps.shape}, {mean.shape}, {ci.shape}")
        ax.plot(eps, 100 * mean, marker="o", label=name)
        ax.fill_between(eps, 100 * (mean - ci), 100 * (mean + ci), alpha=0.2)
    if train_eps is not None:
        ax.axvline(train_eps, color="grey", ls=":", label=f"training eps {train_eps:g}")
    ax.set_ylim(0, 100)
    return _finish_axes(fig, ax, "attack radius eps (L-inf)", "query accuracy under attack (%)", title)


def plot_meta_losses(losses: Mapping[str, Sequence[float]], *, window: int = 20, reference: float | None = None,
                     reference_label: str = "", ylabel: str = "outer (query) loss",
                     title: str | None = None) -> Figure:
    """Per-meta-step losses (moving average over ``window`` steps), one line per entry of ``losses``.

    ``reference`` draws a dashed horizontal line (e.g. ln 5, the loss of a model that predicts the uniform
    distribution over 5 classes) labelled ``reference_label``. Returns the Figure.
    Introduced in notebooks/05_meta_adversarial.ipynb.
    """
    if not losses:
        raise ValueError("losses is empty: pass {name: per-step losses}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=DPI)
    for name, values in losses.items():
        values = np.asarray(values, dtype=float)
        w = max(1, min(int(window), len(values)))
        ax.plot(np.arange(w, len(values) + 1), np.convolve(values, np.ones(w) / w, mode="valid"), label=name)
    if reference is not None:
        ax.axhline(reference, color="black", ls="--", lw=1, label=reference_label or f"{reference:.3f}")
    # below the axes: inside, the legend can cover the reference line the figure is about
    return _finish_axes(fig, ax, "meta-step", ylabel, title, loc="upper center", bbox_to_anchor=(0.5, -0.18),
                        ncol=2, frameon=False)


def plot_adaptation_by_family(held_out: Mapping[str, Mapping[str, Mapping[str, Any]]], steps: Sequence[int], *,
                              labels: Mapping[str, str] | None = None,
                              family_labels: Mapping[str, str] | None = None) -> Figure:
    """Robust accuracy against adaptation steps, one panel per held-out attack family, one colour per method,
    solid for the largest K and dashed for the others, with 95% error bars.

    ``held_out[family][method]["<k>shot"]["curve"][str(steps)] = {"mean", "ci95"}`` (the results schema of
    notebook 06; ``"robust"`` in place of ``"curve"`` is read too). Returns the Figure. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    if not held_out:
        raise ValueError("held_out is empty: pass {family: {method: {'<k>shot': {...}}}}")
    labels, family_labels = dict(labels or {}), dict(family_labels or {})
    fig, axes = plt.subplots(1, len(held_out), figsize=(4.2 * len(held_out), 3.8), dpi=DPI, sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (family, per_method) in zip(axes[0], held_out.items()):
        for c, (method, entry) in enumerate(per_method.items()):
            ks = sorted(int(k.removesuffix("shot")) for k in entry)
            for k in ks:
                record = entry[f"{k}shot"]
                curve = record["curve"] if "curve" in record else record["robust"]
                cells = [curve[str(s)] for s in steps]
                ax.errorbar(list(steps), [100 * x["mean"] for x in cells], yerr=[100 * x["ci95"] for x in cells],
                            color=colours[c % len(colours)], ls="-" if k == ks[-1] else "--", marker="o", ms=3,
                            capsize=2, label=f"{labels.get(method, method)}, K={k}")
        ax.set_title(f"held out: {family_labels.get(family, family)}", fontsize=11)
        ax.set_xlabel("adaptation steps", fontsize=10)
        ax.set_xticks(list(steps))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("robust accuracy (%)", fontsize=10)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def plot_attack_matrix(matrix: Mapping[str, Mapping[str, Mapping[str, float]]], *,
                       row_labels: Mapping[str, str] | None = None, col_labels: Mapping[str, str] | None = None,
                       title: str = "") -> Figure:
    """A trained-on x tested-on heat map of robust accuracy: ``matrix[row][column] = {"mean", "ci95"}`` (fractions),
    each cell annotated "mean ± ci95" in percent. Returns the Figure. Introduced in notebooks/06_unseen_attacks.ipynb.
    """
    if not matrix:
        raise ValueError("matrix is empty: pass {row: {column: {'mean', 'ci95'}}}")
    rows = list(matrix)
    cols = list(next(iter(matrix.values())))
    row_labels, col_labels = dict(row_labels or {}), dict(col_labels or {})
    values = np.array([[100 * matrix[r][c]["mean"] for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.9 * len(cols) + 3.0, 0.5 * len(rows) + 1.4), dpi=DPI)
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax.text(j, i, f"{values[i, j]:.1f} ± {100 * matrix[r][c]['ci95']:.1f}", ha="center", va="center",
                    fontsize=8, color="white" if values[i, j] < 60 else "black")
    ax.set_xticks(range(len(cols)), [col_labels.get(c, c) for c in cols], fontsize=9)
    ax.set_yticks(range(len(rows)), [row_labels.get(r, r) for r in rows], fontsize=9)
    ax.set_xlabel("tested on", fontsize=10)
    fig.colorbar(im, ax=ax, label="robust accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_patch_curves(patch: Mapping[str, Any], *, labels: Mapping[str, str] | None = None) -> Figure:
    """Success of a trained patch against its size: one panel per model, untargeted and targeted trained patches
    and the random patch of the same size (control), each with its 95% band (``patch["n_eval"]`` images).

    ``patch``: the ``"patch"`` entry of notebook 07's results (``sizes``, ``target``, ``untargeted``,
    ``targeted``, ``random_patch``, ``n_eval``). Returns the Figure. Introduced in
    notebooks/07_applications_and_results.ipynb.
    """
    if not patch.get("untargeted"):
        raise ValueError("patch has no 'untargeted' results: pass the 'patch' entry of notebook 07's results")
    names = list(patch["untargeted"])
    sizes = np.asarray(patch["sizes"])
    labels = dict(labels or {})
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), dpi=DPI, sharey=True, squeeze=False)
    kinds = (("untargeted", "trained: misread", "C3", "o-"), ("targeted", f"trained: read as {patch['target']}", "C0", "s-"),
             ("random_patch", "random patch: misread", "0.5", "^--"))
    for ax, name in zip(axes[0], names):
        n = int(patch["n_eval"][name])
        for kind, label, color, style in kinds:
            if name not in patch.get(kind, {}):
                continue
            values = np.asarray(patch[kind][name], dtype=float)
            half = np.array([_ci95_half_width(v, n) for v in values])
            ax.plot(sizes, 100 * values, style, color=color, label=label, markersize=4)
            ax.fill_between(sizes, 100 * np.clip(values - half, 0, 1), 100 * np.clip(values + half, 0, 1),
                            color=color, alpha=0.15, linewidth=0)
        ax.set_title(f"{labels.get(name, name)} (n = {n})", fontsize=9)
        ax.set_xlabel("patch side (pixels)", fontsize=9)
        ax.set_xticks(sizes)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success (%), 95% band", fontsize=9)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
