"""The results sent to PACS follow the standard: a TID 1500 Measurement Report that highdicom's SR
parser reads back (the coded finding, the class probabilities, the algorithm identification with the
model card's hash, the device observer), private codes only where no standard one exists; Secondary
Captures that carry the patient and study modules of their source and reference it. dciodvfy finds
no error and no warning but the unknown-scheme one of the declared private scheme."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from edge import CLASSES
from edge.card import DEFAULT_BUNDLE
from edge.dicomnet.results import SCHEME, result_objects, secondary_capture, source_headers, structured_report
from edge.engine import Engine
from tests.helpers.dicomnet import code_of, dciodvfy_errors, dciodvfy_warnings, phantom_study, sr_by_meaning, sr_items

EXPECTED_FINDINGS = {"covid": ("882784691000119100", "SCT", "Pneumonia caused by SARS-CoV-2"),
                     "other_pneumonia": ("233604007", "SCT", "Pneumonia"),
                     "healthy": ("17621005", "SCT", "Normal")}
SOURCE_ATTRIBUTES = {"IssuerOfPatientID": "HOSPITAL-A", "PatientAge": "061Y", "StudyDescription": "CT THORAX",
                     "StudyDate": "20240105", "StudyTime": "101500", "StudyID": "4711"}
needs_dciodvfy = pytest.mark.skipif(not shutil.which("dciodvfy"), reason="not installed: dciodvfy (apt-get install dicom3tools)")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, Path]:
    """(study folder, result folder) of a phantom study whose files carry the full patient and study
    modules, analysed by the demonstration model."""
    root = tmp_path_factory.mktemp("sr")
    for path in phantom_study(root / "src", n_slices=30, size=96, seed=4, consolidation=2):
        ds = pydicom.dcmread(path)
        for key, value in SOURCE_ATTRIBUTES.items():
            setattr(ds, key, value)
        ds.save_as(path)
    Engine.default().analyse(root / "src", root / "result")
    return root / "src", root / "result"


def written(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_sr_is_a_tid_1500_measurement_report_with_device_observer_and_image_library(analysed):
    study, result = analysed
    sr = result_objects(result, study, ae_title="EDGE_WARD3")[0]
    doc = json.loads((result / "result.json").read_text())
    template = sr.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    assert code_of_name(sr) == ("126000", "DCM", "Imaging Measurement Report")
    items = sr_by_meaning(sr)
    assert code_of(items["Observer Type"]) == ("121007", "DCM", "Device")
    assert items["Device Observer Name"].TextValue == "EDGE_WARD3"
    assert items["Device Observer Manufacturer"].TextValue == "ctedge"
    assert code_of(items["Procedure reported"]) == ("169069000", "SCT", "CT of chest")
    # the source images are in the image library as "Source" (SCT), never as "Source of Measurement"
    images = [i for i in sr_items(sr) if i.ValueType == "IMAGE"]
    assert {code_of_name(i) for i in images} == {("260753009", "SCT", "Source")}
    headers = source_headers(study)
    used = [headers[s["file"]].SOPInstanceUID for s in doc["slices_used"]]       # every slice the verdict read
    assert len(used) < len(headers)                  # the slice selection left some out: they are not listed
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == used
    # one group for the series: its descriptors once, for all its images (TID 1600 allows them at group level)
    [group] = [i for i in sr_items(sr) if i.ValueType == "CONTAINER" and code_of_name(i)[0] == "126200"]
    kinds = [(i.RelationshipType, i.ValueType) for i in group.ContentSequence]
    frame = [("HAS ACQ CONTEXT", "UIDREF")] if headers[doc["slices_used"][0]["file"]].get("FrameOfReferenceUID") else []
    assert kinds == [("HAS ACQ CONTEXT", "CODE"), *frame, ("HAS ACQ CONTEXT", "NUM"), ("HAS ACQ CONTEXT", "NUM")] + \
        [("CONTAINS", "IMAGE")] * len(used)
    assert not any("ContentSequence" in i for i in images)
    # the probabilities: numbers without unit (UCUM "1"), one per class, as in the result
    for c in CLASSES:
        value = items[f"Probability of {c}"].MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(doc["probabilities"][c], abs=1e-6)
        assert code_of_unit(value) == ("1", "UCUM", "no units")
    # the model's status, decision rule and warning, in the report's qualitative evaluations
    assert items["Model status"].TextValue == "demonstration"
    assert items["Decision rule"].TextValue == doc["decision_rule"]
    assert items["Comment"].TextValue.startswith("DEMONSTRATION MODEL - NOT FOR CLINICAL USE.")
    assert sr.SeriesDescription == "ctedge CT verdict (not for clinical use)"


def test_private_codes_are_declared_short_and_only_where_no_standard_code_exists(analysed):
    study, result = analysed
    sr = result_objects(result, study)[0]
    codes = [code for item in sr_items(sr) for key in ("ConceptNameCodeSequence", "ConceptCodeSequence",
                                                        "MeasurementUnitsCodeSequence")
             for code in item.get(key, [])]
    private = {(c.CodeValue, c.CodeMeaning) for c in codes if c.CodingSchemeDesignator == SCHEME}
    private -= {("INPUT-WARNING", "Input warning"), ("AGREEMENT", "Agreement of groups or slices")}  # when the study has them
    assert private == {("P-COVID", "Probability of covid"), ("P-PNEUMONIA", "Probability of other_pneumonia"),
                       ("P-HEALTHY", "Probability of healthy"), ("DECISION-RULE", "Decision rule"),
                       ("MODEL-STATUS", "Model status"), ("VALIDATION", "Validation evidence")}
    assert all(len(value) <= 16 for value, _ in private)
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [SCHEME]
    assert not any("LongCodeValue" in c for c in codes)       # the healthy verdict: no 18-digit SNOMED code


@pytest.mark.parametrize("label", CLASSES)
def test_highdicom_reads_back_the_coded_finding_and_the_algorithm(analysed, tmp_path, label):
    """The verdict of each class, written to a file and read by highdicom's SR parser (srread)."""
    study, result = analysed
    doc = json.loads((result / "result.json").read_text()) | {"label": label}
    evidence = [pydicom.dcmread(next(study.iterdir()), stop_before_pixels=True)]
    report = hd.sr.srread(written(structured_report(doc, evidence), tmp_path / "sr.dcm"))
    assert isinstance(report.content, hd.sr.MeasurementReport)
    [group] = report.content.get_image_measurement_groups()
    finding = group.finding_type
    assert (finding.value, finding.scheme_designator, finding.meaning) == EXPECTED_FINDINGS[label]
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measured == pytest.approx({f"Probability of {c}": doc["probabilities"][c] for c in CLASSES}, abs=1e-6)
    algorithm = {i.name.meaning: [] for i in group[0].ContentSequence}
    for item in group[0].ContentSequence:
        algorithm[item.name.meaning].append(getattr(item, "value", None))
    card_sha256 = hashlib.sha256((DEFAULT_BUNDLE / "model.json").read_bytes()).hexdigest()
    assert algorithm["Algorithm Name"] == ["cnn-bilstm-demo"]
    assert algorithm["Algorithm Version"] == [doc["model"]["version"]]
    assert f"model card sha256 {card_sha256}" in algorithm["Algorithm Parameters"]
    [observer] = report.content.get_observer_contexts()
    assert observer.observer_identifying_attributes.name == "CTEDGE"


