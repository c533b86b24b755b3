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
    write(tmp_path, "03_adversarial_training", {"profile": "quick", "eval_size": 1000,
                                                "methods": {"pgd": {"pgd100_restarts5": 0.8}}})
    write(tmp_path, "04_meta_learning", {"profile": "quick", "methods": {"maml": {"1shot": {"mean": 0.6, "ci95": 0.01, "tasks": 200}}}})
    rows = {r["entry"]["key"]: r for r in report.published_rows(tmp_path)}
    pgd = rows["madry_pgd_at"]["ours"]
    half = tl.evaluate.accuracy_ci95([True] * 800 + [False] * 200)[1]
    assert pgd["mean"] == 0.8 and abs(pgd["ci95"] - half) < 1e-12 and pgd["n"] == 1000
    assert "4,000 training images" in rows["madry_pgd_at"]["differences"]
    assert rows["finn_maml_1shot"]["ours"]["ci95"] == 0.01
    assert rows["finn_maml_5shot"]["ours"] is None and rows["finn_maml_5shot"]["missing"]
    table = report.published_table(tmp_path)
    assert f"80.0 ± {100 * half:.1f}%" in table and "60.0 ± 1.0%" in table


def test_results_markdown_starts_with_the_published_table(tmp_path):
    write(tmp_path, "01_fgsm", {"clean_accuracy": 0.95, "profile": "quick"})
    md = report.results_markdown(tmp_path)
    assert md.index("## Ours vs published") < md.index("## 01_fgsm")
    out = tmp_path / "out.md"
    assert report.main([str(tmp_path), str(out)]) == 0 and out.read_text() == md
