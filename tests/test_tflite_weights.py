"""ImageNet MobileNetV2 weights dequantised from Coral's uint8 TFLite file (``--weights FILE.tflite``):
the Keras trunk with those weights and the file's own logits calls Coral's cat.bmp a cat, with the same
top-5 as the TFLite original. Needs the google-coral/test_data files (CTEDGE_CORAL_TEST_DATA: their folder)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from training.models import load_local_weights  # noqa: E402

CORAL = Path(os.environ.get("CTEDGE_CORAL_TEST_DATA", "/work/data/coral"))
TFLITE = CORAL / "mobilenet_v2_1.0_224_quant.tflite"


@pytest.mark.skipif(not TFLITE.is_file(), reason=f"{TFLITE} not present (set CTEDGE_CORAL_TEST_DATA)")
def test_the_dequantised_trunk_sees_the_cat_as_the_tflite_file_does():
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    labels = (CORAL / "imagenet_labels.txt").read_text().splitlines()
    cat = cv2.resize(cv2.cvtColor(cv2.imread(str(CORAL / "cat.bmp")), cv2.COLOR_BGR2RGB), (224, 224),
                     interpolation=cv2.INTER_AREA)
    reference = Interpreter(str(TFLITE))
    reference.allocate_tensors()
    reference.set_tensor(reference.get_input_details()[0]["index"], cat[None])
    reference.invoke()
    expected = np.argsort(-reference.get_tensor(reference.get_output_details()[0]["index"])[0].astype(float))[:5]

    trunk = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    load_local_weights(trunk, TFLITE)
    logits_op = Interpreter(str(TFLITE), experimental_preserve_all_tensors=True)
    logits_op.allocate_tensors()
    from training.tflite_weights import CONV_OPS, _dequantised

    details = {t["index"]: t for t in logits_op.get_tensor_details()}
    last = [o for o in logits_op._get_ops_details() if o["op_name"] in CONV_OPS][-1]
    w, b = (_dequantised(logits_op, details, i) for i in last["inputs"][1:3])
    features = trunk.predict(cat[None].astype(np.float32) / 127.5 - 1, verbose=0).mean((1, 2))[0]
    top5 = np.argsort(-(w[:, 0, 0, :] @ features + b))[:5]
    assert "cat" in labels[top5[0]]
    assert list(top5) == list(expected)
