"""CT slice models trained on public collections of 2-D CT slice images (PNG/JPEG), such as the UCSD
COVID-CT slices: no DICOM, no patient ids, two classes (``covid`` / ``non_covid``).

Data: class folders (``CT_COVID/`` and ``CT_NonCOVID/``, as the UCSD collection, or ``covid/`` and
``non_covid/``) or a manifest CSV ``path,class,patient`` (``class`` covid, or non_covid / healthy /
other_pneumonia, which all become ``non_covid``). Without patient ids every image gets a *surrogate*
patient (:func:`surrogate_patients`: the paper it was cut from, its source image, or its run of
consecutively numbered neighbours), and images whose thumbnails nearly agree are joined into one
surrogate patient (:func:`join_near_duplicates`), so that slices of one paper, source image, scan or
near copy never straddle two parts of the split.

Each image becomes model input the way the edge prepares a CT slice cut to the lungs
(``PipelineOptions.crop = "lungs"``, see ``edge.pipeline.prepare_study``): grey, padded to a square
with black, resized to the input size (``edge.preprocess.window.fit_square``), CLAHE. The images come
already windowed and cut to the chest by their authors; lung masking needs Hounsfield units, so a
model trained here must be run with ``mask_lungs`` off.

The split (:func:`group_split`) holds out whole surrogate patients per class: ``test`` is never used
for fitting, early stopping or any choice; ``val`` drives early stopping. :func:`evaluate` gives
slice-level sensitivity and specificity per class with surrogate-patient bootstrap 95% intervals, and
the floor to beat: logistic regression on the frozen ImageNet embedding (:func:`embedding_baseline`),
on the same split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.errors import UserError
from edge.metrics import bootstrap_table2, classification_report, roc_auc
from edge.options import PipelineOptions
from edge.preprocess.window import clahe, fit_square
from training.data import DatasetError

CT_SLICE_CLASSES = ("covid", "non_covid")          # the positive class first, the negative last
FOLDER_CLASSES = {"CT_COVID": "covid", "covid": "covid", "CT_NonCOVID": "non_covid", "non_covid": "non_covid"}
MANIFEST_CLASSES = {"covid": "covid", "non_covid": "non_covid", "healthy": "non_covid", "other_pneumonia": "non_covid"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NEAR_DUPLICATE_CORRELATION = 0.97   # thumbnails correlating this much are one surrogate patient


@dataclass(frozen=True)
class SliceImage:
    path: Path
    label: str          # one of CT_SLICE_CLASSES
    patient: str        # a patient id or its surrogate (see surrogate_patient)


def surrogate_patient(name: str) -> str:
    """The surrogate patient of one UCSD COVID-CT file name: the paper (medRxiv/bioRxiv id or title)
    before ``-p<page>`` (``2020.02.10.20021584-p6-52%0.png`` -> ``2020.02.10.20021584``); else the
    source image before ``%`` (``51%3.jpg`` -> ``51``); else the file's own stem."""
    stem = Path(name).stem
    paper = re.match(r"(.+?)-p\d+[-_]", stem)
    if paper:
        return "paper:" + paper.group(1)
    return "image:" + re.split(r"[%_]", stem)[0]


def surrogate_patients(names: list[str]) -> list[str]:
    """Surrogate patients of file names (:func:`surrogate_patient`), with each run of consecutively
    numbered PNGs (``1330.png``, ``1331.png``, ``1332.png``) one patient: in the UCSD non-COVID set
    such neighbours are neighbouring slices of one scan."""
    numbered = sorted({int(Path(n).stem) for n in names if re.fullmatch(r"\d+\.png", Path(n).name, re.I)})
    run_of: dict[int, int] = {}
    for number in numbered:
        run_of[number] = run_of.get(number - 1, number)
    return [f"run:{run_of[int(Path(n).stem)]}" if re.fullmatch(r"\d+\.png", Path(n).name, re.I) else surrogate_patient(n)
            for n in names]


