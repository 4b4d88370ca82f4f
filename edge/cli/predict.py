"""``ctedge predict``: one study (CT or radiograph) through the engine of a profile, printed or
written as a result folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, cast

from edge.cli.common import add_model_options, model_profile
from edge.engine import Device
from edge.ingest.radiograph import study_modality
from edge.options import METHODS
from edge.result import ResultDoc
from edge.stages import Source

SELECTION_HELP = (
    "slice selection rule: 'lung-extent' (default; keeps every slice between the lung apex and base), "
    "'seed-area' (seed thresholds 0.4 upper / 0.9 lower: drops much of the lung bases), "
    "'rahimzadeh' (published dark-pixel rule; WARNING: it can drop slices with dense consolidation, "
    "see docs/pipeline.md, Measured slice retention)")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify one CT study (DICOM folder, zip or files) or one chest radiograph",
                       description="Read a CT study, select lung slices, classify 50-slice groups and vote a patient "
                                   "verdict; or read one chest radiograph (DICOM CR/DX, PNG/JPEG) and classify it with an "
                                   "X-ray bundle (the study's modality picks the model). With --out, also write the "
                                   "result folder: result.json, Grad-CAM "
                                   "heatmaps of the slices that drove the verdict, slice images and report.html.")
    p.add_argument("study", nargs="+", help="a DICOM folder, a zip, or DICOM/image files of one study")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--out", type=Path, default=None, help="write the result folder (report.html, heatmaps) here")
    add_model_options(p)
    p.add_argument("--selection", choices=METHODS, default=None,
                   help=SELECTION_HELP + ". The preprocessing comes from the model card: a rule other than the "
                                         "card's is refused")
    p.add_argument("--no-mask", action="store_true",
                   help="do not black out non-lung pixels (refused unless the model was trained that way)")
    p.add_argument("--override", type=float, default=None,
                   help="a group's covid/other_pneumonia probability above this overrides a healthy majority (default 0.9)")
    p.add_argument("--segmenter", default=None,
                   help="'threshold' or a U-Net .tflite; must be the segmenter the model card names (checked)")
    p.set_defaults(func=cmd_predict)


def predict_engine(args: argparse.Namespace, source: Source) -> Device:
    """The engine that ``predict`` options describe: a device profile (or the defaults), overridden
    by explicit flags; pipeline flags are checked against the model card like profile keys. Only the
    profile's bundles of the study's modality are loaded (see ``Device.from_profile``)."""
    profile = model_profile(args)
    flags: dict[str, tuple[Any, str]] = {}
    for key, value, flag in (("selection", args.selection, "--selection"), ("override", args.override, "--override"),
                             ("mask_lungs", False if args.no_mask else None, "--no-mask"),
                             ("segmenter", args.segmenter, "--segmenter")):
        if value is not None:
            flags[key] = (value, flag)
    return Device.from_profile(profile, flags, modality=study_modality(source))


def cmd_predict(args: argparse.Namespace) -> int:
    source = args.study[0] if len(args.study) == 1 else args.study
    engine = predict_engine(args, source)
    doc = engine.analyse(source, args.out) if args.out else engine.run(source).to_dict()
    shown = cast(ResultDoc, {k: v for k, v in doc.items() if k != "study"})   # the study's identity stays in the result folder
    print(json.dumps(shown, indent=2) if args.json else summary(shown))
    if args.out and not args.json:
        print(f"Report: {args.out / 'report.html'}")
    return 0


def summary(d: ResultDoc) -> str:
    """A short human-readable report of one result document."""
    model = d["model"]
    lines = []
    if model["banner"]:
        lines.append(f"*** {model['banner']} ***")
        lines.append(f"    {model['note']}")
    lines.append(f"Verdict: {d['label']}   ({d['decision_rule']})")
    classes = d["classes"]
    score = d["score"]
    lines.append(f"{score['name'].capitalize()}: " + "  ".join(f"{c} {d['probabilities'][c]:.3f}" for c in classes))
    lines.append(f"  ({score['explanation']})")
    if d["agreement"]:
        lines.append(f"Agreement: {d['agreement']['text']}")
    lines += INPUT_LINES[d["modality"]](d)
    for g in d["groups"]:
        probs = " ".join(f"{g['probabilities'][c]:.3f}" for c in classes)
        lines.append(f"  group {g['index']}: slices {g['slice_range'][0]}-{g['slice_range'][1]}  {g['label']:<16} [{probs}]")
    if d["series"].get("why"):
        lines.append(f"Series: {d['series']['why']}")
    for s in d["series"]["skipped"]:
        lines.append(f"Skipped series ({s['n_files']} files): {s['reason']}")
    lines += [f"Not analysed: {f['file']} ({f['code']}): {f['reason']}" for f in d.get("files_dropped", [])]
    codes = {f["message"]: f["code"] for f in d.get("flags", [])}
    lines += [f"Warning [{codes[w]}]: {w}" if w in codes else f"Warning: {w}" for w in d["warnings"]]
    lines.append("Time: " + ", ".join(f"{k} {v:.0f} ms" for k, v in d["timings_ms"].items()))
    lines.append(f"Model: {model['name']} {model['version']}; {model.get('validation', 'no validation recorded')}")
    return "\n".join(lines)


def _ct_lines(d: ResultDoc) -> list[str]:
    lines = [f"Slices: {d['n_slices_read']} read, {d['n_slices_used']} used ({d['selection']} selection)"]
    scored = [s for s in d["slices_used"] if "label" in s]
    if scored:
        counts = {c: sum(s["label"] == c for s in scored) for c in d["classes"]}
        lines.append("  slice labels: " + ", ".join(f"{n} {c}" for c, n in counts.items()))
    return lines


def _xray_lines(d: ResultDoc) -> list[str]:
    return [f"Radiograph: {d['slices_used'][0]['file']} (view {d['input']['view'] or 'not recorded'})"]


INPUT_LINES = {"ct": _ct_lines, "xray": _xray_lines}
"""The summary lines describing what was read, by the result's modality."""
