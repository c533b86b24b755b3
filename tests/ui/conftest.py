"""The browser shared by the tests in tests/ui (Debian's Chromium, headless, driven by Playwright for Python).

Without Chromium or Playwright, every test that asks for the ``browser`` fixture is reported as skipped with how to
enable it, so ``make uitest`` passes on a machine without a browser; with ``UITEST_REQUIRED=1`` (set by .ci/run)
the same tests fail instead. ``CHROMIUM=/path/to/chromium`` picks the binary; ``CHROMIUM=none`` hides an installed
one (tests/ui/test_without_browser.py uses it to test the skip path). Playwright's own browser download is never
used.

Also keeps a screenshot of the page (build/ui/failed-<test>.png) when a browser test fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "ui"

CHROMIUM_ARGS = [  # may run as root; no background connections (the CI machine's network is closed)
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
]
HOW_TO_ENABLE = ("install Debian's Chromium (apt-get install chromium) or set CHROMIUM to a Chromium/Chrome "
                 "binary; Playwright comes with the test extra (pip install -e '.[test]')")


def chromium() -> str | None:
    """Path of the Chromium binary to drive, or None when there is none (or CHROMIUM=none hides it)."""
    chosen = os.environ.get("CHROMIUM", "")
    if chosen.lower() == "none":
        return None
    path = chosen or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and os.access(path, os.X_OK) else None


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright for Python is not installed: {HOW_TO_ENABLE}"
    if chromium() is None:
        hidden = " (CHROMIUM=none hides it)" if os.environ.get("CHROMIUM", "").lower() == "none" else ""
        return f"Chromium not found{hidden}: {HOW_TO_ENABLE}"
    return None


def uitest_required() -> bool:
    return os.environ.get("UITEST_REQUIRED", "") not in ("", "0")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium for the session; skips (or fails under UITEST_REQUIRED=1) when there is none."""
    reason = browser_missing()
    if reason is not None:
        if uitest_required():
            pytest.fail(f"{reason} (UITEST_REQUIRED is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(f"browser test skipped: {reason}")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(SCREENSHOTS / f"failed-{item.name}.png"), timeout=30_000)
        except Exception as err:  # the page may be what broke; the test's own error is the one to report
            report.sections.append(("screenshot", f"no screenshot: {err}"))