def test_the_secondary_capture_carries_the_patient_and_study_of_its_source_and_references_it(analysed):
    study, result = analysed
    doc = json.loads((result / "result.json").read_text())
    objects = result_objects(result, study)
    headers = source_headers(study)
    for sc, heatmap in zip(objects[1:], doc["heatmaps"], strict=True):
        source = headers[heatmap["file"]]
        for key, value in SOURCE_ATTRIBUTES.items():
            assert sc.get(key) == value, key
        assert (sc.PatientID, sc.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        [reference] = sc.SourceImageSequence
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == \
            (source.SOPClassUID, source.SOPInstanceUID)
        assert "Laterality" not in sc and sc.BodyPartExamined == "CHEST"   # the chest is not a paired body part
    assert objects[0].PatientAge == "061Y" and objects[0].IssuerOfPatientID == "HOSPITAL-A"   # the SR too


@pytest.mark.external
@needs_dciodvfy
def test_dciodvfy_finds_no_error_and_no_warning_but_the_private_scheme(analysed, tmp_path):
    study, result = analysed
    for n, ds in enumerate(result_objects(result, study)):
        path = written(ds, tmp_path / f"{n}.dcm")
        assert dciodvfy_errors(path) == [], ds.Modality
        assert [w for w in dciodvfy_warnings(path) if f"<{SCHEME}>" not in w] == [], ds.Modality


@pytest.mark.shared_data
@pytest.mark.external
@needs_dciodvfy
def test_a_secondary_capture_of_a_real_slice_copies_its_patient_and_study(analysed, shared_data, tmp_path):
    _, result = analysed
    slice_file = sorted((shared_data / "Normal_normal001").glob("*.dcm"))[70]
    ref = pydicom.dcmread(slice_file, stop_before_pixels=True)
    png = result / json.loads((result / "result.json").read_text())["heatmaps"][0]["png"]
    sc = secondary_capture(png, ref, pydicom.uid.generate_uid(), 1)
    for key in ("PatientID", "PatientAge", "PatientSex", "StudyDescription", "StudyDate", "StudyID", "AccessionNumber",
                "SpecificCharacterSet"):
        assert sc.get(key) == ref.get(key), key
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID
    path = written(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(path) == [] and dciodvfy_warnings(path) == []


def code_of_name(item: pydicom.Dataset) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning


def code_of_unit(value: pydicom.Dataset) -> tuple[str, str, str]:
    unit = value.MeasurementUnitsCodeSequence[0]
    return unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning


def test_the_sr_carries_each_typed_warning_and_how_the_groups_agree(analysed):
    """Every typed warning of the result (docs/series-rules.md) and the agreement sentence reach PACS
    in the Qualitative Evaluations container, not only the result page."""
    study, result = analysed
    doc = json.loads((result / "result.json").read_text())
    doc["flags"] = [{"code": "gap", "message": "1 gap(s) larger than 1.5 times the median spacing"},
                    {"code": "lossy", "message": "lossy compressed input"}]
    doc["agreement"] = {"unit": "group", "n": 3, "for_verdict": 2, "votes": {"covid": 2, "healthy": 1},
                        "level": "split", "text": "2 of 3 groups call it covid; healthy 1: the groups disagree",
                        "rule": "split rule"}
    sr = structured_report(doc, [pydicom.dcmread(next(study.iterdir()), stop_before_pixels=True)])
    texts = {(item.ConceptNameCodeSequence[0].CodeValue, item.TextValue) for item in sr_items(sr) if item.ValueType == "TEXT"}
    assert ("INPUT-WARNING", "gap: 1 gap(s) larger than 1.5 times the median spacing") in texts
    assert ("INPUT-WARNING", "lossy: lossy compressed input") in texts
    assert ("AGREEMENT", "2 of 3 groups call it covid; healthy 1: the groups disagree") in texts
