"""``ctedge validate``: measure a model bundle on a site's own labelled studies, on the edge install.

One bundle is measured, CT (study folders or zips) or chest X-ray (one radiograph file per study,
DICOM CR/DX or PNG/JPEG): ``--model``, else the profile's bundle of the modality most studies have.
Every study goes through the same :class:`edge.engine.Engine` as ``ctedge predict``; a study of
another modality is an error of that study. Each finished
study is appended to ``OUT/studies.jsonl`` at once, so a crash or Ctrl-C loses nothing and a rerun
resumes. Then: per-study CSV, Table 2 with patient bootstrap 95% intervals, ROC, confusion matrix,
reliability diagram and one HTML page, all readable by the owner only.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import jinja2
import numpy as np
from tqdm import tqdm

from edge import CLASSES
from edge.card import MODALITY_TERMS, load_card
from edge.dataset import StudyRecord
from edge.engine import Engine, NoModelForModalityError
from edge.errors import StudyError, UserError
from edge.evidence import MIN_PATIENTS
from edge.ingest.radiograph import study_modality
from edge.metrics import TABLE2, bootstrap_table2, clopper_pearson, confusion_matrix, one_vs_rest, reliability, roc_auc
from edge.profile import Profile
from edge.result import ModelDoc

RECORDS = "studies.jsonl"
RUN = "run.json"
MIN_CALIBRATION_STUDIES = 100
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("edge", "templates"), autoescape=True)


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files and folders created inside are readable by their owner only."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _key(r: StudyRecord) -> str:
    return f"{r.patient}\t{r.path}"


NON_COVID = "non_covid"
"""The second class of a covid/non_covid model: every patient label but covid."""


def model_label(label: str, classes: Sequence[str]) -> str | None:
    """A patient label in the classes of the model measured: itself, or for a covid/non_covid model
    (the CT slice research model) ``non_covid`` for other_pneumonia and healthy; None when it has none."""
    if label in classes:
        return label
    return NON_COVID if NON_COVID in classes and label != "covid" else None


def validated_classes(classes: Sequence[str]) -> bool:
    """Whether validate can measure a model of these classes against CLASSES labels (every label maps)."""
    return all(model_label(c, classes) is not None for c in CLASSES) and all(
        c in CLASSES or c == NON_COVID for c in classes)


def analyse(r: StudyRecord, engine: Engine, slice_labels: dict[tuple[str, str], int] | None = None) -> dict:
    """One study's outcome: verdict, probabilities (in the model's classes), time, warnings (or the error
    that stopped it), for a CT study its groups and slice counts, for a radiograph its file name and
    view, and with slice labels how many labelled infected slices the selection kept. The patient's
    label is given in the model's classes (:func:`model_label`)."""
    classes = engine.classifier.classes
    outcome: dict = {"key": _key(r), "patient": r.patient, "label": model_label(r.label, classes), "path": str(r.path),
                     "error": None}
    try:
        result = engine.run(r.path)
    except StudyError as exc:
        return outcome | {"error": exc.problem}
    except NoModelForModalityError as exc:       # the device may have that model: validate measures one bundle
        return outcome | {"error": f"a study of modality {MODALITY_TERMS[exc.modality].name}, but this validation run "
                                   f"measures only the {MODALITY_TERMS[engine.modality].name} bundle "
                                   f"{engine.info.name}; validate these studies in a run of their own"}
    doc = result.to_dict()
    outcome |= {"verdict": doc["label"], "probabilities": [doc["probabilities"][c] for c in classes],
                "time_ms": doc["timings_ms"]["total"], "warnings": doc["warnings"]}
    if doc["modality"] == "xray":
        outcome |= {"file": doc["slices_used"][0]["file"], "view": doc["input"]["view"]}
    else:
        outcome |= {"groups": [[g["probabilities"][c] for c in classes] for g in doc["groups"]],
                    "n_slices_read": doc["n_slices_read"], "n_slices_used": doc["n_slices_used"]}
    if slice_labels is not None:
        files = result.volume.files
        infected = np.array([slice_labels.get((r.path.name, f), 0) == 1 for f in files], bool)
        outcome["slices"] = {"labelled": any((r.path.name, f) in slice_labels for f in files),
                             "infected": int(infected.sum()), "infected_kept": int((infected & result.selection.keep).sum()),
                             "kept": int(result.selection.keep.sum()), "total": len(files)}
    return outcome


