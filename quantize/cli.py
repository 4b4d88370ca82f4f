"""``ctedge quantize``: a trained run folder -> a TFLite model bundle the edge can load."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from training.cli import NO_NETWORK, _require_tensorflow

DEMO_NOTE = ("Demonstration model trained on very few patients; it shows the pipeline working end to end "
             "and has no clinical validity. Not for clinical use.")


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="convert a trained run to TFLite float32/float16/dynamic/int8 (needs [train])",
                       description="Convert the run's encoder and head separately to static-shape TFLite models "
                                   "(float32, float16, dynamic-range, full int8 calibrated on real preprocessed groups "
                                   "of the given studies), write a model bundle (model.json + .tflite files, and "
                                   "encoder.onnx for TensorRT) for `ctedge predict --model`, and a fidelity report "
                                   "(fidelity.json, fidelity.txt) "
                                   "comparing every variant with the Keras model on those groups. " + NO_NETWORK)
    p.add_argument("run", type=Path, help="run folder written by ctedge train (encoder.keras, head.keras)")
    p.add_argument("--calibration", type=Path, required=True, help="folder tree or CSV of studies for calibration")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--name", default="cnn-bilstm")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--max-slices", type=int, default=500, help="calibration slices at most (100-500 advised)")
    p.add_argument("--clinical", action="store_true", help="do not mark the bundle as a demonstration model")
    p.add_argument("--note", default=DEMO_NOTE)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    _require_tensorflow()
    import tf_keras as keras

    import numpy as np

    from edge import CLASSES
    from edge.infer import TFLiteClassifier
    from edge.pipeline import PipelineOptions
    from quantize.convert import export_bundle
    from quantize.fidelity import bundle_sizes, compare, format_table
    from quantize.onnx_export import OnnxEncoder, validate_encoder_onnx
    from training.data import discover
    from training.train import prepare_records

    encoder = keras.models.load_model(args.run / "encoder.keras")
    head = keras.models.load_model(args.run / "head.keras")
    studies = [p.study.groups() for p in prepare_records(discover(args.calibration), PipelineOptions())]
    groups = [g for study in studies for g in study]
    groups = groups[:max(1, args.max_slices // len(groups[0]))]
    train_config = json.loads((args.run / "config.json").read_text()) if (args.run / "config.json").exists() else {}
    card = {"name": args.name, "version": args.version, "classes": list(CLASSES),
            "demonstration": not args.clinical, "note": args.note if not args.clinical else "",
            "calibration": {"studies": str(args.calibration), "groups": len(groups)},
            "trained_with": train_config, "converted_with": "ctedge " + shlex.join(sys.argv[1:])}
    export_bundle(encoder, head, args.out, card, groups)
    print(f"bundle: {args.out}/model.json ({len(groups)} calibration groups)")
    card = json.loads((args.out / "model.json").read_text())
    predictors = {"keras": lambda g: head(encoder(g[..., None].astype(np.float32), training=False)[None],
                                          training=False).numpy()[0]}
    predictors |= {f"tflite_{v}": TFLiteClassifier(args.out, v).predict for v in card["variants"]}
    onnx_encoder = OnnxEncoder(args.out / card["onnx"]["file"])
    predictors["onnx_encoder"] = lambda g: head(onnx_encoder.features(g)[None], training=False).numpy()[0]
    results = compare(predictors, studies, reference="keras")
    check = validate_encoder_onnx(args.out / card["onnx"]["file"], encoder, head, [g for s in studies for g in s])
    results["onnx_encoder"].update({k: check[k] for k in ("max_abs_feature_diff", "feature_scale")})
    (args.out / "fidelity.json").write_text(json.dumps(
        {"reference": "keras float32", "studies": len(studies), "groups": sum(map(len, studies)),
         "variants": results, "sizes_bytes": bundle_sizes(args.out, card)}, indent=2))
    table = format_table(results, bundle_sizes(args.out, card))
    (args.out / "fidelity.txt").write_text(table + "\n")
    print(table)
    if not card["edgetpu"]["compiled"]:
        print(f"Edge TPU: not compiled ({card['edgetpu']['reason']}); run: {card['edgetpu']['command']}")
    print(f"ONNX encoder for TensorRT: {args.out / card['onnx']['file']} (opset {card['onnx']['opset']}); "
          f"on the Jetson, in the bundle folder: {card['onnx']['trtexec']}")
    return 0


def add_quantize_unet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize-unet", help="convert a trained U-Net to TFLite for `predict --segmenter` (needs [train])")
    p.add_argument("model", type=Path, help="unet.keras written by ctedge train-unet")
    p.add_argument("--out", type=Path, required=True, help=".tflite file to write")
    p.set_defaults(func=cmd_quantize_unet)


def cmd_quantize_unet(args: argparse.Namespace) -> int:
    _require_tensorflow()
    import tf_keras as keras

    from quantize.convert import convert
    from training.models import dice_coefficient, dice_loss

    model = keras.models.load_model(args.model, custom_objects={"dice_loss": dice_loss, "dice_coefficient": dice_coefficient})
    args.out.write_bytes(convert(model, (1,) + tuple(model.input_shape[1:]), "float32"))
    print(f"segmenter: {args.out} (use: ctedge predict STUDY --segmenter {args.out})")
    return 0
