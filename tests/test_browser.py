"""The clinician's path in a real browser (headless Chromium via Playwright) against ``ctedge serve``:
log in, upload the bundled COVID-19_P002 study, wait on the status page, read the verdict."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.paths import REPO, SAMPLES
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
        page.click("text=Worklist")
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


IDENTITY = {"PatientName": "TESTPAT^ALICE", "PatientID": "ID-Q7X9Z", "AccessionNumber": "ACC-555123",
            "StudyDate": "20261115", "StudyTime": "093000", "StudyDescription": "CT CHEST LOW DOSE",
            "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.12345"}
SECRETS = ("TESTPAT", "ALICE", "ID-Q7X9Z", "ACC-555123")


def identified_study(folder: Path) -> list[str]:
    """COVID-19_P002 with a made-up patient name, ID, accession, date, description and StudyInstanceUID."""
    import pydicom

    folder.mkdir()
    for f in sorted((SAMPLES / "COVID-19_P002").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for key, value in IDENTITY.items():
            setattr(ds, key, value)
        ds.save_as(folder / f.name)
    return sorted(str(f) for f in folder.glob("*.dcm"))


def keep(tmp_path: Path, name: str) -> Path:
    """A screenshot path under the test's folder; copied to $CTEDGE_ARTEFACTS at the end when set."""
    return tmp_path / "screenshots" / name


def export_screenshots(tmp_path: Path) -> None:
    target = os.environ.get("CTEDGE_ARTEFACTS")
    if target and (tmp_path / "screenshots").is_dir():
        shutil.copytree(tmp_path / "screenshots", Path(target) / tmp_path.name, dirs_exist_ok=True)


def split_copy(results: Path, study_id: str) -> str:
    """A copy of a finished study whose result has three groups that disagree (two covid, one healthy
    at 0.994, as issue 25 saw), its agreement recomputed as the engine does: the page's rendering of a split."""
    from edge.uncertainty import uncertainty_keys

    copy_id = study_id[:-8] + "ffffffff"
    shutil.copytree(results / study_id, results / copy_id)
    doc = json.loads((results / copy_id / "result.json").read_text())
    group = doc["groups"][0]
    doc["groups"] = [group | {"index": i, "label": label, "probabilities": probs} for i, (label, probs) in enumerate([
        ("covid", {"covid": 1.0, "other_pneumonia": 0.0, "healthy": 0.0}),
        ("covid", {"covid": 0.99, "other_pneumonia": 0.005, "healthy": 0.005}),
        ("healthy", {"covid": 0.003, "other_pneumonia": 0.003, "healthy": 0.994})])]
    doc["label"] = "covid"
    doc["probabilities"] = {c: sum(g["probabilities"][c] for g in doc["groups"]) / 3 for c in doc["classes"]}
    doc.update(uncertainty_keys(doc))
    (results / copy_id / "result.json").write_text(json.dumps(doc))
    state = json.loads((results / copy_id / "status.json").read_text()) | {
        "id": copy_id, "concern": doc["concern"], "agreement": doc["agreement"]["level"]}
    (results / copy_id / "status.json").write_text(json.dumps(state))
    return copy_id


