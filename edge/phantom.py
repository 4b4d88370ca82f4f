"""Synthetic chest-CT phantom: body, spine, mediastinum, two lungs, optional ground-glass and
consolidation blobs. Deterministic for a seed and fast, for unit tests and demos.

Test and demonstration tooling, not part of the runtime: nothing that ``ctedge predict``, the server
or the watcher loads imports it (``tests/test_card.py`` checks this).

Slice 0 is the most superior slice; z falls by the slice thickness per slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLossless,
                         JPEGLosslessSV1, generate_uid)

from edge.preprocess.window import lung_window

AIR, FAT, SOFT, BONE, LUNG, GGO, CONSOLIDATION = -1000.0, -100.0, 40.0, 700.0, -850.0, -500.0, 30.0


@dataclass(frozen=True)
class Phantom:
    hu: np.ndarray            # (n, size, size) float32
    lung_mask: np.ndarray     # (n, size, size) bool, lungs including lesions
    lesion_mask: np.ndarray   # (n, size, size) bool
    z_mm: np.ndarray          # (n,) strictly decreasing
    pixel_spacing_mm: float
    slice_thickness_mm: float


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_phantom(n_slices: int = 60, size: int = 512, slice_thickness_mm: float = 2.5, pixel_spacing_mm: float = 0.7,
                 ground_glass: int = 0, consolidation: int = 0, lung_extent: tuple[float, float] = (0.15, 0.85),
                 noise_hu: float = 20.0, seed: int = 0) -> Phantom:
    """Build a phantom; lungs exist on slices whose fractional position lies in ``lung_extent`` and
    their cross-section follows an ellipsoid profile (small at apex and base, largest in between).
    Half of the consolidation blobs (at least one when there are two or more) touch the lateral chest wall."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    body = _ellipse(yy, xx, c, c, 0.30 * size, 0.40 * size)
    inner = _ellipse(yy, xx, c, c, 0.28 * size, 0.38 * size)
    spine = _ellipse(yy, xx, c + 0.2 * size, c, 0.05 * size, 0.05 * size)
    heart = _ellipse(yy, xx, c + 0.02 * size, c + 0.03 * size, 0.12 * size, 0.09 * size)
    base = np.full((size, size), AIR, np.float32)
    base[body], base[inner], base[spine], base[heart] = FAT, SOFT, BONE, SOFT
    frac = np.linspace(0, 1, n_slices)
    top, bottom = lung_extent
    half = (bottom - top) / 2
    lung_centres = ((c, c - 0.19 * size), (c, c + 0.19 * size))
    lungs = np.zeros((n_slices, size, size), bool)
    for i, f in enumerate(frac):
        t = (f - (top + half)) / half if half > 0 else 2.0
        if abs(t) < 1:
            scale = np.sqrt(1 - t * t)
            for cy, cx in lung_centres:
                lungs[i] |= _ellipse(yy, xx, cy, cx, 0.22 * size * scale, 0.13 * size * scale)
    lungs &= inner & ~heart & ~spine
    hu = np.broadcast_to(base, lungs.shape).copy()
    hu[lungs] = LUNG
    lesions = _lesions(lungs, ground_glass, consolidation, slice_thickness_mm, pixel_spacing_mm, lung_centres, rng, hu)
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32) if noise_hu > 0 else 0.0
    z = -np.arange(n_slices, dtype=float) * slice_thickness_mm
    return Phantom(hu.astype(np.float32), lungs, lesions, z, pixel_spacing_mm, slice_thickness_mm)


