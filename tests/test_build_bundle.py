"""installer/build_bundle.py says what it does: a numbered line per phase with its counts, on stdout (issue 26:
`make bundle` was silent for 58 s). pip, the ctedge wheel and the payload are replaced by small fakes here; the
real build runs in tests/test_installer.py (external)."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import pytest
from tests.helpers.paths import REPO


@pytest.fixture
def build_bundle(monkeypatch):
    """The build script as a module, with every pip call and the payload copy faked (nothing is downloaded)."""
    spec = importlib.util.spec_from_file_location("build_bundle", REPO / "installer" / "build_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def wheel(folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(b"wheel " + name.encode())
        return path

    def download(requirements, python, arch, native, dest):
        calls.append((tuple(requirements), python))
        if requirements == ["pip"]:
            return [wheel(dest, "pip-24.0-py3-none-any.whl")]
        tag = f"cp{python.replace('.', '')}"
        return [wheel(dest, f"{name}-1.0-{tag}-{tag}-manylinux_2_28_{arch}.whl") for name in ("numpy", "pydicom", "pillow")]

    def payload(stage: Path) -> None:
        for folder in ("models/demo", "models/xray", "profiles"):
            (stage / folder).mkdir(parents=True)
        (stage / "profiles" / "cpu-minipc.yaml").write_text("model: {}\n")
        wheel(stage / "sample" / "P1", "IM0001.dcm")

    monkeypatch.setattr(module, "build_own_wheel", lambda dest: wheel(dest, "ctedge-0.3.0-py3-none-any.whl"))
    monkeypatch.setattr(module, "download", download)
    monkeypatch.setattr(module, "copy_payload", payload)
    module.calls = calls
    return module


def test_each_phase_is_a_numbered_line_with_its_counts(build_bundle, tmp_path, capsys):
    archive = build_bundle.build(tmp_path / "dist", "x86_64", ["3.11", "3.12"])
    lines = capsys.readouterr().out.splitlines()
    phases = [line for line in lines if line.startswith("[")]
    requirements = len(build_bundle.calls[0][0])
    assert phases == [
        "[1/5] building the ctedge wheel",
        f"[2/5] downloading wheels for CPython 3.11 on x86_64 ({requirements} requirements and their dependencies)",
        f"[3/5] downloading wheels for CPython 3.12 on x86_64 ({requirements} requirements and their dependencies)",
        "[4/5] assembling: 7 wheels, pip, the lock, model bundles, device profiles, the sample study",
        f"[5/5] compressing 13 files (0.0 MiB) into {archive}"]
    assert lines[2].strip().startswith("3 wheels, ") and lines[2].endswith(" MiB")
    assert "      2 model bundles, 1 profiles, 1 sample DICOM files" in lines
    assert [c[1] for c in build_bundle.calls] == ["3.11", "3.12", "3.12"]   # two Pythons, then pip's own wheel
    with tarfile.open(archive) as tar:
        assert sum(m.isfile() for m in tar.getmembers()) == 13


def test_a_native_build_names_this_machine_s_python(build_bundle, tmp_path, capsys):
    build_bundle.build(tmp_path / "dist", "x86_64", ["3.11"], native=True)
    assert "[2/4] downloading wheels for this machine's Python on x86_64 (" in capsys.readouterr().out