def read_slice_images(source: Path, part: str | None = None) -> list[SliceImage]:
    """The labelled slice images of class folders or a manifest CSV (see the module docstring); with
    ``part``, only the rows of that part of a manifest written by a training run (column ``part``)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return _from_manifest(source, part)
    if part is not None:
        raise DatasetError(source, f"only a run's manifest.csv says which images are its {part!r} part")
    if not source.is_dir():
        raise DatasetError(source, "not a folder of class folders or a .csv manifest")
    folders = [p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    unknown = [p.name for p in folders if p.name not in FOLDER_CLASSES]
    if unknown or not folders:
        raise DatasetError(source, f"expected class folders {', '.join(FOLDER_CLASSES)}; found {', '.join(unknown) or 'none'}")
    files = [(p, FOLDER_CLASSES[d.name]) for d in folders for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    patients = surrogate_patients([f"{label}/{p.name}" for p, label in files])
    return _checked([SliceImage(p, label, patient) for (p, label), patient in zip(files, patients)], source)


def _from_manifest(path: Path, part: str | None) -> list[SliceImage]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(path, f"cannot read the manifest ({exc})") from exc
    missing = ({"path", "class", "patient"} | ({"part"} if part else set())) - set(rows[0] if rows else {})
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(sorted(missing))}")
    if part:
        rows = [r for r in rows if r["part"] == part]
    images = []
    for number, row in enumerate(rows, start=2):
        if row["class"] not in MANIFEST_CLASSES:
            raise DatasetError(path, f"row {number}: unknown class {row['class']!r}; expected one of {', '.join(MANIFEST_CLASSES)}")
        file = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        images.append(SliceImage(file, MANIFEST_CLASSES[row["class"]], row["patient"] or surrogate_patient(file.name)))
    return _checked(images, path)


def _checked(images: list[SliceImage], source: Path) -> list[SliceImage]:
    counts = Counter(i.label for i in images)
    if any(counts[c] == 0 for c in CT_SLICE_CLASSES):
        raise DatasetError(source, f"needs images of both classes {', '.join(CT_SLICE_CLASSES)}; found {dict(counts)}")
    return images


def slice_image_input(path: Path, options: PipelineOptions) -> np.ndarray:
    """One slice image as the (size, size) uint8 model input (see the module docstring)."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UserError(path, "cannot be read as an image (PNG or JPEG expected)")
    return clahe(fit_square(image, options.input_size)[None], options.clahe_clip)[0]


def check_options(options: PipelineOptions) -> None:
    """Slice images carry no Hounsfield units: the lungs cannot be masked, and they are cut to the
    chest already, so the edge must cut volumes to the lungs too."""
    if options.mask_lungs or options.crop != "lungs":
        raise UserError("preprocessing", "a model trained on slice images needs mask_lungs off and crop 'lungs' "
                                         f"(got mask_lungs={options.mask_lungs}, crop={options.crop!r})")


def thumbnails(inputs: np.ndarray, size: int = 32) -> np.ndarray:
    """(N, size * size) zero-mean, unit-norm grey thumbnails of (N, H, W) images: their dot products
    are the images' correlations."""
    t = np.stack([cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() for x in inputs])
    t -= t.mean(axis=1, keepdims=True)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-6)


def join_near_duplicates(images: list[SliceImage], inputs: np.ndarray,
                         min_correlation: float = NEAR_DUPLICATE_CORRELATION) -> tuple[list[SliceImage], int]:
    """The images with near duplicates (32 x 32 thumbnails of the model inputs correlating at least
    ``min_correlation``: the same slice cut or scaled differently, or its neighbour) put under one
    surrogate patient, and how many images changed patient."""
    t = thumbnails(inputs)
    parent = {i.patient: i.patient for i in images}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for a in range(len(images)):
        for b in np.flatnonzero(t[a + 1:] @ t[a] >= min_correlation) + a + 1:
            ra, rb = root(images[a].patient), root(images[int(b)].patient)
            if ra != rb:
                parent[rb] = ra
    joined = [replace(i, patient=root(i.patient)) for i in images]
    return joined, sum(a.patient != b.patient for a, b in zip(images, joined))