def _load_outcomes(path: Path) -> dict[str, dict]:
    """Finished studies of an earlier run; a line cut short by a crash is ignored (that study reruns)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                o = json.loads(line)
                done[o["key"]] = o
    return done


def _check_same_run(out: Path, run: dict) -> None:
    path = out / RUN
    if path.exists() and json.loads(path.read_text()) != run:
        raise UserError(path, "this folder holds a validation of another model, variant or settings; "
                              "use a new --out (or remove the folder) to start afresh")
    path.write_text(json.dumps(run, indent=2))


def run_studies(records: Sequence[StudyRecord], engine: Engine, out: Path,
                slice_labels: dict[tuple[str, str], int] | None = None) -> list[dict]:
    """Outcomes of every record in order, running only those ``out`` does not hold yet."""
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, {"model": engine.info.to_dict(), "options": asdict(engine.options),
                          "slice_labels": slice_labels is not None})
    done = _load_outcomes(out / RECORDS)
    todo = [r for r in records if _key(r) not in done]
    with open(out / RECORDS, "a") as f, tqdm(total=len(records), initial=len(records) - len(todo),
                                              desc="validating", unit="study") as bar:
        for r in todo:
            outcome = analyse(r, engine, slice_labels)
            f.write(json.dumps(outcome) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[outcome["key"]] = outcome
            bar.update()
    return [done[_key(r)] for r in records]


def _number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def summarise(outcomes: Sequence[dict], n_boot: int = 2000, seed: int = 0, classes: Sequence[str] = CLASSES) -> dict:
    """Metrics of the analysed studies: Table 2 from the verdicts with patient bootstrap intervals,
    ROC AUC from the mean group probabilities, confusion matrix, calibration, slice retention, and
    plain statements of what the numbers cannot support; ``classes``: the model's."""
    classes = list(classes)
    ok = [o for o in outcomes if o["error"] is None]
    y = np.array([classes.index(o["label"]) for o in ok])
    pred = np.array([classes.index(o["verdict"]) for o in ok])
    prob = np.array([o["probabilities"] for o in ok])
    patients = [o["patient"] for o in ok]
    n_patients = {c: len({o["patient"] for o in ok if o["label"] == c}) for c in classes}
    cm = confusion_matrix(y, pred, len(classes))
    rates = one_vs_rest(cm)
    ci = bootstrap_table2(y, pred, patients, classes, n_boot=n_boot, seed=seed)
    macro = {m: None if np.isnan(rates[m]).all() else float(np.nanmean(rates[m])) for m in TABLE2}
    aucs = {c: _number(roc_auc(y == k, prob[:, k])) for k, c in enumerate(classes)}
    defined = [a for a in aucs.values() if a is not None]
    summary = {
        "classes": classes, "n_studies": len(outcomes), "n_analysed": len(ok), "n_patients": n_patients,
        "sufficient": all(n >= MIN_PATIENTS for n in n_patients.values()),
        "table2": {"per_class": {c: {m: _number(rates[m][k]) for m in TABLE2} for k, c in enumerate(classes)},
                   "macro": macro, "ci95": {**ci["per_class"], "macro": ci["macro"]}, "n_boot": n_boot},
        "roc_auc": {"per_class": aucs, "macro": float(np.mean(defined)) if defined else None},
        "confusion_matrix": cm.tolist(),
        "confusion_normalised": (cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)).tolist(),
        "calibration": reliability(y, prob),
        "retention": _retention(ok),
    }
    summary["behaviour"] = behaviour(summary)
    summary["statements"] = _statements(summary)
    return summary


def behaviour(s: dict) -> list[str]:
    """What the model did, in plain words, from the confusion matrix: a single verdict for everyone,
    and each class it never called although such patients were there (whose per-class accuracy
    then only counts the patients rightly left out of it)."""
    cm = np.array(s["confusion_matrix"])
    called = cm.sum(axis=0)
    n = int(cm.sum())
    out = []
    if n and np.count_nonzero(called) == 1:
        only = s["classes"][int(np.argmax(called))]
        out.append(f"The model called every patient {only} ({n} of {n}), whatever their class: it did not tell the "
                   "classes apart on these patients.")
    for k, c in enumerate(s["classes"]):
        present = int(cm[k].sum())
        if present and not called[k]:
            accuracy = s["table2"]["per_class"][c]["accuracy"]
            out.append(f"The model never called any patient {c}: it found none of the {present} {c} patient(s) "
                       f"(sensitivity 0%); its {c} accuracy of {100 * accuracy:.1f}% only counts the patients rightly "
                       f"not called {c}.")
    return out