def test_identity_viewer_report_and_no_identifier_in_the_log(page, tmp_path):
    files = identified_study(tmp_path / "identified")
    profile = write_profile(tmp_path, viewer_url="http://pacs:8042/ohif/viewer?StudyInstanceUIDs={study_uid}",
                            timezone="Europe/Berlin")
    try:
        with serve(profile) as server:
            page.goto(server.url + "/login")
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(server.url + "/")
            page.set_input_files("#files", files)
            page.click("#submit")
            page.wait_for_selector("#verdict")
            study_id = urlsplit(page.url).path.rsplit("/", 1)[1]
            api = server.json(f"/api/v1/studies/{study_id}")["result"]

            # identity, the PACS link and local time
            assert page.inner_text("#patient-name") == "TESTPAT, ALICE"
            assert page.inner_text("#patient-id") == "ID-Q7X9Z" and page.inner_text("#accession") == "ACC-555123"
            assert page.inner_text("#study-date").strip() == "2026-11-15 09:30:00"
            assert page.inner_text("#study-description") == "CT CHEST LOW DOSE" and page.inner_text("#study-modality") == "CT"
            assert page.inner_text("#study-uid") == IDENTITY["StudyInstanceUID"]
            assert page.get_attribute("#viewer-link", "href") == \
                "http://pacs:8042/ohif/viewer?StudyInstanceUIDs=" + IDENTITY["StudyInstanceUID"]
            assert "CET" in page.inner_text(".meta") and "+00:00" not in page.content()

            # the verdict with what its number is and the evidence beside it
            assert page.inner_text("#score-name") == "mean group probability"
            assert page.locator(".verdict-card #trust #model-validation").count() == 1
            assert page.inner_text("#agreement").startswith("one group decided")

            # the viewer: InstanceNumber and z, keys, wheel, window presets, heatmap overlay
            wait_until(page, ALL_IMAGES_LOADED)
            heat = api["heatmaps"][0]
            label = page.inner_text("#viewer-label")
            assert label.startswith(f"slice {heat['instance_number']} · z {heat['z']:.1f} mm"), label
            assert page.is_visible("#viewer-overlay")
            page.screenshot(path=str(keep(tmp_path, "viewer-overlay.png")), full_page=True)
            page.uncheck("#overlay-toggle")
            assert not page.is_visible("#viewer-overlay")
            page.check("#overlay-toggle")
            page.fill("#overlay-opacity", "80")
            page.dispatch_event("#overlay-opacity", "input")
            assert page.evaluate("document.getElementById('viewer-overlay').style.opacity") == "0.8"
            page.click("#window-bone")
            assert "/slices/bone/" in page.get_attribute("#viewer-image", "src")
            wait_until(page, ALL_IMAGES_LOADED)
            page.screenshot(path=str(keep(tmp_path, "viewer-bone.png")), full_page=True)

            # side by side (key S): the same slice in the same window, without and with the heatmap, scrolling together
            numbers = {s["index"]: s["instance_number"] for s in api["slices_used"] + api["slices_dropped"]}
            panes = "[...document.querySelectorAll('#viewer-panes figcaption')].map(c => c.dataset.instance)"
            assert not page.is_visible("#viewer-plain")
            page.locator("#viewer-stage").focus()
            page.keyboard.press("s")
            assert page.is_checked("#side-toggle") and page.is_visible("#viewer-plain") and page.is_visible("#viewer-overlay")
            assert page.evaluate(panes) == [str(heat["instance_number"])] * 2
            assert page.get_attribute("#viewer-plain", "src") == page.get_attribute("#viewer-image", "src")
            assert "/slices/bone/" in page.get_attribute("#viewer-plain", "src")
            wait_until(page, ALL_IMAGES_LOADED)
            page.screenshot(path=str(keep(tmp_path, "viewer-side-by-side.png")), full_page=True)
            page.keyboard.press("ArrowDown")
            assert page.evaluate(panes) == [str(numbers[heat["slice_index"] + 1])] * 2
            page.locator("#viewer-plain-stage").hover()
            page.mouse.wheel(0, -120)
            wait_until(page, f"document.getElementById('pane-plain-label').dataset.instance === '{heat['instance_number']}'")
            assert page.evaluate(panes) == [str(heat["instance_number"])] * 2
            page.uncheck("#overlay-toggle")
            assert page.is_visible("#viewer-overlay"), "side by side, the right pane keeps its heatmap"
            page.check("#overlay-toggle")
            page.uncheck("#side-toggle")
            assert not page.is_visible("#viewer-plain")
            page.click("#window-lung")
            start = int(page.evaluate("document.getElementById('viewer').dataset.index"))
            page.locator("#viewer-stage").focus()
            page.keyboard.press("ArrowDown")
            assert int(page.evaluate("document.getElementById('viewer').dataset.index")) == start + 1
            page.locator("#viewer-stage").hover()
            page.mouse.wheel(0, -120)
            wait_until(page, f"document.getElementById('viewer').dataset.index === '{start}'")
            page.keyboard.press("Home")
            assert page.inner_text("#viewer-label").startswith(f"slice {numbers[0]} ")

            # a split result says so next to the verdict
            split = split_copy(tmp_path / "results", study_id)
            page.goto(server.url + f"/studies/{split}")
            assert page.get_attribute("#agreement", "data-level") == "split"
            assert "2 of 3 groups call it covid; 1 healthy" in page.inner_text("#agreement")
            assert "group 2: healthy 0.994" in page.inner_text("#agreement")
            page.screenshot(path=str(keep(tmp_path, "split-verdict.png")), full_page=True)

            # the worklist: unread, most suspicious first; a reader's mark with who and when
            page.goto(server.url + "/history")
            assert "ID-Q7X9Z" in page.inner_text("#history") and "CET" in page.inner_text("#history")
            rows = lambda: page.eval_on_selector_all("#history tbody tr", "rows => rows.map(r => r.dataset.study)")  # noqa: E731
            split_first = json.loads((tmp_path / "results" / split / "result.json").read_text())["concern"] > api["concern"]
            assert rows() == ([split, study_id] if split_first else [study_id, split])
            page.goto(server.url + f"/studies/{rows()[0]}")
            page.click("#mark-disagree")
            page.wait_for_selector("#reviews")
            assert page.inner_text("#reviews").startswith(f"{USER}: disagree, ") and "CET" in page.inner_text("#reviews")
            page.click("text=Worklist")
            assert rows() == ([study_id, split] if split_first else [split, study_id]), "the marked study goes below"
            page.screenshot(path=str(keep(tmp_path, "worklist.png")), full_page=True)
            page.select_option("#sort", "received")
            page.click("#apply")
            assert rows() == [split, study_id] and "sort=received" in page.url
            page.check("#filter-unread")
            page.click("#apply")
            assert rows() == [study_id if split_first else split]

        # report.html alone in another folder shows every image
        alone = tmp_path / "mailed"
        alone.mkdir()
        shutil.copy(tmp_path / "results" / study_id / "report.html", alone / "report.html")
        page.goto((alone / "report.html").as_uri())
        wait_until(page, ALL_IMAGES_LOADED)
        assert page.locator("img").count() == len(api["heatmaps"]) + 1
        assert page.inner_text("#verdict") == api["label"] and "ID-Q7X9Z" in page.inner_text("#identity")
        page.screenshot(path=str(keep(tmp_path, "report-alone.png")), full_page=True)
        page.emulate_media(media="print")
        assert not page.is_visible("#slider"), "the print layout hides the slider"

        log = "".join(server.output)
        assert "queued" in log and "done in" in log, "the server's log was captured"
        assert not [s for s in SECRETS if s in log], "no patient identifier in the server's log"
    finally:
        export_screenshots(tmp_path)


