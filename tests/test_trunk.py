"""The ImageNet MobileNetV2 trunk dequantised from Coral's uint8 TFLite file (training.trunk)."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from PIL import Image  # noqa: E402

from training.archs import build_slice_model  # noqa: E402
from training.trunk import CORAL_MOBILENET_V2, IMAGENET_LABELS, mobilenet_v2, weights_provenance  # noqa: E402

DATA = Path(__file__).parent / "data"
IMAGES = ("cat", "grace_hopper", "hot_dog")


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / f"{name}.png").convert("RGB").resize((224, 224), Image.BILINEAR))


@pytest.fixture(scope="module")
def keras_and_tflite():
    model = mobilenet_v2(include_top=True)
    interpreter = Interpreter(str(CORAL_MOBILENET_V2))
    interpreter.allocate_tensors()

    def tflite(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].astype(float)

    return (lambda image: model.predict(image[None].astype(np.float32) / 127.5 - 1, verbose=0)[0]), tflite


def test_the_cat_is_a_cat(keras_and_tflite):
    labels = IMAGENET_LABELS.read_text().splitlines()
    top1 = labels[int(np.argmax(keras_and_tflite[0](_rgb("cat"))))]
    assert "cat" in top1, top1


@pytest.mark.parametrize("name", IMAGES)
def test_top5_agrees_with_the_tflite_original(keras_and_tflite, name):
    keras_model, tflite = keras_and_tflite
    image = _rgb(name)
    ours, theirs = np.argsort(-keras_model(image))[:5], np.argsort(-tflite(image))[:5]
    assert ours[0] == theirs[0]
    assert len(set(ours) & set(theirs)) >= 3, (ours, theirs)


def test_the_slice_model_trunk_loads_the_tflite_weights():
    built = build_slice_model("mobilenetv2", 224, 3, CORAL_MOBILENET_V2)
    reference = mobilenet_v2()
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for ours, theirs in zip(built.model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_another_architecture_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=CORAL_MOBILENET_V2.name):
        build_slice_model("densenet121", 64, 3, CORAL_MOBILENET_V2)


def test_provenance_names_the_licence_and_hash(tmp_path):
    assert weights_provenance(CORAL_MOBILENET_V2) == {
        "file": CORAL_MOBILENET_V2.name, "licence": "Apache-2.0",
        "sha256": "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
        "source": "github.com/google-coral/test_data mobilenet_v2_1.0_224_quant.tflite"}
    other = tmp_path / "other.tflite"
    other.write_bytes(b"not weights")
    assert weights_provenance(other)["licence"] == "unknown"
