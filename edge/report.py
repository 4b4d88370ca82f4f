"""A study's result folder: what a clinician opens and what machines read.

``out_dir/result.json``   the ``ctedge predict --json`` document plus ``study`` (the identity, never printed),
                          ``heatmaps``, ``slice_png``, ``slice_png_windows`` and ``windows``
``out_dir/heatmaps/<n>.png``  captioned Grad-CAM overlays of the images that drove the verdict (CT slices of
                          groups or slices that voted for it, or the radiograph)
``out_dir/heatmaps/<n>-map.png``  the same map alone, transparent where cold (the viewer's overlay)
``out_dir/slices/<index>.png`` every image read (CT slices in the lung window, for the viewer; the radiograph)
``out_dir/slices/<window>/<index>.png`` the CT slices in the other window presets, when the study had exact HU
``out_dir/report.html``   one self-contained page, its images inlined (no network, no framework), printable

The folder and what is written in it are owner-only (0700 folders, 0600 files) whatever the umask:
they hold patient images.
"""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from zoneinfo import ZoneInfo
from pathlib import Path
from typing import cast

import cv2
import jinja2
import numpy as np

from edge.card import MODALITY_TERMS, ModalityTerms
from edge.explain import SliceHeatmap, overlay
from edge.ingest import Volume
from edge.preprocess.window import DISPLAY_WINDOWS
from edge.result import RESULT_FILE, HeatmapDoc, ResultDoc, StudyIdentityDoc, UsedSliceDoc
from edge.stages import StudyResult
from edge.storage import private_dir



