"""The model card (``model.json``): the contract between training and the edge, parsed in one place.

Training writes it from the options it actually used (``training.train`` saves them in the run
folder, ``ctedge quantize`` copies them into the bundle); the edge builds its pipeline from it, so
what the model was trained on and what the edge feeds it cannot drift apart. A card records:

- identity: ``name``, ``version``, ``classes``, ``status`` (``clinical``, ``research``: trained on public
  data, ``demonstration``: a handful of patients, ``placeholder``: untrained; cards without it give it by
  the booleans ``demonstration`` and ``placeholder``, which every card still carries for older versions),
  ``note``; for a model trained on public collections ``training_data`` (sources with counts per class,
  licences, ``non_commercial``, ``manifest_sha256``) and ``known_biases`` (sentences);
- what it reads and how it is run: ``modality`` (``ct`` or ``xray``, fixed by the kind, see
  ``KIND_MODALITY``) and ``kind`` (``group``: a CNN encoder and
  a sequence head over groups of slices, voted to a patient verdict; ``slice``: one 2-D classifier
  applied to every selected slice, its ``patient_rule`` turning the slice probabilities into a
  verdict, see ``edge.vote.PatientRule``; ``image``: one 2-D classifier applied to one chest
  radiograph, its argmax the verdict); ``classes`` are ``covid, other_pneumonia, healthy``, or
  for a slice model two names, the second the negative class (e.g. ``infection, none``);
- ``preprocessing``: every option that decides the model input (``edge.options.PipelineOptions``;
  an ``image`` model uses only ``input_size``: grey to three channels and normalisation are layers
  of the model itself, see ``training.archs``);
- ``training_range``: the slice thickness and pixel spacing (mm) of the training studies; a study
  outside it gets a warning;
- the files: ``variants`` (per variant, ``encoder`` + ``head`` TFLite for a group model, ``model``
  for a slice model), ``explain`` (Grad-CAM models),
  ``onnx``, ``edgetpu``; provenance: ``calibration``, ``trained_with``, ``converted_with``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import CLASSES
from edge.errors import ModelLoadError
from edge.options import PipelineOptions
from edge.vote import PatientRule

CARD_FILE = "model.json"
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "demo"
"""The bundled demonstration model: what commands run without ``--config`` or ``--model``."""
KINDS = ("group", "slice", "image")
PARTS = {"group": ("encoder", "head"), "slice": ("model",), "image": ("model",)}   # the model files of each variant, by kind
MODALITIES = ("ct", "xray")
KIND_MODALITY = {"group": "ct", "slice": "ct", "image": "xray"}   # what a study of each kind is
DEMONSTRATION_BANNER = "DEMONSTRATION MODEL - NOT FOR CLINICAL USE"
PLACEHOLDER_BANNER = "PLACEHOLDER MODEL (UNTRAINED) - NOT FOR CLINICAL USE"
RESEARCH_BANNER = "RESEARCH MODEL - TRAINED ON PUBLIC DATA, NOT VALIDATED FOR CLINICAL USE"
BANNERS = {"clinical": "", "research": RESEARCH_BANNER, "demonstration": DEMONSTRATION_BANNER,
           "placeholder": PLACEHOLDER_BANNER}
STATUSES = tuple(BANNERS)
TRAINING_DATA_KEYS = ("sources", "licences", "non_commercial", "manifest_sha256")
DEMONSTRATION_NOTE = ("Demonstration model trained on very few patients; it shows the pipeline working end to end "
                      "and has no clinical validity. Not for clinical use.")


def banner_for(status: str) -> str:
    """The warning every output of a model of ``status`` shows ('' for a clinical model): the one source of that text."""
    return BANNERS[status]


def training_data_summary(training_data: dict[str, Any] | None) -> str:
    """One line on what a model was trained on, e.g. ``1200 images from 3 sources (hannover: covid 243; ...);
    licences: CC BY 3.0 (243), ...; includes images under non-commercial terms``; '' without training data."""
    if not training_data:
        return ""
    sources = training_data["sources"]
    total = sum(sum(counts.values()) for counts in sources.values())
    parts = "; ".join(f"{source}: " + ", ".join(f"{c} {n}" for c, n in counts.items()) for source, counts in sources.items())
    licences = ", ".join(f"{licence} ({n})" for licence, n in training_data["licences"].items())
    terms = "; includes images under non-commercial terms" if training_data["non_commercial"] else ""
    return f"{total} images from {len(sources)} source{'s' if len(sources) != 1 else ''} ({parts}); licences: {licences}{terms}"


@dataclass(frozen=True)
class ModalityTerms:
    """How outputs name a modality and one image of its studies."""

    name: str       # CT, X-ray
    image: str      # one image of a study: slice, radiograph


MODALITY_TERMS = {"ct": ModalityTerms("CT", "slice"), "xray": ModalityTerms("X-ray", "radiograph")}


def modality_names(modalities: Iterable[str]) -> str:
    """Modalities as outputs name them, e.g. what a device reads: ``CT, X-ray``."""
    return ", ".join(MODALITY_TERMS[m].name for m in modalities)


@dataclass(frozen=True)
class Range:
    """A closed interval of a physical quantity (mm) seen in training."""

    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low - 1e-6 <= value <= self.high + 1e-6

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class TrainingRange:
    """Slice thickness and in-plane pixel spacing (mm) of the studies a model was trained on."""

    slice_thickness_mm: Range | None = None
    pixel_spacing_mm: Range | None = None

    def warnings(self, slice_thickness_mm: float | None, pixel_spacing_mm: float | None) -> list[str]:
        """A warning for each study geometry value outside the training range."""
        out = []
        for label, value, seen in (("slice thickness", slice_thickness_mm, self.slice_thickness_mm),
                                   ("pixel spacing", pixel_spacing_mm, self.pixel_spacing_mm)):
            if value is not None and seen is not None and value not in seen:
                out.append(f"{label} {value:g} mm is outside the range the model was trained on "
                           f"({seen.low:g}-{seen.high:g} mm): its verdict on this study is less certain")
        return out

    @classmethod
    def of(cls, thickness: list[float], spacing: list[float]) -> TrainingRange:
        """The range spanned by the given values (empty lists give no range)."""
        return cls(Range(min(thickness), max(thickness)) if thickness else None,
                   Range(min(spacing), max(spacing)) if spacing else None)

    def to_dict(self) -> dict[str, list[float] | None]:
        return {k: None if v is None else v.to_list() for k, v in
                (("slice_thickness_mm", self.slice_thickness_mm), ("pixel_spacing_mm", self.pixel_spacing_mm))}


@dataclass(frozen=True)
class ModelCard:
    """A parsed, validated ``model.json``; ``path`` is the card file, ``bundle`` its folder."""

    path: Path
    name: str
    version: str
    classes: tuple[str, ...]
    status: str                                            # one of STATUSES
    note: str
    preprocessing: PipelineOptions
    training_range: TrainingRange
    variants: dict[str, dict[str, str]]
    kind: str = "group"
    modality: str = "ct"
    explain: dict[str, str] | None = None
    patient_rule: PatientRule | None = None                # slice models only
    validations: tuple[dict[str, Any], ...] = ()           # site validations recorded by ctedge validate --record
    training_data: dict[str, Any] | None = None            # research models: see TRAINING_DATA_KEYS
    known_biases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)    # provenance, onnx, edgetpu: kept as written

    @property
    def bundle(self) -> Path:
        return self.path.parent

    @property
    def banner(self) -> str:
        """The warning every output of this model carries ('' for a validated clinical model)."""
        return banner_for(self.status)

    def files(self, variant: str) -> dict[str, Path]:
        """The model files of ``variant`` (``encoder``, ``head``); ModelLoadError when absent or missing."""
        if variant not in self.variants:
            hint = " (compile the int8 encoder with edgetpu_compiler, see docs/models.md: Accelerators)" if variant == "edgetpu" else ""
            raise ModelLoadError(self.path, f"no {variant!r} variant{hint}; available: {', '.join(self.variants)}")
        files = {part: self.bundle / name for part, name in self.variants[variant].items()}
        for part, file in files.items():
            if not file.is_file():
                raise ModelLoadError(self.path, f"the {variant} {part} model file {file} is missing")
        return files

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the card (what :func:`write_card` writes)."""
        doc = {"name": self.name, "version": self.version, "kind": self.kind, "modality": self.modality,
               "classes": list(self.classes),
               "status": self.status, "demonstration": self.status != "clinical",
               "placeholder": self.status == "placeholder", "note": self.note,
               "preprocessing": self.preprocessing.model_input() | {"override": self.preprocessing.override},
               "training_range": self.training_range.to_dict(), "variants": self.variants}
        if self.patient_rule:
            doc["patient_rule"] = self.patient_rule.to_dict()
        if self.explain:
            doc["explain"] = self.explain
        if self.validations:
            doc["validations"] = list(self.validations)
        if self.training_data:
            doc["training_data"] = self.training_data
        if self.known_biases:
            doc["known_biases"] = list(self.known_biases)
        return doc | self.extra


