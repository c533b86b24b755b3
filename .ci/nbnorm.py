"""Normalise notebook JSON (like tensorflow/docs' nbfmt) or check that it is normalised.

    python .ci/nbnorm.py notebooks/*.ipynb          # rewrite in place
    python .ci/nbnorm.py --check notebooks/*.ipynb  # exit 1 if any file would change

Keeps sorted keys, indent 1, a whitelist of notebook metadata, stable cell ids, no cell metadata but
tags, and strips memory addresses (`at 0x7f...`) and widget state from stored outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

NB_METADATA_KEEP = ("kernelspec", "language_info")
CELL_METADATA_KEEP = ("tags",)
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _strip_addresses(value):
    if isinstance(value, str):
        return ADDRESS.sub(" at 0x...", value)
    if isinstance(value, list):
        return [_strip_addresses(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_addresses(v) for k, v in value.items()}
    return value


def normalise(nb: dict, name: str) -> dict:
    meta = nb.get("metadata", {})
    nb["metadata"] = {k: meta[k] for k in NB_METADATA_KEEP if k in meta}
    li = nb["metadata"].get("language_info")
    if li:
        nb["metadata"]["language_info"] = {k: li[k] for k in ("name", "pygments_lexer") if k in li}
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    seen: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in CELL_METADATA_KEEP}
        cid = cell.get("id")
        if not cid or cid in seen:
            cid = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
        cell["id"] = cid
        seen.add(cid)
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
        if cell["cell_type"] == "code":
            outputs = []
            for out in cell.get("outputs", []):
                out = _strip_addresses(out)
                if "metadata" in out and not out["metadata"]:
                    out["metadata"] = {}
                outputs.append(out)
            cell["outputs"] = outputs
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report files that are not normalised; change nothing")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    bad = 0
    for path in args.paths:
        text = path.read_text(encoding="utf-8")
        new = dumps(normalise(json.loads(text), path.stem))
        if new != text:
            if args.check:
                print(f"{path}: not normalised; run `python .ci/nbnorm.py {path}`")
                bad += 1
            else:
                path.write_text(new, encoding="utf-8")
                print(f"normalised {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
