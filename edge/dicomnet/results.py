"""The DICOM objects that carry a verdict back into PACS, made with highdicom from a result folder.

* a Comprehensive SR following TID 1500 (Measurement Report): the device observer (the AE title),
  the procedure, an image library of the source instances the verdict was computed from (the CT
  slices used, or the one radiograph), one
  measurement group with the verdict as a SNOMED CT finding, the algorithm identification (TID 4019:
  name, version, the model card's sha256) and the class probabilities, and under "Qualitative
  Evaluations" the decision rule, the model status (clinical, research, demonstration, placeholder),
  its validation evidence and the warning banner with what a research model was trained on;
* one Secondary Capture image per heatmap overlay of a group or slice that voted for the verdict
  (``edge.uncertainty.supports_verdict``), caption and warning banner burned in, in the
  patient orientation of its source image, which it references (Source Image Sequence).

Both go into the source study (same StudyInstanceUID, the patient and study modules copied from the
source) as new series with new UIDs; Manufacturer, model name and software versions name ctedge.
Only the result document (``result.json``) and the source files are read, never engine internals.
The tree and every code: docs/conformance.md (tests/test_conformance.py keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Collection
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
from edge.result import ResultDoc, load_result
from edge.uncertainty import supports_verdict

SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SCHEME = "99CTEDGE"  # private coding scheme for the concepts no standard code names (code values <= 16 characters)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
"""The person names highdicom checks: one without a component delimiter (``ward``) makes it warn
with the name in the message, which would print it in the log."""


def _code(value: str, meaning: str, scheme: str = SCHEME) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, scheme, meaning)


FINDINGS = {"covid": _code("882784691000119100", "Pneumonia caused by SARS-CoV-2", "SCT"),
            "other_pneumonia": _code("233604007", "Pneumonia", "SCT"),
            "healthy": _code("17621005", "Normal", "SCT")}
"""The SNOMED CT concepts of the verdict classes; a class of another card (a slice model's ``non_covid``)
gets a private code. The COVID-19 code (SNOMED CT US extension, a child of 233604007 Pneumonia) has
18 digits: DICOM stores it in Long Code Value, the standard place for such SNOMED identifiers."""
PROBABILITY_CODES = {"covid": "P-COVID", "other_pneumonia": "P-PNEUMONIA", "healthy": "P-HEALTHY"}
"""Private code values of the class probabilities (no standard concept names the probability of one class)."""
REPORT_TITLE = _code("126000", "Imaging Measurement Report", "DCM")
PROCEDURES = {"ct": _code("169069000", "CT of chest", "SCT"), "xray": _code("399208008", "Plain X-ray of chest", "SCT")}
QUALITATIVE_EVALUATIONS = _code("C0034375", "Qualitative Evaluations", "UMLS")   # TID 1500 row 12
COMMENT = _code("121106", "Comment", "DCM")
DECISION_RULE, VALIDATION = _code("DECISION-RULE", "Decision rule"), _code("VALIDATION", "Validation evidence")
MODEL_STATUS = _code("MODEL-STATUS", "Model status")     # clinical, research, demonstration or placeholder
AGREEMENT = _code("AGREEMENT", "Agreement of groups or slices")   # edge.uncertainty.agreement
INPUT_WARNING = _code("INPUT-WARNING", "Input warning")   # a typed warning of the study (edge.ingest.flags)
NO_UNITS, PIXELS = _code("1", "no units", "UCUM"), _code("{pixels}", "Pixels", "UCUM")
SOURCE = _code("260753009", "Source", "SCT")   # an image library entry (not "Source of Measurement")
MODALITY = _code("121139", "Modality", "DCM")
ACQUISITION_MODALITIES = {"CT": "Computed Tomography", "CR": "Computed Radiography", "DX": "Digital Radiography"}
"""DCM codes (CID 29) of the source modalities the receiver accepts."""
LIBRARY_DESCRIPTORS = ("Modality", "FrameOfReferenceUID", "Rows", "Columns")
"""The header attributes the image library's descriptors (TID 1602) come from: one group per distinct set."""
TRACKING_ID = "ctedge verdict"
PRIVATE_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(SCHEME, name="ctedge private concepts",
                                                                   responsible_organization="ctedge")


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The coded concept of a verdict class."""
    return FINDINGS.get(label) or _code(label.upper()[:16], label)


def probability_code(label: str) -> hd.sr.CodedConcept:
    """The concept name of the probability of a class."""
    return _code(PROBABILITY_CODES.get(label) or f"P-{label.upper()[:14]}", f"Probability of {label}")


def device_observer_uid(ae_title: str) -> str:
    """The UID that names this device as the SR observer: the same for every report of one AE title."""
    return generate_uid(entropy_srcs=["ctedge device observer", ae_title])


class NoDicomSourceError(UserError):
    """The analysed study has no DICOM instances to attach results to."""


def source_headers(study_dir: Path, names: Collection[str] | None = None) -> dict[str, Dataset]:
    """The headers of the DICOM files of a study folder (only those named ``names``, when given), by file name."""
    headers: dict[str, Dataset] = {}
    for path in sorted(p for p in Path(study_dir).rglob("*") if p.is_file() and (names is None or p.name in names)):
        try:
            headers[path.name] = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
    return headers


def result_objects(result_dir: Path, study_dir: Path, ae_title: str = "CTEDGE") -> list[Dataset]:
    """The SR and the Secondary Capture images of one analysed study (the SR first); ``ae_title``
    names this device as the observer in the SR."""
    return [report_object(load_result(result_dir), study_dir, ae_title), *heatmap_objects(result_dir, study_dir)]


def report_object(doc: ResultDoc, study_dir: Path, ae_title: str = "CTEDGE") -> hd.sr.ComprehensiveSR:
    """The SR of a study's result document (the ``ctedge predict --json`` object is enough: it is sent
    before the heatmaps are made), its image library the source instances of every image the verdict
    was computed from; ``ae_title`` names this device as the observer."""
    used = list(dict.fromkeys(s["file"] for s in doc["slices_used"]))
    headers = source_headers(study_dir, set(used))
    evidence = [headers[name] for name in used if name in headers]
    if not evidence:
        raise NoDicomSourceError(study_dir, "no DICOM source instance of the analysed images was found; "
                                            "results can only be sent for DICOM studies")
    for ds in evidence:
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not is_uid(ds.get(key)):
                raise NoDicomSourceError(study_dir, f"the source {key} {str(ds.get(key, ''))[:70]!r} is not a valid "
                                                    "DICOM UID: PACS would refuse results referencing it")
    return structured_report(doc, evidence, ae_title=ae_title)


def heatmap_objects(result_dir: Path, study_dir: Path) -> list[hd.sc.SCImage]:
    """One Secondary Capture image per heatmap of a result folder that supports its verdict, in a new
    series, each referencing its DICOM source image (a heatmap whose source is not DICOM is left out)."""
    doc = load_result(result_dir)
    chosen = [h for h in doc.get("heatmaps", []) if supports_verdict(doc, h)]
    headers = source_headers(study_dir, {h["file"] for h in chosen})
    series_uid = generate_uid()
    return [secondary_capture(Path(result_dir) / h["png"], _complete(headers[h["file"]]), series_uid, n)
            for n, h in enumerate((h for h in chosen if h["file"] in headers), start=1)]


def structured_report(doc: ResultDoc, evidence: list[Dataset], *, ae_title: str = "CTEDGE") -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR of the result document following TID 1500 (Measurement Report), referencing
    ``evidence`` (the driving instances) in its image library; see docs/conformance.md for the tree."""
    model, modality = doc["model"], doc["modality"]
    evidence = [_complete(evidence[0]), *map(_reference, evidence[1:])]   # the SR's patient and study come from the first
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_observer_uid(ae_title), name=ae_title, manufacturer_name="ctedge",
                model_name=f"ctedge {__version__}"[:64]))),
        procedure_reported=PROCEDURES[modality], title=REPORT_TITLE, imaging_measurements=[verdict_group(doc)])
    content[0].ContentSequence.insert(-1, image_library(evidence))       # TID 1500 row 5, before the measurements
    content[0].ContentSequence.append(_qualitative_evaluations(doc))
    demonstration = bool(model["banner"])       # any model not validated for clinical use
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=content[0], series_instance_uid=generate_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="ctedge", is_complete=True,
        coding_schemes=[PRIVATE_SCHEME],
        series_description=f"ctedge {MODALITY_TERMS[modality].name} verdict"
                           f"{' (not for clinical use)' if demonstration else ''}"[:64])
    _name_device(sr)
    return sr


