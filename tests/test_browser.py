"""The clinician's path in a real browser (headless Chromium via Playwright) against ``ctedge serve``:
log in, upload the bundled COVID-19_P002 study, wait on the status page, read the verdict."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.paths import SAMPLES
from tests.helpers.server import PASSWORD, USER, serve, write_profile

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

ALL_IMAGES_LOADED = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"

pytestmark = [pytest.mark.external,   # drives Debian's chromium
              pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's "
                                                               "chromium package (apt-get install chromium)")]


def wait_until(page, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression from the test: Playwright's wait_for_function evaluates it with
    eval() inside the page, which the server's Content-Security-Policy rightly forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed ([test] extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_upload_a_real_study_and_read_the_verdict(page, tmp_path):
    with serve(write_profile(tmp_path)) as server:
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server.url + "/")
        assert urlsplit(page.url).path == "/login"
        page.fill("input[name=user]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")
        assert page.is_visible("#demo-banner") and "not for clinical use" in page.inner_text("#demo-banner").lower()

        page.set_input_files("#files", sorted(str(f) for f in (SAMPLES / "COVID-19_P002").glob("*.dcm")))
        page.click("#submit")
        page.wait_for_selector("#verdict")
        verdict = page.inner_text("#verdict").strip().lower()
        study_id = urlsplit(page.url).path.rsplit("/", 1)[1]
        api = server.json(f"/api/v1/studies/{study_id}")["result"]
        assert verdict == api["label"], "the page shows the verdict the API gives (the model's own is tested elsewhere)"
        assert "not for clinical use" in page.inner_text("#result-banner").lower()
        assert page.inner_text("#model-name") == api["model"]["name"]
        assert page.locator("#groups tbody tr").count() == len(api["groups"])
        assert page.locator("#probabilities tbody tr").count() == 3

        label = page.inner_text("#viewer-label")
        page.locator("#viewer-range").focus()
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#viewer-label") != label

        assert page.locator("#heatmaps img").count() == len(api["heatmaps"])
        wait_until(page, ALL_IMAGES_LOADED)
        page.screenshot(path=str(tmp_path / "result-page.png"), full_page=True)

        page.click("text=one-page report")
        wait_until(page, "document.getElementById('slice-label').textContent.startsWith('slice')")
        assert page.inner_text("#verdict") == verdict
        wait_until(page, ALL_IMAGES_LOADED)
        page.go_back()
        page.click("text=History")
        assert page.locator(f"#history a[href='/studies/{study_id}']").count() == 1
    assert all(urlsplit(u).netloc == f"{server.host}:{server.port}" for u in requested), \
        sorted({u for u in requested if server.host not in u})
    assert (tmp_path / "result-page.png").stat().st_size > 10_000


def test_folder_upload_and_a_refused_file(page, tmp_path):
    folder = tmp_path / "cap002"
    shutil.copytree(SAMPLES / "CAP_cap002", folder, ignore=shutil.ignore_patterns("*.md", "*.txt"))
    (tmp_path / "notes.txt").write_text("not a scan")
    with serve(write_profile(tmp_path)) as server:
        page.goto(server.url + "/login")
        page.fill("input[name=user]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(server.url + "/")

        page.set_input_files("#files", str(tmp_path / "notes.txt"))
        page.click("#submit")
        wait_until(page, "document.getElementById('upload-text').textContent.includes('notes.txt')")
        assert "none of the 1 uploaded files is DICOM" in page.inner_text("#upload-text")

        page.set_input_files("#files", [])
        page.set_input_files("#folder", str(folder))
        page.click("#submit")
        page.wait_for_selector("#verdict")
        assert page.inner_text("#verdict").strip().lower() in ("covid", "other_pneumonia", "healthy")
        assert "10 files" in page.inner_text(".meta")
