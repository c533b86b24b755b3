"""Keeps a screenshot of the JupyterLab page (build/ui/failed-<test>.png) when a browser test fails."""

from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "ui"


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
