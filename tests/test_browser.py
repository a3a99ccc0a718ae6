"""The reports of a smoke run in a real browser, and notebook 06's viewer in JupyterLab.

Marked ``browser`` and left out of ``make test`` (pyproject.toml's ``addopts``); CI runs it after
``make test`` with ``pytest -m browser tests/test_browser.py`` once Chromium is installed from the
Debian packages (``chromium``, ``chromium-driver``). Without them, or without Selenium, every test
here skips with the reason. Selenium drives the system Chromium through the system chromedriver
(``Service(executable_path=...)``, so Selenium Manager downloads nothing), and the browser
resolves no host name but localhost: the pages are checked as a reviewer without network would
see them (a script of a public CDN that nbconvert links, e.g. MathJax, is a failed remote load, not
an error of the page).

- :func:`test_index_and_every_report_in_chromium`: ``index.html`` and every HTML page it links
  (the notebook reports, the checklist): every link to a local file resolves, every in-page
  anchor exists, every image loaded, no JavaScript error in the console, no stray Python repr
  or machine path in the page's text, no sideways scrolling of the index; a screenshot of each
  under ``<run>/screenshots/``.
- :func:`test_notebook_06_viewer_runs_in_jupyterlab`: JupyterLab on localhost with a copy of
  notebook 06 parameterised with ``interactive = True`` on a copy of the smoke run's ``arias``
  cohort; Run All Cells from the menu, the viewer's widgets render, and choosing another image
  in its dropdown redraws its text and images.

``CXR_BROWSER_SCREENSHOTS=DIR`` also copies the screenshots to ``DIR`` (CI keeps them there).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cxrlib.report import landing
from cxrlib.paths import NOTEBOOKS_DIR, REPO_ROOT, data_dir

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CXR_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = "screenshots"
#: Run > Run All Cells in JupyterLab's menu (the command's name changed in JupyterLab 4)
RUN_MENU = "//div[contains(@class, 'lm-MenuBar-itemLabel') and normalize-space(.)='Run']"
RUN_ALL = ("li.lm-Menu-item[data-command='runmenu:run-all'], "
           "li.lm-Menu-item[data-command='notebook:run-all-cells']")
WINDOW = (1280, 1600)


def _missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: install the Debian package {package}"
    return None


@pytest.fixture(scope="module")
def browser():
    """A headless system Chromium driven by Selenium; skips when either is missing."""
    if why := _missing_browser():
        pytest.skip(why)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--host-resolver-rules=MAP * ~NOTFOUND, "
                "EXCLUDE localhost, EXCLUDE 127.0.0.1", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch anything
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _shots(run: Path) -> Path:
    folder = run / SCREENSHOTS
    folder.mkdir(exist_ok=True)
    return folder


def _keep_screenshots(run: Path) -> None:
    if target := os.environ.get("CXR_BROWSER_SCREENSHOTS"):
        shutil.copytree(run / SCREENSHOTS, Path(target), dirs_exist_ok=True)


def _full_page_screenshot(driver, path: Path) -> None:
    """A screenshot of the whole page (the window grown to the page's height, at most 8000 px)."""
    width, height = WINDOW
    total = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(int(total), height), 8000))
    driver.save_screenshot(str(path))
    driver.set_window_size(width, height)


def _severe(driver, remote_ok: bool = True) -> list[str]:
    """The console's errors since the last call; a failed load of a remote (http/https, not
    localhost) resource is the network's, not the page's, and is left out."""
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        remote = (message.startswith(("http://", "https://"))
                  and not message.startswith(("http://127.0.0.1", "http://localhost"))
                  and ("Failed to load resource" in message or "net::ERR_" in message))
        if not (remote_ok and remote):
            errors.append(message)
    return errors


_PAGE_FACTS = """
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
const ids = new Set(Array.from(document.querySelectorAll('[id]')).map(e => e.id));
const names = new Set(Array.from(document.querySelectorAll('a[name]')).map(e => e.name));
const known = h => ids.has(h) || names.has(h);  // nbconvert's ids are percent-encoded
const anchors = links.filter(h => h.startsWith('#') && h.length > 1).map(h => h.slice(1))
    .filter(h => !known(h) && !known(decodeURIComponent(h)));
const images = Array.from(document.images)
    .filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => (i.getAttribute('src') || '').slice(0, 80));
return {links: links, missing_anchors: anchors, broken_images: images,
        n_images: document.images.length, text: document.body.innerText,
        scroll_width: document.documentElement.scrollWidth,
        client_width: document.documentElement.clientWidth};
"""


