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
from typing import Any

from tqdm import tqdm

from edge import CLASSES, __version__
from edge.dicomnet.command import add_bench_dicom, add_receive
from edge.doctor import add_doctor
from edge.errors import UserError
from edge.engine import DEFAULT_BUNDLE, Engine
from edge.ingest import configure_pydicom
from edge.profile import command_profile
from edge.preprocess.select import METHODS
from edge.selection_report import evaluate_study, format_table, read_labels
from edge.server.command import add_serve
from edge.tune import add_tune
from edge.validate import add_validate
from edge.watch import add_watch

log = logging.getLogger("ctedge")

SELECTION_HELP = (
    "slice selection rule: 'lung-extent' (default; keeps every slice between the lung apex and base), "
    "'seed-area' (seed thresholds 0.4 upper / 0.9 lower: drops much of the lung bases), "
    "'rahimzadeh' (published dark-pixel rule; WARNING: it can drop slices with dense consolidation, "
    "see README for its measured retention of infected slices)")


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
    p.add_argument("--config", type=Path, default=None,
                   help="device profile (firmware_config/*.yaml): model, delegate, threads and vote threshold; "
                        "the options below override it")
    p.add_argument("--selection", choices=METHODS, default=None,
                   help=SELECTION_HELP + ". The preprocessing comes from the model card: a rule other than the "
                                         "card's is refused")
    p.add_argument("--no-mask", action="store_true",
                   help="do not black out non-lung pixels (refused unless the model was trained that way)")
    p.add_argument("--override", type=float, default=None,
                   help="a group's covid/other_pneumonia probability above this overrides a healthy majority (default 0.9)")
    p.add_argument("--model", type=Path, default=None,
                   help="TFLite model bundle folder (model.json). With --config it replaces the profile's bundle of "
                        "the same modality (CT or X-ray) and keeps the others; without, it is the only bundle. "
                        "Default: the profile's bundles, else the bundled models (CT: the demonstration model; X-ray: the "
                        "X-ray research model edge/models/xray-research)")
    p.add_argument("--variant", default=None, help="bundle variant to run (int8, float32, ...) or auto (default): the "
                                                 "one `ctedge tune` measured fastest on this CPU, else int8. Binds the "
                                                 "profile's main bundle; another bundle lacking it runs its own auto choice")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--segmenter", default=None,
                   help="'threshold' or a U-Net .tflite; must be the segmenter the model card names (checked)")
    p.set_defaults(func=cmd_predict)


def predict_engine(args: argparse.Namespace) -> Engine:
    """The engine that ``predict`` options describe: a device profile (or the defaults), overridden
    by explicit flags; pipeline flags are checked against the model card like profile keys."""
    profile = command_profile(args.config, args.model, DEFAULT_BUNDLE, args.variant, args.threads)
    flags: dict[str, tuple[Any, str]] = {}
    for key, value, flag in (("selection", args.selection, "--selection"), ("override", args.override, "--override"),
                             ("mask_lungs", False if args.no_mask else None, "--no-mask"),
                             ("segmenter", args.segmenter, "--segmenter")):
        if value is not None:
            flags[key] = (value, flag)
    return Engine.from_profile(profile, flags)


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
    if model["banner"]:
        lines.append(f"*** {model['banner']} ***")
        lines.append(f"    {model['note']}")
    lines.append(f"Verdict: {d['label']}   ({d['decision_rule']})")
    classes = d["classes"]
    lines.append("Probabilities: " + "  ".join(f"{c} {d['probabilities'][c]:.3f}" for c in classes))
    lines += INPUT_LINES[d.get("modality", "ct")](d)      # older results have no modality: CT
    for g in d["groups"]:
        probs = " ".join(f"{g['probabilities'][c]:.3f}" for c in classes)
        lines.append(f"  group {g['index']}: slices {g['slice_range'][0]}-{g['slice_range'][1]}  {g['label']:<16} [{probs}]")
    for s in d["series"]["skipped"]:
        lines.append(f"Skipped series ({s['n_files']} files): {s['reason']}")
    lines += [f"Warning: {w}" for w in d["warnings"]]
    lines.append("Time: " + ", ".join(f"{k} {v:.0f} ms" for k, v in d["timings_ms"].items()))
    lines.append(f"Model: {model['name']} {model['version']}; {model.get('validation', 'no validation recorded')}")
    return "\n".join(lines)


def _ct_lines(d: dict) -> list[str]:
    lines = [f"Slices: {d['n_slices_read']} read, {d['n_slices_used']} used ({d['selection']} selection)"]
    scored = [s for s in d["slices_used"] if "label" in s]
    if scored:
        counts = {c: sum(s["label"] == c for s in scored) for c in d["classes"]}
        lines.append("  slice labels: " + ", ".join(f"{n} {c}" for c, n in counts.items()))
    return lines


def _xray_lines(d: dict) -> list[str]:
    return [f"Radiograph: {d['slices_used'][0]['file']} (view {d['input']['view'] or 'not recorded'})"]


INPUT_LINES = {"ct": _ct_lines, "xray": _xray_lines}
"""The summary lines describing what was read, by the result's modality."""


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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_predict, add_evaluate_selection, add_serve, add_watch,
                                                                add_validate, add_receive, add_bench_dicom, add_doctor,
                                                                add_tune]


def plugin_commands(command: str | None) -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by the training and quantize packages (entry point group
    ``ctedge.commands``), so that ``edge`` never imports them: dependencies point one way. Only the
    plugin of ``command`` is loaded (all of them when it names none, for the help)."""
    plugins = sorted(entry_points(group="ctedge.commands"), key=lambda ep: ep.name)
    chosen = [ep for ep in plugins if ep.name == command]
    return [ep.load() for ep in chosen or plugins]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ctedge`` parser for ``argv``: the edge commands, and the plugin command it names."""
    parser = argparse.ArgumentParser(prog="ctedge", description="Chest-CT pneumonia triage on edge devices "
                                     f"(classes: {', '.join(CLASSES)}).")
    parser.add_argument("--version", action="version", version=f"ctedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if command not in sub.choices:
        for add in plugin_commands(command):
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    configure_pydicom()
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
