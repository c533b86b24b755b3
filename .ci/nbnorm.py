"""Normalise notebook JSON so that opening and saving it in JupyterLab changes nothing, or check that it is normalised.

    python .ci/nbnorm.py notebooks/*.ipynb          # rewrite in place
    python .ci/nbnorm.py --check notebooks/*.ipynb  # exit 1 if any file would change

The file is written the way JupyterLab saves it (jupyter_server writes with nbformat: sorted keys, indent 1,
multi-line strings split into lists of lines), with the kernelspec JupyterLab stores for ipykernel's `python3`
kernel and the full `language_info` the kernel reports. On top of that: a whitelist of notebook metadata, stable
cell ids, no cell metadata but tags, and no memory addresses (`at 0x7f...`) in stored outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import nbformat

NB_METADATA_KEEP = ("kernelspec", "language_info")
CELL_METADATA_KEEP = ("tags",)
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# What JupyterLab writes on save for a notebook running ipykernel's kernel: name, display_name and language of the
# kernel spec (ipykernel.kernelspec.get_kernel_dict; `jupyter kernelspec list --json` shows it).
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def kernel_language_info() -> dict:
    """The `language_info` ipykernel reports from this interpreter (JupyterLab and nbclient store it as is)."""
    try:
        from ipykernel.ipkernel import IPythonKernel
    except ImportError as err:  # pragma: no cover - ipykernel comes with the test extra (nbval)
        raise SystemExit(f"nbnorm needs ipykernel to fill in language_info ({err}); run it with the project's venv")
    return dict(IPythonKernel.language_info)


def _strip_addresses(value):
    if isinstance(value, str):
        return ADDRESS.sub(" at 0x...", value)
    if isinstance(value, list):
        return [_strip_addresses(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_addresses(v) for k, v in value.items()}
    return value


def normalise(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Normalise ``nb`` (as read by ``nbformat.reads(..., as_version=4)``) in place and return it."""
    meta = nb.get("metadata", {})
    nb["metadata"] = {k: meta[k] for k in NB_METADATA_KEEP if k in meta}
    nb["metadata"]["kernelspec"] = dict(KERNELSPEC)
    # The kernel that last ran the notebook wrote its language_info (JupyterLab and nbconvert --execute both keep
    # the whole dict); fill in what is missing from this interpreter's ipykernel.
    info = dict(nb["metadata"].get("language_info") or {})
    local = None
    for key in ("codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer",
                "version"):
        if key not in info:
            local = local or kernel_language_info()
            info[key] = local[key]
    nb["metadata"]["language_info"] = info
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    seen: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in CELL_METADATA_KEEP}
        cid = cell.get("id")
        if not cid or cid in seen:
            cid = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
        cell["id"] = cid
        seen.add(cid)
        if cell["cell_type"] == "code":
            cell["outputs"] = [_strip_addresses(out) for out in cell.get("outputs", [])]
    return nbformat.from_dict(nb)


def dumps(nb: nbformat.NotebookNode) -> str:
    """The file text exactly as jupyter_server saves it (nbformat.write: JSON plus a final newline)."""
    text = nbformat.writes(nb, version=nbformat.NO_CONVERT)
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report files that are not normalised; change nothing")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    bad = 0
    for path in args.paths:
        text = path.read_text(encoding="utf-8")
        new = dumps(normalise(nbformat.reads(text, as_version=4), path.stem))
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