def _local_target(page: Path, href: str) -> Path | None:
    if href.startswith(("#", "http:", "https:", "mailto:", "data:", "javascript:")):
        return None
    return (page.parent / urllib.parse.unquote(href.split("#")[0].split("?")[0])).resolve()


def _machine_paths(run: Path) -> list[str]:
    return [str(run), str(run.resolve()), str(REPO_ROOT), str(Path.home()), "/tmp", "/home"]


def test_index_and_every_report_in_chromium(smoke_run, browser):
    _, run = smoke_run
    shots = _shots(run)
    index = run / "index.html"
    pages, problems, seen = [index], {}, set()
    started = time.perf_counter()
    while pages:
        page = pages.pop(0)
        if page in seen:
            continue
        seen.add(page)
        browser.get(page.as_uri())
        facts = browser.execute_script(_PAGE_FACTS)
        name = page.relative_to(run).as_posix()
        found = []
        for href in facts["links"]:
            target = _local_target(page, href)
            if target is None:
                continue
            if not target.exists():
                found.append(f"broken link {href}")
            elif target.suffix == ".html" and page == index and target not in seen:
                pages.append(target)  # every HTML report the index links is opened too
        found += [f"missing anchor #{a}" for a in facts["missing_anchors"]]
        found += [f"image not loaded: {src}" for src in facts["broken_images"]]
        found += [f"console error: {e}" for e in _severe(browser)]
        found += [f"stray text: {s}" for s in landing.stray_text(facts["text"],
                                                                  _machine_paths(run))]
        if page == index and facts["scroll_width"] > facts["client_width"] + 1:
            found.append(f"the index scrolls sideways ({facts['scroll_width']} px wide in a "
                         f"{facts['client_width']} px window)")
        _full_page_screenshot(browser, shots / (name.replace("/", "__") + ".png"))
        if found:
            problems[name] = found
    _keep_screenshots(run)
    print(f"\n{len(seen)} pages checked in {time.perf_counter() - started:.0f} s; "
          f"screenshots in {shots}")
    reports = {p.relative_to(run).as_posix() for p in seen}
    assert "checklist.html" in reports and "arias/06_gradcam.html" in reports
    assert len(reports) >= 10, f"the index links too few reports: {sorted(reports)}"
    assert not problems, "\n".join(f"{page}: {p}" for page, found in problems.items()
                                   for p in found[:8])


# --------------------------------------------------------------------------------------------
# JupyterLab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _interactive_copy(run: Path, lab_root: Path) -> tuple[Path, Path]:
    """A copy of the smoke run's ``arias`` cohort (so the run itself stays as it was) and of
    notebook 06 parameterised for it with ``interactive = True``; returns (notebook, copy)."""
    import papermill as pm

    cohort = lab_root / "run" / "arias"
    shutil.copytree(run / "arias", cohort, ignore=shutil.ignore_patterns("*.html", "*.ipynb"))
    notebook = lab_root / "06_gradcam_interactive.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / "06_gradcam.ipynb"), str(notebook),
                        parameters={"profile": "smoke", "cohort": "arias", "manifest": "",
                                    "run_dir": str(cohort), "seed": 0, "interactive": True},
                        prepare_only=True, kernel_name="cxr-study", progress_bar=False)
    return notebook, cohort


