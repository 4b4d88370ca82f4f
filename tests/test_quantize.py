"""Conversion to TFLite and the edge runtime that runs the result without TensorFlow's help."""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import tf_keras as keras  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

from edge.card import load_card  # noqa: E402
from edge.errors import ModelLoadError  # noqa: E402
from edge.explain import GradCam  # noqa: E402
from edge.infer import TFLiteClassifier  # noqa: E402
from edge.runtime import dequantize_output, quantize_input  # noqa: E402
from quantize.convert import VARIANTS, export_bundle  # noqa: E402
from training.gradcam import gradcam_group  # noqa: E402
from training.models import build_encoder, build_head  # noqa: E402

pytestmark = pytest.mark.train  # trains, converts or exports Keras models

GROUP = 10


def op_names(path) -> set[str]:
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return {op["op_name"] for op in it._get_ops_details()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    keras.utils.set_random_seed(0)
    encoder = build_encoder(filters=(4, 8, 8, 8))
    head = build_head(n_slices=GROUP, feature_dim=28, lstm_units=8, dense_units=8)
    rng = np.random.default_rng(0)
    groups = [np.where(rng.random((GROUP, 256, 256)) < 0.6, rng.integers(0, 255, (GROUP, 256, 256)), 0).astype(np.uint8)
              for _ in range(6)]
    out = tmp_path_factory.mktemp("bundle")
    card = {"name": "test", "version": "0", "classes": ["covid", "other_pneumonia", "healthy"],
            "demonstration": True, "note": "test model",
            "preprocessing": {"group_size": GROUP}, "training_range": {}}
    export_bundle(encoder, head, out, card, groups[:4])
    return out, encoder, head, groups[4:]


def test_bundle_has_static_float_and_int8_models(bundle):
    out, *_ = bundle
    card = json.loads((out / "model.json").read_text())
    assert set(card["variants"]) == set(VARIANTS) and card["preprocessing"]["group_size"] == GROUP
    assert card["edgetpu"]["compiled"] is False and "edgetpu_compiler" in card["edgetpu"]["command"]
    enc = Interpreter(model_path=str(out / "encoder_int8.tflite"))
    detail = enc.get_input_details()[0]
    # uint8 slices go in unchanged: uint8 input with scale 1 and zero point 0.
    assert list(detail["shape"]) == [GROUP, 256, 256, 1] and detail["dtype"] == np.uint8
    assert detail["quantization"] == (1.0, 0)


def test_int8_ops_are_fused_integer_kernels(bundle):
    out, *_ = bundle
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in op_names(out / "head_int8.tflite")
    assert not {"WHILE", "FlexTensorListReserve"} & op_names(out / "head_int8.tflite")
    assert op_names(out / "encoder_int8.tflite") <= {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "CONCATENATION", "QUANTIZE"}


def test_edge_runtime_matches_keras(bundle):
    out, encoder, head, groups = bundle
    # An untrained model on noise: float kernels differ in summation order, int8 adds quantisation error.
    for variant, tolerance in (("float32", 0.02), ("float16", 0.02), ("dynamic", 0.05), ("int8", 0.05)):
        model = TFLiteClassifier(out, variant, threads=2)
        for g in groups:
            feats = encoder(g[..., None].astype(np.float32)).numpy()
            expected = head(feats[None]).numpy()[0]
            got_feats = model.features(g)
            assert np.corrcoef(got_feats.ravel(), feats.ravel())[0, 1] > 0.99
            assert np.abs(model.predict(g) - expected).max() < tolerance, variant


def test_edge_gradcam_matches_tensorflow(bundle):
    out, encoder, head, groups = bundle
    cam = GradCam(load_card(out), threads=2)
    assert op_names(out / "explain_head_float32.tflite").isdisjoint({"WHILE", "FlexReluGrad"})
    for c in range(3):
        heat, share = cam.explain_group(groups[0], c)
        expected_heat, expected_share = gradcam_group(encoder, head, groups[0], c)
        assert heat.shape == (GROUP, 256, 256) and heat.max() == pytest.approx(1.0)
        assert np.abs(heat - expected_heat).max() < 1e-3, c
        assert np.abs(share - expected_share).max() < 1e-3, c


def test_quantisation_round_trip():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([-10.0, 0.0, 10.0, 1000.0])
    q = quantize_input(x, detail)
    assert q.tolist() == [-23, -3, 17, 127]
    assert np.allclose(dequantize_output(q[:3], detail), x[:3])


def test_missing_edgetpu_runtime_and_bad_cards_are_clear_errors(bundle, tmp_path):
    out, *_ = bundle
    with pytest.raises(ModelLoadError, match="libedgetpu"):
        TFLiteClassifier(out, "int8", edgetpu=True)
    with pytest.raises(ModelLoadError, match="no 'edgetpu' variant"):
        TFLiteClassifier(out, "edgetpu")
    with pytest.raises(ModelLoadError, match="model.json"):
        TFLiteClassifier(tmp_path)