def _retention(ok: Sequence[dict]) -> dict | None:
    labelled = [o["slices"] for o in ok if o.get("slices", {}).get("labelled")]
    if not labelled:
        return None
    infected, kept = sum(s["infected"] for s in labelled), sum(s["infected_kept"] for s in labelled)
    return {"studies": len(labelled), "infected": infected, "infected_kept": kept,
            "fraction": kept / infected if infected else None,
            "slices_kept": sum(s["kept"] for s in labelled), "slices": sum(s["total"] for s in labelled)}


def _statements(s: dict) -> list[str]:
    """What the numbers cannot support, in words."""
    out = []
    failed = s["n_studies"] - s["n_analysed"]
    if failed:
        out.append(f"{failed} of {s['n_studies']} studies could not be analysed and are left out of every "
                   "figure (their errors are in studies.csv).")
    total = sum(s["n_patients"].values())
    for c, n in s["n_patients"].items():
        spec = f"; too few without {c} ({total - n}) for its specificity" if 0 < total - n < MIN_PATIENTS else ""
        if n == 0:
            out.append(f"No {c} patients: the sensitivity of {c} cannot be estimated; averages leave it out{spec}.")
        elif n < MIN_PATIENTS:
            out.append(f"Too few patients to estimate sensitivity of {c}: {n} patient(s), at least {MIN_PATIENTS} "
                       f"needed{spec}; the intervals show how little this can say.")
        elif spec:
            out.append(f"Too few patients without {c} ({total - n}) to estimate its specificity.")
    for k, c in enumerate(s["classes"]):
        ci, n = s["table2"]["ci95"][c]["sensitivity"], sum(s["confusion_matrix"][k])
        if ci and ci[0] == ci[1] and n:
            lo, hi = clopper_pearson(s["confusion_matrix"][k][k], n)
            out.append(f"The sensitivity interval of {c} has zero width because every resample agreed, not because "
                       f"it is certain: the exact (Clopper-Pearson) 95% interval for {s['confusion_matrix'][k][k]} of "
                       f"{n} is {100 * lo:.0f}-{100 * hi:.0f}%.")
    for c, auc in s["roc_auc"]["per_class"].items():
        if auc is None:
            out.append(f"ROC AUC of {c} cannot be computed: it needs patients with and without {c}.")
    if s["n_analysed"] < MIN_CALIBRATION_STUDIES:
        out.append(f"Calibration from {s['n_analysed']} studies (fewer than {MIN_CALIBRATION_STUDIES}): "
                   "the expected calibration error is indicative only.")
    if s["retention"] is not None:
        out.append("Slice-level ROC AUC: not applicable, this model scores 50-slice groups, not single slices; "
                   "only the selection's retention of labelled infected slices is measured.")
    return out


def _cell(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]" if ci else "")


COLUMNS = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1-score", "accuracy": "Accuracy"}
"""The per-class columns in the order shown: sensitivity first (a per-class accuracy can look good for a
class the model never finds), accuracy last."""


def table2_rows(summary: dict) -> list[list[str]]:
    """Per class and average, the COLUMNS (sensitivity, specificity, F1, accuracy) in % with 95% intervals."""
    t = summary["table2"]
    entries = [(c, t["per_class"][c], t["ci95"][c]) for c in summary["classes"]] + [("Average", t["macro"], t["ci95"]["macro"])]
    return [[name] + [_cell(values[m], ci[m]) for m in COLUMNS] for name, values, ci in entries]


def format_table2(summary: dict) -> str:
    head = ["Class", *COLUMNS.values()]
    rows = [head] + table2_rows(summary)
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(head))]
    return "\n".join("".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows) + f"\n(% with patient bootstrap 95% intervals, {summary['table2']['n_boot']} resamples)"


CSV_UNIT_FIELDS = {"ct": ["n_groups", "group_probabilities", "n_slices_read", "n_slices_used"], "xray": ["file", "view"]}
"""The per-study CSV columns that describe what was read, by modality."""


