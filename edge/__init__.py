"""Edge runtime for chest-CT pneumonia triage: DICOM in, patient verdict out, no TensorFlow needed."""

__version__ = "0.3.0"

CLASSES: tuple[str, ...] = ("covid", "other_pneumonia", "healthy")
"""Class names, in the order of every probability vector in this package."""
