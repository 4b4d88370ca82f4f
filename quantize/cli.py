"""``ctedge quantize``: a trained run folder -> a TFLite model bundle the edge can load."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edge.card import DEMONSTRATION_NOTE
from edge.errors import UserError
from training.cli import NO_NETWORK, _require_tensorflow


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="convert a trained run to TFLite float32/float16/dynamic/int8 (needs [train])",
                       description="Convert the run's encoder and head separately to static-shape TFLite models "
                                   "(float32, float16, dynamic-range, full int8 calibrated on real preprocessed groups "
                                   "of the given studies), write a model bundle (model.json + .tflite files, and "
                                   "encoder.onnx for TensorRT) for `ctedge predict --model`, and a fidelity report "
                                   "(fidelity.json, fidelity.txt) "
                                   "comparing every variant with the Keras model on those groups. " + NO_NETWORK)
    p.add_argument("run", type=Path, help="run folder written by ctedge train (encoder.keras + head.keras, or "
                                          "slice_model.keras of a slice model: float32 and int8, Grad-CAM model)")
    p.add_argument("--calibration", type=Path, required=True, help="folder tree or CSV of studies for calibration")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--name", default=None, help="model name (default: cnn-bilstm, or the slice run's folder name)")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--max-slices", type=int, default=500,
                   help="calibration (and, for slice models, fidelity) slices at most (100-500 advised)")
    p.add_argument("--clinical", action="store_true", help="do not mark the bundle as a demonstration model")
    p.add_argument("--note", default=DEMONSTRATION_NOTE)
    p.add_argument("--research", type=Path, default=None, metavar="SUMMARY_JSON",
                   help="slice/X-ray runs: a research model trained on public data (status research): the "
                        "summary.json of `ctedge data import` gives the card's training_data and known_biases")
    p.add_argument("--known-bias", action="append", default=[], metavar="SENTENCE",
                   help="with --research: one more known bias for the card (repeatable)")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    _require_tensorflow()
    from quantize.bundle import quantize_run
    from quantize.slice_bundle import quantize_slice_run, research_fields
    from training.slice_train import is_slice_run

    command = "ctedge " + shlex.join(sys.argv[1:])
    if args.research and (args.clinical or not is_slice_run(args.run)):
        raise UserError("--research", "is for runs of ctedge train --arch (slice and X-ray models), not with --clinical")
    if is_slice_run(args.run):
        research = research_fields(args.research, args.known_bias) if args.research else None
        result = quantize_slice_run(args.run, args.calibration, args.out, args.name or args.run.name, args.version,
                                    args.max_slices, args.clinical, args.note, command, research)
        card = result.card
        rule = f"; patient rule {card.patient_rule.to_dict()}" if card.patient_rule else ""
        print(f"{card.kind} bundle: {card.path} ({card.extra['calibration']['slices']} calibration images{rule})")
        print(result.table)
        return 0
    result = quantize_run(args.run, args.calibration, args.out, args.name or "cnn-bilstm", args.version,
                          args.max_slices, args.clinical, args.note, command=command)
    card = result.card
    print(f"bundle: {card.path} ({card.extra['calibration']['groups']} calibration groups)")
    print(result.table)
    edgetpu, onnx = card.extra["edgetpu"], card.extra["onnx"]
    if not edgetpu["compiled"]:
        print(f"Edge TPU: not compiled ({edgetpu['reason']}); run: {edgetpu['command']}")
    print(f"ONNX encoder for TensorRT: {card.bundle / onnx['file']} (opset {onnx['opset']}); "
          f"on the Jetson, in the bundle folder: {onnx['trtexec']}")
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