def group_split(images: list[SliceImage], test_fraction: float, val_fraction: float, seed: int) -> dict[str, list[int]]:
    """Indices of ``train``/``val``/``test`` images: per class (a patient's class is that of most of
    its images), whole surrogate patients in a seeded random order go to test until it holds
    ``test_fraction`` of the class's images, then to val until ``val_fraction``, the rest to train."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for k, image in enumerate(images):
        members.setdefault(image.patient, []).append(k)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in CT_SLICE_CLASSES:
        patients = sorted(p for p, ks in members.items()
                          if Counter(images[k].label for k in ks).most_common(1)[0][0] == label)
        total = sum(len(members[p]) for p in patients)
        taken = {"test": 0, "val": 0}
        for p in rng.permutation(patients):
            part = next((name for name, fraction in (("test", test_fraction), ("val", val_fraction))
                         if taken[name] < fraction * total), "train")
            parts[part] += members[p]
            if part != "train":
                taken[part] += len(members[p])
    return {k: sorted(v) for k, v in parts.items()}


def load_inputs(images: list[SliceImage], options: PipelineOptions) -> np.ndarray:
    """(N, size, size) uint8 model inputs of the images."""
    return np.stack([slice_image_input(i.path, options) for i in tqdm(images, desc="slice images", unit="image")])


def write_manifest(images: list[SliceImage], path: Path, split: dict[str, list[int]] | None = None) -> None:
    """The images as a CSV ``path,class,patient[,part]`` (what :func:`read_slice_images` reads back)."""
    part_of = {k: name for name, ks in (split or {}).items() for k in ks}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "patient"] + (["part"] if split else []))
        for k, i in enumerate(images):
            w.writerow([str(i.path), i.label, i.patient] + ([part_of.get(k, "")] if split else []))


def metrics(y_true: np.ndarray, prob: np.ndarray, patients: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Slice-level accuracy, per-class sensitivity / specificity / F1 and covid ROC AUC, with
    surrogate-patient bootstrap 95% intervals (patients drawn with replacement within each class)."""
    report = classification_report(y_true, prob, CT_SLICE_CLASSES)
    pred = prob.argmax(axis=1)
    ci = bootstrap_table2(y_true, pred, patients, CT_SLICE_CLASSES, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    patients_arr = np.asarray(patients)
    members = {p: np.flatnonzero(patients_arr == p) for p in dict.fromkeys(patients)}
    by_class = [[p for p, idx in members.items() if y_true[idx[0]] == k] for k in range(len(CT_SLICE_CLASSES))]
    aucs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[ps[i]] for ps in by_class if ps for i in rng.integers(len(ps), size=len(ps))])
        if len(set(y_true[idx].tolist())) == 2:
            aucs.append(roc_auc(y_true[idx] == 0, prob[idx, 0]))
    return {"n_slices": int(len(y_true)), "n_patients": len(members), "accuracy": report["accuracy"],
            "per_class": {c: {m: report["per_class"][c][m] for m in ("sensitivity", "specificity", "f1")}
                          | {f"{m}_ci95": ci["per_class"][c][m] for m in ("sensitivity", "specificity", "f1")}
                          for c in CT_SLICE_CLASSES},
            "roc_auc_covid": report["per_class"]["covid"]["roc_auc"],
            "roc_auc_covid_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if aucs else None,
            "confusion_matrix": report["confusion_matrix"]}


UCSD_SOURCE = "ucsd-ct"
UCSD_LICENCE = "none granted: copyright of the papers' authors and publishers (UCSD COVID-CT README)"
KNOWN_BIASES = (
    "COVID slices are figures cut from papers (medRxiv, bioRxiv, journals), non-COVID slices come from other "
    "sources: resolution, compression, crop and windowing differ by class, so the model can learn the source "
    "rather than the disease (logistic regression on the features of an untrained, random trunk already "
    "separates the classes on the hold-out).",
    "Slices were chosen by their authors to show findings, mostly at mid-lung; the edge scores every kept slice "
    "of a volume, apex and bases included, which training never showed.",
    "The images came windowed by their authors (windows unknown); the edge uses the lung window and cuts each "
    "volume to its lungs; lungs are not masked.",
    "non_covid mixes normal lungs and other diseases: the model does not tell other pneumonia from healthy.",
    "No patient ids: the hold-out is by surrogate patient (paper, source figure, run of numbered slices); its "
    "figures are per slice on one collection, not per patient.",
)