_REQUIRED = ("name", "version", "classes", "preprocessing", "variants")
_KNOWN = set(_REQUIRED) | {"status", "demonstration", "placeholder", "note", "training_range", "explain", "kind",
                            "modality", "validations", "patient_rule", "training_data", "known_biases"}


def parse_card(doc: Any, path: Path) -> ModelCard:
    """Validate a card document; ModelLoadError names the file and the key."""
    if not isinstance(doc, dict):
        raise ModelLoadError(path, "the model card must be a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        hint = " (cards written before 0.3 lack it: re-export the bundle with ctedge quantize)" \
            if missing[0] == "preprocessing" else ""
        raise ModelLoadError(path, f"model card has no {missing[0]!r}{hint}")
    for key, allowed in (("kind", KINDS), ("modality", MODALITIES)):
        if doc.get(key, allowed[0]) not in allowed:
            raise ModelLoadError(path, f"{key} {doc[key]!r} is not supported by this ctedge version "
                                       f"(supported: {', '.join(allowed)})")
    kind = doc.get("kind", KINDS[0])
    modality = doc.get("modality", KIND_MODALITY[kind])
    if modality != KIND_MODALITY[kind]:
        raise ModelLoadError(path, f"kind {kind!r} reads {KIND_MODALITY[kind]} studies, not modality {modality!r}")
    classes = _classes(doc["classes"], kind, path)
    rule = _patient_rule(doc.get("patient_rule"), kind, path)
    preprocessing = doc["preprocessing"]
    fields = {f.name: f.type for f in dataclasses.fields(PipelineOptions)}
    if not isinstance(preprocessing, dict) or set(preprocessing) - set(fields):
        raise ModelLoadError(path, f"preprocessing must be an object with keys from {', '.join(fields)}")
    try:
        options = PipelineOptions(**preprocessing)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(path, f"preprocessing: {exc}") from exc
    ranges = doc.get("training_range") or {}
    try:
        training_range = TrainingRange(*(Range(*ranges[k]) if ranges.get(k) else None
                                         for k in ("slice_thickness_mm", "pixel_spacing_mm")))
    except TypeError as exc:
        raise ModelLoadError(path, f"training_range: each value must be [low, high] in mm ({exc})") from exc
    variants = doc["variants"]
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ModelLoadError(path, "variants must map each variant name to its model files")
    for variant, files in variants.items():
        if any(part not in files for part in PARTS[kind]):
            raise ModelLoadError(path, f"variant {variant!r} must name the {' and '.join(PARTS[kind])} file(s) "
                                       f"of a {kind} model, got {', '.join(files) or 'none'}")
    return ModelCard(path=path, name=str(doc["name"]), version=str(doc["version"]), classes=classes,
                     status=_status(doc, path), note=str(doc.get("note", "")), preprocessing=options, training_range=training_range,
                     variants=variants, explain=doc.get("explain"), kind=kind, patient_rule=rule,
                     modality=modality, validations=tuple(doc.get("validations") or ()),
                     training_data=_training_data(doc.get("training_data"), path),
                     known_biases=_known_biases(doc.get("known_biases"), path),
                     extra={k: v for k, v in doc.items() if k not in _KNOWN})


def _status(doc: dict[str, Any], path: Path) -> str:
    """The card's status: ``status`` if given, else from the booleans of older cards (``placeholder``,
    ``research``, ``demonstration`` (default true), else clinical)."""
    if "status" in doc:
        if doc["status"] not in STATUSES:
            raise ModelLoadError(path, f"status {doc['status']!r} must be one of {', '.join(STATUSES)}")
        return doc["status"]
    for status in ("placeholder", "research"):
        if doc.get(status):
            return status
    return "demonstration" if doc.get("demonstration", True) else "clinical"


def _training_data(value: Any, path: Path) -> dict[str, Any] | None:
    """The card's ``training_data`` (None when absent); ModelLoadError on a malformed one."""
    if value is None:
        return None
    ok = (isinstance(value, dict) and set(TRAINING_DATA_KEYS) <= set(value)
          and isinstance(value["sources"], dict) and isinstance(value["licences"], dict)
          and all(isinstance(c, dict) and all(isinstance(n, int) for n in c.values()) for c in value["sources"].values())
          and all(isinstance(n, int) for n in value["licences"].values()) and isinstance(value["non_commercial"], bool))
    if not ok:
        raise ModelLoadError(path, "training_data must be an object with sources ({source: {class: count}}), "
                                   "licences ({licence: count}), non_commercial (true/false) and manifest_sha256")
    return value


def _known_biases(value: Any, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelLoadError(path, "known_biases must be a list of sentences")
    return tuple(value)


def _classes(value: Any, kind: str, path: Path) -> tuple[str, ...]:
    """The card's classes: CLASSES, or for a slice model two distinct names (negative class last)."""
    if isinstance(value, list) and tuple(value) == CLASSES:
        return CLASSES
    if kind == "slice" and isinstance(value, list) and len(value) == 2 and len(set(value)) == 2 \
            and all(isinstance(c, str) and c for c in value):
        return tuple(value)
    two = " or two distinct names, the negative class second" if kind == "slice" else ""
    raise ModelLoadError(path, f"classes {value} must be {list(CLASSES)}{two}")


def _patient_rule(value: Any, kind: str, path: Path) -> PatientRule | None:
    """The slice model's patient rule (required for ``slice``, refused for ``group``)."""
    if kind != "slice":
        if value is not None:
            raise ModelLoadError(path, f"patient_rule applies to slice models only, not to kind {kind!r}")
        return None
    if not isinstance(value, dict) or set(value) != {"name", "threshold"}:
        raise ModelLoadError(path, "a slice model needs patient_rule: {\"name\": \"fraction\" or \"mean\", "
                                   "\"threshold\": number}")
    try:
        return PatientRule(str(value["name"]), float(value["threshold"]))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(path, f"patient_rule: {exc}") from exc


def load_card(bundle: str | Path) -> ModelCard:
    """Read ``bundle/model.json`` (or a card file given directly); ModelLoadError names the file."""
    path = Path(bundle)
    path = path if path.suffix == ".json" else path / CARD_FILE
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the model card ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ModelLoadError(path, f"the model card is not valid JSON ({exc})") from exc
    return parse_card(doc, path)


def write_card(card: ModelCard) -> Path:
    """Write ``card`` to its ``path`` atomically (a temporary file renamed over it, an existing file's
    mode kept); return the path."""
    card.path.parent.mkdir(parents=True, exist_ok=True)
    mode = card.path.stat().st_mode & 0o777 if card.path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=card.path.parent, prefix=f".{CARD_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(card.to_dict(), indent=2) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, card.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return card.path
