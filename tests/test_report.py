"""Tests for tutorial_lib/report.py: the results Markdown and the ours-vs-published table from results files."""

from __future__ import annotations

import json

import tutorial_lib as tl
from tutorial_lib import report


def write(path, name, data):
    (path / f"{name}.json").write_text(json.dumps(data))


def test_every_published_entry_names_its_source_setting_and_our_results_file():
    for e in report.PUBLISHED:
        assert e["source"] and e["setting"] and e["what"]
        assert e["value"] is None or 0.0 < e["value"] <= 1.0
        name = e["ours"][0]
        assert name[:2].isdigit() and name[2] == "_"


def test_published_table_says_which_notebook_to_run_when_results_are_missing(tmp_path):
    table = report.published_table(tmp_path)
    assert "run notebooks/03_adversarial_training.ipynb" in table
    assert "run notebooks/05_meta_adversarial.ipynb" in table
    assert "89.6%" in table  # Madry et al.'s number is shown even before ours exists


def test_published_table_reads_our_numbers_with_intervals(tmp_path):
    write(tmp_path, "00_setup_and_data", {"train_images": 4000, "profile": "quick"})
    write(tmp_path, "03_adversarial_training", {
        "profile": "quick", "eval_size": 1000,
        "methods": {"pgd": {"pgd100_restarts5": 0.8, "worst_case": {"mean": 0.75, "ci95": 0.06}}},
        "wong_recipe": {"wong_cyclic": {"pgd100_restarts5": 0.05, "vs_pgd_at": -1}}})
    write(tmp_path, "04_meta_learning", {"profile": "quick", "methods": {"maml": {"1shot": {"mean": 0.6, "ci95": 0.01, "tasks": 200}}}})
    rows = {r["entry"]["key"]: r for r in report.published_rows(tmp_path)}
    pgd = rows["madry_pgd_at"]["ours"]  # the strong (worst-case) number, not PGD-100 x 5 alone
    assert pgd["mean"] == 0.75 and pgd["ci95"] == 0.06
    differences = rows["madry_pgd_at"]["differences"]
    assert "4,000 training images" in differences and "worst case over APGD-CE-100, APGD-DLR-100" in differences
    assert "on 200 test images" in differences  # the quick profile's strong_eval_size
    wong = rows["wong_fast_at"]["ours"]
    half = tl.evaluate.accuracy_ci95([True] * 50 + [False] * 950)[1]
    assert wong["mean"] == 0.05 and abs(wong["ci95"] - half) < 1e-12 and wong["n"] == 1000  # read as before
    assert rows["finn_maml_1shot"]["ours"]["ci95"] == 0.01
    assert rows["finn_maml_5shot"]["ours"] is None and rows["finn_maml_5shot"]["missing"]
    table = report.published_table(tmp_path)
    assert "75.0 ± 6.0%" in table and "60.0 ± 1.0%" in table and "worst case over APGD-CE" in table


def test_pgd_at_row_asks_for_notebook_03_when_its_file_has_no_worst_case(tmp_path):
    write(tmp_path, "03_adversarial_training", {"profile": "quick", "eval_size": 1000,
                                                "methods": {"pgd": {"pgd100_restarts5": 0.8}}})
    row = {r["entry"]["key"]: r for r in report.published_rows(tmp_path)}["madry_pgd_at"]
    assert row["ours"] is None and row["missing"] == "run notebooks/03_adversarial_training.ipynb"


def test_results_markdown_starts_with_the_published_table(tmp_path):
    write(tmp_path, "01_fgsm", {"clean_accuracy": 0.95, "profile": "quick"})
    md = report.results_markdown(tmp_path)
    assert md.index("## Ours vs published") < md.index("## 01_fgsm")
    out = tmp_path / "out.md"
    assert report.main([str(tmp_path), str(out)]) == 0 and out.read_text() == md


def test_wong_row_reads_their_recipe_and_says_whether_the_headline_reproduces(tmp_path):
    write(tmp_path, "00_setup_and_data", {"train_images": 4000, "profile": "quick"})
    write(tmp_path, "03_adversarial_training", {
        "profile": "quick", "eval_size": 1000, "methods": {"pgd": {"pgd100_restarts5": 0.76}},
        "wong_recipe": {"wong_cyclic": {"pgd100_restarts5": 0.05, "vs_pgd_at": -1}}})
    row = {r["entry"]["key"]: r for r in report.published_rows(tmp_path)}["wong_fast_at"]
    assert row["ours"]["mean"] == 0.05 and row["ours"]["n"] == 1000
    assert "below PGD-AT in the same setting" in row["differences"]
    table = report.published_table(tmp_path)
    assert "as robust as PGD training" in table and "number not checked here" in table  # Goldblum's row keeps it


def test_accuracy_text_sweep_table_and_sanity_intervals():
    half = tl.evaluate.accuracy_ci95([True] * 615 + [False] * 385)[1]
    assert report.accuracy_text(0.615, 1000) == f"61.5% ± {100 * half:.1f}"

    class Sweep:
        def __init__(self, label, acc):
            self.label, self.eps, self.accuracy = label, [0.0, 0.1], acc

    table = report.sweep_table([Sweep("FGSM", [0.9, 0.5]), Sweep("PGD", [0.9, 0.2])], 100)
    assert table.splitlines()[0] == "| eps | FGSM accuracy (95% interval) | PGD accuracy (95% interval) |"
    half50 = tl.evaluate.accuracy_ci95([True] * 50 + [False] * 50)[1]
    assert f"50.0 ± {100 * half50:.1f}%" in table
    rep = type("R", (), {"numbers": {"pgd": 0.5, "fgsm": 0.6, "zero_gradient_fraction": 0.0}})()
    line = report.sanity_intervals(rep, 100)
    assert line.startswith("95% intervals over 100 examples") and "PGD, 1 run 50.0" in line and "zero" not in line
    for bad in (lambda: report.accuracy_text(1.5, 10), lambda: report.sweep_table([], 10),
                lambda: report.sanity_intervals(object(), 10)):
        try:
            bad()
        except (ValueError, TypeError):
            continue
        raise AssertionError("bad input was accepted")


def test_lever_table_is_none_without_the_file(tmp_path):
    assert report.lever_table(tmp_path / "missing.json") is None
    (tmp_path / "lv.json").write_text(json.dumps({
        "config": {"shots": [1]}, "step_seconds": {"maml_500": {"5": 0.03}, "lslr": {"5": 0.045}},
        "rows": {"maml_500": {"description": "MAML", "meta_steps": 500, "inner_steps": 1,
                              "shots": {"1": {"mean": 0.6, "ci95": 0.01}}},
                 "lslr": {"description": "LSLR", "meta_steps": 500, "inner_steps": 2,
                          "shots": {"1": {"mean": 0.62, "ci95": 0.01, "difference_to_baseline": 0.02,
                                          "difference_ci95": 0.005}}}}}))
    table = report.lever_table(tmp_path / "lv.json")
    assert "| LSLR | 500 | 2 | 62.0 ± 1.0% (+2.0 ± 0.5) | 0.045 (1.5x) |" in table
