"""``ctedge validate``: measure one model bundle on labelled studies (see ``edge.validate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge import CLASSES
from edge.card import MODALITY_TERMS
from edge.cli.common import add_model_options, model_profile
from edge.dataset import discover
from edge.errors import UserError
from edge.evidence import card_summary, evidence_line, record
from edge.selection_report import read_labels
from edge.validate import (NON_COVID, RECORDS, format_table2, owner_only, run_studies, summarise, validate_engine,
                           validated_classes, write_csv, write_outputs)


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="measure a model bundle on your own labelled studies (no TensorFlow)",
                       description="Run every labelled study (CT study folders or zips, or chest radiographs: one "
                                   "DICOM CR/DX or PNG/JPEG file per study) through the same engine as predict with "
                                   "one bundle (--model, else the profile's bundle of the studies' modality) and "
                                   "write a per-study "
                                   "CSV, Table 2 (accuracy, specificity, sensitivity, F1 per class) with patient "
                                   "bootstrap 95% intervals, ROC curves, the normalised confusion matrix, a reliability "
                                   "plot with the expected calibration error and OUT/validation.html. A rerun with "
                                   "the same OUT resumes where a crash or Ctrl-C stopped.")
    p.add_argument("data", type=Path, help="labelled studies: <root>/<class>/<patient>/... (a radiograph file directly "
                                           "under <class>/ is one study) or a CSV patient,class,path")
    add_model_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it holds an earlier run)")
    p.add_argument("--slice-labels", type=Path, default=None,
                   help="CSV patient_folder,file,infection: also measure how many infected slices the selection "
                        "keeps (CT only)")
    p.add_argument("--record", action="store_true", help="append the evidence summary to the bundle's model.json")
    p.add_argument("--description", default=None, help="what the data are (site, period, selection); needed with --record")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_validate)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cmd_validate(args: argparse.Namespace) -> int:
    if args.record and not args.description:
        raise UserError("--record", "say what the data are with --description (site, period, how studies were chosen)")
    records = discover(args.data)
    engine, bundle = validate_engine(model_profile(args), args.model, records)
    if args.slice_labels and engine.modality != "ct":
        raise UserError("--slice-labels", f"{bundle} reads {MODALITY_TERMS[engine.modality].name} studies: a radiograph "
                                          "has no slices to select, so slice labels apply to CT bundles only")
    labels = read_labels(args.slice_labels) if args.slice_labels else None
    classes = engine.classifier.classes
    if not validated_classes(classes):
        raise UserError(bundle, f"classes {', '.join(classes)}: validate compares verdicts with patient labels "
                                f"{', '.join(CLASSES)}, so it needs a model of those classes or of covid and "
                                f"{NON_COVID} (other_pneumonia and healthy count as {NON_COVID})")
    if tuple(classes) != CLASSES:
        print(f"Two-class model ({', '.join(classes)}): other_pneumonia and healthy patients count as {NON_COVID}.")
    model = engine.info.to_dict()
    with owner_only():
        try:
            outcomes = run_studies(records, engine, args.out, labels)
        except KeyboardInterrupt:
            print(f"Finished studies are kept in {args.out / RECORDS}; run the same command to resume.")
            raise
        if all(o["error"] for o in outcomes):
            write_csv(outcomes, args.out / "studies.csv", engine.modality, classes)
            raise UserError(args.data, f"no study could be analysed; the errors are in {args.out / 'studies.csv'}")
        summary = summarise(outcomes, args.bootstrap, args.seed, classes)
        page = write_outputs(outcomes, summary, args.out, model, engine.modality)
    if model["banner"]:
        print(f"*** {model['banner']} *** {model['note']}")
    for line in summary["behaviour"]:
        print(f"*** {line}")
    print(format_table2(summary))
    auc = summary["roc_auc"]
    print("ROC AUC: " + ", ".join(f"{c} {_auc(a)}" for c, a in auc["per_class"].items()) + f"; macro {_auc(auc['macro'])}")
    print(f"Expected calibration error: {summary['calibration']['ece']:.3f}")
    if summary["retention"] is not None:
        r = summary["retention"]
        print(f"Infected slices kept by the selection: {r['infected_kept']}/{r['infected']} in {r['studies']} studies")
    for line in summary["statements"]:
        print(f"Note: {line}")
    if args.record:
        card = record(bundle, card_summary(summary, args.description, model))
        print(f"Recorded in {card.path}: {evidence_line(card.validations, model['variant'])}")
    print(f"Page: {page}")
    return 0
