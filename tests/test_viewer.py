"""What the radiologist's pages rest on (issue 25): the study's identity, the PACS viewer link, local
times, what the score is and how the groups or slices agree, heatmaps only from units that voted for
the verdict, and the slice plot. The pages themselves are driven in Chromium (tests/test_browser.py)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pydicom
import pytest

from edge.card import load_card
from edge.engine import DEFAULT_BUNDLE, Engine
from edge.explain import GradCam
from edge.ingest import load_study
from edge.ingest.identity import identity_of_files, study_identity
from edge.profile import ProfileError, load_profile, viewer_link
from edge.report import dicom_date, dicom_time, local_time, slice_numbers, slice_plot, write_result
from edge.uncertainty import SPLIT_RULE, agreement, concern, score_meaning, supports_verdict
from tests.helpers.paths import SAMPLES
from tests.helpers.profiles import write_profile

STUDY = SAMPLES / "COVID-19_P002"
CLASSES = ["covid", "other_pneumonia", "healthy"]


def test_identity_is_read_from_the_header_and_slices_keep_their_instance_number(tmp_path):
    files = sorted(STUDY.glob("*.dcm"))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    ds.PatientName, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "DOE^JANE^Q", "A\x07123", "20261115", "093000.5"
    found = study_identity(ds)
    assert found["patient_name"] == "DOE, JANE" and found["patient_id"] == "P002"
    assert found["accession"] == "A123", "control characters are dropped"
    assert found["modality"] == "CT" and found["study_uid"] == str(ds.StudyInstanceUID)
    assert study_identity(None) == dict.fromkeys(found, "")
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert identity_of_files([tmp_path / "notes.txt", *files])["patient_id"] == "P002"
    volume = load_study(STUDY)
    assert volume.identity["patient_id"] == "P002"
    assert volume.instance_numbers == [int(pydicom.dcmread(STUDY / f, stop_before_pixels=True).InstanceNumber)
                                       for f in volume.files]


@pytest.mark.parametrize("template, message", [
    ("http://pacs/viewer?uid={study_uid.__class__}", "unsupported field"),
    ("http://pacs/viewer?uid={study_uid!r}", "unsupported field"),
    ("http://pacs/viewer?uid={patient_name}", "unsupported field"),
    ("http://pacs/viewer?uid={", "not a valid template"),
    ("http://pacs/viewer?patient={patient_id}", "must name the study"),
    ("javascript:alert({study_uid})", "must be an http:// or https:// address"),
])
def test_a_bad_viewer_url_is_refused_naming_the_key(tmp_path, template, message):
    path = write_profile(tmp_path / "p.yaml", server={"viewer_url": template})
    with pytest.raises(ProfileError, match=f"p.yaml: server.viewer_url.*{message}"):
        load_profile(path)


def test_viewer_link_and_time_zone(tmp_path):
    profile = load_profile(write_profile(tmp_path / "p.yaml", server={
        "viewer_url": "https://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}&acc={accession}", "timezone": "Asia/Kolkata"}))
    link = viewer_link(profile.server.viewer_url, {"study_uid": "1.2.3", "accession": "A&B 7"})
    assert link == "https://pacs/ohif/viewer?StudyInstanceUIDs=1.2.3&acc=A%26B%207"
    assert viewer_link(profile.server.viewer_url, {"study_uid": "1.2.3", "accession": ""}) is None
    assert viewer_link("", {"study_uid": "1.2.3"}) is None
    assert local_time("2026-12-03T07:36:06+00:00", profile.server.timezone) == "2026-12-03 13:06:06 IST"
    assert local_time("2026-07-03T07:36:06+00:00", "Europe/Berlin") == "2026-07-03 09:36:06 CEST"
    assert local_time("", "UTC") == "" and local_time("garbage", "UTC") == "garbage"
    assert dicom_date("20261115") == "2026-11-15" and dicom_time("093000.123") == "09:30:00" and dicom_time("0930") == "09:30"


def test_an_unknown_time_zone_is_refused(tmp_path):
    with pytest.raises(ProfileError, match="server.timezone: unknown time zone 'Mars/Olympus'"):
        load_profile(write_profile(tmp_path / "p.yaml", server={"timezone": "Mars/Olympus"}))


def _group(index: int, label: str, p: float) -> dict:
    rest = (1 - p) / 2
    return {"index": index, "label": label, "slice_range": [0, 1],
            "probabilities": {c: (p if c == label else rest) for c in CLASSES}}


def _doc(groups: list[dict], label: str, rule: str = "majority") -> dict:
    mean = {c: float(np.mean([g["probabilities"][c] for g in groups])) for c in CLASSES}
    return {"label": label, "classes": CLASSES, "probabilities": mean, "groups": groups, "slices_used": [],
            "decision_rule": rule}


def test_agreement_names_a_split_and_the_dissenting_group():
    split = _doc([_group(0, "covid", 1.0), _group(1, "covid", 0.99), _group(2, "healthy", 0.994)], "covid")
    found = agreement(split)
    assert found["level"] == "split" and found["for_verdict"] == 2 and found["votes"] == {"covid": 2, "healthy": 1}
    assert found["text"] == ("2 of 3 groups call it covid; 1 healthy (group 2: healthy 0.994): "
                             "the groups disagree, read the study yourself")
    assert found["rule"] == SPLIT_RULE
    mild = _doc([_group(i, "covid", 0.8) for i in range(4)] + [_group(4, "healthy", 0.6)], "covid")
    assert agreement(mild)["level"] == "majority", "one unsure dissent in five"
    assert agreement(_doc([_group(0, "covid", 0.8), _group(1, "covid", 0.7)], "covid"))["level"] == "unanimous"
    assert agreement(_doc([_group(0, "covid", 0.8)], "covid")) is None
    assert score_meaning(split)["name"] == "mean group probability"
    assert concern(split) == pytest.approx(1 - np.mean([0.0, 0.005, 0.994]), abs=1e-6)


def test_a_slice_models_mean_is_named_and_its_fraction_counted():
    slices = [{"index": i, "label": label, "probabilities": {"infection": p, "healthy": 1 - p}}
              for i, (label, p) in enumerate([("infection", 0.9)] * 7 + [("healthy", 0.2)] * 3)]
    doc = {"label": "infection", "classes": ["infection", "healthy"], "probabilities": {"infection": 0.69, "healthy": 0.31},
           "groups": [], "slices_used": slices, "decision_rule": "fraction rule: 7 of 10 slice(s) positive (70.0%), above 0%"}
    assert score_meaning(doc)["name"] == "mean slice probability"
    assert "counts positive slices (fraction rule)" in score_meaning(doc)["explanation"]
    found = agreement(doc)
    assert found["unit"] == "slice" and found["level"] == "majority" and found["text"].startswith("7 of 10 slices")
    assert supports_verdict(doc, {"group": None, "slice_index": 0})
    assert not supports_verdict(doc, {"group": None, "slice_index": 8})


def test_slice_plot_has_ticks_by_instance_number_and_the_rule_threshold():
    slices = [{"index": i, "instance_number": 101 + i, "z": -float(i), "label": "infection",
               "probabilities": {"infection": 0.9, "healthy": 0.1}} for i in range(20)]
    doc = {"classes": ["infection", "healthy"], "slices_used": slices, "slices_dropped": [], "n_slices_read": 20,
           "heatmaps": [{"slice_index": 3}], "patient_rule": {"name": "mean", "threshold": 0.3}}
    plot = slice_plot(doc)
    assert [n for _, n in plot["ticks"]][:3] == [101, 104, 107] and plot["ticks"][0][0] == plot["x0"]
    assert plot["threshold"]["y"] == pytest.approx(plot["y"][0.0] - 0.7 * (plot["y"][0.0] - plot["y"][1.0]), abs=0.2)
    assert "mean healthy probability is below this" in plot["threshold"]["text"]
    assert slice_numbers(doc)[:2] == [101, 102]
    assert slice_plot(doc | {"patient_rule": {"name": "fraction", "threshold": 0.1}})["threshold"]["text"].startswith("0.5:")


@pytest.mark.slow
def test_heatmaps_come_only_from_groups_that_voted_for_the_verdict(tmp_path):
    """The real demo model's Grad-CAM on P002, with a second group that voted healthy: no heatmap of it,
    and each map's share inside the lungs and its caption are recorded."""
    engine = Engine.default()
    result = engine.run(STUDY)
    dissent = copy.deepcopy(result.groups[0])
    dissent.index, dissent.probabilities = 1, np.array([0.003, 0.003, 0.994])
    result.groups.append(dissent)
    result.prepared.plans.append(result.prepared.plans[0])
    assert result.verdict.label != "healthy"
    heatmaps = GradCam(load_card(DEFAULT_BUNDLE)).explain(result, per_group=2)
    assert len(heatmaps) == 2 and {h.group for h in heatmaps} == {0}
    doc = write_result(result, heatmaps, tmp_path / "out", "grad-cam")
    for h in doc["heatmaps"]:
        assert 0.0 <= h["in_lungs"] <= 1.0 and h["outside_lungs"] == (h["in_lungs"] < 0.5)
        assert h["caption"].startswith(f"Grad-CAM for {doc['label']} on slice {h['instance_number']}")
        layer = cv2.imread(str(tmp_path / "out" / h["overlay"]), cv2.IMREAD_UNCHANGED)
        assert layer.shape == (256, 256, 4) and layer[..., 3].max() == 255, "the overlay is as opaque as it is hot"
    assert set(doc["slice_png_windows"]) == {"mediastinum", "bone"} and doc["windows"]["bone"] == [-500.0, 1500.0]
    bone = cv2.imread(str(tmp_path / "out" / doc["slice_png_windows"]["bone"][5]), cv2.IMREAD_GRAYSCALE)
    lung = cv2.imread(str(tmp_path / "out" / doc["slice_png"][5]), cv2.IMREAD_GRAYSCALE)
    assert bone.mean() < lung.mean(), "the bone window shows soft tissue and lung darker than the lung window"
    assert doc["agreement"]["level"] == "split" and "group 1: healthy 0.994" in doc["agreement"]["text"]
    assert 'src="data:image/png;base64,' in (tmp_path / "out" / "report.html").read_text()


