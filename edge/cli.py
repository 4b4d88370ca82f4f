"""The ``ctedge`` command. Subcommands register themselves in ``COMMANDS``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from importlib.metadata import entry_points
from pathlib import Path

from tqdm import tqdm

from edge import CLASSES, __version__
from edge.doctor import add_doctor
from edge.errors import UserError
from edge.engine import DEFAULT_BUNDLE, Engine
from edge.pipeline import PipelineOptions
from edge.profile import load_profile
from edge.preprocess.segment import TFLiteSegmenter
from edge.preprocess.select import METHODS
from edge.selection_report import evaluate_study, format_table, read_labels
from edge.server.command import add_serve
from edge.watch import add_watch

log = logging.getLogger("ctedge")

SELECTION_HELP = (
    "slice selection rule: 'lung-extent' (default; keeps every slice between the lung apex and base), "
    "'seed-area' (seed thresholds 0.4 upper / 0.9 lower: drops much of the lung bases), "
    "'rahimzadeh' (published dark-pixel rule; WARNING: it can drop slices with dense consolidation, "
    "see README for its measured retention of infected slices)")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify one CT study (DICOM folder, zip or files)",
                       description="Read a CT study, select lung slices, classify 50-slice groups and vote a patient "
                                   "verdict. With --out, also write the result folder: result.json, Grad-CAM "
                                   "heatmaps of the slices that drove the verdict, slice images and report.html.")
    p.add_argument("study", nargs="+", help="a DICOM folder, a zip, or DICOM/image files of one study")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--out", type=Path, default=None, help="write the result folder (report.html, heatmaps) here")
    p.add_argument("--config", type=Path, default=None,
                   help="device profile (firmware_config/*.yaml): model, delegate, threads and pipeline settings; "
                        "the options below override it")
    p.add_argument("--selection", choices=METHODS, default=None, help=SELECTION_HELP)
    p.add_argument("--no-mask", action="store_true", help="do not black out non-lung pixels in the model input")
    p.add_argument("--override", type=float, default=None,
                   help="a group's covid/other_pneumonia probability above this overrides a healthy majority (default 0.9)")
    p.add_argument("--model", type=Path, default=None,
                   help="TFLite model bundle folder (model.json); default: the bundled demonstration model")
    p.add_argument("--variant", default=None, help="bundle variant to run: int8 (default) or float32")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="a U-Net .tflite from ctedge quantize-unet instead of the classical lung segmenter")
    p.set_defaults(func=cmd_predict)


def predict_engine(args: argparse.Namespace) -> Engine:
    """The engine that ``predict`` options describe: a device profile, overridden by explicit flags."""
    profile = load_profile(args.config) if args.config else None
    options = PipelineOptions(**asdict(profile.pipeline)) if profile else PipelineOptions()
    flags = {"selection": args.selection, "override": args.override, "mask_lungs": False if args.no_mask else None}
    options = replace(options, **{k: v for k, v in flags.items() if v is not None})
    return Engine.from_bundle(
        args.model or (profile.model.bundle if profile else DEFAULT_BUNDLE),
        args.variant or (profile.model.variant if profile else "int8"),
        args.threads or (profile.threads if profile else None),
        edgetpu=bool(profile and profile.model.delegate == "edgetpu"), options=options,
        segmenter=TFLiteSegmenter(args.segmenter, threads=args.threads) if args.segmenter else None)


def cmd_predict(args: argparse.Namespace) -> int:
    engine = predict_engine(args)
    source = args.study[0] if len(args.study) == 1 else args.study
    doc = engine.analyse(source, args.out) if args.out else engine.run(source).to_dict()
    print(json.dumps(doc, indent=2) if args.json else summary(doc))
    if args.out and not args.json:
        print(f"Report: {args.out / 'report.html'}")
    return 0


def summary(d: dict) -> str:
    """A short human-readable report of one result document."""
    model = d["model"]
    lines = []
    if model["placeholder"] or model["demonstration"]:
        lines.append(f"*** {'PLACEHOLDER' if model['placeholder'] else 'DEMONSTRATION'} MODEL - NOT FOR CLINICAL USE ***")
        lines.append(f"    {model['note']}")
    lines.append(f"Verdict: {d['label']}   ({d['decision_rule']})")
    lines.append("Probabilities: " + "  ".join(f"{c} {d['probabilities'][c]:.3f}" for c in CLASSES))
    lines.append(f"Slices: {d['n_slices_read']} read, {d['n_slices_used']} used ({d['selection']} selection)")
    for g in d["groups"]:
        probs = " ".join(f"{g['probabilities'][c]:.3f}" for c in CLASSES)
        lines.append(f"  group {g['index']}: slices {g['slice_range'][0]}-{g['slice_range'][1]}  {g['label']:<16} [{probs}]")
    for s in d["series"]["skipped"]:
        lines.append(f"Skipped series ({s['n_files']} files): {s['reason']}")
    lines += [f"Warning: {w}" for w in d["warnings"]]
    lines.append("Time: " + ", ".join(f"{k} {v:.0f} ms" for k, v in d["timings_ms"].items()))
    lines.append(f"Model: {model['name']} {model['version']}")
    return "\n".join(lines)


def add_evaluate_selection(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-selection", help="measure how many labelled infected slices each selection rule keeps",
                       description="For each study and each slice-selection rule, print the fraction of "
                                   "radiologist-labelled infected slices kept and of all slices kept, and write "
                                   "a montage PNG per study.")
    p.add_argument("study", nargs="+", type=Path, help="study folders; a folder's name is its patient_folder in the CSV")
    p.add_argument("--labels", required=True, type=Path,
                   help="CSV with columns patient_folder, file, infection (1 = infection visible)")
    p.add_argument("--out", type=Path, default=Path("selection-report"), help="folder for the montages")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_evaluate_selection)


def cmd_evaluate_selection(args: argparse.Namespace) -> int:
    labels = read_labels(args.labels)
    rows = [r for study in tqdm(args.study, desc="studies", disable=args.json or len(args.study) < 2)
            for r in evaluate_study(study, labels, args.out)]
    if args.json:
        print(json.dumps([asdict(r) | {"infected_fraction": r.infected_fraction} for r in rows], indent=2))
    else:
        print(format_table(rows))
        print(f"montages: {args.out}/")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_predict, add_evaluate_selection, add_serve, add_watch, add_doctor]


def plugin_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by the training and quantize packages (entry point group
    ``ctedge.commands``), so that ``edge`` never imports them: dependencies point one way."""
    return [ep.load() for ep in sorted(entry_points(group="ctedge.commands"), key=lambda ep: ep.name)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctedge", description="Chest-CT pneumonia triage on edge devices "
                                     f"(classes: {', '.join(CLASSES)}).")
    parser.add_argument("--version", action="version", version=f"ctedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS + plugin_commands():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ctedge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctedge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if args.debug:
            raise
        print(f"ctedge: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
