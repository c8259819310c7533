"""A real browser drives a widget: JupyterLab on localhost, a small notebook opened in headless
Chromium (Debian's ``chromium`` package, driven by Playwright; no browser is downloaded), run,
its margin slider dragged, and the redraw checked.

CI (``.ci/run``) installs Chromium with apt and sets SAMHW_REQUIRE_BROWSER=1, so there a missing
browser fails instead of skipping.
"""
import importlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SAMHW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _need(ok: bool, message: str) -> None:
    if not ok:
        if os.environ.get("SAMHW_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)


def _playwright(module: str = "playwright.sync_api"):
    """Playwright's sync API; a skip when it is missing, a failure under SAMHW_REQUIRE_BROWSER=1."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        _need(False, f"{module} missing ({err}): pip install -r requirements-dev.txt")


@pytest.mark.parametrize("required", ["1", ""])
def test_a_missing_playwright_fails_when_the_browser_is_required(monkeypatch, required):
    monkeypatch.setenv("SAMHW_REQUIRE_BROWSER", required)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(BaseException, match=r"no_such_playwright\.sync_api missing") as info:  # a skip too
        _playwright("no_such_playwright.sync_api")
    assert type(info.value) is expected, type(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEMO = """\
from samhw import notebook, widgets
model, cache = notebook.live_model(device="cpu")
explorer = widgets.MarginExplorer(model, cache, notebook.live_slices("test", 3), margin=0, slice_index=1)
explorer"""


@pytest.fixture
def lab(tmp_path, data_dir, cache_dir):
    """JupyterLab on a free localhost port with a token, serving a temp folder holding demo.ipynb;
    stopped (with its kernels) at the end."""
    _need(Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install -y chromium")
    _playwright()  # before starting JupyterLab
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(DEMO)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    root = tmp_path / "lab"
    root.mkdir()
    nbformat.write(notebook, root / "demo.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "SAMHW_DATA": str(data_dir), "SAMHW_CACHE": str(cache_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token, tmp_path
    finally:
        server.send_signal(signal.SIGTERM)  # shuts its kernels down too
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the session this fixture started: server and kernels
            server.wait()
        log.close()


def _run_all_cells(browser, url: str, token: str, name: str):
    """Open notebook ``name`` of the lab in a new page, wait for its kernel, run every cell; the page."""
    page = browser.new_page()
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return page


def _chromium(playwright_api, tmp_path, height: int):
    """Debian's Chromium, headless, with a profile in ``tmp_path`` and a 1400 px wide window."""
    return playwright_api.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": height})


def test_moving_the_margin_slider_in_chromium_redraws_box_mask_and_iou(lab):
    playwright = _playwright()
    url, token, tmp_path = lab
    with playwright.sync_playwright() as p:
        browser = _chromium(p, tmp_path, height=1000)
        try:
            page = _run_all_cells(browser, url, token, "demo.ipynb")
            status = page.locator(".samhw-status")
            status.wait_for(timeout=240_000)  # the kernel loads the model and encodes the slices
            page.wait_for_function("() => document.querySelector('.samhw-status').innerText.includes('IoU')",
                                   timeout=60_000)
            before_text = status.inner_text()
            image = page.locator("img.samhw-image")
            before_src = image.get_attribute("src")
            assert "max margin 0:" in before_text, before_text

            handle = page.locator(".samhw-margin .noUi-handle")
            track = page.locator(".samhw-margin .noUi-target").bounding_box()
            start = handle.bounding_box()
            page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.9 * track["width"], start["y"] + start["height"] / 2, steps=12)
            page.mouse.up()

            page.wait_for_function("(before) => document.querySelector('.samhw-status').innerText !== before",
                                   arg=before_text, timeout=30_000)
            after_text = status.inner_text()
            margin = int(re.search(r"max margin (-?\d+):", after_text).group(1))
            readout = page.locator(".samhw-margin .widget-readout").inner_text()
            assert margin > 20 and int(readout) == margin, (after_text, readout)
            tight = re.search(r"tight (\[[^\]]+\])", after_text).group(1)
            box = re.search(r"box (\[[^\]]+\])", after_text).group(1)
            assert box != tight and "IoU" in after_text
            page.wait_for_function("(before) => document.querySelector('img.samhw-image').src !== before",
                                   arg=before_src, timeout=10_000)
        finally:
            browser.close()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


CLICK_DEMO = """\
from samhw import notebook
from samhw.click_widget import ClickSegmenter
from samhw.models import load_model
model, cache = notebook.live_model(device="cpu")
tuned = load_model("litemedsam-lgg", device="cpu")  # the shipped model: it follows points, the pretrained one barely
item = notebook.live_slices("test", 3).slices[1]
segmenter = ClickSegmenter({"fine-tuned": (tuned, cache.get(item.image))}, item.image, item.mask)
segmenter"""


def test_clicking_the_picture_in_chromium_segments_and_a_negative_click_shrinks(lab, data_dir):
    """A click on the picture gives a mask; a Shift+click (negative) on the tumor shrinks it."""
    playwright = _playwright()
    import numpy as np

    from samhw.data import load_dataset

    url, token, tmp_path = lab
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CLICK_DEMO)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "lab" / "click.ipynb")
    item = load_dataset(data_dir, "test", limit=3).slices[1]
    ys, xs = np.nonzero(item.mask)
    with playwright.sync_playwright() as p:
        browser = _chromium(p, tmp_path, height=1200)
        try:
            page = _run_all_cells(browser, url, token, "click.ipynb")
            image = page.locator("img.samhw-click-image")
            image.wait_for(timeout=240_000)
            status = page.locator(".samhw-click-status")
            box = image.bounding_box()
            scale = box["width"] / 256  # the picture is the slice enlarged; displayed at its own size or scaled

            def at(x: float, y: float) -> tuple[float, float]:
                return box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale

            from samhw.refine import farthest_pixel

            x, y = farthest_pixel(item.mask)  # a positive click at the tumor's deepest pixel
            page.mouse.click(*at(x, y))
            page.wait_for_function("() => document.querySelector('.samhw-click-status').innerText.includes('mask ')",
                                   timeout=60_000)
            first = status.inner_text()
            area = int(re.search(r"mask (\d+) px", first).group(1))
            assert "1 points" in first and area > 0, first
            # then Shift+click (negative) on the tumor pixel farthest from the first click
            far = int(np.argmax((xs - x) ** 2 + (ys - y) ** 2))
            page.keyboard.down("Shift")
            page.mouse.click(*at(xs[far], ys[far]))
            page.keyboard.up("Shift")
            page.wait_for_function("(before) => document.querySelector('.samhw-click-status').innerText !== before",
                                   arg=first, timeout=60_000)
            second = status.inner_text()
            assert "2 points" in second, second
            assert int(re.search(r"mask (\d+) px", second).group(1)) < area, (first, second)
        finally:
            browser.close()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
