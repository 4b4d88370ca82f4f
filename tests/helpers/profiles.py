"""Device profiles for tests, written as YAML from keyword arguments instead of by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers.paths import REPO

DEMO_BUNDLE = REPO / "edge" / "models" / "demo"


def profile_doc(bundle: Path | str = DEMO_BUNDLE, *more_bundles: Path | str, name: str = "t",
                description: str = "test profile", model: dict | None = None, **sections: object) -> dict:
    """A profile document: ``bundle`` (and ``more_bundles``) with the ``model`` keys given (variant,
    threads, ...) and every other top-level section (``server``, ``dicom``, ``watcher``, ``pipeline``)
    as given. Paths become strings."""
    settings: dict = {"bundle": str(bundle)}
    if more_bundles:
        settings["more_bundles"] = [str(b) for b in more_bundles]
    return {"name": name, "description": description, "model": settings | (model or {})} | _plain(sections)


def write_profile(path: Path, bundle: Path | str = DEMO_BUNDLE, *more_bundles: Path | str, **keys: object) -> Path:
    """Write :func:`profile_doc` to ``path`` (a .yaml file) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile_doc(bundle, *more_bundles, **keys)))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
