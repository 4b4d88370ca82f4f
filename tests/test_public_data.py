"""ctedge data import: synthetic layouts of each public collection's format built in tmp_path."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from training.public_data import (NEAR_CORRELATION, NEAR_THRESHOLD, CollectionError, import_collections, phash,
                                  read_radiography, read_ucsd_ct, thumbnail)

IEEE_COLUMNS = "patientid,offset,sex,age,finding,view,modality,folder,filename,license,url"


def picture(seed: int, size: tuple[int, int] = (320, 256)) -> np.ndarray:
    """A distinct grey picture: smooth random structure, different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 60, (8, 8)).astype(np.float32)
    return np.clip(cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def write(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), picture(seed))
    return path


def ieee8023(root: Path, rows: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text(IEEE_COLUMNS + "\n" + "\n".join(rows) + "\n")
    return root


def layouts(tmp_path: Path) -> dict[str, Path]:
    """One small folder per X-ray layout; the radiography folder holds an exact copy of a Hannover image
    and a resized, re-encoded (JPEG) copy of a Kermany image."""
    ieee = ieee8023(tmp_path / "ieee", [
        "1,0,M,60,COVID-19,PA,X-ray,images,a.png,CC BY",
        "1,0,M,60,COVID-19,L,X-ray,images,a_lat.png,CC BY",
        "2,0,F,50,Streptococcus,AP Supine,X-ray,images,b.png,CC BY-NC-SA",
        "3,0,F,40,No Finding,PA,X-ray,images,c.png,",
        "4,0,M,70,COVID-19,Axial,CT,images,d.png,CC BY",
        "5,0,M,70,todo,PA,X-ray,images,e.png,CC BY",
        "6,0,M,70,COVID-19,PA,X-ray,images,absent.png,CC BY",
        "7,0,M,70,COVID-19,AP,X-ray,images,img1.png,CC BY 3.0,https://github.com/ml-workgroup/covid-19-image-repository",
        "8,0,M,70,No Finding,PA,X-ray,images,f.png,CC BY", "8,0,M,70,COVID-19,PA,X-ray,images,g.png,CC BY"])
    for name, seed in (("a", 1), ("a_lat", 2), ("b", 3), ("c", 4), ("d", 5), ("e", 6), ("img1", 40), ("f", 41), ("g", 42)):
        write(ieee / "images" / f"{name}.png", seed)
    hannover = tmp_path / "hannover"
    write(hannover / "png" / "img1.png", 10)
    write(hannover / "png" / "img2.png", 11)
    (hannover / "data.csv").write_text("patient_id,image_id,sex,modality,projection\np1,img1,m,CR,ap\np1,img2,m,CR,ll\n")
    kermany = tmp_path / "kermany" / "dataset"
    write(kermany / "train" / "NORMAL" / "IM-0001-0001.jpeg", 20)
    write(kermany / "test" / "NORMAL" / "NORMAL2-IM-0002-0001.jpeg", 21)
    write(kermany / "train" / "PNEUMONIA" / "person7_bacteria_30.jpeg", 22)
    write(kermany / "train" / "PNEUMONIA" / "person8_virus_31.jpeg", 23)
    write(kermany / "train" / "PNEUMONIA" / "person8_virus_32_1.jpeg", 24)
    write(kermany / "train" / "NORMAL" / "IM-0003-0001-0002.jpeg", 25)
    radiography = tmp_path / "radiography" / "COVID-19_Radiography_Dataset"
    write(radiography / "COVID" / "COVID-1.png", 30)
    write(radiography / "Normal" / "Normal-1.png", 31)
    shutil.copy(hannover / "png" / "img1.png", radiography / "COVID" / "COVID-2.png")
    resized = cv2.resize(picture(20), (224, 224), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(radiography / "Normal" / "Normal-2.jpg"), resized, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return {"ieee8023": ieee, "hannover": hannover, "kermany": tmp_path / "kermany", "radiography": tmp_path / "radiography"}


def manifest_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return {Path(row["path"]).name: row for row in csv.DictReader(f)}


def test_import_reads_each_layout_keeps_frontal_views_and_removes_duplicates(tmp_path):
    summary = import_collections(layouts(tmp_path), tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    assert {name: (r["class"], r["source"], r["view"]) for name, r in rows.items()} == {
        "a.png": ("covid", "ieee8023", "PA"), "b.png": ("other_pneumonia", "ieee8023", "AP supine"),
        "c.png": ("healthy", "ieee8023", "PA"), "img1.png": ("covid", "hannover", "AP"),
        "IM-0001-0001.jpeg": ("healthy", "kermany", "AP"), "NORMAL2-IM-0002-0001.jpeg": ("healthy", "kermany", "AP"),
        "person7_bacteria_30.jpeg": ("other_pneumonia", "kermany", "AP"),
        "person8_virus_31.jpeg": ("other_pneumonia", "kermany", "AP"),
        "person8_virus_32_1.jpeg": ("other_pneumonia", "kermany", "AP"), "IM-0003-0001-0002.jpeg": ("healthy", "kermany", "AP"),
        "COVID-1.png": ("covid", "radiography", "frontal"), "Normal-1.png": ("healthy", "radiography", "frontal")}
    assert rows["a.png"]["patient"] == "ieee8023:1" and rows["img1.png"]["patient"] == "hannover:p1"
    assert rows["person7_bacteria_30.jpeg"]["patient"] == "kermany:person7"
    assert rows["NORMAL2-IM-0002-0001.jpeg"]["patient"] == "kermany:NORMAL2-IM-0002"
    assert rows["COVID-1.png"]["patient"] == "radiography:COVID-1"
    assert rows["c.png"]["licence"] == "not stated" and rows["img1.png"]["licence"] == "CC BY 3.0"
    assert (rows["a.png"]["width"], rows["a.png"]["height"]) == ("320", "256") and len(rows["a.png"]["sha256"]) == 64
    dropped = summary["sources"]["ieee8023"]["dropped"]
    assert dropped == {"lateral view": 1, "not an X-ray (CT)": 1, "finding not a class (todo)": 1, "file absent": 1,
                       "patient with films in two classes": 2}
    assert summary["sources"]["hannover"]["dropped"] == {"lateral view": 1}
    dup = summary["duplicates"]
    assert (dup["exact_pairs"], dup["near_pairs"], dup["same_id_pairs"], dup["removed"]) == (1, 1, 1, 3)
    assert dup["pairs_by_sources"] == {"hannover~ieee8023 (same id)": 1, "hannover~radiography (exact)": 1,
                                       "kermany~radiography (near)": 1}
    assert summary["counts"]["healthy"]["kermany"] == {"AP": 3}
    assert summary["training_data"]["sources"]["radiography"] == {"covid": 1, "healthy": 1}
    assert summary["training_data"]["non_commercial"] is True
    assert [b.split(":")[0] for b in summary["known_biases"]] == ["ieee8023 (covid-chestxray)", "Hannover", "Kermany",
                                                                    "COVID-19 Radiography"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert "| covid | hannover | AP | 1 |" in (tmp_path / "out" / "summary.md").read_text()
    montage = cv2.imread(str(tmp_path / "out" / "montages" / "kermany_other_pneumonia.png"), cv2.IMREAD_GRAYSCALE)
    assert montage is not None and montage.shape == (30 + 128, 6 * 128) and montage[30:, :256].std() > 10


def test_near_duplicate_test_matches_a_resized_reencoded_copy_and_separates_other_pictures():
    original = picture(5, (640, 512))
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(original, (300, 240)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    copy = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    distance = lambda a, b: bin(phash(a) ^ phash(b)).count("1")  # noqa: E731
    correlation = lambda a, b: float(thumbnail(a) @ thumbnail(b)) / 1024  # noqa: E731
    assert distance(original, copy) <= NEAR_THRESHOLD and correlation(original, copy) >= NEAR_CORRELATION
    others = [picture(seed, (640, 512)) for seed in range(6, 26)]
    assert min(distance(original, other) for other in others) > NEAR_THRESHOLD
    assert max(correlation(original, other) for other in others) < NEAR_CORRELATION


def test_ct_slices_keep_the_ucsd_classes_with_surrogate_patients(tmp_path):
    root = tmp_path / "data_c19_cropped"
    write(root / "CT_COVID" / "2020.03.11.20033159-p12-45%3.png", 1)
    write(root / "CT_COVID" / "2020.03.11.20033159-p14-50.png", 2)
    write(root / "CT_NonCOVID" / "30%2.jpg", 3)
    write(root / "CT_NonCOVID" / "31.jpg", 4)
    summary = import_collections({"ucsd-ct": root}, tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    assert {n: (r["class"], r["patient"], r["view"]) for n, r in rows.items()} == {
        "2020.03.11.20033159-p12-45%3.png": ("covid", "ucsd-ct:2020.03.11.20033159", "axial"),
        "2020.03.11.20033159-p14-50.png": ("covid", "ucsd-ct:2020.03.11.20033159", "axial"),
        "30%2.jpg": ("non_covid", "ucsd-ct:30", "axial"), "31.jpg": ("non_covid", "ucsd-ct:31", "axial")}
    assert summary["manifest"]["patients"] == 3


def test_class_folder_readers_count_images_of_other_folders_as_dropped(tmp_path):
    write(tmp_path / "radiography" / "COVID" / "COVID-1.png", 1)
    write(tmp_path / "radiography" / "Lung_Opacity" / "Lung_Opacity-1.png", 2)
    write(tmp_path / "ucsd" / "CT_COVID" / "a-p1.png", 3)
    write(tmp_path / "ucsd" / "other" / "b.png", 4)
    kept, dropped = read_radiography(tmp_path / "radiography")
    assert [(e.path.name, e.label) for e in kept] == [("COVID-1.png", "covid")]
    assert dropped == {"folder not a class (Lung_Opacity)": 1}
    kept, dropped = read_ucsd_ct(tmp_path / "ucsd")
    assert [(e.path.name, e.label, e.patient) for e in kept] == [("a-p1.png", "covid", "ucsd-ct:a")]
    assert dropped == {"folder not a class (other)": 1}


@pytest.mark.parametrize("name", ["Actualmed-COVID-chestxray-dataset", "Figure1-COVID-chestxray-dataset"])
def test_reserved_external_test_collections_are_refused(tmp_path, name, capsys):
    root = ieee8023(tmp_path / name, ["1,0,M,60,COVID-19,PA,X-ray,images,a.png,CC BY"])
    write(root / "images" / "a.png", 1)
    with pytest.raises(CollectionError, match="reserved as an independent external test"):
        import_collections({"ieee8023": root}, tmp_path / "out")
    assert main(["data", "import", "--ieee8023", str(root / "images" / ".."), "--out", str(tmp_path / "out")]) == 2
    assert name in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_bad_inputs_give_errors_naming_the_file(tmp_path, capsys):
    root = tmp_path / "ieee"
    (root / "images").mkdir(parents=True)
    (root / "metadata.csv").write_text("patientid,finding,modality,folder,filename\n1,COVID-19,X-ray,images,a.png\n")
    with pytest.raises(CollectionError, match=r"metadata\.csv: missing column\(s\) view, license"):
        import_collections({"ieee8023": root}, tmp_path / "out")
    assert main(["data", "import", "--hannover", str(tmp_path / "ieee"), "--out", str(tmp_path / "out")]) == 2
    assert "data.csv: cannot read the metadata" in capsys.readouterr().err
    assert main(["data", "import", "--kermany", str(root), "--out", str(tmp_path / "out")]) == 2
    assert "no Kermany images" in capsys.readouterr().err
    assert main(["data", "import", "--out", str(tmp_path / "out")]) == 2
    assert "no collection given" in capsys.readouterr().err


def test_cli_prints_the_summary_and_writes_the_manifest(tmp_path, capsys):
    kermany = tmp_path / "kermany"
    write(kermany / "NORMAL" / "IM-0001-0001.jpeg", 1)
    write(kermany / "PNEUMONIA" / "person3_virus_9.jpeg", 2)
    (kermany / "PNEUMONIA" / "person4_virus_10.jpeg").write_bytes(b"not a picture")
    assert main(["data", "import", "--kermany", str(kermany), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| other_pneumonia | kermany | AP | 1 |" in printed and "manifest.csv" in printed
    assert "| kermany | 3 | unreadable image: 1 |" in printed
    assert len(manifest_rows(tmp_path / "out")) == 2
