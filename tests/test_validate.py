"""``ctedge validate``: metrics against hand-computed values on phantom studies with scripted answers,
resumption, the evidence recorded in the card and shown with every result, bad inputs, real studies."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest

from edge import CLASSES
from edge.cli import main
from edge.dataset import discover
from edge.engine import DEFAULT_BUNDLE, Engine
from edge.errors import UserError
from edge.evidence import evidence_line
from edge.infer import ModelInfo
from edge.metrics import bootstrap_table2, clopper_pearson, reliability
from edge.profile import load_profile
from edge.selection_report import evaluate_study, read_labels
from edge.server import create_app
from edge.validate import RECORDS, model_label, run_studies, summarise, validated_classes, write_outputs
from tests.helpers.server import write_profile

# One group per phantom study; studies come sorted by class then patient:
# covid-0, covid-1, healthy-0, healthy-1, other_pneumonia-0, other_pneumonia-1.
ANSWERS = [[.8, .1, .1], [.2, .6, .2],      # covid: right, wrong (other_pneumonia)
           [.05, .05, .9], [.1, .2, .7],    # healthy: right, right
           [.2, .7, .1], [.2, .3, .5]]      # other_pneumonia: right, wrong (healthy)


class Scripted:
    """A classifier whose answers are known by construction: the next scripted vector per group."""

    info = ModelInfo("scripted", "1", status="demonstration", note="test fixture")
    kind, classes = "group", CLASSES

    def __init__(self, answers, stop_after: int | None = None):
        self.answers, self.stop_after, self.calls = list(answers), stop_after, 0

    def predict(self, group: np.ndarray) -> np.ndarray:
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return np.array(self.answers[self.calls - 1])


@pytest.fixture(scope="module")
def scripted_run(phantom_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    outcomes = run_studies(discover(phantom_dataset), Engine(Scripted(ANSWERS)), out)
    return out, outcomes


def test_outcomes_follow_the_engine(scripted_run):
    _, outcomes = scripted_run
    assert [o["label"] for o in outcomes] == ["covid"] * 2 + ["healthy"] * 2 + ["other_pneumonia"] * 2
    assert [len(o["groups"]) for o in outcomes] == [1] * 6
    assert [o["verdict"] for o in outcomes] == [CLASSES[int(np.argmax(a))] for a in ANSWERS]
    assert all(o["n_slices_used"] > 0 and o["time_ms"] > 0 for o in outcomes)


def test_metrics_match_hand_computed_values(scripted_run):
    _, outcomes = scripted_run
    s = summarise(outcomes, n_boot=500)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    per_class = s["table2"]["per_class"]
    # covid: TP 1, FN 1, FP 0, TN 4; healthy: TP 2, FN 0, FP 1, TN 3
    assert per_class["covid"] == pytest.approx({"accuracy": 5 / 6, "specificity": 1, "sensitivity": 1 / 2, "f1": 2 / 3})
    assert per_class["healthy"] == pytest.approx({"accuracy": 5 / 6, "specificity": 3 / 4, "sensitivity": 1, "f1": 4 / 5})
    assert s["table2"]["macro"]["sensitivity"] == pytest.approx(2 / 3)
    assert s["table2"]["macro"]["specificity"] == pytest.approx(5 / 6)
    # covid scores .8, .2 against .05, .1, .2 (tie), .2 (tie): (4 + 3) / 8 pairs
    assert s["roc_auc"]["per_class"]["covid"] == pytest.approx(7 / 8)
    # confidences .8 .6 .9 .7 .7 .5, right: T F T T T F
    assert s["calibration"]["ece"] == pytest.approx((.2 + .6 + .1 + .3 + .3 + .5) / 6)
    assert s["n_patients"] == {"covid": 2, "other_pneumonia": 2, "healthy": 2} and not s["sufficient"]


def test_intervals_on_tiny_sets(scripted_run):
    _, outcomes = scripted_run
    ci = summarise(outcomes, n_boot=500)["table2"]["ci95"]
    # Two covid patients, one right: a resample holds 0, 1 or 2 right ones (p 1/4, 1/2, 1/4).
    assert ci["covid"]["sensitivity"] == [0.0, 1.0]
    assert ci["healthy"]["sensitivity"] == [1.0, 1.0], "always right: the interval cannot move"
    lo, hi = ci["macro"]["sensitivity"]
    assert lo < 2 / 3 < hi


def test_intervals_narrow_with_more_patients_and_resample_patients():
    def width(n_per_class, studies_per_patient=1):
        y = np.repeat(np.arange(3), n_per_class)
        pred = np.where(np.arange(len(y)) % 4 == 0, (y + 1) % 3, y)   # a quarter wrong
        patients = [f"p{i}" for i in range(len(y))]
        y, pred = np.repeat(y, studies_per_patient), np.repeat(pred, studies_per_patient)
        lo, hi = bootstrap_table2(y, pred, np.repeat(patients, studies_per_patient), n_boot=400)["macro"]["sensitivity"]
        return hi - lo

    assert width(200) < width(20) / 2
    # Ten studies per patient add no information: patients, not studies, are resampled.
    assert width(20, studies_per_patient=10) == pytest.approx(width(20), abs=0.05)


def test_clopper_pearson_closed_forms():
    assert clopper_pearson(5, 5) == pytest.approx((0.025 ** (1 / 5), 1.0))
    assert clopper_pearson(0, 5) == pytest.approx((0.0, 1 - 0.025 ** (1 / 5)))


def test_reliability_bins_hand_computed():
    r = reliability([0, 0, 1], np.array([[.95, .05, 0], [.92, .08, 0], [.3, .6, .1]]))
    assert [(b["lower"], b["n"], b["accuracy"]) for b in r["bins"]] == [(0.6, 1, 1.0), (0.9, 2, 1.0)]
    assert r["ece"] == pytest.approx((1 - .6) / 3 + 2 * (1 - .935) / 3)


def test_statements_say_what_cannot_be_claimed(scripted_run):
    statements = summarise(scripted_run[1], n_boot=50)["statements"]
    assert "Too few patients to estimate sensitivity of covid: 2 patient(s), at least 20 needed" in " ".join(statements)
    assert any(s.startswith("Calibration from 6 studies") for s in statements)
    # healthy: 2 of 2 right, interval [1, 1]; exact lower bound 0.025 ** (1 / 2) = 0.158
    assert any("interval of healthy" in s and "for 2 of 2 is 16-100%" in s for s in statements)


def test_page_and_files(scripted_run):
    out, outcomes = scripted_run
    summary = summarise(outcomes, n_boot=50)
    page = write_outputs(outcomes, summary, out, Scripted.info.to_dict())
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3 and "DEMONSTRATION MODEL - NOT FOR CLINICAL USE" in html
    assert "Too few patients to estimate sensitivity of healthy" in html and "50.0 [0.0-100.0]" in html
    rows = (out / "studies.csv").read_text().splitlines()
    assert rows[0].startswith("patient,class,verdict,correct") and len(rows) == 7
    assert json.loads((out / "metrics.json").read_text())["confusion_matrix"] == summary["confusion_matrix"]


def test_resumes_after_an_interrupt(phantom_dataset, tmp_path, scripted_run):
    records = discover(phantom_dataset)
    with pytest.raises(KeyboardInterrupt):
        run_studies(records, Engine(Scripted(ANSWERS, stop_after=2)), tmp_path)
    assert len((tmp_path / RECORDS).read_text().splitlines()) == 2
    with open(tmp_path / RECORDS, "a") as f:
        f.write('{"key": "cut short by a cr')      # a crash in the middle of a line
    rest = Scripted(ANSWERS[2:])
    outcomes = run_studies(records, Engine(rest), tmp_path)
    assert rest.calls == 4, "finished studies are not run again"
    drop = ("time_ms", "key", "path")
    assert [{k: v for k, v in o.items() if k not in drop} for o in outcomes] == \
           [{k: v for k, v in o.items() if k not in drop} for o in scripted_run[1]]


def test_resuming_with_another_model_is_refused(phantom_dataset, tmp_path):
    records = discover(phantom_dataset)[:1]
    run_studies(records, Engine(Scripted(ANSWERS)), tmp_path)
    other = Scripted(ANSWERS)
    other.info = ModelInfo("other", "2", status="demonstration", note="")
    with pytest.raises(UserError, match="another model"):
        run_studies(records, Engine(other), tmp_path)


@pytest.mark.slow
def test_cli_records_evidence_shown_with_results(phantom_dataset, tmp_path, capsys, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle, ignore=shutil.ignore_patterns("*float16*", "*dynamic*", "*.onnx"))
    study = phantom_dataset / "covid" / "covid-0"
    assert Engine.from_bundle(bundle).run(study).to_dict()["model"]["validation"] == "no validation recorded"
    out = tmp_path / "out"
    assert main(["validate", str(phantom_dataset), "--model", str(bundle), "--out", str(out), "--record",
                 "--description", "six phantom studies", "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "DEMONSTRATION MODEL" in printed and "Average" in printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    card = json.loads((bundle / "model.json").read_text())
    entry = card["validations"][-1]
    assert entry["data"] == "six phantom studies" and entry["n_patients"] == {c: 2 for c in CLASSES}
    assert "covid-0" not in json.dumps(entry), "no patient identifiers in the card"
    line = evidence_line(card["validations"], "int8")
    assert line.startswith("validated on 6 patients with int8 (sens ") and "not enough to support a claim" in line
    assert line in printed
    engine = Engine.from_bundle(bundle)
    assert engine.run(study).to_dict()["model"]["validation"] == line
    engine.analyse(study, tmp_path / "result")
    assert f'<span id="validation">{line}</span>' in (tmp_path / "result" / "report.html").read_text()
    monkeypatch.setenv("CTEDGE_API_TOKEN", "validate-test-token")
    (tmp_path / "server").mkdir()
    app = create_app(load_profile(write_profile(tmp_path / "server")), engine, start_workers=False)
    api = app.test_client().get("/api/v1/model", headers={"Authorization": "Bearer validate-test-token"})
    assert api.get_json()["validation"] == line


def test_evidence_line_from_a_card():
    ci = {"value": 2 / 3, "ci95": [1 / 3, 1.0]}
    records = [{"date": "2026-11-26T07:00:00+00:00", "n_patients": {"covid": 30, "healthy": 25},
                "sufficient": True, "metrics": {"macro": {"sensitivity": ci, "specificity": ci}}}]
    assert evidence_line(records) == "validated on 55 patients (sens 67% [33-100%], spec 67% [33-100%]) on 2026-11-26"
    assert evidence_line([]) == "no validation recorded"


def test_the_evidence_line_is_that_of_the_variant_that_runs():
    def entry(variant: str, sens: float, date: str) -> dict:
        v = {"value": sens, "ci95": [sens, sens]}
        return {"date": date, "model": {"name": "m", "version": f"1.0 ({variant})"}, "n_patients": {"covid": 30},
                "sufficient": True, "metrics": {"macro": {"sensitivity": v, "specificity": v}}}

    records = [entry("float32", 0.9, "2026-12-01"), entry("int8", 0.5, "2026-12-02")]
    assert evidence_line(records, "float32") == "validated on 30 patients with float32 (sens 90% [90-90%], spec 90% [90-90%]) on 2026-12-01"
    assert evidence_line(records, "int8").startswith("validated on 30 patients with int8 (sens 50%")
    assert evidence_line(records, "float16") == evidence_line(records), "no record of that variant: the latest of any"
    assert "(sens 50%" in evidence_line(records)


@pytest.mark.parametrize("csv_text, problem", [
    (None, "cannot read the CSV"),
    ("patient,class\nA,covid\n", "missing column(s) path"),
    ("patient,class,path\nA,flu,.\n", "row 2: unknown class 'flu'"),
])
def test_bad_data_is_a_user_error(tmp_path, capsys, csv_text, problem):
    data = tmp_path / "data.csv"
    if csv_text is not None:
        data.write_text(csv_text)
    assert main(["validate", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(data) in err and problem in err


def test_record_needs_a_description_and_labels_must_be_readable(phantom_dataset, tmp_path, capsys):
    assert main(["validate", str(phantom_dataset), "--out", str(tmp_path / "o"), "--record"]) == 2
    assert "--description" in capsys.readouterr().err
    labels = tmp_path / "labels.csv"
    labels.write_text("folder,file\n")
    assert main(["validate", str(phantom_dataset), "--out", str(tmp_path / "o"), "--slice-labels", str(labels)]) == 2
    assert str(labels) in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_studies(shared_data, tmp_path, capsys):
    studies = {"COVID-19_P002": "covid", "CAP_cap002": "other_pneumonia", "Normal_normal001": "healthy"}
    data = tmp_path / "real.csv"
    data.write_text("patient,class,path\n" + "".join(f"{p},{c},{shared_data / p}\n" for p, c in studies.items()))
    out = tmp_path / "out"
    assert main(["validate", str(data), "--out", str(out), "--slice-labels", str(shared_data / "slice_labels.csv"),
                 "--bootstrap", "200"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_analysed"] == 3 and not metrics["sufficient"]
    labels = read_labels(shared_data / "slice_labels.csv")
    expected = [r for p in studies for r in evaluate_study(shared_data / p, labels, None) if r.method == "lung-extent"]
    assert metrics["retention"]["infected"] == sum(r.infected for r in expected)
    assert metrics["retention"]["infected_kept"] == sum(r.infected_kept for r in expected)
    assert "Too few patients to estimate sensitivity" in capsys.readouterr().out


def test_the_page_says_plainly_what_the_model_did_and_leads_with_sensitivity(phantom_dataset, tmp_path):
    outcomes = run_studies(discover(phantom_dataset), Engine(Scripted([[.9, .05, .05]] * 6)), tmp_path)
    summary = summarise(outcomes, n_boot=50)
    assert summary["behaviour"][0].startswith("The model called every patient covid (6 of 6)")
    never = [line for line in summary["behaviour"] if line.startswith("The model never called any patient healthy")]
    assert never and "sensitivity 0%" in never[0] and "accuracy of 66.7%" in never[0]
    html = write_outputs(outcomes, summary, tmp_path, Scripted.info.to_dict()).read_text()
    assert "What the model did" in html and "called every patient covid" in html
    header = html.split('<table id="table2">')[1].split("</tr>")[0]
    assert header.index("Sensitivity") < header.index("Accuracy")
    assert (tmp_path / "table2.txt").read_text().split()[:3] == ["Class", "Sensitivity", "Specificity"]
    assert summarise(run_studies(discover(phantom_dataset), Engine(Scripted(ANSWERS)), tmp_path / "mixed"),
                     n_boot=50)["behaviour"] == []


def test_a_covid_non_covid_model_is_measured_with_other_labels_as_non_covid(tmp_path):
    classes = ("covid", "non_covid")
    assert [model_label(c, classes) for c in CLASSES] == ["covid", "non_covid", "non_covid"]
    assert validated_classes(classes) and validated_classes(CLASSES)
    assert not validated_classes(("covid", "healthy")) and not validated_classes(("a", "b", "c"))
    # covid-0 right, covid-1 missed; four non_covid patients, one of them called covid
    verdicts = [("covid", "covid", .9), ("covid", "non_covid", .2), ("non_covid", "non_covid", .1),
                ("non_covid", "non_covid", .3), ("non_covid", "covid", .6), ("non_covid", "non_covid", .2)]
    outcomes = [{"key": str(i), "patient": f"p{i}", "label": label, "path": f"s{i}", "error": None, "verdict": verdict,
                 "probabilities": [p, 1 - p], "time_ms": 1.0, "warnings": [], "groups": [[p, 1 - p]],
                 "n_slices_read": 10, "n_slices_used": 10} for i, (label, verdict, p) in enumerate(verdicts)]
    summary = summarise(outcomes, n_boot=50, classes=classes)
    assert summary["confusion_matrix"] == [[1, 1], [1, 3]] and summary["n_patients"] == {"covid": 2, "non_covid": 4}
    assert summary["table2"]["per_class"]["covid"]["sensitivity"] == 0.5 and summary["behaviour"] == []
    page = write_outputs(outcomes, summary, tmp_path, Scripted.info.to_dict()).read_text()
    assert "<th>non_covid</th>" in page
    assert "p_covid,p_non_covid,n_groups" in (tmp_path / "studies.csv").read_text().splitlines()[0]