def verdict_group(doc: ResultDoc) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 measurement group of the verdict: the coded finding, the algorithm (TID 4019:
    name, version, the model card's sha256) and one probability per class, unit 1 (a fraction)."""
    model = doc["model"]
    parameters = [f"model card sha256 {model['card_sha256']}"] if model.get("card_sha256") else []
    parameters += [f"variant {model['variant']}"] if model.get("variant") else []
    algorithm = hd.sr.AlgorithmIdentification(name=model["name"][:64], version=str(model["version"])[:64],
                                              parameters=parameters or None, manufacturer="ctedge")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_ID),
        finding_type=finding_code(doc["label"]), algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=probability_code(c), value=float(doc["probabilities"][c]), unit=NO_UNITS)
                      for c in doc.get("classes", CLASSES)])


def image_library(evidence: list[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600: the source images as "Source" (SCT 260753009) entries, in one Image Library Group per
    series and matrix, whose descriptors (TID 1602: modality, frame of reference, matrix size, when the
    headers record them) all its images share."""
    groups: dict[tuple, list[Dataset]] = {}
    for ds in evidence:
        groups.setdefault((ds.get("SeriesInstanceUID"), *(str(ds.get(k, "")) for k in LIBRARY_DESCRIPTORS)), []).append(ds)
    library = hd.sr.ContainerContentItem(_code("111028", "Image Library", "DCM"), relationship_type="CONTAINS")
    library.ContentSequence = hd.sr.ContentSequence([_library_group(images) for images in groups.values()])
    return library


def _library_group(images: list[Dataset]) -> hd.sr.ContainerContentItem:
    ds = images[0]
    descriptors: list[hd.sr.ContentItem] = []
    if str(ds.get("Modality", "")) in ACQUISITION_MODALITIES:
        descriptors.append(hd.sr.CodeContentItem(MODALITY, _code(ds.Modality, ACQUISITION_MODALITIES[ds.Modality], "DCM"),
                                                 "HAS ACQ CONTEXT"))
    if is_uid(ds.get("FrameOfReferenceUID")):
        descriptors.append(hd.sr.UIDRefContentItem(_code("112227", "Frame of Reference UID", "DCM"),
                                                   ds.FrameOfReferenceUID, "HAS ACQ CONTEXT"))
    for name, key in (("Pixel Data Rows", "Rows"), ("Pixel Data Columns", "Columns")):
        if ds.get(key):
            code = _code("110910" if key == "Rows" else "110911", name, "DCM")
            descriptors.append(hd.sr.NumContentItem(code, int(ds[key].value), PIXELS, relationship_type="HAS ACQ CONTEXT"))
    entries = [hd.sr.ImageContentItem(SOURCE, im.SOPClassUID, im.SOPInstanceUID, relationship_type="CONTAINS")
               for im in images]
    group = hd.sr.ContainerContentItem(_code("126200", "Image Library Group", "DCM"), relationship_type="CONTAINS")
    group.ContentSequence = hd.sr.ContentSequence([*descriptors, *entries])
    return group


def _qualitative_evaluations(doc: ResultDoc) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the decision rule, how the groups or slices agree, the model status, its
    validation evidence, for a model not validated for clinical use its warning banner with what it was
    trained on, and each typed warning of the study (``code: message``)."""
    model = doc["model"]
    items = [hd.sr.TextContentItem(DECISION_RULE, doc["decision_rule"][:1024], "CONTAINS")]
    if agreement := doc.get("agreement"):
        items.append(hd.sr.TextContentItem(AGREEMENT, agreement["text"][:1024], "CONTAINS"))
    if model.get("status"):      # results written before the status have none
        items.append(hd.sr.TextContentItem(MODEL_STATUS, model["status"], "CONTAINS"))
    items.append(hd.sr.TextContentItem(VALIDATION, model["validation"][:1024], "CONTAINS"))
    if model["banner"]:
        trained_on = f" Trained on: {model['training_summary']}." if model.get("training_summary") else ""
        items.append(hd.sr.TextContentItem(COMMENT, f"{model['banner']}. {model['note']}{trained_on}"[:1024], "CONTAINS"))
    items += [hd.sr.TextContentItem(INPUT_WARNING, f"{flag['code']}: {flag['message']}"[:1024], "CONTAINS")
              for flag in doc.get("flags", [])]
    container = hd.sr.ContainerContentItem(QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def supersede(sr: Dataset, predecessor: dict) -> None:
    """Make ``sr`` the successor of the report ``predecessor`` (``study_uid``, ``series_uid``, ``sop_uid``,
    ``sop_class``, ``instance_number``, ``finished``) sent earlier for the same study: the same series with the
    next instance number, the Predecessor Documents Sequence naming it, and a comment saying so."""
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = predecessor["sop_class"], predecessor["sop_uid"]
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPSequence = predecessor["series_uid"], [sop]
    study = Dataset()
    study.StudyInstanceUID, study.ReferencedSeriesSequence = predecessor["study_uid"], [series]
    sr.PredecessorDocumentsSequence = [study]
    sr.SeriesInstanceUID, sr.InstanceNumber = predecessor["series_uid"], int(predecessor["instance_number"]) + 1
    evaluations = next((item for item in sr.ContentSequence
                        if item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value), sr)
    evaluations.ContentSequence.append(hd.sr.TextContentItem(COMMENT, (
        f"This report supersedes report {predecessor['sop_uid']} (instance {predecessor['instance_number']} of this "
        f"series, analysed {predecessor['finished']}): the study was analysed again after more images arrived.")[:1024],
        "CONTAINS"))


def secondary_capture(png: Path, ref: Dataset, series_uid: str, number: int) -> hd.sc.SCImage:
    """One heatmap overlay (with its burned-in caption and banner) of the source image ``ref`` as an
    RGB Secondary Capture image in the source's study, carrying its patient and study modules and
    referencing it (Source Image Sequence)."""
    picture = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if picture is None:
        raise UserError(png, "the heatmap image cannot be read")
    orientation = patient_orientation(ref)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", patient_orientation=orientation or ("L", "P"),  # emptied below
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=number, manufacturer="ctedge", series_description="ctedge heatmaps")
    sc.copy_patient_and_study_information(ref)
    if orientation is None:
        sc.PatientOrientation = ""  # type: ignore[assignment]  # type 2C: known to be present, its value unknown
    sc.BodyPartExamined = ref.get("BodyPartExamined") or "CHEST"  # what ctedge reads; names the part unpaired
    if ref.get("Laterality"):    # type 2C, for a paired body part only: absent for the chest
        sc.Laterality = ref.Laterality
    sc.DerivationDescription = "Grad-CAM heatmap of the ctedge verdict over the source image, caption burned in"
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
    sc.SourceImageSequence = [source]
    sc.BurnedInAnnotation = "YES"
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


def _reference(header: Dataset) -> Dataset:
    """The attributes of a source header that the SR's evidence and image library use."""
    ds = Dataset()
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", *LIBRARY_DESCRIPTORS):
        if key in header:
            ds[key] = deepcopy(header[key])
    return ds


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
