"""DICOM files for tests: tag edits and labelled phantom trees."""

from __future__ import annotations

from pathlib import Path

import pydicom

PHANTOM_LESIONS = {"covid": {"ground_glass": 3}, "other_pneumonia": {"consolidation": 3}, "healthy": {}}


def edit_tags(source: Path, target: Path, **tags) -> Path:
    """Write ``source`` to ``target`` with ``tags`` set (None deletes the tag)."""
    ds = pydicom.dcmread(source)
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(target)
    return target


def phantom_tree(root: Path) -> Path:
    """A labelled folder tree ``<root>/<class>/<patient>`` of small synthetic DICOM studies (two per
    class, 24 slices of 128x128, lesions from :data:`PHANTOM_LESIONS`), for commands that take DATA."""
    from edge.phantom import make_phantom, write_dicom_series

    for c, (cls, lesions) in enumerate(PHANTOM_LESIONS.items()):
        for k in range(2):
            seed = 100 * c + k
            write_dicom_series(make_phantom(n_slices=24, size=128, seed=seed, **lesions), root / cls / f"{cls}-{k}", seed=seed)
    return root
