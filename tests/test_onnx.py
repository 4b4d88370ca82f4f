"""ONNX export of the CNN encoder (for TensorRT on a Jetson), checked with onnxruntime against Keras."""

import functools
import json
import math

import pytest

pytest.importorskip("tensorflow")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import tf_keras as keras  # noqa: E402

import quantize.bundle  # noqa: E402
import quantize.convert  # noqa: E402
from edge.cli import main  # noqa: E402
from edge.options import PipelineOptions  # noqa: E402
from edge.pipeline import prepare_study  # noqa: E402
from quantize.onnx_export import OPSET, TRTEXEC, export_encoder_onnx, validate_encoder_onnx  # noqa: E402
from training.data import discover  # noqa: E402
from training.models import build_encoder, build_head  # noqa: E402
from training.train import write_run_preprocessing  # noqa: E402

pytestmark = pytest.mark.train  # trains, converts or exports Keras models

# Operators the encoder may use; all are in the TensorRT 8.2 ONNX parser (JetPack 4.6, Jetson Nano).
TENSORRT_OPS = {"Mul", "Add", "Reshape", "Transpose", "Conv", "Relu", "MaxPool", "GlobalMaxPool", "Squeeze", "Flatten",
                "Concat"}


@pytest.fixture(scope="module")
def groups(phantom_dataset):
    """Real preprocessing of the phantom studies: (50, 256, 256) uint8 groups."""
    return [g for r in discover(phantom_dataset) for g in prepare_study(r.path).groups()]


@pytest.fixture(scope="module")
def exported(groups, tmp_path_factory):
    keras.utils.set_random_seed(0)
    encoder, head = build_encoder(), build_head(n_slices=groups[0].shape[0])
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    ops = export_encoder_onnx(encoder, path, groups[0].shape[0])
    return path, ops, encoder, head


def test_onnxruntime_matches_keras_on_phantom_groups(exported, groups):
    path, _, encoder, head = exported
    figures = validate_encoder_onnx(path, encoder, head, groups)
    print(figures)
    assert figures["groups"] == len(groups) == 6
    assert figures["feature_scale"] > 0.1  # the features are not trivially zero
    assert figures["max_abs_feature_diff"] < 1e-4 * figures["feature_scale"]
    assert figures["top1_agreement"] == 1.0 and figures["max_abs_prob_diff"] < 1e-5


def test_graph_is_static_opset_13_with_tensorrt_operators(exported, groups):
    path, ops, *_ = exported
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [len(groups[0]), 256, 256, 1]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET] == [13]
    assert set(ops) <= TENSORRT_OPS and {"Conv", "MaxPool", "Concat"} <= set(ops)
    windows = [math.prod(a.ints) for n in model.graph.node if n.op_type == "MaxPool"
               for a in n.attribute if a.name == "kernel_shape"]
    assert max(windows) < 100_000  # TensorRT's limit on a pooling window


def test_pooling_window_too_large_for_tensorrt_is_a_clear_error(tmp_path):
    encoder = build_encoder(input_shape=(320, 320, 1), filters=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"MaxPool window \[320, 320\] has 102400 elements; TensorRT accepts fewer "):
        export_encoder_onnx(encoder, tmp_path / "encoder.onnx", 2)


def test_quantize_writes_onnx_entry_and_fidelity_row(phantom_dataset, groups, tmp_path, capsys, monkeypatch):
    # To keep the test short, only the int8 TFLite variant and no Grad-CAM models (tested elsewhere):
    # the ONNX export depends on neither.
    monkeypatch.setattr(quantize.bundle, "export_bundle",
                        functools.partial(quantize.convert.export_bundle, variants=("int8",)))
    monkeypatch.setattr(quantize.convert, "export_explain_models", lambda *args, **kwargs: {}, raising=False)
    run, bundle, calibration = tmp_path / "run", tmp_path / "bundle", tmp_path / "calibration.csv"
    run.mkdir()
    records = discover(phantom_dataset)[::3]  # two studies: a group each
    calibration.write_text("patient,class,path\n" + "".join(f"{r.patient},{r.label},{r.path}\n" for r in records))
    write_run_preprocessing(run, PipelineOptions(), [])
    build_encoder(filters=(4, 8, 8, 8)).save(run / "encoder.keras")
    build_head(n_slices=len(groups[0]), feature_dim=28, lstm_units=8, dense_units=8).save(run / "head.keras")
    assert main(["quantize", str(run), "--calibration", str(calibration), "--out", str(bundle),
                 "--max-slices", "50"]) == 0
    assert TRTEXEC in capsys.readouterr().out

    entry = json.loads((bundle / "model.json").read_text())["onnx"]
    assert (bundle / entry["file"]).is_file() and entry["file"] == "encoder.onnx" and entry["opset"] == 13
    assert entry["trtexec"] == "trtexec --onnx=encoder.onnx --fp16 --saveEngine=encoder.plan"
    assert entry["input"]["shape"] == [50, 256, 256, 1] and entry["output"]["shape"] == [50, 28]
    check = entry["validation"]
    assert check["groups"] == 1 and check["top1_agreement"] == 1.0  # the calibration group
    assert check["max_abs_feature_diff"] < 1e-4 * check["feature_scale"]

    fidelity = json.loads((bundle / "fidelity.json").read_text())  # every group of the calibration studies
    assert fidelity["groups"] == 2
    row = fidelity["variants"]["onnx_encoder"]
    assert row["top1_agreement"] == 1.0 and row["max_abs_prob_diff"] < 1e-5
    assert row["max_abs_feature_diff"] < 1e-4 * row["feature_scale"]
    text = (bundle / "fidelity.txt").read_text()
    assert "onnx_encoder" in text and "max |feature diff|" in text
