"""Models of the series and a cache of trained weights keyed by the training config.

All models return **logits** (no softmax); losses use ``from_logits=True``. ``load_or_train`` saves in
the native ``.keras`` format with a sha256 sidecar and loads in Keras safe mode.
Introduced in notebooks/00_setup_and_data.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from . import runtime

CACHE_VERSION = 1  # bump to invalidate every cached model after a change in how models are trained


def article_cnn(num_classes: int = 10, *, input_shape: tuple[int, int, int] = (28, 28, 1), name: str = "article_cnn") -> keras.Model:
    """The article's CNN, returning logits.

    Conv 32 3x3 ReLU, max-pool 2, Conv 64 3x3 ReLU, max-pool 2, flatten, dense ``num_classes``.
    The final layer is float32 even under a mixed-precision policy, so logits and losses stay accurate.
    """
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, dtype="float32", name="logits"),
        ],
        name=name,
    )


def _ends_in_softmax(model: keras.Model) -> bool:
    layers = [layer for layer in getattr(model, "layers", []) if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    if isinstance(last, keras.Model):  # nested model: look inside
        return _ends_in_softmax(last)
    activation = getattr(last, "activation", None)
    if activation is None:
        return False
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") in ("softmax", "log_softmax")


def check_logits_model(model: Any) -> None:
    """Raise if ``model`` is not a Keras model or ends in a softmax (helpers here expect logits)."""
    if not isinstance(model, keras.Model) and not isinstance(model, keras.layers.Layer):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    if _ends_in_softmax(model):
        raise ValueError(
            f"model {model.name!r} ends in a softmax, but tutorial_lib works with logits: softmax outputs "
            "saturate, so their gradients vanish and attacks look weaker than they are. Fix: drop the "
            "softmax from the last layer (e.g. Dense(10) instead of Dense(10, activation='softmax')) and use "
            "losses with from_logits=True; apply keras.activations.softmax only when you need probabilities."
        )


def compile_classifier(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Compile with Adam, sparse cross-entropy on logits and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def train_classifier(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    verbose: int | str = "auto",
    callbacks: list | None = None,
) -> keras.callbacks.History:
    """Standard (clean) training with ``model.fit``; returns the History."""
    check_logits_model(model)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    compile_classifier(model, learning_rate)
    return model.fit(
        x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
        verbose=verbose, callbacks=callbacks, shuffle=True,
    )


# --------------------------------------------------------------------------------------------------
# Cache of trained models
# --------------------------------------------------------------------------------------------------
def config_hash(name: str, config: dict[str, Any]) -> str:
    """A short stable hash of a model's name and training config (plus the Keras and cache versions)."""
    payload = json.dumps(
        {"name": name, "config": config, "keras": keras.__version__, "cache_version": CACHE_VERSION},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_paths(name: str, config: dict[str, Any]) -> tuple[Path, Path]:
    """(model file, metadata file) for ``name`` and ``config`` under ``build/cache/``."""
    stem = f"{name}-{config_hash(name, config)}"
    folder = runtime.build_subdir("cache")
    return folder / f"{stem}.keras", folder / f"{stem}.json"


def save_model(model: keras.Model, path: Path) -> str:
    """Save in the native .keras format atomically; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    return _sha256(path)


def load_model(path: Path, sha256: str | None = None) -> keras.Model:
    """Load a ``.keras`` file in safe mode, optionally checking its sha256 first."""
    path = Path(path)
    if sha256 is not None and _sha256(path) != sha256:
        raise ValueError(f"{path} does not match its recorded sha256: the file is corrupt; delete it")
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def load_or_train(
    name: str,
    config: dict[str, Any],
    train_fn: Callable[[], keras.Model | tuple[keras.Model, dict[str, Any]]],
    *,
    retrain: bool = False,
    verbose: bool = True,
) -> tuple[keras.Model, dict[str, Any]]:
    """Return a trained model from ``build/cache/`` or train it with ``train_fn()`` and cache it.

    The cache key is a hash of ``name`` and ``config`` (a JSON-able dict of everything that affects
    the weights: data, epochs, seed, method...). ``train_fn`` returns the model, or ``(model, info)``
    where ``info`` is a JSON-able dict kept beside it (e.g. training time, history). A cache file that
    fails its checksum or cannot be loaded is reported and retrained, never used. Returns
    ``(model, info)``; ``info["cached"]`` says whether training was skipped.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    model_path, meta_path = cache_paths(name, config)
    if not retrain and model_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            model = load_model(model_path, sha256=meta["sha256"])
        except Exception as err:  # corrupt or unreadable: say so, then retrain
            warnings.warn(
                f"cached model {runtime.display_path(model_path)} is unusable ({type(err).__name__}: {err}); retraining",
                RuntimeWarning, stacklevel=2,
            )
        else:
            if verbose:
                print(f"loaded {name} from {runtime.display_path(model_path)} (trained earlier with this config)")
            return model, {**meta.get("info", {}), "cached": True}
    start = time.perf_counter()
    result = train_fn()
    model, info = result if isinstance(result, tuple) else (result, {})
    info = {"train_seconds": time.perf_counter() - start, **runtime._to_jsonable(info)}
    digest = save_model(model, model_path)
    meta_path.write_text(json.dumps({"name": name, "config": config, "sha256": digest, "info": info},
                                    indent=2, sort_keys=True, default=str))
    return model, {**info, "cached": False}


def baseline_config(profile: runtime.Profile, data_source: str, seed: int = 0) -> dict[str, Any]:
    """The training config of the series' baseline CNN: what notebooks 00-02 share."""
    b = profile.baseline
    return {"model": "seed_cnn", "data": data_source, "epochs": b.epochs, "batch_size": b.batch_size,
            "learning_rate": b.learning_rate, "seed": seed}


def baseline_model(data, profile: runtime.Profile | None = None, *, seed: int = 0, verbose: bool = True) -> tuple[keras.Model, dict[str, Any]]:
    """The article's CNN trained on clean ``data`` (an :class:`~tutorial_lib.data.MNIST`), cached by config.

    Trained in notebook 00; later notebooks get the same weights from the cache.
    """
    profile = profile or runtime.get_profile()
    b = profile.baseline

    def train() -> tuple[keras.Model, dict[str, Any]]:
        runtime.set_seed(seed)
        model = article_cnn()
        hist = train_classifier(model, data.x_train, data.y_train, epochs=b.epochs, batch_size=b.batch_size,
                                learning_rate=b.learning_rate, verbose=2 if verbose else 0)
        return model, {"history": hist.history}

    source = f"{data.source}:{len(data.x_train)}"
    return load_or_train("baseline", baseline_config(profile, source, seed), train, verbose=verbose)


# --------------------------------------------------------------------------------------------------
# Few-shot CNN (notebook 04)
# --------------------------------------------------------------------------------------------------
def few_shot_cnn(n_way: int = 5, *, filters: int = 32, blocks: int = 3, input_shape: tuple[int, int, int] = (28, 28, 1),
                 name: str = "few_shot_cnn") -> keras.Model:
    """A small CNN for N-way few-shot tasks, returning logits of shape (batch, n_way).

    ``blocks`` times Conv ``filters`` 3x3 stride 2 "same" + ReLU (28 -> 14 -> 7 -> 4 pixels for 3 blocks),
    flatten, Dense ``n_way``. No batch norm and no dropout: the model has no non-trainable state, so a
    meta-learner's functional inner loop (``stateless_call``) sees every variable it needs.
    Introduced in notebooks/04_meta_learning.ipynb.
    """
    if n_way < 2 or blocks < 1 or filters < 1:
        raise ValueError(f"need n_way >= 2, blocks >= 1, filters >= 1; got {n_way}, {blocks}, {filters}")
    layers = [keras.Input(shape=input_shape)]
    for i in range(blocks):
        layers.append(keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i + 1}"))
    layers += [keras.layers.Flatten(), keras.layers.Dense(n_way, dtype="float32", name="logits")]
    return keras.Sequential(layers, name=name)
