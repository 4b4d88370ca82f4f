"""A trained slice run folder -> a ``slice`` TFLite bundle (float32 and int8, the Grad-CAM model)
with its fidelity report (``ctedge quantize`` on a run of ``ctedge train --arch``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge.card import CARD_FILE, DEMONSTRATION_NOTE, parse_card, write_card
from edge.errors import UserError
from edge.infer import SliceClassifier
from quantize.bundle import QuantizeResult
from quantize.convert import convert, export_slice_explain
from quantize.fidelity import bundle_sizes, compare, format_table
from training.ct_slice_images import load_inputs, read_slice_images
from training.data import discover
from training.slice_train import load_slice_run
from training.train import prepare_records, read_run_preprocessing

SLICE_VARIANTS = ("float32", "int8")
RESEARCH_NOTE = ("Research model trained on public collections; its figures are from those collections, not from "
                 "this site. Not validated for clinical use.")
PLACEHOLDER_NOTE = ("Untrained (placeholder) model: converted with its initial weights to measure speed and size only; "
                    "its verdicts carry no information. Not for clinical use.")


def research_fields(summary: Path, known_biases: list[str]) -> dict:
    """The card fields of a research model from the summary.json of ``ctedge data import`` (its
    ``training_data`` and ``known_biases``) and further known biases; UserError names a bad file."""
    try:
        doc = json.loads(summary.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(summary, f"cannot read the data summary ({exc})") from exc
    if not isinstance(doc, dict) or "training_data" not in doc:
        raise UserError(summary, "not a summary.json of ctedge data import (it has no training_data)")
    return {"training_data": doc["training_data"], "known_biases": list(doc.get("known_biases", [])) + known_biases}


def calibration_slices(studies: list[np.ndarray], max_slices: int) -> list[np.ndarray]:
    """At most ``max_slices`` slices spread evenly over the studies' kept slices; the first one is
    given one black and one white pixel so that the int8 model's uint8 input gets scale 1 and zero
    point 0 (the edge then passes its uint8 slices unchanged)."""
    pooled = np.concatenate(studies)
    chosen = pooled[np.linspace(0, len(pooled) - 1, min(max_slices, len(pooled))).astype(int)].copy()
    chosen[0, 0, 0], chosen[0, 0, 1] = 0, 255
    return list(chosen)


def run_validation(run: Path) -> dict | None:
    """The card's ``validation``: the hold-out of an X-ray run (its ``report.json``) or of a slice-images run
    (its ``evaluation.json``, see ``training.ct_slice_images``); None for a run without one."""
    if (run / "report.json").is_file():
        return validation_summary(json.loads((run / "report.json").read_text()))
    if (run / "evaluation.json").is_file():
        doc = json.loads((run / "evaluation.json").read_text())
        return {"what": "slice level, hold-out surrogate patients never used for fitting, early stopping or any choice; "
                        "95% intervals by surrogate-patient bootstrap",
                "counts": doc["counts"]["test"], "model": doc["model"],
                "floor_frozen_embedding_logistic_regression": doc["baseline"]}
    return None


def validation_summary(report: dict) -> dict:
    """The card's ``validation`` of an X-ray run (its ``report.json``): the hold-out per class and macro
    sensitivity, specificity and F1 with patient-bootstrap 95% intervals, and the validation folds' macro
    mean and spread."""
    doc: dict = {"unit": report["unit"], "final_model": report["final_model"]["description"],
                 "folds_macro": report["folds_summary"]["macro"]}
    held = report.get("holdout")
    if held:
        boot = held["bootstrap_95"]
        doc["holdout"] = {
            "n": held["n"], "accuracy": held["accuracy"], "note": "never used for fitting, early stopping or choice",
            "per_class": {c: {k: v for m in ("sensitivity", "specificity", "f1")
                              for k, v in ((m, held["per_class"][c][m]), (f"{m}_95", boot["per_class"][c][m]))}
                          | {"support": held["per_class"][c]["support"]} for c in held["per_class"]},
            "macro": {k: v for m in ("sensitivity", "specificity", "f1")
                      for k, v in ((m, held["macro"][m]), (f"{m}_95", boot["macro"][m]))}}
    return doc


def calibration_studies(calibration: Path, options, config: dict) -> list[np.ndarray]:
    """The model inputs to calibrate and compare on, one (n, size, size) array per study: the kept
    slices of DICOM studies; for a run trained on slice images (``ctedge train --slice-images``), slice
    images (the run's ``manifest.csv``: its ``train`` part only, never the hold-out)."""
    if config.get("slice_classes"):
        return [load_inputs(read_slice_images(calibration, part="train"), options)]
    prepared = prepare_records(discover(calibration), options, config.get("modality", "ct"))
    return [p.study.images[p.study.selection.kept_indices] for p in prepared]


def quantize_slice_run(run: Path, calibration: Path, out: Path, name: str, version: str, max_slices: int = 200,
                       clinical: bool = False, note: str = DEMONSTRATION_NOTE, command: str = "",
                       research: dict | None = None) -> QuantizeResult:
    """Convert the run's slice model to float32 and int8 TFLite (int8 calibrated on real kept slices of
    the ``calibration`` studies, preprocessed with the run's options), export the float32 Grad-CAM
    model, write the bundle and compare every variant with the Keras model on those studies' slices.
    A run trained for no epoch gives a placeholder bundle (flagged so, and so on every output). ``research``
    (``training_data`` and ``known_biases``, see :func:`research_fields`) makes it a research model; the run's
    hold-out (:func:`run_validation`) becomes the card's ``validation``."""
    model, config = load_slice_run(run)
    options, training_range = read_run_preprocessing(run)
    studies = calibration_studies(calibration, options, config)
    slices = calibration_slices(studies, max_slices)
    shape = (1, options.input_size, options.input_size, 1)
    out.mkdir(parents=True, exist_ok=True)
    variants = {}
    for variant in SLICE_VARIANTS:
        data = convert(model, shape, variant, lambda: ([s[None, ..., None].astype(np.float32)] for s in slices),
                       int8_input=tf.uint8)
        variants[variant] = {"model": f"slice_{variant}.tflite"}
        (out / variants[variant]["model"]).write_bytes(data)
    untrained = config["epochs"] + config["freeze_epochs"] == 0
    kind = config["kind"]
    card = {"name": name, "version": version, "kind": kind, "classes": config["classes"],
            "patient_rule": config["patient_rule"] if kind == "slice" else None, "demonstration": not clinical, "placeholder": untrained,
            "note": PLACEHOLDER_NOTE if untrained else "" if clinical else note, "preprocessing": asdict(options),
            "training_range": training_range.to_dict(), "variants": variants,
            "explain": export_slice_explain(model, config["gradcam_layer"], out, shape),
            "calibration": {"studies": str(calibration), "slices": len(slices)},
            "trained_with": config, "converted_with": command}
    if research and not untrained:
        card |= {"status": "research", "note": note if note != DEMONSTRATION_NOTE else RESEARCH_NOTE} | research
    if validation := run_validation(run):
        card["validation"] = validation
    parsed = parse_card(card, out / CARD_FILE)
    write_card(parsed)
    predictors = {"keras": lambda s: model(s[None, ..., None].astype(np.float32), training=False).numpy()[0]}
    predictors |= {f"tflite_{v}": SliceClassifier(parsed, v).predict for v in parsed.variants}
    fidelity_studies = [list(s[np.linspace(0, len(s) - 1, min(len(s), max_slices)).astype(int)]) for s in studies]
    results = compare(predictors, fidelity_studies, reference="keras", repeats=1, unit="slice")
    sizes = bundle_sizes(parsed)
    fidelity = {"reference": "keras float32", "studies": len(studies), "slices": sum(map(len, fidelity_studies)),
                "variants": results, "sizes_bytes": sizes}
    table = format_table(results, sizes, unit="slice")
    (out / "fidelity.json").write_text(json.dumps(fidelity, indent=2))
    (out / "fidelity.txt").write_text(table + "\n")
    return QuantizeResult(parsed, fidelity, table)
