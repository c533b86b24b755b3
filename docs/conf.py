"""Sphinx configuration of the book: the notebooks with their stored outputs, and an API reference of tutorial_lib.

`make book` copies docs/ and notebooks/ into build/book-src/ and runs Sphinx there (sources are never written in
the checkout). Sphinx + myst-nb + sphinx-book-theme (what Jupyter Book 1 wraps), configured directly: every piece
works offline (MathJax is served by the site itself via sphinx-mathjax-offline, the search index is Sphinx's own,
no widget JavaScript from a CDN), and the notebooks are read, never executed.

The API reference is generated at build time by walking the ``tutorial_lib`` package (every public module, so new
modules appear without editing anything here); each docstring's "notebooks/NN_name.ipynb" becomes a link to that
chapter.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("BOOK_REPO_ROOT", HERE.parents[1] if (HERE.parents[1] / "tutorial_lib").is_dir()
                           else HERE.parent))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

project = "Adversarial robustness and meta-learning, hands on"
author = "the tutorial_lib authors"
copyright = "the tutorial_lib authors, MIT licence"

extensions = [
    "myst_nb",                  # .ipynb and .md (MyST) sources
    "sphinx.ext.autodoc",
    "sphinx-mathjax-offline",   # (its module name has hyphens) MathJax 3 copied into _static/: no network
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "conf.py"]
nb_execution_mode = "off"        # stored outputs only: the book never runs a notebook
nb_ipywidgets_js = {}            # no widget JavaScript (it would come from a CDN); widgets show their text form
nb_output_stderr = "remove"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# Docstring layout slips (reST markup in plain-text docstrings) are not build errors; broken references, missing
# pages and modules that fail to import are (make book runs Sphinx with -W).
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "docutils"]

html_theme = "sphinx_book_theme"
html_title = "Adversarial robustness and meta-learning"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
html_show_sourcelink = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports = ["cleverhans", "art"]   # the optional peers extra
autodoc_inherit_docstrings = False             # Keras' own docstrings (callbacks, get_config) are not ours


# ----------------------------------------------------------------------------------------------------------------
# API reference: one page per public module, found by walking the package
# ----------------------------------------------------------------------------------------------------------------
def public_modules(package: str = "tutorial_lib") -> list[str]:
    """Every importable public module of ``package`` (names without a leading underscore), in dotted order."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def write_api_pages(app) -> None:
    """Write api/<module>.rst for every public module and the toctree of api.md's listing (into the build copy)."""
    src = Path(app.srcdir)
    api = src / "api"
    api.mkdir(exist_ok=True)
    lines = []
    for name in public_modules():
        title = f"``{name}``"
        (api / f"{name}.rst").write_text(  # reST: autodoc's output is reST, which a MyST page would misread
            f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n   :members:\n   :show-inheritance:\n")
        lines.append(f"api/{name}")
    listing = src / "api.md"
    text = listing.read_text()
    toc = "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(lines) + "\n```\n"
    listing.write_text(text.replace("<!-- modules -->", toc))


NOTEBOOK_PATH = re.compile(r"(?<![`/\w])notebooks/(\d\d)_([A-Za-z0-9_]+)\.ipynb")
CHAPTERS = {p.stem[:2]: p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}


def link_notebooks(app, what, name, obj, options, lines) -> None:
    """Turn each "notebooks/NN_name.ipynb" of a docstring into a link to chapter NN of the book (by its number, so
    a shortened name still links; a number with no chapter stays a broken reference, which fails the build)."""
    def link(m: re.Match) -> str:
        target = CHAPTERS.get(m.group(1), f"{m.group(1)}_{m.group(2)}")
        return f":doc:`notebooks/{target}.ipynb </notebooks/{target}>`"

    for i, line in enumerate(lines):
        lines[i] = NOTEBOOK_PATH.sub(link, _escape_bars(line))


def _escape_bars(line: str) -> str:
    """Plain-text docstrings write norms as |x|; outside ``literals`` reST would read that as a substitution."""
    parts = line.split("``")
    return "``".join(p.replace("|", "\\|") if i % 2 == 0 else p for i, p in enumerate(parts))


def add_placeholder_pages(app) -> None:
    """scaling_up.md is written on another branch; until it lands the book links the README's section."""
    page = Path(app.srcdir) / "scaling_up.md"
    if not page.exists():
        page.write_text("# GPU and scaling\n\nHow to run the series on a GPU and on several machines is described in "
                        "the README's section *GPU and scaling*.\n")


def setup(app):
    app.connect("builder-inited", add_placeholder_pages)
    app.connect("builder-inited", write_api_pages)
    app.connect("autodoc-process-docstring", link_notebooks)