def _start_lab(lab_root: Path, data_dir: Path, port: int, token: str) -> subprocess.Popen:
    config = lab_root / ".jupyter"
    # every cell in the page (no windowing: outputs scrolled away stay in the DOM), no news
    for name, value in (("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false"})):
        path = config / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ, "CXR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(config / "config"),
           "JUPYTER_RUNTIME_DIR": str(config / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(config / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(config / "workspaces")}
    log = open(lab_root / "jupyterlab.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
         f"--ServerApp.root_dir={lab_root}", "--ServerApp.allow_root=True",
         "--ServerApp.port_retries=0", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=lab_root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_lab(proc: subprocess.Popen, port: int, token: str, lab_root: Path,
                  timeout: float = 120) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    log = (lab_root / "jupyterlab.log").read_text()[-3000:]
    pytest.fail(f"JupyterLab did not start on port {port}:\n{log}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its process group: the server and its kernels)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _viewer_state(driver) -> dict:
    return driver.execute_script("""
const out = document.querySelector('.jp-Notebook');
const html = Array.from(out.querySelectorAll('.widget-html-content')).map(e => e.innerText);
const imgs = Array.from(out.querySelectorAll('img.widget-image'));
return {dropdowns: out.querySelectorAll('.widget-dropdown select').length,
        sliders: out.querySelectorAll('.widget-slider').length,
        text: html.join(' | '), images: imgs.map(i => i.src),
        loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
        errors: Array.from(out.querySelectorAll('.jp-OutputArea-output'))
            .map(e => e.innerText).filter(t => t.includes('Traceback (most recent call last)'))
            .map(t => t.slice(0, 1500))};
""")


def test_notebook_06_viewer_runs_in_jupyterlab(smoke_run, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    _, run = smoke_run
    # the data folder the smoke run generated its cohorts in: <data>/synthetic/<name>/manifest.csv
    # (else $CXR_DATA_DIR: a run read with CXR_SMOKE_RUN whose data folder has moved)
    manifest = Path(json.loads((run / "study.json").read_text())["cohorts"]["arias"]["manifest"])
    folders = [manifest.parents[2], data_dir()]
    data = next((f for f in folders if (f / "synthetic" / manifest.parent.name).is_dir()), None)
    assert data is not None, f"cohort {manifest.parent.name} is in none of {folders}"
    shots, lab_root = _shots(run), tmp_path / "lab"
    lab_root.mkdir()
    notebook, _ = _interactive_copy(run, lab_root)
    port, token = _free_port(), secrets.token_hex(16)
    started = time.perf_counter()
    proc = _start_lab(lab_root, data, port, token)
    try:
        _wait_for_lab(proc, port, token, lab_root)
        browser.get(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
        wait = WebDriverWait(browser, 120, ignored_exceptions=[StaleElementReferenceException])
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")))
        # the kernel connected (a Run All sent before may go to a kernel JupyterLab replaces)
        wait.until(lambda d: any(e.text.strip().endswith("| Idle") for e in d.find_elements(
            By.CSS_SELECTOR, ".jp-StatusBar-TextItem")))
        # Run > Run All Cells
        wait.until(EC.element_to_be_clickable((By.XPATH, RUN_MENU))).click()
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, RUN_ALL))).click()

        def viewer_ready(driver):
            state = _viewer_state(driver)
            if state["errors"]:
                return state
            return state if state["dropdowns"] >= 3 and state["loaded"] >= 2 \
                and "true" in state["text"] else False

        state = WebDriverWait(browser, 480, poll_frequency=2).until(viewer_ready)
        _full_page_screenshot(browser, shots / "jupyterlab_06_viewer.png")
        assert not state["errors"], f"notebook 06 failed in JupyterLab: {state['errors']}"
        assert state["sliders"] >= 1
        image = next(s for s in browser.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
                     if s.find_element(By.TAG_NAME, "label").text.strip() == "image")
        select = Select(image.find_element(By.TAG_NAME, "select"))
        before, first = state, select.first_selected_option.text
        other = next(o.text for o in select.options if o.text != first)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
        select.select_by_visible_text(other)

        def redrawn(driver):
            now = _viewer_state(driver)
            return now if other in now["text"] and now["images"] != before["images"] \
                and now["loaded"] >= 2 else False

        after = WebDriverWait(browser, 120, poll_frequency=1).until(redrawn)
        _full_page_screenshot(browser, shots / "jupyterlab_06_viewer_after_change.png")
        assert first not in after["text"].split("·")[0]
        errors = [e for e in _severe(browser) if "widget" in e.lower()]
        assert not errors, f"widget errors in the console: {errors}"
    finally:
        _stop(proc)
        _keep_screenshots(run)
    print(f"\nJupyterLab: notebook 06 ran and its viewer responded in "
          f"{time.perf_counter() - started:.0f} s; screenshots in {shots}")
