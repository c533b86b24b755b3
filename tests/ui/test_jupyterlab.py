"""The series as a learner uses it: JupyterLab in a real browser (Debian's Chromium, headless, driven by Playwright).

Starts JupyterLab on a free port of 127.0.0.1 with a random token, on copies of the notebooks in a temporary
folder (the tracked files are never touched), and checks

* that opening a notebook (which starts its kernel) and saving it changes no byte of the normalised file, so a
  learner who only opens one gets no git diff;
* that notebook 01 runs top to bottom, and that moving the explorer's eps slider redraws its figure and changes
  the probabilities it shows (read from the explorer in the kernel), saving a screenshot in build/ui/.

Waits the way JupyterLab's own UI tests (Galata) do: on the application object (exposed with
``expose_app_in_browser``), the kernel's status and elements appearing, never a fixed sleep. Every wait has a
timeout; the server is stopped at the end. The tests that need the browser are skipped, saying why and how to enable them,
when Playwright or Chromium is missing (`apt-get install chromium`; Playwright comes with the test extra), and fail
instead where UITEST_REQUIRED=1 (CI); see tests/ui/conftest.py. ``CHROMIUM=none`` hides an installed Chromium.
Run: ``make uitest`` (or ``.venv/bin/python -m pytest tests/ui -q``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NBNORM = ROOT / ".ci" / "nbnorm.py"
SCREENSHOTS = ROOT / "build" / "ui"
EXPLORER_NOTEBOOK = "01_fgsm.ipynb"
EPS_LABEL = re.compile(r"^\s*(eps|ε|epsilon)(?![a-z])", re.IGNORECASE)  # the explorer's slider description

# Seconds. Generous: the machines that run this are often shared; a wait ends as soon as its condition holds.
SERVER_START = 120
PAGE_LOAD = 120
KERNEL_READY = 120
RUN_ALL = float(os.environ.get("UI_RUN_TIMEOUT", "900"))
REDRAW = 120

try:
    from playwright import sync_api
except ImportError:  # the browser fixture (tests/ui/conftest.py) skips every test that needs it, saying why
    sync_api = None

pytestmark = pytest.mark.ui


# ----------------------------------------------------------------------------------------------------------------
# JupyterLab server and browser
# ----------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 serving ``root``, isolated from the user's Jupyter config and data."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        private = root.parent / "jupyter"
        settings = private / "settings"
        # No news or update pop-ups over the notebook (as Galata configures JupyterLab).
        notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True)
        notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(private / "config"), JUPYTER_DATA_DIR=str(private / "data"),
                   JUPYTER_RUNTIME_DIR=str(private / "runtime"), TUTORIAL_PROFILE="quick",
                   PYDEVD_DISABLE_FILE_VALIDATION="1")
        self.log_path = private / "server.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True", "--NotebookNotary.db_file=:memory:",
             "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={private / 'workspaces'}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)  # polling the port, as Galata's webServer does; the server needs a few seconds
        self.stop()
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {SERVER_START} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the server shuts its kernels down
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory) -> Path:
    """Copies of the tracked notebooks, normalised by .ci/nbnorm.py (as `make notebooks` leaves them)."""
    root = tmp_path_factory.mktemp("lab") / "notebooks"
    root.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, root / nb.name)
    subprocess.run([sys.executable, str(NBNORM), *sorted(str(p) for p in root.glob("*.ipynb"))], check=True,
                   capture_output=True, timeout=120)
    return root


@pytest.fixture(scope="module")
def lab(notebook_dir):
    server = Lab(notebook_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(browser, lab):  # browser first: without one, the test skips before JupyterLab starts
    """One JupyterLab page for the module (tests/ui/conftest.py saves a screenshot of it when a test fails)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    pg.goto(lab.url("lab"), timeout=PAGE_LOAD * 1000)
    pg.wait_for_function("() => window.jupyterapp && window.jupyterapp.started", timeout=PAGE_LOAD * 1000)
    in_page(pg, "() => window.jupyterapp.restored", timeout=PAGE_LOAD)
    yield pg
    context.close()


# ----------------------------------------------------------------------------------------------------------------
# Helpers that run in the page (JupyterLab's application object)
# ----------------------------------------------------------------------------------------------------------------
def in_page(pg, function: str, arg=None, *, timeout: float):
    """Call the JS ``function`` (may return a promise) in the page and wait at most ``timeout`` s for its value.

    (``page.evaluate`` alone would wait for a promise without a time limit.)"""
    pg.evaluate("""(arg) => { window.__ui = {done: false};
        Promise.resolve().then(() => (%s)(arg))
          .then(value => { window.__ui = {done: true, value}; },
                err => { window.__ui = {done: true, error: String(err && err.stack || err)}; }); }""" % function,
                arg)
    pg.wait_for_function("() => window.__ui.done", timeout=timeout * 1000, polling=100)
    result = pg.evaluate("() => window.__ui")
    if "error" in result:
        raise AssertionError(f"in JupyterLab: {result['error']}")
    return result.get("value")


