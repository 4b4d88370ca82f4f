"""``ctedge evaluate-selection``: how many labelled infected slices each selection rule keeps."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from edge.selection_report import evaluate_study, format_table, read_labels


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