def dicom_date(value: str | None) -> str:
    """A DICOM date (``20261203``) as ``2026-12-03``; "" when absent, the text as given when malformed."""
    text = (value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def dicom_time(value: str | None) -> str:
    """A DICOM time (``073606.123``) as ``07:36:06``; "" when absent, the text as given when malformed."""
    text = (value or "").strip().split(".")[0]
    if len(text) >= 4 and text.isdigit():
        return ":".join(text[i:i + 2] for i in range(0, min(len(text), 6), 2))
    return text


def local_time(value: str | None, zone: str = "") -> str:
    """An ISO time stamp (``2026-12-03T07:36:06+00:00``) in the IANA ``zone`` ("" : the device's local
    zone) as ``2026-12-03 08:36:06 CET``; "" when absent, the text as given when malformed."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone(ZoneInfo(zone) if zone else None)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or local.strftime("%z"))


_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("edge", "templates"), autoescape=True)
_TEMPLATES.filters.update(dicom_date=dicom_date, dicom_time=dicom_time, inlined=lambda name, images: images.get(name, ""))


def write_result(result: StudyResult, heatmaps: list[SliceHeatmap], out_dir: Path, method: str | None = None) -> ResultDoc:
    """Write the result folder of one study and return its ``result.json`` document; ``method`` says
    how the heatmaps were made (None: the model has no explain models)."""
    out_dir = Path(out_dir)
    for folder in (out_dir, out_dir / "heatmaps", out_dir / "slices", *(out_dir / "slices" / w for w in result.prepared.presets)):
        private_dir(folder)
    doc = result.to_dict()
    doc["study"] = cast(StudyIdentityDoc, dict(result.volume.identity))   # on disk (owner-only) and behind the login only
    doc["slice_png"] = [f"slices/{i:04d}.png" for i in range(len(result.prepared.windowed))]
    doc["slice_png_windows"] = {window: [f"slices/{window}/{i:04d}.png" for i in range(len(images))]
                                for window, images in result.prepared.presets.items()}
    pictures = [(doc["slice_png"], result.prepared.windowed),
                *((doc["slice_png_windows"][w], images) for w, images in result.prepared.presets.items())]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:   # OpenCV lets go of the GIL while it encodes
        list(pool.map(lambda pair: cv2.imwrite(str(out_dir / pair[0]), pair[1]),
                      ((name, image) for names, images in pictures for name, image in zip(names, images))))
    doc["windows"] = {"lung": list(result.options.window)} | {w: list(DISPLAY_WINDOWS[w]) for w in result.prepared.presets}
    doc["heatmaps"] = [_write_heatmap(result, doc, h, n, out_dir) for n, h in enumerate(heatmaps, start=1)]
    doc["explanation"] = {"class": doc["label"], "method": method}
    if method is None:
        doc["warnings"].append("no heatmaps: the model has no explain models (re-export it with ctedge quantize)")
    elif not heatmaps:
        doc["warnings"].append(f"no heatmaps: no group or slice voted for {doc['label']}, so none explains the verdict")
    elif any(h["outside_lungs"] for h in doc["heatmaps"]):
        doc["warnings"].append(f"heatmaps: most of {sum(h['outside_lungs'] for h in doc['heatmaps'])} map(s) lies outside "
                               "the lungs; they may not show disease")
    (out_dir / "report.html").write_text(render_report(doc, out_dir))
    (out_dir / RESULT_FILE).write_text(json.dumps(doc, indent=2))
    for name in ["report.html", RESULT_FILE, *doc["slice_png"], *(h["png"] for h in doc["heatmaps"]),
                 *(h["overlay"] for h in doc["heatmaps"]), *(n for names in doc["slice_png_windows"].values() for n in names)]:
        os.chmod(out_dir / name, 0o600)
    return doc


OUTSIDE_LUNGS, HOT = 0.5, 0.5
"""A heatmap is flagged (``outside_lungs``) when less than ``OUTSIDE_LUNGS`` of its hot part (the
pixels at ``HOT`` of its peak or more, weighted by heat: what the eye sees) lies inside the lung mask."""


def _write_heatmap(result: StudyResult, doc: ResultDoc, h: SliceHeatmap, n: int, out_dir: Path) -> HeatmapDoc:
    """Write heatmap ``n`` (the captioned overlay, and its map alone as a transparent overlay for the
    viewer) and return its entry of the result document."""
    display, volume = result.prepared.windowed, result.volume
    sources = list(h.sources)
    index = max(sources, key=lambda s: s[1])[0]
    picture = sum(w * display[i].astype(np.float32) for i, w in sources)
    in_lungs = None
    if volume.modality == "ct":
        lungs = sum(w * result.lung_mask[i].astype(np.float32) for i, w in sources)
        hot = np.where(h.heatmap >= HOT, h.heatmap, 0.0)
        in_lungs = round(float((hot * lungs).sum() / hot.sum()), 3) if hot.sum() > 0 else None
    slices: dict[int, UsedSliceDoc] = {s["index"]: s for s in doc["slices_used"]}
    entry: HeatmapDoc = {"n": n, "group": h.group, "slice_index": index, "file": volume.files[index],
             "instance_number": slices[index].get("instance_number") if index in slices else None,
             "z": slices[index]["z"] if index in slices else None,
             "sources": [{"slice_index": i, "file": volume.files[i], "weight": round(w, 4)} for i, w in sources],
             "interpolated": len(sources) > 1, "share": round(h.share, 4), "png": f"heatmaps/{n}.png",
             "overlay": f"heatmaps/{n}-map.png", "in_lungs": in_lungs,
             "outside_lungs": in_lungs is not None and in_lungs < OUTSIDE_LUNGS}
    entry["caption"] = heatmap_caption(doc, entry, volume)
    cv2.imwrite(str(out_dir / entry["png"]), _captioned(_legible(overlay(np.rint(picture).astype(np.uint8), h.heatmap)),
                                                        entry["caption"], result.classifier.info.banner))
    cv2.imwrite(str(out_dir / entry["overlay"]), heat_layer(h.heatmap))
    return entry


def heatmap_caption(doc: ResultDoc, h: HeatmapDoc, volume: Volume) -> str:
    """What a heatmap is, in one line: the class it explains, what it lies on, the unit that voted for
    the verdict, and how much of it lies inside the lungs."""
    parts = [f"Grad-CAM for {doc['label']} on {_heatmap_on(volume, [(s['slice_index'], s['weight']) for s in h['sources']], h)}"]
    if h["group"] is not None:
        g = next(g for g in doc["groups"] if g["index"] == h["group"])
        parts.append(f"group {h['group']} voted {g['label']} {g['probabilities'][g['label']]:.3f}")
    if volume.n_slices > 1:
        parts.append(f"share {h['share']:.2f}")
    if h["in_lungs"] is not None:
        parts.append(f"{h['in_lungs']:.0%} inside the lungs" + (": MOSTLY OUTSIDE THE LUNGS" if h["outside_lungs"] else ""))
    return " | ".join(parts)


def heat_layer(heatmap: np.ndarray) -> np.ndarray:
    """A BGRA picture of a heatmap alone: JET colours, each pixel as opaque as it is hot (the viewer's overlay)."""
    heat = np.clip(heatmap, 0, 1)
    colour = cv2.applyColorMap((255 * heat).astype(np.uint8), cv2.COLORMAP_JET)
    return np.dstack([colour, (255 * heat).astype(np.uint8)])


def _heatmap_on(volume: Volume, sources: list[tuple[int, float]], h: HeatmapDoc) -> str:
    """What a heatmap lies on, in its caption: ``slice 51 (z -120.0 mm)`` (InstanceNumber when the
    file has one, else the 1-based position), a blend of slices, or ``radiograph, view PA``."""
    image = MODALITY_TERMS[volume.modality].image
    if volume.n_slices == 1:
        return image + (f", view {volume.view}" if volume.view else "")
    if len(sources) == 1:
        z = f" (z {h['z']:.1f} mm)" if h.get("z") is not None else ""
        return f"{image} {slice_number(volume, sources[0][0])}{z}"
    return f"blend of {image}s " + " + ".join(f"{slice_number(volume, i)} ({w:.2f})" for i, w in sources)


def slice_number(volume: Volume, index: int) -> int:
    """How a slice is numbered to a reader: its InstanceNumber, as PACS shows it, else its 1-based position."""
    numbers = volume.instance_numbers
    return numbers[index] if numbers and numbers[index] is not None else index + 1  # type: ignore[return-value]


def render_report(doc: ResultDoc, folder: Path | None = None) -> str:
    """The one-page HTML report of a result document: self-contained, its images (from the result
    ``folder``) inlined as ``data:`` URIs, so that the file alone shows everything (no images without
    ``folder``)."""
    images = _inlined(doc, Path(folder)) if folder is not None else {}
    return _TEMPLATES.get_template("report.html").render(doc=doc, classes=doc["classes"], images=images,
                                                         plot=slice_plot(doc), terms=terms_of(doc),
                                                         numbers=slice_numbers(doc))


def _inlined(doc: ResultDoc, folder: Path) -> dict[str, str]:
    """``data:`` URIs of the report's pictures by their path in the result folder: heatmaps as PNG,
    the slices in the lung window as JPEG (a tenth of the size; the report is mailed and printed)."""
    found = {}
    for h in doc.get("heatmaps", []):
        found[h["png"]] = "data:image/png;base64," + base64.b64encode((folder / h["png"]).read_bytes()).decode()
    for name in doc.get("slice_png", []):
        image = cv2.imread(str(folder / name), cv2.IMREAD_GRAYSCALE)
        if image is not None:
            found[name] = "data:image/jpeg;base64," + base64.b64encode(
                cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()).decode()
    return found


def slice_numbers(doc: ResultDoc) -> list[int]:
    """Each read slice's number as a reader knows it: its InstanceNumber, else its 1-based position."""
    known = {s["index"]: s.get("instance_number") for s in doc.get("slices_used", []) + doc.get("slices_dropped", [])}
    return [known.get(i) or i + 1 for i in range(doc["n_slices_read"])]


def terms_of(doc: ResultDoc) -> ModalityTerms:
    """How the pages name the modality of a result document and its images."""
    return MODALITY_TERMS[doc["modality"]]


def slice_plot(doc: ResultDoc, width: int = 640, height: int = 220) -> dict | None:
    """An SVG plot along the slice axis (superior left, inferior right) of each class's probability on
    every scored slice (None with fewer than two, e.g. a group model or a radiograph): polylines per
    class, x ticks labelled with slice numbers (``slice_numbers``), the heatmap slices marked, and the
    patient rule's threshold (``threshold``: its height and what it means, None when it has none)."""
    scored = [s for s in doc["slices_used"] if "probabilities" in s]
    if len(scored) < 2:
        return None
    last = max(doc["n_slices_read"] - 1, 1)
    x0, x1, top, bottom = 44, width - 12, 10, height - 46

    def x(index: int) -> float:
        return round(x0 + (x1 - x0) * index / last, 1)

    def y(p: float) -> float:
        return round(top + (bottom - top) * (1 - p), 1)

    lines = {c: " ".join(f"{x(s['index'])},{y(s['probabilities'][c])}" for s in scored) for c in doc["classes"]}
    marks = sorted({x(h["slice_index"]) for h in doc.get("heatmaps", [])})
    numbers = slice_numbers(doc)
    step = max(1, -(-doc["n_slices_read"] // 8))
    ticks = [(x(i), numbers[i]) for i in range(0, doc["n_slices_read"], step)]
    return {"width": width, "height": height, "lines": lines, "marks": marks, "y": {p: y(p) for p in (0.0, 0.5, 1.0)},
            "x0": x0, "x1": x1, "bottom": bottom, "ticks": ticks, "threshold": _threshold(doc, y)}


def _threshold(doc: ResultDoc, y) -> dict | None:
    """Where the patient rule's threshold lies on the plot, and what it means."""
    rule, classes = doc.get("patient_rule"), doc["classes"]
    if not rule:
        return None
    if rule["name"] == "mean":
        return {"y": y(1 - rule["threshold"]), "text": f"{classes[-1]} {1 - rule['threshold']:g}: the patient is positive "
                                                         f"when the mean {classes[-1]} probability is below this"}
    if len(classes) == 2:
        return {"y": y(0.5), "text": f"0.5: a slice is positive when {classes[0]} is above this; the patient when more "
                                     f"than {rule['threshold']:.0%} of the slices are"}
    return None


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
