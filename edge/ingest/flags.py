"""Typed warnings about a study's input: a code a program can act on, the sentence a person reads,
and details (files, positions, sizes). docs/series-rules.md states the rule behind each code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from edge.result import DroppedFileDoc, FlagDoc

CODES = {
    "scout_dropped": "a localizer (scout) image inside the series was dropped",
    "odd_image_dropped": "an image whose type, modality or orientation differs from its series was dropped",
    "no_position_dropped": "an image without ImagePositionPatient in a series whose other images have it was dropped",
    "duplicate_dropped": "a second copy of an image (same instance or same pixels at one position) was dropped",
    "duplicate_position": "images at one position hold different pixels: the position was left out",
    "no_position": "the series has no ImagePositionPatient: the order used is stated",
    "gap": "a spacing between neighbouring slices larger than the series' usual spacing",
    "gantry_tilt": "slices acquired with a tilted gantry: the volume is sheared, not resampled",
    "no_modality": "the images carry no Modality; read as CT (SOP class CT Image Storage or not recorded)",
    "body_part": "BodyPartExamined is neither a chest value nor a known other region",
    "short_extent": "the series covers less of the body (along z) than a chest CT",
    "lossy": "the pixel data was lossy compressed",
    "view_unknown": "a radiograph without a PA/AP view position",
    "outside_training_range": "slice thickness or pixel spacing outside the model's training range",
}
"""Every warning code, with what it means."""


@dataclass(frozen=True)
class Flag:
    """One typed warning: ``code`` (one of CODES), ``message`` for people, ``details`` for programs."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown warning code {self.code!r}")

    def to_dict(self) -> FlagDoc:
        return cast(FlagDoc, {"code": self.code, "message": self.message, **self.details})


@dataclass(frozen=True)
class DroppedFile:
    """A file of the chosen series that was not read into the volume, and why."""

    file: str
    code: str       # one of CODES
    reason: str

    def to_dict(self) -> DroppedFileDoc:
        return {"file": self.file, "code": self.code, "reason": self.reason}


LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.100": "MPEG2", "1.2.840.10008.1.2.4.102": "MPEG-4",
}
"""Transfer syntaxes whose pixels are always lossy compressed."""
MAYBE_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2", "1.2.840.10008.1.2.4.203": "HTJ2K",
}
"""Transfer syntaxes that allow lossy compression: lossy unless the image says LossyImageCompression 00."""


def lossy_flag(headers: list[tuple[str, Any]]) -> Flag | None:
    """A ``lossy`` flag when any of the (file name, header) pairs says LossyImageCompression 01, or
    is stored in a lossy transfer syntax (LOSSY_SYNTAXES, or MAYBE_LOSSY_SYNTAXES without
    LossyImageCompression 00); None otherwise."""
    marked, syntaxes = [], set()
    for name, ds in headers:
        said = str(ds.get("LossyImageCompression", "") or "").strip()
        syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
        if said == "01":
            marked.append(name)
        if syntax in LOSSY_SYNTAXES or (syntax in MAYBE_LOSSY_SYNTAXES and said != "00"):
            syntaxes.add({**LOSSY_SYNTAXES, **MAYBE_LOSSY_SYNTAXES}[syntax])
    if not marked and not syntaxes:
        return None
    parts = ([f"{len(marked)} of {len(headers)} image(s) say LossyImageCompression 01 (first: {marked[0]})"]
             if marked else []) + ([f"stored as {', '.join(sorted(syntaxes))}"] if syntaxes else [])
    return Flag("lossy", "lossy compressed input (" + "; ".join(parts) + "): pixel values differ from the "
                "acquisition, and the model was not trained on such images", {"files": marked[:20],
                                                                               "transfer_syntaxes": sorted(syntaxes)})
