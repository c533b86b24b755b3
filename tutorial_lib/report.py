"""Gather the notebooks' ``build/results/*.json`` into one Markdown file (``make tutorials`` calls this).

    python -m tutorial_lib.report [RESULTS_DIR] [OUT_MD]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import runtime


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], rows)
    elif isinstance(value, float):
        rows.append((prefix, f"{value:.4g}"))
    elif isinstance(value, list) and len(value) > 12:
        rows.append((prefix, f"[{len(value)} values]"))
    else:
        rows.append((prefix, json.dumps(value)))


def results_markdown(results_dir: Path) -> str:
    """One section per notebook with a two-column table of its flattened results."""
    files = sorted(Path(results_dir).glob("*.json"))
    parts = ["# Results of the notebook series", ""]
    if not files:
        parts.append("No results yet: run `make tutorials`.")
    for path in files:
        rows: list[tuple[str, str]] = []
        _flatten("", json.loads(path.read_text()), rows)
        parts += [f"## {path.stem}", "", "| field | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in rows]
        parts.append("")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results_dir = Path(argv[0]) if argv else runtime.build_dir() / "results"
    out = Path(argv[1]) if len(argv) > 1 else runtime.build_dir() / "results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_markdown(results_dir))
    print(f"wrote {out} from {len(list(results_dir.glob('*.json')))} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
