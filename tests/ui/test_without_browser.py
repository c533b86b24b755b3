"""`make uitest` on a machine without Chromium: the browser tests are reported as skipped (saying how to enable
them) and the run passes; with UITEST_REQUIRED=1 (CI) the same run fails.

Runs the browser tests' pytest command in a subprocess with Chromium hidden (CHROMIUM=none, honoured by
tests/ui/conftest.py), so it needs no browser itself and runs in every environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()


def _uitest_without_chromium(required: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, CHROMIUM="none")
    env.pop("UITEST_REQUIRED", None)
    if required:
        env["UITEST_REQUIRED"] = "1"
    # The command of `make uitest`, less this file (no recursion) and the one test that needs no browser but
    # starts a kernel (it is not what is tested here).
    command = [sys.executable, "-m", "pytest", "tests/ui", "-q", "-ra", "-p", "no:cacheprovider",
               f"--ignore={HERE}", "--deselect",
               "tests/ui/test_jupyterlab.py::test_nbnorm_stores_what_the_kernel_reports"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_without_chromium_the_browser_tests_skip_and_the_run_passes():
    run = _uitest_without_chromium(required=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"pytest tests/ui exited {run.returncode} without Chromium:\n{out[-3000:]}"
    last = run.stdout.strip().splitlines()[-1]
    assert "skipped" in last and "failed" not in last and "error" not in last, out[-3000:]
    assert "Chromium not found (CHROMIUM=none hides it)" in out, out[-3000:]
    assert "apt-get install chromium" in out, f"the skip reason does not say how to enable the test:\n{out[-3000:]}"


def test_without_chromium_the_browser_tests_fail_where_required():
    run = _uitest_without_chromium(required=True)
    out = run.stdout + run.stderr
    assert run.returncode not in (0, 5), f"UITEST_REQUIRED=1 without Chromium exited {run.returncode}:\n{out[-3000:]}"
    assert "UITEST_REQUIRED is set" in out, out[-3000:]
