import numpy as np
import pytest

from edge.metrics import classification_report, confusion_matrix, format_table2, roc_auc


def test_hand_worked_three_class_example():
    # true:  0 0 0 1 1 2 2 2 2 2 ; predicted: 0 0 1 1 2 2 2 2 0 2
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 2]
    prob = np.eye(3)[pred] * 0.7 + 0.1
    r = classification_report(y, prob)
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 4]]
    covid = r["per_class"]["covid"]       # TP 2, FN 1, FP 1, TN 6
    assert covid["sensitivity"] == pytest.approx(2 / 3) and covid["specificity"] == pytest.approx(6 / 7)
    assert covid["precision"] == pytest.approx(2 / 3) and covid["npv"] == pytest.approx(6 / 7)
    assert covid["accuracy"] == pytest.approx(8 / 10) and covid["f1"] == pytest.approx(2 / 3)
    healthy = r["per_class"]["healthy"]   # TP 4, FN 1, FP 1, TN 4
    assert healthy["f1"] == pytest.approx(0.8)
    assert r["accuracy"] == pytest.approx(7 / 10)
    assert r["macro"]["sensitivity"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)


def test_auc_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        if y.all() or not y.any():
            continue
        s = rng.integers(0, 5, 40).astype(float)  # many ties
        pos, neg = s[y == 1], s[y == 0]
        expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
        assert roc_auc(y, s) == pytest.approx(expected)


def test_perfect_and_missing_class():
    y = [0, 1, 1, 0]
    assert roc_auc(y, [0.1, 0.9, 0.8, 0.2]) == 1.0
    assert np.isnan(roc_auc([1, 1], [0.3, 0.4]))
    r = classification_report([0, 0, 2], np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
    assert np.isnan(r["per_class"]["other_pneumonia"]["roc_auc"])
    assert r["per_class"]["other_pneumonia"]["sensitivity"] == 0.0
    assert r["macro"]["roc_auc"] == 1.0


def test_confusion_matrix_and_shape_errors():
    assert confusion_matrix([0, 1, 2], [2, 1, 0]).tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="do not match"):
        classification_report([0, 1], np.ones((3, 3)))


def test_table2_layout():
    r = classification_report([0, 1, 2], np.eye(3))
    table = format_table2(r, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo" and "Accuracy" in lines[1] and "Specificity" in lines[1]
    assert lines[-1].startswith("Average") and "100.00" in lines[-1]
