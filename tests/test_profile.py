"""Device profiles: the shipped ones load, and every mistake names the file and the key."""

import json
import shutil
from pathlib import Path

import pytest

import numpy as np

from edge.infer import TFLiteClassifier
from edge.pipeline import prepare_study
from edge.profile import ProfileError, load_profile
from tests.conftest import REPO, SAMPLES

CONFIG = REPO / "firmware_config"
SHIPPED = REPO / "edge" / "models" / "demo"


@pytest.mark.parametrize("name", ["cpu-minipc", "jetson-nano", "template"])
def test_shipped_profiles_load_and_point_at_the_demo_model(name):
    profile = load_profile(CONFIG / f"{name}.yaml")
    assert profile.model.bundle == SHIPPED.resolve()
    assert profile.server.host == "127.0.0.1" and profile.pipeline.selection == "lung-extent"
    assert profile.threads >= 1


def test_coral_profile_explains_the_missing_compiled_encoder():
    with pytest.raises(ProfileError, match=r"coral-edgetpu.yaml: model.variant: .*no 'edgetpu' variant.*edgetpu_compiler"):
        load_profile(CONFIG / "coral-edgetpu.yaml")


def test_every_shipped_tflite_model_loads_and_agrees_with_float32():
    card = json.loads((SHIPPED / "model.json").read_text())
    assert card["demonstration"] is True and "Not for clinical use" in card["note"]
    groups = prepare_study(SAMPLES / "COVID-19_P002").groups()
    reference = TFLiteClassifier(SHIPPED, "float32", threads=2)
    expected = np.stack([reference.predict(g) for g in groups])
    for variant in card["variants"]:
        model = TFLiteClassifier(SHIPPED, variant, threads=2)
        assert model.info.status != "placeholder"
        got = np.stack([model.predict(g) for g in groups])
        assert np.array_equal(got.argmax(1), expected.argmax(1)) and np.abs(got - expected).max() < 0.05, variant
    size = {v: sum((SHIPPED / f).stat().st_size for f in files.values()) for v, files in card["variants"].items()}
    assert 3 * size["int8"] < size["float32"], "the int8 model must be at least 3x smaller"
    explain = [card["explain"]["encoder"], card["explain"]["head"]]
    assert sorted(p.name for p in SHIPPED.glob("*.tflite")) == sorted(
        [f for files in card["variants"].values() for f in files.values()] + explain)


def write(tmp_path: Path, text: str) -> Path:
    shutil.copytree(SHIPPED, tmp_path / "model")
    path = tmp_path / "device.yaml"
    path.write_text(text)
    return path


BASE = "name: x\ndescription: y\nmodel:\n  bundle: model\n"


@pytest.mark.parametrize("text, message", [
    (BASE + "colour: blue\n", "unknown key 'colour'"),
    (BASE + "pipeline:\n  overide: 0.9\n", "unknown key 'pipeline.overide'"),
    (BASE + "server:\n  port: eighty\n", "server.port must be int, got str"),
    (BASE + "pipeline:\n  mask_lungs: 1\n", "pipeline.mask_lungs must be bool"),
    (BASE + "model:\n  bundle: model\n  delegate: gpu\n", "model.delegate must be one of none, edgetpu"),
    ("name: x\ndescription: y\n", "missing key 'model'"),
    ("name: x\ndescription: y\nmodel:\n  bundle: nowhere\n", "cannot read the model card"),
    (BASE + "pipeline:\n  selection: all\n", "pipeline: selection must be one of"),
    (BASE + "  variant: int4\n", "no 'int4' variant"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_mistakes_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_model_file_is_named(tmp_path):
    path = write(tmp_path, BASE)
    (tmp_path / "model" / "head_int8.tflite").unlink()
    with pytest.raises(ProfileError, match="head model file .*head_int8.tflite is missing"):
        load_profile(path)
