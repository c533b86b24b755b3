"""One cache of compiled TensorFlow functions for the whole package.

Attacks, adapted-learner evaluation and meta-learning steps build a ``tf.function`` once per owner (a Keras
model, or any object the function belongs to), settings and input shapes, and find it here afterwards.
The cache holds owners weakly, so it never keeps a model alive; :func:`clear_cache` empties it.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable

__all__ = ["compiled", "clear_cache", "cache_size", "trace_count", "count_trace", "use_xla", "op_determinism"]

_CACHE: "weakref.WeakKeyDictionary[Any, dict[Hashable, Any]]" = weakref.WeakKeyDictionary()
_TRACES: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def compiled(owner: Any, key: Hashable, build: Callable[[], Any]) -> Any:
    """The function cached for ``owner`` under ``key``; ``build()`` makes it the first time.

    ``key`` must hold everything the compiled function depends on besides the owner: which computation
    (a name), its settings and the input shapes. ``owner`` must be weak-referenceable (Keras models are).
    """
    try:
        per_owner = _CACHE.setdefault(owner, {})
    except TypeError as err:
        raise TypeError(f"cannot cache a compiled function for a {type(owner).__name__}: the owner must be "
                        "weak-referenceable, e.g. a keras.Model") from err
    fn = per_owner.get(key)
    if fn is None:
        fn = per_owner[key] = build()
    return fn


def clear_cache(owner: Any = None) -> None:
    """Drop the compiled functions of ``owner`` (of every owner when None)."""
    if owner is None:
        _CACHE.clear()
    else:
        _CACHE.pop(owner, None)


def cache_size(owner: Any = None) -> int:
    """How many compiled functions are cached for ``owner`` (for all owners when None)."""
    if owner is None:
        return sum(len(v) for v in _CACHE.values())
    return len(_CACHE.get(owner, {}))


def count_trace(owner: Any) -> None:
    """Record one tracing of a function of ``owner``; call it inside the traced Python function."""
    _TRACES[owner] = _TRACES.get(owner, 0) + 1


def trace_count(owner: Any) -> int:
    """How many times functions of ``owner`` were traced (repeated calls with cached shapes add none)."""
    return _TRACES.get(owner, 0)


def use_xla(jit_compile: bool | None = None) -> bool:
    """Whether a compiled function should use XLA: ``jit_compile`` when given, else the package default.

    The default is XLA on a GPU unless TensorFlow's op determinism is on (``tl.runtime.setup`` turns it on):
    XLA has no deterministic gradient for max-pooling, so determinism wins and graphs run without XLA.
    On a CPU plain graph mode is the default (XLA was slower there; benchmarks/README.md). Functions holding
    ops without an XLA kernel (the spatial attack's image transform) pass ``jit_compile=False``.
    tests/test_gpu_defaults.py runs every entry point with the choices a GPU gets.
    """
    if jit_compile is not None:
        return bool(jit_compile)
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return False
    return not op_determinism()


def op_determinism() -> bool:
    """Whether TensorFlow's op determinism is on (``tf.config.experimental.enable_op_determinism``).

    TensorFlow exports the switch but not the question, so this asks its internal config module.
    """
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())