def open_notebook(pg, name: str) -> None:
    """Open ``name`` and wait until its kernel is idle and JupyterLab has read the kernel's info and spec."""
    in_page(pg, "(path) => window.jupyterapp.commands.execute('docmanager:open', {path}).then(() => null)", name,
            timeout=PAGE_LOAD)
    pg.wait_for_function(
        """(path) => { const w = window.jupyterapp.shell.currentWidget;
             return !!(w && w.context && w.context.path === path && w.context.isReady
               && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
               && w.sessionContext.session.kernel.status === 'idle'); }""", arg=name, timeout=KERNEL_READY * 1000)
    # The notebook panel stores kernelspec and language_info when these promises resolve; ours resolve after its.
    in_page(pg, """async () => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
                                 await k.info; await k.spec; return null; }""", timeout=KERNEL_READY)
    pg.wait_for_function(
        """() => { const m = window.jupyterapp.shell.currentWidget.context.model;
                   return !!(m.getMetadata('kernelspec') && m.getMetadata('language_info')); }""",
        timeout=KERNEL_READY * 1000)


def close_notebook(pg) -> None:
    """Shut the current notebook's kernel down and close it without saving (Galata's page.notebook.close)."""
    in_page(pg, """async () => { const w = window.jupyterapp.shell.currentWidget;
                                 await w.sessionContext.shutdown(); w.context.model.dirty = false; w.dispose();
                                 return null; }""", timeout=KERNEL_READY)


def kernel_expression(pg, expression: str, timeout: float = 60) -> str:
    """Evaluate ``expression`` in the current notebook's kernel as a user expression; no cell, no output is added."""
    result = in_page(pg, """(expr) => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel
        .requestExecute({code: '', silent: true, store_history: false, user_expressions: {v: expr}}).done
        .then(reply => reply.content.user_expressions.v)""", expression, timeout=timeout)
    assert result.get("status") == "ok", f"kernel could not evaluate {expression!r}: {result}"
    return result["data"]["text/plain"]


# Each explorer once, though IPython's output history (_, _25) names it again.
EXPLORER_STATE = ("__import__('json').dumps([{'eps': float(v.state['eps']), 'adv_prob': [float(p) for p in "
                  "v.state['adv_prob']]} for v in {id(v): v for v in list(globals().values()) "
                  "if type(v).__name__ == 'AttackExplorer'}.values()])")


