"""Chest X-ray studies: radiograph ingest (MONOCHROME1, VOI window, views, PNG), the ``image`` kind
end to end on a real PA chest CR (pydicom-data's RG1_UNCR.dcm) with an untrained placeholder bundle
whose answer is known by construction, and routing by modality between a CT and an X-ray bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from edge import CLASSES
from edge.card import PLACEHOLDER_BANNER, load_card
from edge.cli import main
from edge.engine import Device, Engine, NoModelForModalityError
from edge.errors import FileTooLargeError, ModelLoadError, StudyError
from edge.explain import SliceGradCam
from edge.ingest.radiograph import LateralViewError, load_radiograph, study_modality
from edge.ingest.study import load_study
from edge.phantom import make_phantom, write_dicom_series
from edge.pipeline import prepare_radiograph
from edge.report import caption_lines
from edge.profile import DEFAULT_XRAY_BUNDLE, ProfileError, WatcherSettings, load_profile
from edge.server import create_app
from edge.watch import run_once
from tests.helpers.bundles import IMAGE_WEIGHT, KNOWN_PROBABILITIES, slice_probabilities
from tests.helpers.dicom import edit_tags
from tests.helpers.paths import RG1
from tests.helpers.profiles import write_profile as device_profile
from tests.helpers.server import AUTH, TOKEN, login, wait_done
from tests.helpers.server import write_profile as server_profile



@pytest.fixture
def ct_bundle(constant_bundle) -> Path:
    return constant_bundle


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ctstudy") / "P1"
    write_dicom_series(make_phantom(n_slices=12, size=64, seed=1), folder, seed=1)
    return folder


def edited(tmp_path: Path, **tags) -> Path:
    """A copy of RG1 with ``tags`` set (None deletes the tag)."""
    return edit_tags(RG1, tmp_path / "edited.dcm", **tags)


def test_rg1_reads_as_a_frontal_radiograph_with_dense_tissue_bright():
    picture = load_radiograph(RG1)
    h, w = picture.pixels.shape
    assert (h, w, picture.view, picture.warnings) == (1955, 1841, "PA", [])
    spine, lung = picture.pixels[h // 3: h // 2, w // 2 - 40: w // 2 + 40], picture.pixels[h // 3: h // 2, w // 5: w // 3]
    assert spine.mean() > lung.mean() + 0.1      # MONOCHROME1 inverted: bone brighter than aerated lung


def test_the_jpeg_2000_lossless_copy_reads_identically():
    np.testing.assert_array_equal(load_radiograph(get_testdata_file("RG1_J2KR.dcm")).pixels, load_radiograph(RG1).pixels)


def test_monochrome1_is_the_inverse_of_the_same_pixels_read_as_monochrome2(tmp_path):
    as_mono2 = load_radiograph(edited(tmp_path, PhotometricInterpretation="MONOCHROME2")).pixels
    np.testing.assert_allclose(load_radiograph(RG1).pixels, 1.0 - as_mono2, atol=1e-6)


def test_a_presentation_lut_shape_inverse_inverts_the_display(tmp_path):
    np.testing.assert_allclose(load_radiograph(edited(tmp_path, PresentationLUTShape="INVERSE")).pixels,
                               1.0 - load_radiograph(RG1).pixels, atol=1e-6)


def test_the_voi_window_is_applied_when_present(tmp_path):
    narrow = load_radiograph(edited(tmp_path, WindowCenter=15000, WindowWidth=2000)).pixels
    assert 0.2 < (narrow == 0).mean() + (narrow == 1).mean()     # a narrow window saturates much of the image
    assert ((load_radiograph(RG1).pixels == 0) | (load_radiograph(RG1).pixels == 1)).mean() < 0.05


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_a_lateral_view_is_refused_naming_the_file(tmp_path, capsys, xray_bundle, view):
    path = edited(tmp_path, ViewPosition=view)
    with pytest.raises(LateralViewError, match="lateral view"):
        load_radiograph(path)
    assert main(["predict", str(path), "--model", str(xray_bundle), "--variant", "float32"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and f"lateral view (ViewPosition {view})" in err


def test_an_unknown_view_is_read_with_a_warning(tmp_path):
    picture = load_radiograph(edited(tmp_path, ViewPosition=None))
    assert picture.view is None and "view position not recorded" in picture.warnings[0]


def study_of(folder: Path, *views: tuple[str, dict]) -> Path:
    """A study folder of RG1 copies, each named and tagged as given (None deletes a tag)."""
    folder.mkdir()
    uid = pydicom.dcmread(RG1, stop_before_pixels=True).SOPInstanceUID
    for i, (name, tags) in enumerate(views, start=1):
        edit_tags(RG1, folder / name, SOPInstanceUID=f"{uid}.{i}", **tags)
    return folder


def test_a_study_with_pa_and_lateral_is_read_as_its_pa_naming_the_lateral(tmp_path, capsys, xray_bundle):
    study = study_of(tmp_path / "S", ("lat.dcm", {"ViewPosition": "LL", "InstanceNumber": 2}),
                     ("pa.dcm", {"InstanceNumber": 1}))
    picture = load_radiograph(study)
    assert (picture.file, picture.view) == ("pa.dcm", "PA")
    assert picture.warnings == ["lat.dcm: lateral view, not analysed (one frontal radiograph is read: pa.dcm)"]
    np.testing.assert_array_equal(picture.pixels, load_radiograph(RG1).pixels)
    assert main(["predict", str(study), "--model", str(xray_bundle), "--variant", "float32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["slices_used"][0]["file"] == "pa.dcm" and any("lat.dcm: lateral view" in w for w in result["warnings"])


def test_of_two_frontal_views_the_pa_and_then_the_last_taken_is_read(tmp_path):
    study = study_of(tmp_path / "S", ("ap.dcm", {"ViewPosition": "AP", "InstanceNumber": 9}),
                     ("pa1.dcm", {"InstanceNumber": 1}), ("pa2.dcm", {"InstanceNumber": 2}))
    picture = load_radiograph(study)
    assert picture.file == "pa2.dcm"
    assert [w.split(":")[0] for w in picture.warnings] == ["ap.dcm", "pa1.dcm"]


def test_a_study_of_lateral_views_only_or_of_unknown_views_is_refused(tmp_path):
    with pytest.raises(LateralViewError, match="only lateral views"):
        load_radiograph(study_of(tmp_path / "L", ("a.dcm", {"ViewPosition": "LL"}), ("b.dcm", {"ViewPosition": "RL"})))
    with pytest.raises(StudyError, match="2 radiographs without a PA/AP ViewPosition"):
        load_radiograph(study_of(tmp_path / "U", ("a.dcm", {"ViewPosition": None}), ("b.dcm", {"ViewPosition": None})))


def test_a_study_of_one_unknown_view_and_a_lateral_reads_the_unknown_one_with_warnings(tmp_path):
    picture = load_radiograph(study_of(tmp_path / "S", ("a.dcm", {"ViewPosition": None}),
                                       ("b.dcm", {"ViewPosition": "LL"})))
    assert picture.file == "a.dcm" and picture.view is None
    assert "view position not recorded" in picture.warnings[0] and picture.warnings[1].startswith("b.dcm: lateral view")


def with_dicomdir(folder: Path) -> Path:
    """A study folder of RG1 indexed by a DICOMDIR (which sorts before the image's subfolder)."""
    fileset = FileSet()
    fileset.add(pydicom.dcmread(RG1))
    fileset.write(folder)
    return folder


def test_a_dicomdir_or_a_notes_file_beside_the_radiograph_is_skipped(tmp_path, capsys, xray_bundle):
    notes = study_of(tmp_path / "N", ("b.dcm", {}))
    (notes / "a_notes.txt").write_text("PA film\n")
    indexed = with_dicomdir(tmp_path / "D")
    assert sorted(p.name for p in indexed.rglob("*") if p.is_file())[0] == "DICOMDIR"
    for study, skipped in ((notes, "a_notes.txt: not a DICOM file"), (indexed, "DICOMDIR: a DICOMDIR index, not an image")):
        assert study_modality(study) == "xray"
        picture = load_radiograph(study)
        assert picture.view == "PA" and len(picture.warnings) == 1 and picture.warnings[0].startswith(skipped)
        np.testing.assert_array_equal(picture.pixels, load_radiograph(RG1).pixels)
        assert main(["predict", str(study), "--model", str(xray_bundle), "--variant", "float32", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["modality"] == "xray"


def test_an_image_file_beside_a_dicom_radiograph_is_ignored_as_in_a_ct_study(tmp_path):
    study = study_of(tmp_path / "S", ("b.dcm", {}))
    cv2.imwrite(str(study / "a.png"), np.zeros((8, 8), np.uint8))
    assert study_modality(study) == "xray"
    picture = load_radiograph(study)
    assert picture.file == "b.dcm" and picture.warnings == ["a.png: image file ignored, the study has DICOM files"]


def test_the_modality_comes_from_the_first_dicom_file_that_records_one(tmp_path, ct_study):
    study = study_of(tmp_path / "S", ("a.dcm", {"Modality": None}), ("b.dcm", {}))
    assert study_modality(study) == "xray"
    ct = tmp_path / "ct"
    shutil.copytree(ct_study, ct)
    shutil.copy(with_dicomdir(tmp_path / "D") / "DICOMDIR", ct)
    (ct / "0_notes.txt").write_text("x")
    assert study_modality(ct) == "ct"               # the CT reader skips both files too, naming them
    volume = load_study(ct)
    assert volume.n_slices == 12 and volume.warnings[0].startswith(
        "2 file(s) skipped: 0_notes.txt: not a DICOM file (no DICM preamble, no SOP Class UID); "
        "DICOMDIR: a DICOMDIR index, not an image")


def test_the_watcher_analyses_a_radiograph_folder_with_a_dicomdir(xray_bundle, tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    with_dicomdir(inbox / "study")
    summary = run_once(Engine.from_bundle(xray_bundle, "float32"), inbox, outbox,
                       WatcherSettings(poll_seconds=0, stable_seconds=0))
    assert summary.done == 1
    assert json.loads((outbox / "study" / "result.json").read_text())["modality"] == "xray"


def test_a_png_or_jpeg_radiograph_may_be_as_large_as_a_dicom_one(tmp_path, xray_bundle, capsys):
    big = np.full((3000, 2500), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "big8.png"), big)
    assert load_radiograph(tmp_path / "big8.png").pixels.shape == (3000, 2500)
    assert main(["predict", str(tmp_path / "big8.png"), "--model", str(xray_bundle), "--variant", "float32"]) == 0
    capsys.readouterr()
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((4097, 4096), np.uint8))
    with pytest.raises(FileTooLargeError, match="declares 4096 x 4097 pixels, above the limit of one 4096 x 4096 radiograph"):
        load_radiograph(tmp_path / "huge.png")
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(2):
        cv2.imwrite(str(slices / f"s{i}.png"), np.zeros((2049, 2048), np.uint8))
    with pytest.raises(FileTooLargeError, match="declares 2048 x 2049 pixels, above the limit of one 2048 x 2048 slice"):
        load_study(slices)


def test_png_radiographs_of_8_and_16_bits(tmp_path):
    ramp = np.tile(np.arange(0, 256, dtype=np.uint8), (32, 1))
    cv2.imwrite(str(tmp_path / "r8.png"), ramp)
    np.testing.assert_allclose(load_radiograph(tmp_path / "r8.png").pixels, ramp / 255.0, atol=1e-6)
    cv2.imwrite(str(tmp_path / "r16.png"), ramp.astype(np.uint16) * 16)
    sixteen = load_radiograph(tmp_path / "r16.png").pixels
    assert sixteen.min() == 0 and sixteen.max() == 1 and np.all(np.diff(sixteen[0]) >= 0)
    assert study_modality(tmp_path / "r8.png") == "xray"


def test_rg1_predict_json_gives_the_known_answer_and_says_placeholder(xray_bundle, capsys):
    image = prepare_radiograph(RG1, load_card(xray_bundle).preprocessing).images[0]
    assert image.shape == (64, 64)
    assert main(["predict", str(RG1), "--model", str(xray_bundle), "--json"]) == 0      # the command of issue 13
    doc = json.loads(capsys.readouterr().out)
    expected = slice_probabilities(np.array([image.mean()]), weight=IMAGE_WEIGHT)[0]
    assert doc["modality"] == "xray" and doc["classes"] == list(CLASSES) and doc["input"]["view"] == "PA"
    np.testing.assert_allclose([doc["probabilities"][c] for c in CLASSES], expected, atol=1e-4)
    assert doc["label"] == CLASSES[int(np.argmax(expected))]
    assert doc["model"]["placeholder"] is True and doc["model"]["banner"] == PLACEHOLDER_BANNER


def test_the_predict_result_folder_is_owner_only_whatever_the_umask(xray_bundle, tmp_path, capsys):
    out = tmp_path / "results" / "rg1"
    previous = os.umask(0o022)
    try:
        assert main(["predict", str(RG1), "--model", str(xray_bundle), "--variant", "float32", "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    capsys.readouterr()
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert {"heatmaps/1.png", "slices/0000.png", "report.html", "result.json"} <= set(modes)
    assert modes == {name: 0o700 if (out / name).is_dir() else 0o600 for name in modes}


def test_rg1_heatmap_on_the_radiograph_is_the_known_grad_cam(xray_bundle, tmp_path):
    engine = Engine.from_bundle(xray_bundle, "float32")
    doc = engine.analyse(RG1, tmp_path / "out")
    assert doc["label"] == "covid" and doc["heatmaps"][0]["file"] == RG1.name
    assert (tmp_path / "out" / doc["heatmaps"][0]["png"]).is_file()
    report = (tmp_path / "out" / "report.html").read_text()
    assert PLACEHOLDER_BANNER in report and "Chest X-ray triage report" in report
    assert "Radiograph RG1_UNCR.dcm, view PA." in report and 'id="slice-plot"' not in report
    image = engine.run(RG1).images[0]
    heat = SliceGradCam(load_card(xray_bundle)).explain_slice(image, 0)
    np.testing.assert_allclose(heat, image / image.max(), atol=1e-4)    # identity conv: the input itself


def test_the_heatmap_caption_and_banner_are_wrapped_not_cut_off(xray_bundle, tmp_path):
    doc = Engine.from_bundle(xray_bundle, "float32").analyse(RG1, tmp_path / "out")
    png = cv2.imread(str(tmp_path / "out" / doc["heatmaps"][0]["png"]))
    width = png.shape[1]
    lines = caption_lines(PLACEHOLDER_BANNER, width)
    assert len(lines) > 1 and " ".join(lines) == PLACEHOLDER_BANNER, "the banner is wider than this picture"
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.36, 1)[0][0] <= width - 8 for line in lines)
    bar = png[width:]                       # the picture is square; the caption bar is underneath
    assert bar.shape[0] >= 16 * (len(lines) + 1) and not bar[:, -3:].any(), "text runs into the right edge"


def write_profile(tmp_path: Path, bundle: Path, more: list[Path]) -> Path:
    return device_profile(tmp_path / "box.yaml", bundle, *more, name="box", model={"variant": "float32"})


def test_a_profile_with_ct_and_xray_bundles_routes_by_modality(tmp_path, ct_bundle, xray_bundle, ct_study):
    engine = Device.from_profile(load_profile(write_profile(tmp_path, ct_bundle, [xray_bundle])))
    assert engine.run(RG1).to_dict()["model"]["name"] == "xray-test-placeholder"
    ct = engine.run(ct_study).to_dict()
    assert ct["modality"] == "ct" and ct["model"]["name"] == "constant-test-model"
    assert [ct["probabilities"][c] for c in CLASSES] == pytest.approx(KNOWN_PROBABILITIES, abs=1e-4)


def test_a_device_holds_one_engine_per_modality_each_reading_only_its_own(tmp_path, ct_bundle, xray_bundle, ct_study):
    """Device: the modality -> engine routing, built once from a profile; Engine: one bundle and its pool."""
    device = Device.from_profile(load_profile(write_profile(tmp_path, ct_bundle, [xray_bundle])))
    assert {m: e.info.name for m, e in device.routes.items()} == {"ct": "constant-test-model",
                                                                  "xray": "xray-test-placeholder"}
    assert device.info == device.routes["ct"].info, "the main bundle names the device's model"
    assert device.read(RG1).modality == "xray" and device.run(device.read(ct_study)).volume.modality == "ct"
    with pytest.raises(ValueError, match="two engines read CT studies"):
        Device([device.routes["ct"], device.routes["ct"]])
    ct_alone = device.routes["ct"]
    assert ct_alone.routes == {"ct": ct_alone}
    with pytest.raises(NoModelForModalityError, match="no X-ray model"):
        ct_alone.run(RG1)


def test_a_study_of_a_modality_the_device_has_no_model_for_is_refused(tmp_path, capsys, ct_bundle, xray_bundle, ct_study):
    with pytest.raises(NoModelForModalityError, match=r"a study of modality CT, but this device has no CT model \(it reads: X-ray\)"):
        Engine.from_bundle(xray_bundle, "float32").run(ct_study)
    assert main(["predict", str(RG1), "--model", str(ct_bundle), "--variant", "float32"]) == 2
    err = capsys.readouterr().err
    assert str(RG1) in err and "a study of modality X-ray, but this device has no X-ray model (it reads: CT)" in err
    assert f"add an X-ray bundle to the profile's model.more_bundles (e.g. {DEFAULT_XRAY_BUNDLE}" in err  # the next step


def test_one_bundle_per_modality_in_a_profile(tmp_path, xray_bundle):
    with pytest.raises(ProfileError, match=r"model.more_bundles\[0\] reads xray studies.*one bundle per modality"):
        load_profile(write_profile(tmp_path, xray_bundle, [xray_bundle]))


def test_an_image_card_must_read_xray(xray_bundle, tmp_path):
    doc = json.loads((xray_bundle / "model.json").read_text()) | {"modality": "ct"}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="kind 'image' reads xray studies, not modality 'ct'"):
        load_card(tmp_path)


def test_the_watcher_analyses_a_radiograph_dropped_as_one_file(xray_bundle, tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    shutil.copy(RG1, inbox / "chest.dcm")
    summary = run_once(Engine.from_bundle(xray_bundle, "float32"), inbox, outbox,
                       WatcherSettings(poll_seconds=0, stable_seconds=0))
    assert summary.done == 1
    doc = json.loads((outbox / "chest.dcm" / "result.json").read_text())
    assert doc["modality"] == "xray" and doc["model"]["placeholder"] and len(doc["heatmaps"]) == 1


def test_the_web_form_and_the_api_analyse_a_radiograph(xray_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CTEDGE_API_TOKEN", TOKEN)
    app = create_app(load_profile(server_profile(tmp_path, max_upload_mb=16)), Engine.from_bundle(xray_bundle, "float32"))
    try:
        client = app.test_client()
        api_id = client.post("/api/v1/studies", data={"files": [(RG1.open("rb"), RG1.name)]},
                             headers=AUTH).get_json()["id"]
        login(client)
        upload = client.get("/").get_data(as_text=True)
        assert "Choose one chest radiograph (DICOM CR/DX, PNG or JPEG). Files are uploaded" in visible_text(upload)
        assert "CT" not in visible_text(upload)
        token = re.search(r'name="csrf_token" value="([^"]+)"', upload).group(1)
        form = client.post("/studies", data={"files": [(RG1.open("rb"), RG1.name)], "csrf_token": token})
        assert form.status_code == 303
        form_id = form.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        for study_id in (api_id, form_id):
            state = wait_done(client, study_id)
            assert state["status"] == "done", state
            assert state["result"]["modality"] == "xray" and state["result"]["model"]["banner"] == PLACEHOLDER_BANNER
        assert client.get("/api/v1/model", headers=AUTH).get_json()["by_modality"]["xray"]["placeholder"] is True
        history = visible_text(client.get("/history").get_data(as_text=True))
        assert f'{state["result"]["label"]} {PLACEHOLDER_BANNER}' in history and "demonstration" not in history.lower()
        page = client.get(f"/studies/{form_id}").get_data(as_text=True)
        assert f'id="verdict">{state["result"]["label"]}<' in page
        assert f'id="result-banner">{PLACEHOLDER_BANNER}: this result has no clinical validity' in page
        assert 'id="input">one radiograph, view PA<' in page and "Heatmap on the radiograph" in page
        report = client.get(f"/studies/{form_id}/report.html").get_data(as_text=True)
        assert PLACEHOLDER_BANNER in report and "Chest X-ray triage report" in report
        for html in (page, report):      # no CT wording for a radiograph
            words = visible_text(html).lower()
            assert "slice" not in words and "group" not in words and "ct study" not in words, words
    finally:
        app.extensions["ctedge"]["jobs"].stop()


def visible_text(html: str) -> str:
    """The text a reader sees (no tags, scripts or styles), its white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)).split())


def test_a_device_with_ct_and_xray_models_says_so_on_every_page(tmp_path, ct_bundle, xray_bundle):
    path = server_profile(tmp_path, ct_bundle, xray_bundle, model={"variant": "float32"})
    profile = load_profile(path)
    client = create_app(profile, Device.from_profile(profile), start_workers=False).test_client()
    login(client)
    upload = visible_text(client.get("/").get_data(as_text=True))
    assert "chest CT and X-ray pneumonia triage" in upload
    assert "Choose the DICOM files of one CT study, a whole study folder, or one zip archive; or one chest " \
           "radiograph (DICOM CR/DX, PNG or JPEG). The study's modality picks the model of this device." in upload
    assert "constant-test-model: DEMONSTRATION MODEL" in upload and f"xray-test-placeholder: {PLACEHOLDER_BANNER}" in upload
    assert "Models constant-test-model 1 (float32), xray-test-placeholder 0 (float32)" in upload


def test_the_text_summary_names_the_radiograph_and_the_placeholder(xray_bundle, capsys):
    assert main(["predict", str(RG1), "--model", str(xray_bundle), "--variant", "float32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"*** {PLACEHOLDER_BANNER} ***") and "Radiograph: RG1_UNCR.dcm (view PA)" in out
