"""What every benchmark script ends with: the machine it ran on, and its JSON + Markdown files in --out.

Imported by the scripts next to it (``python benchmarks/x.py`` puts this folder on ``sys.path``); ``make bench``
runs only the scripts whose names start with a letter, so this module is not run on its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Versions, cores, load and the time of the run, to store beside the numbers."""
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "when": time.strftime("%Y-%m-%d %H:%M")}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(out: str | Path, name: str, result: dict[str, Any], markdown: str) -> Path:
    """Write ``out/<name>.json`` (``result``) and ``out/<name>.md`` (``markdown``), print the Markdown and say where
    both went. Returns the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")  # keys in the order the script built them
    text = markdown if markdown.endswith("\n") else markdown + "\n"
    (out / f"{name}.md").write_text(text)
    print(text, end="")
    print(f"wrote {path} and {name}.md")
    return path
