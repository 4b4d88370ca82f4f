"""The DICOM objects that carry a verdict back into PACS, made with highdicom from a result folder.

* a Comprehensive SR: verdict, class probabilities, decision rule, model name and version, the
  demonstration flag (the model's warning banner when it has one), the model status (clinical, research,
  demonstration, placeholder) and what a research model was trained on, the modality of the source, and
  IMAGE references to the source instances that drove the verdict (those of the heatmaps; every
  image used when there are none: the CT slices, or the one radiograph);
* one Secondary Capture image per heatmap overlay of a group or slice that voted for the verdict
  (``edge.uncertainty.supports_verdict``), caption and warning banner burned in, in the patient
  orientation of its source image.

Both go into the source study (same StudyInstanceUID, patient and study attributes copied from the
source) as new series with new UIDs; Manufacturer, model name and software versions name ctedge.
Only the result document (``result.json``) and the source files are read, never engine internals.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import cv2
import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from edge import CLASSES, __version__
from edge.card import MODALITY_TERMS
from edge.dicomnet.receiver import is_uid
from edge.errors import UserError
from edge.result import load_result, modality_of
from edge.uncertainty import supports_verdict

SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SCHEME = "99CTEDGE"  # private coding scheme for the concepts no standard code names
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
"""The person names highdicom checks: one without a component delimiter (``ward``) makes it warn
with the name in the message, which would print it in the log."""


def _code(value: str, meaning: str, scheme: str = SCHEME) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, scheme, meaning)


FINDING = _code("121071", "Finding", "DCM")
ALGORITHM_NAME, ALGORITHM_VERSION = _code("111001", "Algorithm Name", "DCM"), _code("111003", "Algorithm Version", "DCM")
COMMENT, SOURCE_IMAGE = _code("121106", "Comment", "DCM"), _code("121112", "Source of Measurement", "DCM")
REPORT = _code("18748-4", "Diagnostic imaging report", "LN")
DECISION_RULE, DEMONSTRATION = _code("decision-rule", "Decision rule"), _code("demonstration-model", "Demonstration model")
VALIDATION = _code("validation-evidence", "Validation evidence")
MODEL_STATUS = _code("model-status", "Model status")     # clinical, research, demonstration or placeholder
NO_UNITS = _code("1", "no units", "UCUM")
MODALITY = _code("121139", "Modality", "DCM")
ACQUISITION_MODALITIES = {"CT": "Computed Tomography", "CR": "Computed Radiography", "DX": "Digital Radiography"}
"""DCM codes (CID 29) of the source modalities the receiver accepts."""


class NoDicomSourceError(UserError):
    """The analysed study has no DICOM instances to attach results to."""


def source_headers(study_dir: Path) -> dict[str, Dataset]:
    """The headers of the DICOM files of a study folder, by file name."""
    headers: dict[str, Dataset] = {}
    for path in sorted(p for p in Path(study_dir).rglob("*") if p.is_file()):
        try:
            headers[path.name] = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
    return headers


def result_objects(result_dir: Path, study_dir: Path) -> list[Dataset]:
    """The SR and the Secondary Capture images of one analysed study (the SR first)."""
    doc = load_result(result_dir)
    headers = source_headers(study_dir)
    driving = [s["file"] for h in doc.get("heatmaps", []) for s in h["sources"]] or [s["file"] for s in doc["slices_used"]]
    evidence = [_complete(headers[name]) for name in dict.fromkeys(driving) if name in headers]
    if not evidence:
        raise NoDicomSourceError(study_dir, "no DICOM source instance of the analysed images was found; "
                                            "results can only be sent for DICOM studies")
    for ds in evidence:
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not is_uid(ds.get(key)):
                raise NoDicomSourceError(study_dir, f"the source {key} {str(ds.get(key, ''))[:70]!r} is not a valid "
                                                    "DICOM UID: PACS would refuse results referencing it")
    objects: list[Dataset] = [structured_report(doc, evidence)]
    series_uid = generate_uid()
    for n, heatmap in enumerate([h for h in doc.get("heatmaps", []) if supports_verdict(doc, h)], start=1):
        ref = _complete(headers[heatmap["file"]]) if heatmap["file"] in headers else evidence[0]
        objects.append(secondary_capture(Path(result_dir) / heatmap["png"], ref, series_uid, n))
    return objects


def structured_report(doc: dict, evidence: list[Dataset]) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR of the result document, referencing ``evidence`` (the driving instances)."""
    model = doc["model"]
    demonstration = bool(model["banner"])
    modality = MODALITY_TERMS[modality_of(doc)].name
    items: list[Dataset] = [hd.sr.TextContentItem(FINDING, doc["label"], "CONTAINS")]
    items += [hd.sr.NumContentItem(_code(f"probability-{c}", f"Probability of {c}"), float(doc["probabilities"][c]),
                                   NO_UNITS, relationship_type="CONTAINS") for c in doc.get("classes", CLASSES)]
    items += [hd.sr.TextContentItem(DECISION_RULE, doc["decision_rule"][:1024], "CONTAINS"),
              hd.sr.TextContentItem(ALGORITHM_NAME, model["name"], "CONTAINS"),
              hd.sr.TextContentItem(ALGORITHM_VERSION, str(model["version"]), "CONTAINS"),
              hd.sr.TextContentItem(DEMONSTRATION, "yes" if demonstration else "no", "CONTAINS"),
              hd.sr.TextContentItem(VALIDATION, model["validation"][:1024], "CONTAINS")]
    if model.get("status"):      # results written before the status have none
        items.append(hd.sr.TextContentItem(MODEL_STATUS, model["status"], "CONTAINS"))
    if demonstration:
        trained_on = f" Trained on: {model['training_summary']}." if model.get("training_summary") else ""
        items.append(hd.sr.TextContentItem(COMMENT, f"{model['banner']}. {model['note']}{trained_on}"[:1024], "CONTAINS"))
    items += [hd.sr.ImageContentItem(SOURCE_IMAGE, ds.SOPClassUID, ds.SOPInstanceUID, relationship_type="CONTAINS")
              for ds in evidence]
    source = str(evidence[0].get("Modality", ""))
    if source in ACQUISITION_MODALITIES:
        items.append(hd.sr.CodeContentItem(MODALITY, _code(source, ACQUISITION_MODALITIES[source], "DCM"), "CONTAINS"))
    root = hd.sr.ContainerContentItem(REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items)  # type: ignore[arg-type]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="ctedge", is_complete=True,
        series_description=f"ctedge {modality} verdict{' (not for clinical use)' if demonstration else ''}"[:64])
    _name_device(sr)
    return sr