def _state(study_id: str, label: str | None, concern: float | None, status: str = "done", reviews=None) -> dict:
    return {"id": study_id, "created": f"2026-12-0{study_id[-1]}T08:00:00+00:00", "status": status, "label": label,
            "concern": concern, "agreement": "split" if concern == 0.6 else "unanimous", "banner": "",
            "study": {"accession": f"=ACC{study_id[-1]}", "study_uid": "1.2.3", "patient_name": "DOE, JANE"},
            "reviews": reviews or {}}


def test_the_worklist_puts_unread_suspicious_studies_first_and_filters():
    from edge.server.worklist import to_csv, worklist

    marked = {"ana": {"mark": "disagree", "at": "2026-12-05T09:00:00+00:00"}}
    states = [_state("s5", None, None, "running"), _state("s4", "healthy", 0.1), _state("s3", "covid", 0.95, reviews=marked),
              _state("s2", "covid", 0.6), _state("s1", "other_pneumonia", 0.8)]      # newest first, as the store gives them
    assert [s["id"] for s in worklist(states)] == ["s1", "s2", "s4", "s5", "s3"]
    assert [s["id"] for s in worklist(states, "concern")] == ["s3", "s1", "s2", "s4", "s5"]
    assert [s["id"] for s in worklist(states, "received")] == ["s5", "s4", "s3", "s2", "s1"]
    assert [s["id"] for s in worklist(states, verdict="covid")] == ["s2", "s3"]
    assert [s["id"] for s in worklist(states, only_unread=True)] == ["s1", "s2", "s4"]
    rows = to_csv(worklist(states, "received")).splitlines()
    assert rows[0] == "study,received,accession,study_uid,status,verdict,concern,agreement,model_banner,reviewer,mark,marked_at"
    assert rows[3] == "s3,2026-12-03T08:00:00+00:00,'=ACC3,1.2.3,done,covid,0.9500,unanimous,,ana,disagree,2026-12-05T09:00:00+00:00"
    assert "DOE" not in "\n".join(rows), "no patient name in the export"
