import numpy as np
import pytest

from training.data import DatasetError, StudyRecord, class_weights, discover, one_hot, patient_kfold, patient_split


def tree(tmp_path, layout):
    for cls, patients in layout.items():
        for p in patients:
            (tmp_path / cls / p).mkdir(parents=True)
    return tmp_path


def test_discover_folder_tree(tmp_path):
    root = tree(tmp_path, {"covid": ["p1", "p2"], "healthy": ["h1"]})
    records = discover(root)
    assert [(r.patient, r.label) for r in records] == [("p1", "covid"), ("p2", "covid"), ("h1", "healthy")]


def test_unknown_class_folder_is_named(tmp_path):
    root = tree(tmp_path, {"flu": ["x"]})
    with pytest.raises(DatasetError, match="flu"):
        discover(root)


def test_discover_csv_with_row_errors(tmp_path):
    (tmp_path / "a").mkdir()
    good = tmp_path / "good.csv"
    good.write_text("patient,class,path\nA,covid,a\n")
    assert discover(good)[0].path == tmp_path / "a"
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,class,path\nA,covid,a\nB,flu,a\n")
    with pytest.raises(DatasetError, match="row 3: unknown class 'flu'"):
        discover(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("patient,class,path\nA,covid,nowhere\n")
    with pytest.raises(DatasetError, match="row 2"):
        discover(missing)
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("patient,class,path\nA,covid,a\nA,healthy,a\n")
    with pytest.raises(DatasetError, match="patient 'A'"):
        discover(conflict)


def records(n_per_class=5, studies_per_patient=2):
    return [StudyRecord(f"{c}-{i}", c, f"/{c}/{i}/{s}") for c in ("covid", "other_pneumonia", "healthy")
            for i in range(n_per_class) for s in range(studies_per_patient)]


def test_split_is_by_patient_stratified_and_seeded():
    recs = records()
    split = patient_split(recs, val_fraction=0.2, test_fraction=0.2, seed=1)
    patients = {k: {r.patient for r in v} for k, v in split.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert sum(len(v) for v in split.values()) == len(recs)
    for c in ("covid", "other_pneumonia", "healthy"):
        assert sum(p.startswith(c) for p in patients["val"]) == 1
        assert sum(p.startswith(c) for p in patients["test"]) == 1
    assert split == patient_split(recs, 0.2, 0.2, seed=1)
    assert split != patient_split(recs, 0.2, 0.2, seed=2)


def test_single_patient_classes_stay_in_training():
    split = patient_split(records(n_per_class=1), val_fraction=0.5)
    assert len(split["val"]) == 0 and len(split["train"]) == 6


def test_kfold_puts_each_patient_in_one_validation_fold():
    recs = records(n_per_class=4)
    folds = patient_kfold(recs, k=4, seed=0)
    seen = [r.patient for _, val in folds for r in val]
    assert sorted(set(seen)) == sorted({r.patient for r in recs}) and len(seen) == len(recs)
    for train, val in folds:
        assert not ({r.patient for r in train} & {r.patient for r in val})
        assert {r.label for r in val} == {"covid", "other_pneumonia", "healthy"}
    with pytest.raises(DatasetError):
        patient_kfold(recs, k=13)


def test_class_weights_and_one_hot():
    w = class_weights(["covid", "covid", "covid", "healthy"])
    assert w == {0: pytest.approx(4 / 6), 2: pytest.approx(2.0)}
    assert np.array_equal(one_hot(["healthy", "covid"]), [[0, 0, 1], [1, 0, 0]])
