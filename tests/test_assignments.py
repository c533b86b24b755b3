"""Graded assignments (tools/make_assignments.py, `make assignments`) end to end with nbgrader.

From the tracked notebooks 00 and 01 the generator writes an nbgrader course and nbgrader releases it; three
submissions of notebook 00 (the cheapest to execute: autograding runs a submitted notebook top to bottom, 20-40 s
in the quick profile) are autograded:

* the release contains no solution text (no line of the answer key, no solution or hidden-test markers, no
  pointer to ``tl.exercises.solution``);
* a submission filled with the answer key scores full marks on every graded cell;
* the unchanged release scores zero on every graded cell;
* a submission with one wrong answer loses exactly that exercise's points.

Needs the teach extra (nbgrader; the lock installs it); skipped without it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install -e '.[teach]'")
import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_assignments as ma  # noqa: E402

sys.path.remove(str(ROOT / "tools"))

NOTEBOOKS = ["00", "01"]  # released and checked for solution text
GRADED = "00"             # submitted and autograded (key, blank, one wrong answer)
EXECUTE_TIMEOUT = 600     # seconds per cell while autograding


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    stems = ma.make_course(course, NOTEBOOKS, timeout=EXECUTE_TIMEOUT)
    assert [s[:2] for s in stems] == NOTEBOOKS, stems
    return course


@pytest.fixture(scope="module")
def key(course) -> dict:
    return json.loads((course / "answer_key.json").read_text())


@pytest.fixture(scope="module")
def wrong_exercise(key) -> dict:
    stem = next(s for s in key if s.startswith(GRADED))
    exercise = next(e for e in key[stem] if e["names"] and not e["solution"].lstrip().startswith("def "))
    return {"stem": stem, **exercise}


@pytest.fixture(scope="module")
def graded(course, key, wrong_exercise) -> dict:
    """Submissions 'key' (the answer key), 'blank' (the release as handed out) and 'wrong' (the key with one answer
    replaced by a wrong value), autograded by nbgrader; returns the gradebook's points per cell."""
    stem = wrong_exercise["stem"]
    ma.submit(course, "key", fill=True, only=[stem])
    ma.submit(course, "blank", fill=False, only=[stem])
    # One wrong answer: the key's code, then the answer variable set to a value no exercise accepts.
    wrong_code = wrong_exercise["solution"] + f"\n{wrong_exercise['names'][0]} = -12345.0"
    ma.submit(course, "wrong", fill=True, wrong={wrong_exercise["answer_id"]: wrong_code}, only=[stem])
    ma.autograde(course)
    return ma.scores(course)


def _release_text(course: Path) -> str:
    return "\n".join(c.source for nb in sorted((course / "release").rglob("*.ipynb"))
                     for c in nbformat.read(nb, as_version=4).cells)


def test_the_release_contains_no_solution_text(course, key):
    text = _release_text(course)
    assert text, "no release notebooks"
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "_key", "tl.exercises.solution("):
        assert marker not in text, f"the release contains {marker!r}"
    for stem, exercises in key.items():
        for e in exercises:
            lines = [ln.split("#")[0].strip() for ln in e["solution"].splitlines()]
            leaked = [ln for ln in lines if len(ln) >= 10 and ln in text]
            assert not leaked, f"{stem} exercise {e['key']}: the release contains its solution {leaked}"
    assert "raise NotImplementedError()" in text  # the stub took the solutions' place


def test_the_release_keeps_the_notebooks_and_grades_every_exercise(course, key):
    for stem, exercises in key.items():
        tracked = nbformat.read(next((ROOT / "notebooks").glob(f"{stem}.ipynb")), as_version=4)
        release = nbformat.read(course / "release" / stem / f"{stem}.ipynb", as_version=4)
        checks = [c for c in tracked.cells if c.cell_type == "code" and ma.CHECK_CALL.search(c.source)]
        graded_cells = [c for c in release.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(graded_cells) == len(checks) == len(exercises) > 0, (stem, len(graded_cells), len(checks))
        assert all(c.metadata["nbgrader"]["points"] == 1 for c in graded_cells)
        assert not any(o for c in release.cells for o in c.get("outputs", [])), f"{stem}: release keeps outputs"
        # Every other cell is the tracked notebook's (no hand-kept copy): the code outside the exercises is unchanged.
        kept = {c.source for c in tracked.cells if c.cell_type == "code"}
        plain = [c for c in release.cells if c.cell_type == "code" and "nbgrader" not in c.metadata]
        assert plain and all(c.source in kept for c in plain), f"{stem}: code cells differ from the tracked notebook"


def test_the_answer_key_scores_full_marks(graded, key, wrong_exercise):
    for stem, exercises in key.items():
        if stem != wrong_exercise["stem"]:
            continue
        cells = graded["key"][stem]
        assert set(cells) == {e["test_id"] for e in exercises}, cells
        assert all(score == best == 1 for score, best in cells.values()), f"answer key on {stem}: {cells}"


def test_the_unchanged_release_scores_zero(graded, wrong_exercise):
    for stem in [wrong_exercise["stem"]]:
        cells = graded["blank"][stem]
        assert cells and all(score == 0 for score, _ in cells.values()), f"blank release of {stem}: {cells}"


def test_a_wrong_answer_loses_exactly_its_points(graded, wrong_exercise):
    cells = graded["wrong"][wrong_exercise["stem"]]
    lost = {name for name, (score, best) in cells.items() if score < best}
    assert lost == {wrong_exercise["test_id"]}, f"cells that lost points: {cells}"
    assert cells[wrong_exercise["test_id"]][0] == 0


def test_the_exercise_key_is_read_from_the_notebook_not_only_the_check():
    """A check shared by two chapters (check_ci95: 04.2 and 06.2) takes the key of the notebook that uses it."""
    import tutorial_lib.exercises as ex

    shared = [(k, v) for k, v in ex.SOLUTIONS.items() if k.startswith("06.") and "answer_ci" in v]
    if not shared:
        pytest.skip("no exercise of notebook 06 sets answer_ci in this version of the exercises")
    assert ma.find_key("06_unseen_attacks", "check_ci95", ["answer_ci"], used=set()) == shared[0][0]
    assert re.fullmatch(r"\d\d\.\d+", ma.find_key("04_meta_learning", "check_ci95", ["answer_ci"], used=set()))
