"""The ctedge command as a user runs it: output, exit codes, privacy, no TensorFlow on the edge."""

import json
import re
import shutil
import subprocess
import sys

import pydicom
import pytest

from edge.cli import main
from tests.helpers.paths import REPO, SAMPLES

STUDY = SAMPLES / "CAP_cap002"


def run_cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    listed = set(re.findall(r"^    (\S+)\s", out, re.MULTILINE))
    for command in ("predict", "evaluate-selection", "bench", "train", "evaluate", "quantize", "explain", "serve",
                    "watch"):
        assert command in listed, command


def test_predict_json_on_a_bundled_study(capsys):
    code, out, _ = run_cli(capsys, "predict", STUDY, "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("label", "probabilities", "groups", "n_slices_read", "n_slices_used", "series", "warnings",
                "timings_ms", "model", "slices_used", "slices_dropped"):
        assert key in d, key
    assert d["label"] in ("covid", "other_pneumonia", "healthy")
    assert d["n_slices_read"] == 10 and d["n_slices_used"] == len(d["slices_used"])
    assert d["model"]["placeholder"] is False and d["model"]["demonstration"] is True
    assert d["model"]["name"] == "cnn-bilstm-demo" and "(int8)" in d["model"]["version"]
    assert abs(sum(d["probabilities"].values()) - 1) < 1e-3
    assert len(d["groups"]) == 1 and d["groups"][0]["n_padding_slices"] == 50 - d["n_slices_used"]
    assert [s["index"] for s in d["slices_used"]] == sorted(s["index"] for s in d["slices_used"])
    zs = [s["z"] for s in d["slices_used"]]
    assert zs == sorted(zs, reverse=True)
    assert d["slices_dropped"] and all(s["reason"] for s in d["slices_dropped"])
    assert d["series"]["chosen"] and d["series"]["skipped"] == []
    assert set(d["timings_ms"]) >= {"read", "segment", "select", "infer", "vote", "total"}


def test_summary_flags_the_demonstration_model(capsys):
    code, out, _ = run_cli(capsys, "predict", STUDY)
    assert code == 0 and "DEMONSTRATION MODEL - NOT FOR CLINICAL USE" in out and "Verdict:" in out


def test_a_missing_model_bundle_is_named(capsys, tmp_path):
    code, out, err = run_cli(capsys, "predict", STUDY, "--model", tmp_path / "nomodel")
    assert code == 2 and "nomodel/model.json: cannot read the model card" in err


def test_bad_input_exits_2_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"garbage" * 100)
    code, out, err = run_cli(capsys, "predict", bad)
    assert code == 2 and out == ""
    assert "scan.dcm: not a DICOM file" in err and "Traceback" not in err


def test_no_patient_identifiers_in_output_or_logs(capsys, tmp_path, caplog):
    study = tmp_path / "study"
    shutil.copytree(STUDY, study)
    for p in study.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = "DOE^JANE", "MRN-493021"
        ds.save_as(p)
    (study / "junk.bin").write_bytes(b"\x00" * 300)
    code, out, err = run_cli(capsys, "-v", "predict", study, "--json")
    assert code == 0
    everything = out + err + caplog.text
    assert "DOE" not in everything and "MRN-493021" not in everything


def test_edge_runs_without_tensorflow():
    code = (
        "import sys, json\n"
        "for name in ('tensorflow', 'tf_keras', 'keras'): sys.modules[name] = None\n"
        "from edge.cli import main\n"
        f"sys.exit(main(['predict', {str(STUDY)!r}, '--json']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_slices_read"] == 10 and result["model"]["placeholder"] is False


def test_evaluate_selection_prints_retention_and_writes_a_montage(capsys, tmp_path):
    out_dir = tmp_path / "report"
    code, out, _ = run_cli(capsys, "evaluate-selection", SAMPLES / "COVID-19_P002", SAMPLES / "CAP_cap002",
                           "--labels", SAMPLES / "slice_labels.csv", "--out", out_dir, "--json")
    assert code == 0
    rows = json.loads(out)
    assert {(r["study"], r["method"]) for r in rows} == {
        (s, m) for s in ("COVID-19_P002", "CAP_cap002") for m in ("lung-extent", "seed-area", "rahimzadeh")}
    covid = next(r for r in rows if r["study"] == "COVID-19_P002" and r["method"] == "lung-extent")
    assert covid["infected"] == 5 and covid["total"] == 10
    assert covid["infected_kept"] == 5, "the default keeps every labelled infected sample slice"
    png = out_dir / "COVID-19_P002-selection.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content, problem", [
    (None, "cannot be read as a CSV"),
    ("patient,file\nCOVID-19_P002,a.dcm\n", "missing column(s) infection"),
    ("patient_folder,file,infection\nCOVID-19_P002,a.dcm,yes\n", "row 2: infection must be 0 or 1, got 'yes'"),
])
def test_a_bad_labels_csv_is_a_user_error(capsys, tmp_path, content, problem):
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_text(content)
    code, _, err = run_cli(capsys, "evaluate-selection", SAMPLES / "COVID-19_P002", "--labels", labels,
                           "--out", tmp_path / "montages")
    assert code == 2 and f"{labels}: {problem}" in err, err
