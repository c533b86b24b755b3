"""The book (`make book`, build/book/) as a reader sees it, in headless Chromium served from 127.0.0.1.

* the index page lists the eight chapters in series order in its left-hand table of contents;
* a chapter page shows its stored figures (loaded images) and its math rendered by MathJax served by the site;
* no page asks for anything outside the site (the book works offline);
* the API reference lists ``tutorial_lib.attacks.PGD`` with its signature and links "Introduced in" to chapters;
* the search page finds "Adversarial Querying";
* no internal link (href, src) of any page is broken, fragments included (checked on the files, no browser).

Skips when the book has not been built (run `make book`, or `make booktest` for both); the browser parts skip
without Chromium like every test in tests/ui (tests/ui/conftest.py).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = Path(os.environ.get("BOOK_DIR", ROOT / "build" / "book"))
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGE_LOAD = 60_000  # ms

pytestmark = pytest.mark.ui


@pytest.fixture(scope="module")
def book() -> Path:
    if not (BOOK / "index.html").is_file():
        pytest.skip(f"the book is not built ({BOOK / 'index.html'} missing): run `make book` first "
                    "(`make booktest` builds and tests it)")
    return BOOK


@pytest.fixture(scope="module")
def site(book):
    """An HTTP server for the book on a free port of 127.0.0.1 (stopped at the end)."""
    handler = functools.partial(_QuietHandler, directory=str(book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def page(browser, site):
    """A fresh page; records every request that leaves the site (there must be none)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PAGE_LOAD)
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(site) or r.request.url.startswith(("data:", "blob:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    pg.outside = outside
    yield pg
    context.close()
    assert not outside, f"the book asked for resources outside the site: {outside[:5]}"


# ----------------------------------------------------------------------------------------------------------------
def test_index_lists_the_chapters_in_series_order(page, site):
    page.goto(f"{site}/index.html", wait_until="load")
    assert "Adversarial robustness" in page.title()
    hrefs = page.eval_on_selector_all(".bd-sidebar-primary a.reference.internal", "els => els.map(e => e.href)")
    chapters = [m.group(1) for h in hrefs if (m := re.search(r"notebooks/(\d\d_[\w]+)\.html", h))]
    assert chapters == CHAPTERS, f"left-hand table of contents: {chapters}, expected {CHAPTERS}"
    assert any("api.html" in h for h in hrefs), "the table of contents has no link to the API reference"


def test_a_chapter_shows_its_figures_and_math(page, site):
    page.goto(f"{site}/notebooks/{CHAPTERS[1]}.html", wait_until="load")
    images = page.locator("article img")
    assert images.count() >= 1, "chapter 01 shows no figure"
    page.wait_for_function("() => [...document.querySelectorAll('article img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("article img", "els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths), f"figures that did not load (naturalWidth 0): {widths}"
    page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=PAGE_LOAD)
    rendered = page.locator("mjx-container").count()
    scripts = page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    mathjax = [s for s in scripts if "mathjax" in s.lower()]
    assert mathjax and all(s.startswith(site) for s in mathjax), f"MathJax not served by the book: {mathjax}"
    unrendered = page.locator("article .math:not(:has(mjx-container))").count()
    assert rendered > 0 and unrendered == 0, f"{rendered} formulas rendered, {unrendered} left as TeX"


def test_the_api_reference_lists_pgd_with_its_signature(page, site, book):
    pages = [p for p in sorted((book / "api").glob("tutorial_lib.attacks*.html"))
             if re.search(r'id="tutorial_lib\.attacks(\.\w+)*\.PGD"', p.read_text(errors="replace"))]
    assert pages, "no API page documents tutorial_lib.attacks...PGD"
    page.goto(f"{site}/api/{pages[0].name}", wait_until="load")
    entry = page.locator("dt[id$='.PGD']").first
    signature = entry.inner_text()
    assert re.search(r"class\s+tutorial_lib\.attacks(\.\w+)*\.PGD\s*\(", signature), signature
    assert "eps" in signature and "steps" in signature, f"PGD's signature lacks its parameters: {signature}"
    page.goto(f"{site}/api.html", wait_until="load")
    modules = page.eval_on_selector_all("article a.reference.internal", "els => els.map(e => e.textContent)")
    assert any("tutorial_lib.attacks" in m for m in modules), modules


def test_introduced_in_links_go_to_chapters(book):
    links = set()
    for p in (book / "api").glob("*.html"):
        links |= set(re.findall(r'href="\.\./notebooks/(\d\d_\w+)\.html"', p.read_text(errors="replace")))
    assert links and links <= set(CHAPTERS), f"'Introduced in' links to chapters: {sorted(links)}"


def test_search_finds_adversarial_querying(page, site):
    page.goto(f"{site}/search.html?q=Adversarial+Querying", wait_until="load")
    results = page.locator("#search-results ul.search li")
    results.first.wait_for(state="attached", timeout=PAGE_LOAD)
    hrefs = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.href)")
    assert any("05_meta_adversarial" in h for h in hrefs), f"search results: {hrefs[:10]}"


# ----------------------------------------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "name" in attrs:
            self.ids.add(attrs["name"])
        for attr in ("href", "src"):
            if attrs.get(attr) and not (tag == "link" and attrs.get("rel") in ("canonical",)):
                self.links.append(attrs[attr])


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


def test_no_broken_internal_link(book):
    pages = sorted(p for p in book.rglob("*.html") if "_static" not in p.relative_to(book).parts)
    assert len(pages) >= len(CHAPTERS) + 2
    broken, outside = [], []
    for page in pages:
        for link in _parse(page).links:
            scheme = urlsplit(link).scheme
            if scheme in ("http", "https") or link.startswith("//"):
                outside.append(f"{page.relative_to(book)}: {link}")
                continue
            if scheme or link.startswith("#") and len(link) == 1:
                continue  # mailto:, data:, javascript:, "#"
            target, fragment = urldefrag(link)
            path = (page.parent / unquote(urlsplit(target).path)).resolve() if target else page
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(book)}: {link}")
            elif fragment and path.suffix == ".html" and unquote(fragment) not in _parse(path).ids:
                broken.append(f"{page.relative_to(book)}: {link} (no id {fragment!r})")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:30])
    # Links to other sites are fine to read but the pages must not load anything from them (scripts, styles, images).
    loaded = [o for o in outside if re.search(r"\.(js|css|png|svg|woff2?)(\?|$)", o)]
    assert not loaded, f"pages load resources from other sites: {loaded[:10]}"
