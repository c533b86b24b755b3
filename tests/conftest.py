"""Shared fixtures: a private build dir per test session, tiny data and tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_build_dir(tmp_path_factory):
    """Keep tests from reading or writing the project's build/ (caches, results)."""
    old = os.environ.get("TUTORIAL_BUILD_DIR")
    os.environ["TUTORIAL_BUILD_DIR"] = str(tmp_path_factory.mktemp("build"))
    yield
    if old is None:
        os.environ.pop("TUTORIAL_BUILD_DIR", None)
    else:
        os.environ["TUTORIAL_BUILD_DIR"] = old


@pytest.fixture(scope="session")
def mnist_subset():
    from tutorial_lib import data

    return data.load_subset()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