def secondary_capture(png: Path, ref: Dataset, series_uid: str, number: int) -> hd.sc.SCImage:
    """One heatmap overlay (with its burned-in caption and banner) of the source image ``ref`` as an
    RGB Secondary Capture image."""
    picture = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if picture is None:
        raise UserError(png, "the heatmap image cannot be read")
    orientation = patient_orientation(ref)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", patient_orientation=orientation or ("L", "P"),  # emptied below
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=number, manufacturer="ctedge", series_description="ctedge heatmaps")
    if orientation is None:
        sc.PatientOrientation = ""  # type: ignore[assignment]  # type 2C: known to be present, its value unknown
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = ""  # type 2C in General Series: the chest is not a paired body part
    _name_device(sc)
    return sc


def patient_orientation(ref: Dataset) -> tuple[str, str] | None:
    """The patient directions of the rows and columns of a source image (the overlay keeps them): its
    Patient Orientation (a radiograph), else the main axes of its Image Orientation (Patient) (a CT
    slice); None when it records neither."""
    given = [str(v).strip() for v in ref.get("PatientOrientation") or []]
    if len(given) == 2 and all(given):
        return given[0][0], given[1][0]  # the main direction of each (an oblique one lists more letters)
    cosines = [float(v) for v in ref.get("ImageOrientationPatient") or []]
    if len(cosines) != 6:
        return None
    return _direction(cosines[:3]), _direction(cosines[3:])


def _direction(cosine: list[float]) -> str:
    """The patient direction (L/R, P/A, H/F) that a direction cosine mainly points to."""
    axis = max(range(3), key=lambda i: abs(cosine[i]))
    return ("LR", "PA", "HF")[axis][0 if cosine[axis] > 0 else 1]


def _name_device(ds: Dataset) -> None:
    ds.Manufacturer = "ctedge"
    ds.ManufacturerModelName = "ctedge"
    ds.SoftwareVersions = __version__


def _complete(header: Dataset) -> Dataset:
    """A copy of a source header with the type 2 patient/study attributes highdicom copies present,
    and its person names in the form highdicom expects (see ``_PERSON_NAMES``)."""
    ds = deepcopy(header)
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    for key in _PERSON_NAMES:
        ds[key].value = _delimited(str(ds[key].value or ""))
    return ds


def _delimited(name: str) -> str:
    """A person name with its component delimiter: ``ward`` (a family name alone) as ``ward^``, the
    same name in DICOM (trailing delimiters may be omitted), which highdicom accepts silently."""
    if not name or "^" in name:
        return name
    alphabetic, _, others = name.partition("=")
    return f"{alphabetic}^={others}" if "=" in name else f"{name}^"