def explorer_states(pg) -> list[dict]:
    """eps and adversarial probabilities of every AttackExplorer in the kernel (the repr of a JSON str, decoded)."""
    return json.loads(ast.literal_eval(kernel_expression(pg, EXPLORER_STATE)))


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------
def test_nbnorm_stores_what_the_kernel_reports():
    """nbnorm fills in the kernelspec of the installed python3 kernel and the language_info a running kernel reports,
    which is what JupyterLab copies into a notebook when it starts the kernel (end to end: the next test)."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel

    sys.path.insert(0, str(NBNORM.parent))
    try:
        import nbnorm
    finally:
        sys.path.remove(str(NBNORM.parent))
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=KERNEL_READY)
    try:
        reply = client.kernel_info(reply=True, timeout=KERNEL_READY)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    spec = KernelSpecManager().get_kernel_spec("python3")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                           "name": "python3"},
                                            "language_info": {"name": "python", "pygments_lexer": "ipython3"}})
    meta = nbnorm.normalise(nb, "cut_down").metadata
    assert meta["kernelspec"] == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    assert meta["language_info"] == reply["content"]["language_info"]


@pytest.mark.parametrize("name", [nb.name for nb in NOTEBOOKS])
def test_open_and_save_changes_nothing(page, notebook_dir, name):
    """A learner who opens a notebook in JupyterLab (its kernel starts) and saves it gets no git diff."""
    path = notebook_dir / name
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    open_notebook(page, name)
    dirty = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")
    in_page(page, "() => window.jupyterapp.commands.execute('docmanager:save').then(() => null)", timeout=60)
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    close_notebook(page)
    assert path.stat().st_mtime_ns != mtime, "JupyterLab did not write the file (save command had no effect)"
    after = path.read_bytes()
    if after != before:
        import difflib

        diff = "\n".join(list(difflib.unified_diff(before.decode().splitlines(), after.decode().splitlines(),
                                                   "normalised", "saved by JupyterLab", lineterm="", n=1))[:60])
        pytest.fail(f"saving {name} in JupyterLab changed the normalised file (fix .ci/nbnorm.py):\n{diff}")
    assert not dirty, f"JupyterLab marked {name} as modified just by opening it"


def _slider_readout(slider) -> float:
    # textContent, not innerText: JupyterLab skips rendering cells outside the viewport (content-visibility).
    return float(slider.locator(".widget-readout").text_content().strip())


def test_notebook_01_runs_and_its_explorer_responds(page):
    """Run all cells of notebook 01, drag the explorer's eps slider: its figure and probabilities must change."""
    start = time.monotonic()
    open_notebook(page, EXPLORER_NOTEBOOK)
    # notebook:run-all-cells resolves when the last cell has run (false if one failed), like Galata's run().
    ok = in_page(page, "() => window.jupyterapp.commands.execute('notebook:run-all-cells')", timeout=RUN_ALL)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
        timeout=KERNEL_READY * 1000)
    run_seconds = time.monotonic() - start
    nb = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.toJSON()")
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb["cells"])
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors and ok, f"notebook 01 did not run cleanly in JupyterLab (run-all returned {ok}): {errors}"
    not_run = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]
    assert not not_run, f"cells {not_run} were not executed"

    # The explorer: the cell output that holds a float slider labelled eps, and the figure in its output widget.
    slider = page.locator(".widget-hslider").filter(
        has=page.locator(".widget-label", has_text=EPS_LABEL)).filter(has=page.locator(".noUi-handle"))
    try:
        slider.first.wait_for(state="attached", timeout=REDRAW * 1000)
    except sync_api.TimeoutError:
        pytest.fail(f"no explorer with an eps slider appeared within {REDRAW} s after the notebook ran")
    assert slider.count() == 1, f"expected one eps slider, found {slider.count()}"
    explorer = page.locator(".jp-OutputArea-output").filter(has=slider)
    figure = explorer.locator(".widget-output img")
    figure.first.wait_for(state="attached", timeout=REDRAW * 1000)
    states = explorer_states(page)
    assert len(states) == 1, f"expected one AttackExplorer in the kernel, found {len(states)}"
    readout_before, src_before = slider.locator(".widget-readout").text_content().strip(), figure.get_attribute("src")
    eps_before = float(readout_before)
    assert abs(states[0]["eps"] - eps_before) < 1e-6, (states[0], eps_before)

    # Make the explorer's cell the active one first (a click in its output does that, and JupyterLab may scroll
    # then), put the slider in the middle of the view, and drag the handle to 70% of the track.
    slider.locator(".widget-label").click()
    slider.evaluate("el => el.scrollIntoView({block: 'center'})")
    handle, track = slider.locator(".noUi-handle"), slider.locator(".noUi-target")
    box = track.bounding_box()
    handle.drag_to(track, target_position={"x": 0.7 * box["width"], "y": box["height"] / 2})
    moved, how = time.monotonic(), "dragged"
    try:
        page.wait_for_function("([el, old]) => el.textContent.trim() !== old", timeout=10_000,
                               arg=[slider.locator(".widget-readout").element_handle(), readout_before])
    except sync_api.TimeoutError:
        # A drag can miss when the page moves under the pointer (seen once on a loaded machine); the keyboard
        # moves the same slider without any geometry: End puts it at its maximum.
        handle.focus()
        handle.press("End")
        moved, how = time.monotonic(), "End key (the drag did not move it)"
    try:
        page.wait_for_function(
            "([el, old]) => { const img = el.querySelector('.widget-output img'); return !!img && img.src !== old; }",
            arg=[explorer.element_handle(), src_before], timeout=REDRAW * 1000, polling=50)
    except sync_api.TimeoutError:
        pytest.fail(f"the explorer's figure did not change within {REDRAW} s of moving the eps slider from "
                    f"{eps_before} to {_slider_readout(slider)}")
    redraw_seconds = time.monotonic() - moved
    eps_after, src_after = _slider_readout(slider), figure.get_attribute("src")
    after = explorer_states(page)[0]
    assert eps_after > eps_before + 0.1, f"the slider did not move: eps {eps_before} -> {eps_after}"
    assert src_after != src_before, "the explorer's figure did not change"
    assert abs(after["eps"] - eps_after) < 1e-6, f"the kernel's eps {after['eps']} is not the slider's {eps_after}"
    change = max(abs(a - b) for a, b in zip(after["adv_prob"], states[0]["adv_prob"]))
    assert change > 1e-3, f"the probabilities did not change (largest change {change:.2g})"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    explorer.screenshot(path=str(SCREENSHOTS / "01_explorer.png"))
    print(f"\nnotebook 01 ran all cells in JupyterLab in {run_seconds:.0f} s; slider moved by {how}; explorer redrew "
          f"{redraw_seconds:.2f} s after the slider moved (eps {eps_before:.2f} -> {eps_after:.2f}, largest "
          f"probability change {change:.2f}); screenshot {SCREENSHOTS / '01_explorer.png'}")
    close_notebook(page)
