"""A trained run folder -> a TFLite model bundle with its fidelity report (``ctedge quantize``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from edge import CLASSES
from edge.card import DEMONSTRATION_NOTE, ModelCard
from edge.infer import TFLiteClassifier
from quantize.convert import export_bundle
from quantize.fidelity import bundle_sizes, compare, format_table
from quantize.onnx_export import OnnxEncoder
from training.data import discover
from training.models import predict_group
from training.train import load_run_models, prepare_records, read_run_preprocessing



@dataclass(frozen=True)
class QuantizeResult:
    card: ModelCard
    fidelity: dict       # what fidelity.json holds
    table: str           # what fidelity.txt holds


def quantize_run(run: Path, calibration: Path, out: Path, name: str, version: str, max_slices: int = 500,
                 clinical: bool = False, note: str = DEMONSTRATION_NOTE, command: str = "") -> QuantizeResult:
    """Convert the run's encoder and head to every TFLite variant (calibrated on real groups of the
    ``calibration`` studies, preprocessed with the run's own options), write the bundle with its
    model card, and compare every variant and the ONNX encoder with the Keras model on those groups
    (``fidelity.json``, ``fidelity.txt``)."""
    encoder, head = load_run_models(run)
    options, training_range = read_run_preprocessing(run)
    studies = [p.study.groups() for p in prepare_records(discover(calibration), options)]
    groups = [g for study in studies for g in study]
    groups = groups[:max(1, max_slices // len(groups[0]))]
    config = run / "config.json"
    card = {"name": name, "version": version, "classes": list(CLASSES), "demonstration": not clinical,
            "placeholder": False, "note": "" if clinical else note,
            "preprocessing": asdict(options), "training_range": training_range.to_dict(),
            "calibration": {"studies": str(calibration), "groups": len(groups)},
            "trained_with": json.loads(config.read_text()) if config.exists() else {}, "converted_with": command}
    parsed = export_bundle(encoder, head, out, card, groups)
    predictors = {"keras": lambda g: predict_group(encoder, head, g)}
    predictors |= {f"tflite_{v}": TFLiteClassifier(parsed, v).predict for v in parsed.variants}
    onnx = parsed.extra["onnx"]
    onnx_encoder = OnnxEncoder(out / onnx["file"])
    predictors["onnx_encoder"] = lambda g: head(onnx_encoder.features(g)[None], training=False).numpy()[0]
    results = compare(predictors, studies, reference="keras")
    results["onnx_encoder"].update({k: onnx["validation"][k] for k in ("max_abs_feature_diff", "feature_scale")})
    sizes = bundle_sizes(parsed)
    fidelity = {"reference": "keras float32", "studies": len(studies), "groups": sum(map(len, studies)),
                "variants": results, "sizes_bytes": sizes}
    table = format_table(results, sizes)
    (out / "fidelity.json").write_text(json.dumps(fidelity, indent=2))
    (out / "fidelity.txt").write_text(table + "\n")
    return QuantizeResult(parsed, fidelity, table)
