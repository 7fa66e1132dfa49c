"""Headless Chromium opens the built site, served on localhost: every page loads without console errors,
every formula is typeset by the bundled MathJax (no raw TeX left, no MathJax error nodes), and a screenshot
of the derivation page is saved to artifacts/docs/derivation.png. A planted control page (a broken formula
and a script error) must be reported by the same checks.

Needs Debian's chromium and chromium-driver (.ci/run installs them). Skipped only outside CI when they are
missing; under CI (CI=true) a missing browser is a failure, never a skip."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
ARTIFACTS = ROOT / "artifacts" / "docs"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
IN_CI = bool(os.environ.get("CI"))

if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    if IN_CI:
        raise RuntimeError(f"CI: chromium ({CHROMIUM}) or chromedriver ({DRIVER}) missing; .ci/run installs them")
    pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)
if not IN_CI:
    pytest.importorskip("selenium")
    pytest.importorskip("mkdocs")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

from lstm_spec_docs import testing  # noqa: E402

# Every .arithmatex element must hold a MathJax container and no text outside it; no merror anywhere.
PAGE_STATE = r"""
const out = {math: 0, untypeset: [], errors: [], rawTex: []};
for (const el of document.querySelectorAll('.arithmatex')) {
  out.math += 1;
  if (!el.querySelector('mjx-container')) { out.untypeset.push(el.textContent.slice(0, 80)); continue; }
  const c = el.cloneNode(true);
  c.querySelectorAll('mjx-container').forEach(n => n.remove());
  if (c.textContent.trim()) out.rawTex.push(c.textContent.trim().slice(0, 80));
}
for (const el of document.querySelectorAll('mjx-merror, [data-mjx-error]')) {
  out.errors.push((el.getAttribute('data-mjx-error') || el.textContent).slice(0, 80));
}
const walker = document.createTreeWalker(document.querySelector('article') || document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (n.parentElement.closest('pre, code, mjx-container, script, style')) continue;
  if (/\\\(|\\\[|\$\$|\\frac|\\delta|\\odot/.test(n.textContent)) out.rawTex.push(n.textContent.trim().slice(0, 80));
}
return out;
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        opts.add_argument(a)
    profile = tempfile.mkdtemp(prefix="lstm_spec_chromium_")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def inspect_page(driver, url: str, timeout: float = 60.0) -> dict:
    """Load a page, wait for MathJax to finish, return console errors and the state of every formula."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    deadline = time.time() + timeout
    typeset = False
    while time.time() < deadline:
        has_math = driver.execute_script("return document.querySelectorAll('.arithmatex').length")
        if driver.execute_script("return document.documentElement.getAttribute('data-math')") == "typeset":
            typeset = True
            break
        if not has_math and driver.execute_script("return document.readyState") == "complete":
            typeset = True  # a page without math: MathJax may still finish, nothing to wait for
            break
        time.sleep(0.1)
    state = driver.execute_script(PAGE_STATE)
    state["typeset_signal"] = typeset
    state["console"] = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return state


def page_problems(state: dict) -> list[str]:
    out = [f"console: {m}" for m in state["console"]]
    if not state["typeset_signal"]:
        out.append("MathJax never signalled that typesetting finished")
    out += [f"not typeset: {t}" for t in state["untypeset"]]
    out += [f"MathJax error: {t}" for t in state["errors"]]
    out += [f"raw TeX: {t}" for t in state["rawTex"]]
    return out


@pytest.fixture(scope="module")
def served_site():
    site = testing.built_site()
    server = serve(site)
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_page_loads_and_every_formula_is_typeset(browser, served_site):
    site, base = served_site
    failures, math_total = {}, 0
    for page in testing.pages(site):
        rel = page.relative_to(site).as_posix()
        url = f"{base}/{rel[:-len('index.html')] if rel.endswith('index.html') else rel}"
        state = inspect_page(browser, url)
        math_total += state["math"]
        problems = page_problems(state)
        if problems:
            failures[rel] = problems
    assert failures == {}
    assert math_total > 200


def test_screenshot_of_the_derivation_page(browser, served_site):
    _, base = served_site
    state = inspect_page(browser, f"{base}/derivation/")
    assert page_problems(state) == [] and state["math"] > 20
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 100, 16000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "derivation.png"
    assert browser.save_screenshot(str(shot))
    browser.set_window_size(1280, 1600)
    assert shot.stat().st_size > 50_000


def test_negative_control_broken_formula_and_script_error_are_reported(browser, served_site, tmp_path):
    site, _ = served_site
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "index.html"
    text = page.read_text()
    text = text.replace("<h1", '<div class="arithmatex">\\[ \\frac{1}{ \\]</div>'
                        '<span class="arithmatex">\\(\\undefinedmacro x\\)</span><h1', 1)
    text = text.replace("</body>", "<script>throw new Error('planted error');</script></body>", 1)
    page.write_text(text)
    server = serve(copy)
    try:
        state = inspect_page(browser, f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
    problems = page_problems(state)
    assert any("planted error" in p for p in problems), problems
    assert any("frac{1}{" in p for p in problems), problems  # unbalanced: never typeset
    assert any(p.startswith("MathJax error") and "undefinedmacro" in p for p in problems), problems