def _unit_columns(o: dict, modality: str) -> dict:
    if modality == "xray":
        return {"file": o["file"], "view": o["view"] or ""}
    return {"n_groups": len(o["groups"]), "group_probabilities": json.dumps(o["groups"]),
            "n_slices_read": o["n_slices_read"], "n_slices_used": o["n_slices_used"]}


def write_csv(outcomes: Sequence[dict], path: Path, modality: str = "ct", classes: Sequence[str] = CLASSES) -> None:
    fields = ["patient", "class", "verdict", "correct", *[f"p_{c}" for c in classes], *CSV_UNIT_FIELDS[modality],
              "time_ms", "warnings", "error", *(["infected_slices", "infected_slices_kept"] if modality == "ct" else [])]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for o in outcomes:
            row = {"patient": o["patient"], "class": o["label"], "error": o["error"] or ""}
            if o["error"] is None:
                row |= {"verdict": o["verdict"], "correct": int(o["verdict"] == o["label"]),
                        **{f"p_{c}": f"{p:.4f}" for c, p in zip(classes, o["probabilities"])},
                        **_unit_columns(o, modality), "time_ms": f"{o['time_ms']:.0f}",
                        "warnings": "; ".join(o["warnings"])}
                if o.get("slices", {}).get("labelled"):
                    row |= {"infected_slices": o["slices"]["infected"], "infected_slices_kept": o["slices"]["infected_kept"]}
            w.writerow(row)


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_outputs(outcomes: Sequence[dict], summary: dict, out: Path, model: ModelDoc, modality: str = "ct") -> Path:
    """studies.csv, metrics.json, table2.txt, the three plots and validation.html for a bundle of
    ``modality``; returns the page."""
    from edge.plots import plot_confusion, plot_reliability, plot_roc  # matplotlib: only when plotting

    classes = summary["classes"]
    ok = [o for o in outcomes if o["error"] is None]
    y = [classes.index(o["label"]) for o in ok]
    prob = np.array([o["probabilities"] for o in ok])
    note = model["banner"].lower()
    write_csv(outcomes, out / "studies.csv", modality, classes)
    (out / "metrics.json").write_text(json.dumps(summary | {"modality": modality}, indent=2))
    (out / "table2.txt").write_text(format_table2(summary) + "\n")
    plots = {
        "roc": plot_roc(y, prob, out / "roc.png", classes, title=f"ROC, patient level ({len(ok)} studies)", note=note),
        "confusion": plot_confusion(np.array(summary["confusion_matrix"]), out / "confusion.png", classes,
                                    title="Confusion matrix (rows normalised)", note=note),
        "reliability": plot_reliability(summary["calibration"], out / "reliability.png",
                                        title="Reliability (top-class probability)", note=note),
    }
    page = _TEMPLATES.get_template("validation.html").render(
        s=summary, model=model, classes=classes, outcomes=outcomes, table=table2_rows(summary), columns=COLUMNS,
        plots={k: _png_data(p) for k, p in plots.items()}, min_patients=MIN_PATIENTS, modality=modality,
        modality_name=MODALITY_TERMS[modality].name)
    (out / "validation.html").write_text(page)
    return out / "validation.html"


def data_modality(records: Sequence[StudyRecord]) -> str:
    """The modality (``ct`` or ``xray``) most of the studies have, each read as ``predict`` reads it;
    studies that cannot be read are not counted (they fail later with their own error)."""
    counts: Counter[str] = Counter()
    for r in records:
        with contextlib.suppress(StudyError):
            counts[study_modality(r.path)] += 1
    return counts.most_common(1)[0][0] if counts else "ct"


def validate_engine(profile: Profile, model: Path | None, records: Sequence[StudyRecord]) -> tuple[Engine, Path]:
    """The engine of the one bundle measured and its folder: ``model`` (a bundle given on the command
    line, already in ``profile`` in place of its bundle of that modality, as ``predict`` takes it), else
    the profile's only bundle, else its bundle of the modality most ``records`` have."""
    bundles = profile.model.bundles
    if model:
        bundle = model
    elif len(bundles) == 1:
        bundle = bundles[0]
    else:
        modality = data_modality(records)
        bundle = next((b for b in bundles if load_card(b).modality == modality), bundles[0])
    return Engine.from_profile_bundle(profile, bundle), bundle