def test_a_radiograph_in_the_viewer_with_its_overlay(page, tmp_path):
    from pydicom.data import get_testdata_file

    xray = REPO / "edge" / "models" / "xray-research"
    try:
        with serve(write_profile(tmp_path, xray, max_upload_mb=32)) as server:
            page.goto(server.url + "/login")
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(server.url + "/")
            page.set_input_files("#files", get_testdata_file("RG1_UNCR.dcm"))
            page.click("#submit")
            page.wait_for_selector("#verdict")
            wait_until(page, ALL_IMAGES_LOADED)
            assert page.inner_text("#viewer-label") == "the whole image" and page.locator("#viewer-range").count() == 0
            assert "no window presets" in page.inner_text("#window-note")
            assert page.inner_text("#score-name") == "model output" and page.locator("#agreement").count() == 0
            assert page.is_visible("#viewer-overlay")
            page.screenshot(path=str(keep(tmp_path, "radiograph.png")), full_page=True)
            page.check("#side-toggle")
            assert page.is_visible("#viewer-plain") and page.is_visible("#viewer-overlay")
            captions = page.eval_on_selector_all("#viewer-panes figcaption", "cs => cs.map(c => [c.dataset.instance, c.textContent])")
            assert captions[0][0] == captions[1][0] and captions[0][1] == "the whole image · without heatmap", captions
            assert page.get_attribute("#viewer-plain", "src") == page.get_attribute("#viewer-image", "src")
            wait_until(page, ALL_IMAGES_LOADED)
            page.screenshot(path=str(keep(tmp_path, "radiograph-side-by-side.png")), full_page=True)
            page.uncheck("#side-toggle")
            page.uncheck("#overlay-toggle")
            assert not page.is_visible("#viewer-overlay")
            assert page.inner_text("#study-modality") == "CR"
    finally:
        export_screenshots(tmp_path)
