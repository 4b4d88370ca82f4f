"""A study's result folder: what a clinician opens and what machines read.

``out_dir/result.json``   the ``ctedge predict --json`` document plus ``heatmaps`` and ``slice_png``
``out_dir/heatmaps/<n>.png``  Grad-CAM overlays of the slices that drove the verdict
``out_dir/slices/<index>.png`` every slice read, lung window, for the slice viewer
``out_dir/report.html``   one self-contained page (no network, no framework)
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jinja2
import numpy as np

from edge import CLASSES
from edge.explain import SliceHeatmap, overlay
from edge.pipeline import StudyResult

EXPLANATION_METHOD = ("Grad-CAM on the last convolution of the float32 CNN encoder, for the verdict class, "
                      "computed on the edge runtime; slices ranked by how much the class score drops when the "
                      "slice is blacked out")
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("edge", "templates"), autoescape=True)


def write_result(result: StudyResult, heatmaps: list[SliceHeatmap], out_dir: Path, explained: bool = True) -> dict:
    """Write the result folder of one study and return its ``result.json`` document."""
    out_dir = Path(out_dir)
    (out_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    (out_dir / "slices").mkdir(exist_ok=True)
    doc = result.to_dict()
    display = result.prepared.windowed
    doc["slice_png"] = []
    for i, image in enumerate(display):
        name = f"slices/{i:04d}.png"
        cv2.imwrite(str(out_dir / name), image)
        doc["slice_png"].append(name)
    kept = result.selection.kept_indices
    doc["heatmaps"] = []
    for n, h in enumerate(heatmaps, start=1):
        sources = result.groups[h.group].slot_sources(h.slot, kept)
        index = max(sources, key=lambda s: s[1])[0]
        picture = sum(w * display[i].astype(np.float32) for i, w in sources)
        where = f"slice {index}" if len(sources) == 1 else \
            "blend of slices " + " + ".join(f"{i} ({w:.2f})" for i, w in sources)
        name = f"heatmaps/{n}.png"
        cv2.imwrite(str(out_dir / name), _captioned(overlay(np.rint(picture).astype(np.uint8), h.heatmap),
                                                    f"{doc['label']} | group {h.group} | {where} | share {h.share:.2f}",
                                                    result.classifier.info.banner))
        doc["heatmaps"].append({"n": n, "group": h.group, "slice_index": index, "file": result.volume.files[index],
                                "sources": [{"slice_index": i, "file": result.volume.files[i], "weight": round(w, 4)}
                                            for i, w in sources],
                                "interpolated": len(sources) > 1, "share": round(h.share, 4), "png": name})
    doc["explanation"] = {"class": doc["label"], "method": EXPLANATION_METHOD if explained else None}
    if not explained:
        doc["warnings"].append("no heatmaps: the model has no explain models (re-export it with ctedge quantize)")
    (out_dir / "report.html").write_text(render_report(doc))
    (out_dir / "result.json").write_text(json.dumps(doc, indent=2))
    return doc


def render_report(doc: dict, base_url: str = "") -> str:
    """The one-page HTML report of a result document; image paths are relative to ``base_url``."""
    return _TEMPLATES.get_template("report.html").render(doc=doc, classes=CLASSES, base=base_url)


def _captioned(picture: np.ndarray, text: str, banner: str) -> np.ndarray:
    """The picture with a caption bar underneath (and the model's warning banner, if any)."""
    lines = [text] + ([banner] if banner else [])
    bar = np.zeros((16 * len(lines) + 4, picture.shape[1], 3), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (4, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([picture, bar])
