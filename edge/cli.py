"""The ``ctedge`` command. Subcommands register themselves in ``COMMANDS``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import entry_points
from pathlib import Path

from tqdm import tqdm

from edge import CLASSES, __version__
from edge.errors import UserError
from edge.infer import TFLiteClassifier
from edge.pipeline import PipelineOptions, StudyResult, run_study
from edge.preprocess.segment import TFLiteSegmenter
from edge.preprocess.select import METHODS
from edge.selection_report import evaluate_study, format_table, read_labels

log = logging.getLogger("ctedge")
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "demo"

SELECTION_HELP = (
    "slice selection rule: 'lung-extent' (default; keeps every slice between the lung apex and base), "
    "'seed-area' (seed thresholds 0.4 upper / 0.9 lower: drops much of the lung bases), "
    "'rahimzadeh' (published dark-pixel rule; WARNING: it can drop slices with dense consolidation, "
    "see README for its measured retention of infected slices)")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify one CT study (DICOM folder, zip or files)",
                       description="Read a CT study, select lung slices, classify 50-slice groups and vote a patient verdict.")
    p.add_argument("study", nargs="+", help="a DICOM folder, a zip, or DICOM/image files of one study")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--selection", choices=METHODS, default="lung-extent", help=SELECTION_HELP)
    p.add_argument("--no-mask", action="store_true", help="do not black out non-lung pixels in the model input")
    p.add_argument("--override", type=float, default=0.9,
                   help="a group's covid/other_pneumonia probability above this overrides a healthy majority (default 0.9)")
    p.add_argument("--model", type=Path, default=DEFAULT_BUNDLE,
                   help="TFLite model bundle folder (model.json); default: the bundled demonstration model")
    p.add_argument("--variant", default="int8", help="bundle variant to run: int8 (default) or float32")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="a U-Net .tflite from ctedge quantize-unet instead of the classical lung segmenter")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    options = PipelineOptions(selection=args.selection, mask_lungs=not args.no_mask, override=args.override)
    classifier = TFLiteClassifier(args.model, args.variant, args.threads)
    segmenter = TFLiteSegmenter(args.segmenter, threads=args.threads) if args.segmenter else None
    result = run_study(args.study[0] if len(args.study) == 1 else args.study, classifier, options, segmenter)
    print(json.dumps(result.to_dict(), indent=2) if args.json else summary(result))
    return 0


def summary(result: StudyResult) -> str:
    """A short human-readable report of one study."""
    d = result.to_dict()
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_predict, add_evaluate_selection]


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
