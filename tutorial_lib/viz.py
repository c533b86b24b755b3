"""Figures and widgets for the attack chapters: image grids with predictions, eps-sweep plots, an explorer.

Plots what :mod:`tutorial_lib.evaluate` computes; every function returns a matplotlib ``Figure`` (small,
for stored notebook outputs). Introduced in notebooks/01_fgsm.ipynb.
"""

from __future__ import annotations

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
            ax.fill_between(s.eps, s.accuracy - half, s.accuracy + half, color=line.get_color(), alpha=0.2, linewidth=0)
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
        cbar.ax.tick_params(labelsize=7)
        plot_probabilities(s["adv_prob"], axes[3], true_label=s["label"], title="adversarial probabilities")
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