def _lesions(lungs, n_ggo, n_cons, thickness, spacing, lung_centres, rng, hu) -> np.ndarray:
    n, size, _ = lungs.shape
    lesions = np.zeros_like(lungs)
    zz = np.arange(n)[:, None, None] * thickness
    yy, xx = (g[None] for g in np.mgrid[0:size, 0:size].astype(np.float32))
    candidates = np.argwhere(lungs)
    if not len(candidates):
        return lesions
    n_wall = max(n_cons // 2, 1 if n_cons >= 2 else 0)
    specs = [(GGO, False)] * n_ggo + [(CONSOLIDATION, k < n_wall) for k in range(n_cons)]
    for value, at_wall in specs:
        k, y, x = candidates[rng.integers(len(candidates))]
        if at_wall:  # move to the lateral edge of that lung on this slice
            row = np.flatnonzero(lungs[k, y])
            x = row.min() if x < size / 2 else row.max()
        radius = rng.uniform(15.0, 30.0)
        blob = ((zz - k * thickness) ** 2 + ((yy - y) * spacing) ** 2 + ((xx - x) * spacing) ** 2) <= radius ** 2
        blob &= lungs
        hu[blob] = value
        lesions |= blob
    return lesions


def write_dicom_series(phantom: Phantom, folder: str | Path, *, transfer_syntax: str = ExplicitVRLittleEndian,
                       series_uid: str | None = None, study_uid: str | None = None, modality: str = "CT",
                       orientation: str = "axial", shuffle_names: bool = True, seed: int = 0,
                       slice_indices: Sequence[int] | None = None) -> list[Path]:
    """Write the phantom as CT Image Storage files (explicit/implicit little endian, RLE or JPEG 2000)."""
    if transfer_syntax in (JPEGLossless, JPEGLosslessSV1):
        raise ValueError("JPEG Lossless cannot be encoded with the installed tools; use the real samples for it")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, size, _ = phantom.hu.shape
    study_uid = study_uid or generate_uid(entropy_srcs=[f"study-{seed}"])
    series_uid = series_uid or generate_uid(entropy_srcs=[f"series-{seed}-{orientation}"])
    indices = list(range(n)) if slice_indices is None else list(slice_indices)
    names = np.random.default_rng(seed).permutation(n) + 1 if shuffle_names else np.arange(n) + 1
    half = size * phantom.pixel_spacing_mm / 2
    paths = []
    for i in indices:
        ds = _slice_dataset(phantom, i, study_uid, series_uid, modality, seed)
        if orientation == "axial":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-half, -half, float(phantom.z_mm[i])]
        elif orientation == "coronal":
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            ds.ImagePositionPatient = [-half, float(phantom.z_mm[i]), half]
        else:
            raise ValueError(f"orientation must be axial or coronal, got {orientation!r}")
        stored = np.clip(np.rint(phantom.hu[i] + 1024), 0, 4095).astype(np.uint16)
        if pydicom.uid.UID(transfer_syntax).is_compressed:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = stored.tobytes()
            ds.compress(transfer_syntax, stored)
        else:
            ds.file_meta.TransferSyntaxUID = transfer_syntax  # type: ignore[assignment]
            ds.PixelData = stored.tobytes()
        path = folder / f"IM{int(names[i]):04d}.dcm"
        ds.save_as(path, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True,
                   enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(phantom: Phantom, i: int, study_uid: str, series_uid: str, modality: str, seed: int) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[f"{series_uid}-{i}-{seed}"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop_uid
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, modality
    ds.PatientName, ds.PatientID = "PHANTOM^TEST", "PHANTOM-0001"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = i + 1
    ds.SliceLocation = float(phantom.z_mm[i])
    ds.SliceThickness = phantom.slice_thickness_mm
    ds.PixelSpacing = [phantom.pixel_spacing_mm, phantom.pixel_spacing_mm]
    ds.Rows, ds.Columns = phantom.hu.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    return ds


def write_image_slices(phantom: Phantom, folder: str | Path, *, bit_depth: int = 8, ext: str = ".png") -> list[Path]:
    """Write slices as images: 8-bit lung-windowed, or 16-bit HU + 1024 (COVID-CTset style)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(phantom.hu):
        img = lung_window(s) if bit_depth == 8 else np.clip(np.rint(s + 1024), 0, 65535).astype(np.uint16)
        path = folder / f"slice_{i:04d}{ext}"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths
