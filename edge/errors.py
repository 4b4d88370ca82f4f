"""Typed errors for bad studies. Every message names the file (or folder) and the problem."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Something the user gave (a study, a model, a setting) cannot be used; ``path`` names it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:
        """Pickled as its arguments: a worker process raises it to its parent (``edge.ingest.parallel``)."""
        return type(self), (self.path, self.problem)


class StudyError(UserError):
    """A study (or one of its files) cannot be used."""


class ModelLoadError(UserError):
    """A model file, model card or runtime that cannot be used."""


class EmptyStudyError(StudyError):
    """No file in the study could be read as a CT slice."""


class NotDicomError(StudyError):
    """The file is neither DICOM nor a supported image."""


class NoPixelDataError(StudyError):
    """A DICOM file without (7FE0,0010) Pixel Data."""


class UnsupportedTransferSyntaxError(StudyError):
    """The pixel data is encoded in a transfer syntax no installed decoder handles."""


class CorruptFileError(StudyError):
    """A truncated or otherwise undecodable file."""


class FileTooLargeError(StudyError):
    """A file (or archive member) larger than the configured limit."""


class UnsafeArchiveError(StudyError):
    """A zip with members outside its root (zip-slip) or an implausible compression ratio."""


class MixedSizesError(StudyError):
    """Slices of one series have different pixel matrices."""


class TooFewSlicesError(StudyError):
    """A series with a single slice: a CT volume is needed."""


class NoUsableSeriesError(StudyError):
    """The study has DICOM series, but none is an axial CT series."""


class NoLungFoundError(StudyError):
    """Slice selection found no slice with lung in the chosen series."""


class GeometryError(StudyError):
    """The slices of the series cannot be stacked into a trustworthy volume: no usable order, a gap
    too large, a gantry tilt too steep (the rules and thresholds are in docs/series-rules.md)."""


class OutsideIntendedUseError(StudyError):
    """The study is not what the model reads (a chest CT, or a frontal chest radiograph): another
    body part, no lung, an image too small. No verdict is given."""
