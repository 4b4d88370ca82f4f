"""A study's result folder: what a clinician opens and what machines read.

``out_dir/result.json``   the ``ctedge predict --json`` document plus ``heatmaps`` and ``slice_png``
``out_dir/heatmaps/<n>.png``  Grad-CAM overlays of the images that drove the verdict (CT slices, or the radiograph)
``out_dir/slices/<index>.png`` every image read (CT slices in the lung window, for the slice viewer; the radiograph)
``out_dir/report.html``   one self-contained page (no network, no framework)

The folder and what is written in it are owner-only (0700 folders, 0600 files) whatever the umask:
they hold patient images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import jinja2
import numpy as np

from edge.card import MODALITY_TERMS, ModalityTerms
from edge.explain import SliceHeatmap, overlay
from edge.ingest import Volume
from edge.result import RESULT_FILE, ResultDoc
from edge.stages import StudyResult
from edge.storage import private_dir

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("edge", "templates"), autoescape=True)


def write_result(result: StudyResult, heatmaps: list[SliceHeatmap], out_dir: Path, method: str | None = None) -> ResultDoc:
    """Write the result folder of one study and return its ``result.json`` document; ``method`` says
    how the heatmaps were made (None: the model has no explain models)."""
    out_dir = Path(out_dir)
    for folder in (out_dir, out_dir / "heatmaps", out_dir / "slices"):
        private_dir(folder)
    doc = result.to_dict()
    display = result.prepared.windowed
    doc["slice_png"] = []
    for i, image in enumerate(display):
        name = f"slices/{i:04d}.png"
        cv2.imwrite(str(out_dir / name), image)
        doc["slice_png"].append(name)
    doc["heatmaps"] = []
    for n, h in enumerate(heatmaps, start=1):
        sources = list(h.sources)
        index = max(sources, key=lambda s: s[1])[0]
        picture = sum(w * display[i].astype(np.float32) for i, w in sources)
        caption = [doc["label"]] + ([f"group {h.group}"] if h.group is not None else [])
        caption.append(_heatmap_on(result.volume, sources))
        if result.volume.n_slices > 1:     # the image's part of its group's evidence; all of it for one image
            caption.append(f"share {h.share:.2f}")
        name = f"heatmaps/{n}.png"
        cv2.imwrite(str(out_dir / name), _captioned(_legible(overlay(np.rint(picture).astype(np.uint8), h.heatmap)),
                                                    " | ".join(caption), result.classifier.info.banner))
        doc["heatmaps"].append({"n": n, "group": h.group, "slice_index": index, "file": result.volume.files[index],
                                "sources": [{"slice_index": i, "file": result.volume.files[i], "weight": round(w, 4)}
                                            for i, w in sources],
                                "interpolated": len(sources) > 1, "share": round(h.share, 4), "png": name})
    doc["explanation"] = {"class": doc["label"], "method": method}
    if method is None:
        doc["warnings"].append("no heatmaps: the model has no explain models (re-export it with ctedge quantize)")
    (out_dir / "report.html").write_text(render_report(doc))
    (out_dir / RESULT_FILE).write_text(json.dumps(doc, indent=2))
    for name in ["report.html", RESULT_FILE, *doc["slice_png"], *(h["png"] for h in doc["heatmaps"])]:
        os.chmod(out_dir / name, 0o600)
    return doc


def _heatmap_on(volume: Volume, sources: list[tuple[int, float]]) -> str:
    """What a heatmap lies on, in its caption: ``slice 12``, a blend of slices, or ``radiograph, view PA``."""
    image = MODALITY_TERMS[volume.modality].image
    if volume.n_slices == 1:
        return image + (f", view {volume.view}" if volume.view else "")
    if len(sources) == 1:
        return f"{image} {sources[0][0]}"
    return f"blend of {image}s " + " + ".join(f"{i} ({w:.2f})" for i, w in sources)


def render_report(doc: ResultDoc, base_url: str = "") -> str:
    """The one-page HTML report of a result document; image paths are relative to ``base_url``."""
    return _TEMPLATES.get_template("report.html").render(doc=doc, classes=doc["classes"], base=base_url,
                                                         plot=slice_plot(doc), terms=terms_of(doc))


def terms_of(doc: ResultDoc) -> ModalityTerms:
    """How the pages name the modality of a result document and its images."""
    return MODALITY_TERMS[doc["modality"]]


def slice_plot(doc: ResultDoc, width: int = 640, height: int = 200) -> dict | None:
    """An SVG plot of each class's probability along the slice axis, from the per-slice probabilities
    of the result document (None with fewer than two, e.g. a radiograph): polylines per class, x = slice index, and the
    slices shown as heatmaps marked."""
    scored = [s for s in doc["slices_used"] if "probabilities" in s]
    if len(scored) < 2:
        return None
    last = max(doc["n_slices_read"] - 1, 1)
    x = {s["index"]: round(40 + (width - 50) * s["index"] / last, 1) for s in scored}

    def y(p: float) -> float:
        return round(10 + (height - 40) * (1 - p), 1)

    lines = {c: " ".join(f"{x[s['index']]},{y(s['probabilities'][c])}" for s in scored) for c in doc["classes"]}
    marks = sorted({x[h["slice_index"]] for h in doc.get("heatmaps", []) if h["slice_index"] in x})
    return {"width": width, "height": height, "lines": lines, "marks": marks, "y": {p: y(p) for p in (0.0, 0.5, 1.0)},
            "x0": 40, "x1": width - 10, "last": last}


def _legible(picture: np.ndarray, width: int = 256) -> np.ndarray:
    """The picture enlarged to at least ``width`` pixels wide, so that its caption fits."""
    scale = -(-width // picture.shape[1])
    return picture if scale <= 1 else cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


CAPTION_FONT, CAPTION_SCALE, CAPTION_LINE = cv2.FONT_HERSHEY_SIMPLEX, 0.36, 16


def caption_lines(text: str, width: int) -> list[str]:
    """``text`` broken at spaces into lines that each fit ``width`` pixels of caption (a word wider
    than that stands alone), so that no warning is cut off."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(joined, CAPTION_FONT, CAPTION_SCALE, 1)[0][0] <= width - 8:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def _captioned(picture: np.ndarray, text: str, banner: str) -> np.ndarray:
    """The picture with a caption bar underneath (and the model's warning banner, if any), each
    wrapped to the picture's width."""
    lines = [line for part in (text, banner) if part for line in caption_lines(part, picture.shape[1])]
    bar = np.zeros((CAPTION_LINE * len(lines) + 4, picture.shape[1], 3), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (4, 14 + CAPTION_LINE * i), CAPTION_FONT, CAPTION_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([picture, bar])