def research_summary(run_dir: Path) -> dict:
    """What the card of a research model trained by :func:`train_slice_image_run` carries (the
    ``--research`` file of ``ctedge quantize``): ``training_data`` (the images fitted on or used for
    early stopping, i.e. the train and val parts of the run's manifest.csv, per class) and
    ``known_biases``; written by the run as research.json."""
    manifest = run_dir / "manifest.csv"
    used = read_slice_images(manifest, part="train") + read_slice_images(manifest, part="val")
    counts = Counter(i.label for i in used)
    return {"training_data": {"sources": {UCSD_SOURCE: {c: counts[c] for c in CT_SLICE_CLASSES}},
                              "licences": {UCSD_LICENCE: len(used)}, "non_commercial": False,
                              "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
            "known_biases": list(KNOWN_BIASES)}


def embedding(model, x: np.ndarray) -> np.ndarray:
    """The pooled trunk features (layer ``pool`` of ``training.archs``) of (N, size, size) uint8 slices."""
    import tf_keras as keras

    extractor = keras.Model(model.inputs, model.get_layer("pool").output)
    return extractor.predict(x[..., None].astype(np.float32), batch_size=32, verbose=0)


def embedding_baseline(arch: str, weights: str | None, x: np.ndarray, y: np.ndarray, split: dict[str, list[int]]) -> np.ndarray:
    """The floor: logistic regression (C = 1, standardised features, balanced classes; no choice
    made) on the frozen pretrained trunk's pooled features of the train part; returns the class
    probabilities of the test part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.archs import build_slice_model

    trunk = build_slice_model(arch, x.shape[1], len(CT_SLICE_CLASSES), Path(weights) if weights else None).model
    features = embedding(trunk, x)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced"))
    clf.fit(features[split["train"]], y[split["train"]])
    return clf.predict_proba(features[split["test"]])


def format_report(doc: dict) -> str:
    """The hold-out results as Markdown: one row per model and class."""
    lines = [f"Hold-out test: {doc['model']['n_slices']} slices of {doc['model']['n_patients']} surrogate patients, "
             "never used for fitting, early stopping or any choice (95% intervals: surrogate-patient bootstrap).", "",
             "| model | class | sensitivity | specificity | F1 |", "|---|---|---|---|---|"]
    for name, m in (("fine-tuned", doc["model"]), ("floor: frozen embedding + logistic regression", doc["baseline"])):
        for c in CT_SLICE_CLASSES:
            pc = m["per_class"][c]
            lines.append(f"| {name} | {c} | " + " | ".join(_pct(pc[k], pc[f"{k}_ci95"]) for k in ("sensitivity", "specificity", "f1")) + " |")
        lines.append(f"| {name} | accuracy {100 * m['accuracy']:.1f}%, covid ROC AUC {_auc(m)} | | | |")
    return "\n".join(lines)


def _pct(x: float, ci: list[float] | None) -> str:
    return f"{100 * x:.1f}%" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")


def _auc(m: dict) -> str:
    ci = m["roc_auc_covid_ci95"]
    return f"{m['roc_auc_covid']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def train_slice_image_run(source: Path, out: Path, config, n_boot: int = 2000) -> dict:
    """Read, join near duplicates, split, train (``training.slice_train.fit_slice_run``), evaluate on
    the hold-out against the embedding floor; writes manifest.csv (with each image's part),
    preprocessing.json, evaluation.json, report.md and research.json (:func:`research_summary`) in ``out``
    besides the run files."""
    from training.slice_train import fit_slice_run
    from training.train import write_run_preprocessing

    check_options(config.preprocessing)
    images = read_slice_images(source)
    x = load_inputs(images, config.preprocessing)
    images, joined = join_near_duplicates(images, x)
    y = np.array([CT_SLICE_CLASSES.index(i.label) for i in images])
    split = group_split(images, config.test_fraction, config.val_fraction, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(images, out / "manifest.csv", split)
    write_run_preprocessing(out, config.preprocessing, [])
    names = {k: sorted({images[i].patient for i in v}) for k, v in split.items()}
    run = fit_slice_run(x[split["train"]][..., None], y[split["train"]], x[split["val"]][..., None], y[split["val"]],
                        out, config, names)
    test = split["test"]
    patients = [images[i].patient for i in test]
    prob = run.model.predict(x[test][..., None].astype(np.float32), batch_size=32, verbose=0)
    doc = {"source": str(source), "classes": list(CT_SLICE_CLASSES),
           "counts": {part: dict(Counter(images[i].label for i in ks)) | {"patients": len(names[part])} for part, ks in split.items()},
           "near_duplicates_joined": joined,
           "model": metrics(y[test], prob, patients, n_boot, config.seed),
           "baseline": metrics(y[test], embedding_baseline(config.arch, config.weights, x, y, split), patients, n_boot, config.seed),
           "selected_epoch": run.selected}
    report = format_report(doc)
    doc["report"] = report
    (out / "evaluation.json").write_text(json.dumps(doc, indent=2, default=float))
    (out / "research.json").write_text(json.dumps(research_summary(out), indent=2))
    (out / "report.md").write_text(report + "\n")
    return doc
