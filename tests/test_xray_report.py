"""The per-class X-ray report against values worked out by hand on scripted predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge import CLASSES
from training.xray_report import build_report, class_metrics, write_report


def scripted(pairs: list[tuple[str, str]], prefix: str) -> list[dict]:
    return [{"patient": f"{prefix}{i}", "label": t, "verdict": p} for i, (t, p) in enumerate(pairs)]


# Fold A: confusion [[3, 0, 1], [1, 2, 0], [0, 0, 3]] (rows true covid, other_pneumonia, healthy).
FOLD_A = scripted([("covid", "covid")] * 3 + [("covid", "healthy"), ("other_pneumonia", "covid")]
                  + [("other_pneumonia", "other_pneumonia")] * 2 + [("healthy", "healthy")] * 3, "a")
# Fold B: no other_pneumonia image; confusion [[1, 1, 0], [0, 0, 0], [0, 0, 2]].
FOLD_B = scripted([("covid", "covid"), ("covid", "other_pneumonia"), ("healthy", "healthy"), ("healthy", "healthy")], "b")


def test_per_class_metrics_of_one_fold_by_hand():
    m = class_metrics(FOLD_A, CLASSES)
    assert m["confusion_matrix"] == [[3, 0, 1], [1, 2, 0], [0, 0, 3]] and m["n"] == 10
    assert m["accuracy"] == pytest.approx(8 / 10)
    # covid: TP 3, FN 1, FP 1, TN 5; other_pneumonia: TP 2, FN 1, FP 0, TN 7; healthy: TP 3, FN 0, FP 1, TN 6
    expected = {"covid": (3 / 4, 5 / 6, 6 / 8, 4), "other_pneumonia": (2 / 3, 1.0, 4 / 5, 3), "healthy": (1.0, 6 / 7, 6 / 7, 3)}
    for c, (sens, spec, f1, support) in expected.items():
        got = m["per_class"][c]
        assert (got["sensitivity"], got["specificity"], got["f1"]) == pytest.approx((sens, spec, f1))
        assert got["support"] == support
    assert m["macro"]["f1"] == pytest.approx((6 / 8 + 4 / 5 + 6 / 7) / 3)


def test_a_class_without_images_has_no_sensitivity_and_is_left_out_of_the_spread(tmp_path):
    b = class_metrics(FOLD_B, CLASSES)["per_class"]
    assert b["other_pneumonia"] == {"sensitivity": None, "specificity": 3 / 4, "f1": 0.0, "support": 0}
    assert (b["covid"]["sensitivity"], b["covid"]["specificity"], b["covid"]["f1"]) == pytest.approx((1 / 2, 1.0, 2 / 3))
    report = build_report([FOLD_A, FOLD_B], [], CLASSES, {"fold": 0, "description": "fold 0"}, "scripted")
    covid = report["folds_summary"]["per_class"]["covid"]["sensitivity"]
    assert (covid["mean"], covid["sd"], covid["min"], covid["max"], covid["folds"]) == pytest.approx(
        (0.625, 0.25 / np.sqrt(2), 0.5, 0.75, 2))
    other = report["folds_summary"]["per_class"]["other_pneumonia"]
    assert (other["sensitivity"]["mean"], other["sensitivity"]["sd"], other["sensitivity"]["folds"]) == (2 / 3, None, 1)
    assert other["support"] == 3 and report["folds_summary"]["macro"]["sensitivity"]["mean"] == pytest.approx(
        ((3 / 4 + 2 / 3 + 1) / 3 + (1 / 2 + 1) / 2) / 2)
    assert report["holdout"] is None
    text = write_report(report, tmp_path)
    assert "| covid | 62.5 ± 17.7 [50.0-75.0] |" in text and "No hold-out patients" in text
    assert json.loads((tmp_path / "report.json").read_text()) == report and (tmp_path / "report.md").read_text() == text


def test_the_holdout_table_has_bootstrap_intervals(tmp_path):
    report = build_report([FOLD_B], FOLD_A, CLASSES, {"fold": 0, "description": "the one fold's model"}, "scripted")
    held = report["holdout"]
    assert held["per_class"] == class_metrics(FOLD_A, CLASSES)["per_class"]
    for c in CLASSES:
        for m in ("sensitivity", "specificity", "f1"):
            low, high = held["bootstrap_95"]["per_class"][c][m]
            assert 0 <= low <= high <= 1
    # Every healthy image is found in every bootstrap draw: the interval of its sensitivity is [1, 1].
    assert held["bootstrap_95"]["per_class"]["healthy"]["sensitivity"] == [1.0, 1.0]
    text = write_report(report, tmp_path)
    assert "## Hold-out: 10 radiograph(s)" in text and "| healthy | 100.0 (100.0-100.0) |" in text
    assert "| covid | 3 | 0 | 1 |" in text
