"""The wheel carries what the edge needs at run time: models, templates, static files, the OpenAPI file."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.external  # builds the wheel with pip


def test_the_wheel_holds_the_models_and_templates(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("ctedge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "edge" / "models" / "demo").iterdir()
               if p.suffix in (".json", ".tflite", ".onnx", ".txt")}
    assert shipped and shipped <= names, sorted(shipped - names)
    for needed in ("edge/templates/report.html", "edge/server/openapi.yaml", "edge/server/templates/base.html",
                   "edge/server/templates/result.html"):
        assert needed in names, needed
    assert any(n.startswith("edge/server/static/") for n in names)
    assert not any(n.startswith("tests/") for n in names)
