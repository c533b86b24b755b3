"""tutorial_lib.profiles: the quick / standard / full profiles as plain data, each setting declared once."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tutorial_lib import profiles, runtime
from tutorial_lib.profiles import PROFILES, SHARED, get_profile


def test_every_profile_builds_with_every_section():
    assert list(PROFILES) == ["quick", "standard", "full"]
    for name, prof in PROFILES.items():
        assert prof.name == name
        for section, cls in profiles.SECTIONS.items():
            assert isinstance(getattr(prof, section), cls)
        json.dumps(prof.to_dict())  # plain data


def test_known_values_are_unchanged():
    # a few values the notebooks' stored numbers and the cached models' config hashes depend on
    q, s, f = (PROFILES[n] for n in ("quick", "standard", "full"))
    assert (q.meta.meta_steps, q.meta.eval_tasks, q.meta.n_way, q.meta.q_queries, q.meta.meta_batch,
            q.meta.inner_lr) == (500, 200, 5, 15, 4, 0.4)
    assert (q.meta_adv.meta_steps, q.meta_adv.n_way, q.meta_adv.k_shot, q.meta_adv.q_queries, q.meta_adv.meta_batch,
            q.meta_adv.inner_lr, q.meta_adv.eps) == (600, 5, 5, 15, 4, 0.4, 0.1)
    assert q.meta_adv.curve_eps == (0.0, 0.05, 0.1, 0.2, 0.3) and s.meta_adv.curve_eps == (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    assert (f.meta.meta_batch, f.meta_adv.meta_batch) == (32, 32)
    assert (q.unseen.adapt_lr, q.unseen.linf_eps, q.unseen.q_queries, s.unseen.q_queries) == (0.4, 0.1, 5, 15)
    assert (q.applications.peer_pgd_steps, q.applications.peer_step_size, q.applications.strong_steps,
            f.applications.strong_restarts) == (40, 0.01, 100, 20)
    assert (q.adv_training.epochs, f.adv_training.train_step_scale, s.baseline.batch_size) == (15, 4 / 3, 128)
    # notebooks 00, 03 and 07 print these sections; their stored outputs show this text
    assert repr(q.baseline) == "BaselineSettings(epochs=10, batch_size=64, learning_rate=0.001)"
    assert repr(q.applications).startswith("ApplicationSettings(patch_sizes=(6, 10, 14), patch_target=8, ")
    assert "peer_pgd_steps=40, peer_step_size=0.01, strong_steps=100, strong_restarts=5" in repr(q.applications)


def test_settings_declared_once_are_the_earlier_chapters_own():
    for prof in PROFILES.values():
        for (section, key), (source, source_key) in SHARED.items():
            assert getattr(getattr(prof, section), key) is getattr(getattr(prof, source), source_key)
    # notebook 05 reuses notebook 04's task shape and inner loop
    assert {k for (sec, k), (src, _) in SHARED.items() if (sec, src) == ("meta_adv", "meta")} == \
        {"n_way", "q_queries", "meta_batch", "inner_lr"}


def test_a_profile_that_sets_a_shared_setting_twice_is_refused():
    with pytest.raises(ValueError, match=r"meta_adv.n_way is meta.n_way \(declared once\); set meta.n_way instead"):
        profiles._profile("x", "subset", "", baseline=dict(epochs=1), attacks=dict(eval_size=1),
                          adv_training=dict(epochs=1), meta=dict(meta_steps=1, eval_tasks=1),
                          meta_adv=dict(meta_steps=1, eval_tasks=1, n_way=3))
    with pytest.raises(ValueError, match="unknown sections"):
        profiles._profile("x", "subset", "", baseline=dict(epochs=1), attacks=dict(eval_size=1),
                          adv_training=dict(epochs=1), meta=dict(meta_steps=1, eval_tasks=1),
                          meta_adv=dict(meta_steps=1, eval_tasks=1), metaadv=dict())


def test_changing_a_shared_setting_changes_it_everywhere():
    prof = profiles._profile("x", "subset", "", baseline=dict(epochs=1), attacks=dict(eval_size=1),
                             adv_training=dict(epochs=1), meta=dict(meta_steps=1, eval_tasks=1, n_way=3, inner_lr=0.2),
                             meta_adv=dict(meta_steps=1, eval_tasks=1))
    assert (prof.meta_adv.n_way, prof.meta_adv.inner_lr, prof.unseen.adapt_lr) == (3, 0.2, 0.2)


def test_no_unread_fields():
    for prof in PROFILES.values():
        assert "expected_minutes" not in prof.to_dict()


def test_get_profile_by_name_and_from_env(monkeypatch):
    assert get_profile("Standard ").name == "standard"
    monkeypatch.setenv(profiles.PROFILE_ENV, "full")
    assert get_profile().name == "full"
    monkeypatch.delenv(profiles.PROFILE_ENV)
    assert get_profile().name == "quick"


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*valid names are quick, standard, full"):
        get_profile("fast")
    with pytest.raises(TypeError, match="profile name must be a string"):
        get_profile(3)


def test_profiles_are_frozen_and_replaceable():
    q = get_profile("quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.meta.n_way = 3
    assert dataclasses.replace(q.meta_adv, meta_batch=2).meta_batch == 2  # tests shrink sections this way


def test_runtime_re_exports_the_profiles():
    assert runtime.get_profile is get_profile and runtime.Profile is profiles.Profile
    assert runtime.PROFILES is PROFILES and runtime.PROFILE_ENV == profiles.PROFILE_ENV
