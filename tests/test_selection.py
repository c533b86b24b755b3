"""Tests for tutorial_lib.adaptation.select_on_validation: choices made on validation tasks, recorded with scores."""

from __future__ import annotations

import pytest

from tutorial_lib import adaptation


def test_chooses_the_best_and_keeps_every_score():
    scores = {1: 0.40, 5: 0.55, 10: 0.52}
    seen = []

    def score(c):
        seen.append(c["steps"])
        return scores[c["steps"]]

    sel = adaptation.select_on_validation([{"steps": k} for k in (1, 5, 10)], score)
    assert sel.chosen == {"steps": 5} and seen == [1, 5, 10]
    d = sel.to_dict()
    assert d["steps"] == 5 and d["chosen_on"] == "validation"
    assert [c["validation_robust"] for c in d["candidates"]] == [0.40, 0.55, 0.52]


def test_tolerance_gives_near_ties_to_the_cheaper_candidate():
    scores = {1: 0.50, 5: 0.51, 10: 0.53}
    cands = [{"steps": k} for k in (1, 5, 10)]
    assert adaptation.select_on_validation(cands, lambda c: scores[c["steps"]]).chosen == {"steps": 10}
    assert adaptation.select_on_validation(cands, lambda c: scores[c["steps"]], tolerance=0.025).chosen == {"steps": 5}
    assert adaptation.select_on_validation(cands, lambda c: 0.5).chosen == {"steps": 1}  # exact tie: first


@pytest.mark.parametrize("cands, err, match", [
    ([], ValueError, "empty"),
    ({"steps": 1}, TypeError, "list of dicts"),
    ([1, 5], TypeError, "must be a dict"),
])
def test_bad_candidates_are_refused(cands, err, match):
    with pytest.raises(err, match=match):
        adaptation.select_on_validation(cands, lambda c: 0.5)


def test_bad_score_is_refused():
    with pytest.raises(TypeError, match="score must be a function"):
        adaptation.select_on_validation([{"steps": 1}], 0.5)
    with pytest.raises(TypeError, match="score"):
        adaptation.select_on_validation([{"steps": 1}], lambda c: "high")
    with pytest.raises(ValueError, match="score"):
        adaptation.select_on_validation([{"steps": 1}], lambda c: float("nan"))
