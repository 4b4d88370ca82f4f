"""``ctedge data import``: public chest X-ray and CT-slice collections read into one manifest CSV.

Each layout has a reader that lists its images with class, patient (or a stated surrogate), view and
licence, and counts what it drops (lateral and unstated views, CT rows of X-ray metadata, findings that
are no class, files absent from the snapshot). Every kept image is then hashed (sha256 of its bytes and
a 64-bit pHash of its grey pixels) and exact and near duplicates are removed across and within sources,
keeping the copy of the source earliest in ``PRIORITY``; the Hannover images that ieee8023 re-publishes
(padded to a square, beyond a perceptual match) are known by their image id. A patient whose films fall
in two classes (ieee8023 lists baseline films of COVID-19 patients as No Finding) is dropped. Near duplicates: pHash within ``NEAR_THRESHOLD`` bits
*and* a correlation of at least ``NEAR_CORRELATION`` between the two 32x32 grey thumbnails (chest films are
so alike that an 8x8 pHash alone pairs different patients: on the real collections, distance 6 gave ~10,000
pairs of different Radiography images; the correlation keeps the resized and re-encoded copies, >= 0.99). Written to OUT: ``manifest.csv`` (columns
``MANIFEST_COLUMNS``), ``duplicates.csv``, ``summary.json`` / ``summary.md`` (counts per class x source x
view, drops, duplicates by pair of sources, and ``training_data``: the summary a model card carries) and
``montages/<source>_<class>.png``.

Classes: X-ray sources map to ``covid``, ``other_pneumonia``, ``healthy``. The UCSD CT slices keep their
two classes ``covid`` and ``non_covid``: their NonCOVID folder holds normal slices and slices of other
diseases (some pneumonias among them) with no finer label, so it is neither ``healthy`` nor
``other_pneumonia``; a CT slice model trained on them is covid vs non_covid.

The agchung Actualmed and Figure1 collections are reserved as an external test and are refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from edge.errors import UserError

MANIFEST_COLUMNS = ("path", "class", "patient", "view", "source", "licence", "sha256", "width", "height")
PRIORITY = ("hannover", "ieee8023", "kermany", "ucsd-ct", "radiography")   # which copy of a duplicate is kept
NEAR_THRESHOLD = 8            # pHash Hamming distance (of 64 bits) at or under which two images may be one
NEAR_CORRELATION = 0.97       # ... and are, when their 32x32 grey thumbnails correlate at least this much
RESERVED = ("actualmed-covid-chestxray-dataset", "figure1-covid-chestxray-dataset")
FRONTAL = {"PA": "PA", "AP": "AP", "AP SUPINE": "AP supine", "AP ERECT": "AP"}
LATERAL = {"L", "LL", "LAT", "LATERAL", "RL"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
MONTAGE_TILES, TILE = 36, 128
KNOWN_BIASES = {   # what each collection ties to its classes, in plain words (carried into summary.json and the card)
    "ieee8023": "ieee8023 (covid-chestxray): many images are cut from papers and case reports (crops, arrows, "
                "captions), often ICU AP supine films of severe cases.",
    "hannover": "Hannover: every image is COVID-19, mostly portable AP films of ICU patients with lines and tubes, "
                "from one hospital.",
    "kermany": "Kermany: pediatric patients aged 1-5 from one Guangzhou hospital; all its normals and non-COVID "
               "pneumonias are children, so age and hospital tie to the class.",
    "radiography": "COVID-19 Radiography: no patient ids (one surrogate per image, so several images of one patient "
                   "can fall on both sides of a split); images resized to 224x224; its normals mix Kermany pediatric "
                   "films and adult RSNA films, its COVID images come from many web collections.",
    "ucsd-ct": "UCSD COVID-CT: COVID slices are cut from paper figures (varied size, contrast, annotations), non-COVID "
               "slices from other sources; no patient ids (surrogates: source paper / image number).",
}
IEEE8023_CLASSES = {
    "COVID-19": "covid", "COVID-19, ARDS": "covid", "No Finding": "healthy",
    **{f: "other_pneumonia" for f in ("Pneumocystis", "Streptococcus", "SARS", "Pneumonia", "Klebsiella",
                                      "Mycoplasma Bacterial Pneumonia", "Lipoid", "Varicella", "E.Coli", "Legionella",
                                      "Bacterial", "Chlamydophila", "Influenza", "MERS", "Staphylococcus", "Nocardia",
                                      "Aspergillosis", "Herpes")}}


class CollectionError(UserError):
    """A collection folder or metadata file that cannot be read; the message names it."""


@dataclass(frozen=True)
class Entry:
    path: Path
    label: str
    patient: str
    view: str
    source: str
    licence: str
    origin: str = ""           # 'hannover:<image id>' for a Hannover image, also when another collection re-publishes it


Listing = tuple[list[Entry], Counter]           # the images kept, and drop reason -> count


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of ``path``; CollectionError naming the file when absent, unreadable or short of ``required`` columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = set(reader.fieldnames or ())
    except OSError as exc:
        raise CollectionError(path, f"cannot read the metadata ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CollectionError(path, f"not a readable CSV ({exc})") from exc
    missing = [c for c in required if c not in fields]
    if missing:
        raise CollectionError(path, f"missing column(s) {', '.join(missing)}")
    return rows


def read_ieee8023(root: Path) -> Listing:
    """The ieee8023 covid-chestxray schema (``metadata.csv``: patientid, finding, view, modality, folder,
    filename, license): X-ray rows with a frontal view and a finding of ``IEEE8023_CLASSES``."""
    rows = _read_csv(root / "metadata.csv", ("patientid", "finding", "view", "modality", "folder", "filename", "license"))
    kept: list[Entry] = []
    dropped: Counter[str] = Counter()
    for row in rows:
        view = row["view"].strip().upper()
        if row["modality"].strip() != "X-ray":
            dropped[f"not an X-ray ({row['modality'].strip() or 'modality not stated'})"] += 1
        elif view in LATERAL:
            dropped["lateral view"] += 1
        elif view not in FRONTAL:
            dropped[f"view not frontal ({row['view'].strip() or 'not stated'})"] += 1
        elif row["finding"].strip() not in IEEE8023_CLASSES:
            dropped[f"finding not a class ({row['finding'].strip() or 'blank'})"] += 1
        elif not (root / row["folder"] / row["filename"]).is_file():
            dropped["file absent"] += 1
        else:
            kept.append(Entry(root / row["folder"] / row["filename"], IEEE8023_CLASSES[row["finding"].strip()],
                              f"ieee8023:{row['patientid'].strip()}", FRONTAL[view], "ieee8023",
                              row["license"].strip() or "not stated", _hannover_origin(row)))
    return kept, dropped


def _hannover_origin(row: dict[str, str]) -> str:
    """ieee8023 re-publishes Hannover images (url: the Hannover repository, file name: its image id), re-sized
    and padded beyond what a perceptual hash matches: they are known by that id."""
    return f"hannover:{Path(row['filename']).stem}" if "ml-workgroup/covid-19-image-repository" in (row.get("url") or "") else ""


def read_hannover(root: Path) -> Listing:
    """Hannover Medical School (``data.csv``: patient_id, image_id, projection; ``png/<image_id>.png``):
    every image COVID-19, CC BY 3.0."""
    rows = _read_csv(root / "data.csv", ("patient_id", "image_id", "projection"))
    kept: list[Entry] = []
    dropped: Counter[str] = Counter()
    for row in rows:
        view = row["projection"].strip().upper()
        path = root / "png" / f"{row['image_id'].strip()}.png"
        if view in LATERAL:
            dropped["lateral view"] += 1
        elif view not in FRONTAL:
            dropped[f"view not frontal ({row['projection'].strip() or 'not stated'})"] += 1
        elif not path.is_file():
            dropped["file absent"] += 1
        else:
            kept.append(Entry(path, "covid", f"hannover:{row['patient_id'].strip()}", FRONTAL[view], "hannover", "CC BY 3.0",
                              f"hannover:{row['image_id'].strip()}"))
    return kept, dropped


KERMANY_PNEUMONIA = re.compile(r"(person\d+)_(bacteria|virus)_\d+(?:_\d+)*$")
KERMANY_NORMAL = re.compile(r"((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)*$")


def read_kermany(root: Path) -> Listing:
    """Kermany et al. pediatric radiographs (``.../NORMAL/IM-0001-0001.jpeg``,
    ``.../PNEUMONIA/person1_bacteria_1.jpeg``): the patient id is in the name, bacterial and viral
    pneumonia are ``other_pneumonia``; anterior-posterior films (the collection's own statement)."""
    kept: list[Entry] = []
    dropped: Counter[str] = Counter()
    for path in _images(root):
        folder = path.parent.name.upper()
        pneumonia, normal = KERMANY_PNEUMONIA.match(path.stem), KERMANY_NORMAL.match(path.stem)
        if folder == "PNEUMONIA" and pneumonia:
            kept.append(Entry(path, "other_pneumonia", f"kermany:{pneumonia[1]}", "AP", "kermany", "not stated"))
        elif folder == "NORMAL" and normal:
            kept.append(Entry(path, "healthy", f"kermany:{normal[1]}", "AP", "kermany", "not stated"))
        else:
            dropped["name or folder not in the Kermany pattern"] += 1
    if not kept:
        raise CollectionError(root, "no Kermany images (expected .../NORMAL/IM-<patient>-<n>.jpeg and "
                                    ".../PNEUMONIA/person<patient>_<bacteria|virus>_<n>.jpeg)")
    return kept, dropped


RADIOGRAPHY_CLASSES = {"COVID": "covid", "NORMAL": "healthy", "VIRAL PNEUMONIA": "other_pneumonia"}


def read_radiography(root: Path) -> Listing:
    """The COVID-19 Radiography Database folders (``COVID/``, ``Normal/``, ``Viral Pneumonia/``; other
    folders such as ``Lung_Opacity`` are no class): no patient ids, each image its own surrogate patient
    (``radiography:<file stem>``); frontal films, the view not stated per image."""
    dropped: Counter[str] = Counter()
    kept = [Entry(path, label, f"radiography:{path.stem}", "frontal", "radiography", "not stated")
            for path, label in _class_folders(root, RADIOGRAPHY_CLASSES, dropped)]
    if not kept:
        raise CollectionError(root, "no COVID-19 Radiography images (expected COVID/ and Normal/ folders of images)")
    return kept, dropped


CT_CLASSES = {"CT_COVID": "covid", "CT_NONCOVID": "non_covid"}


def read_ucsd_ct(root: Path) -> Listing:
    """UCSD COVID-CT slices in class folders ``CT_COVID/`` and ``CT_NonCOVID/`` (classes covid / non_covid).
    No patient ids: the surrogate is the source paper for COVID slices (the name before ``-p<page>``)
    and the image number before ``%`` (crops of one image) for non-COVID slices."""
    dropped: Counter[str] = Counter()
    kept = []
    for path, label in _class_folders(root, CT_CLASSES, dropped):
        surrogate = re.split(r"-p\d+", path.stem)[0] if label == "covid" else path.stem.split("%")[0]
        kept.append(Entry(path, label, f"ucsd-ct:{surrogate}", "axial", "ucsd-ct", "not stated"))
    if not kept:
        raise CollectionError(root, "no CT slices (expected CT_COVID/ and CT_NonCOVID/ folders of images)")
    return kept, dropped


READERS: dict[str, Callable[[Path], Listing]] = {
    "ieee8023": read_ieee8023, "hannover": read_hannover, "kermany": read_kermany,
    "radiography": read_radiography, "ucsd-ct": read_ucsd_ct}
assert set(READERS) == set(PRIORITY)


def _class_folders(root: Path, classes: dict[str, str], dropped: Counter[str]) -> Iterator[tuple[Path, str]]:
    """Each image under ``root`` with the class its folder names (``classes``: upper-case folder
    name -> class); an image in another folder is counted in ``dropped``."""
    for path in _images(root):
        label = classes.get(path.parent.name.upper())
        if label is None:
            dropped[f"folder not a class ({path.parent.name})"] += 1
        else:
            yield path, label


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def refuse_reserved(root: Path) -> None:
    """CollectionError when ``root`` (or a folder above it) is one of the reserved external-test collections."""
    for part in (root.resolve(), *root.resolve().parents):
        if part.name.lower() in RESERVED or "agchung" in part.name.lower():
            raise CollectionError(root, f"{part.name} is reserved as an independent external test: "
                                        "it never goes into a training manifest")


def phash(grey: np.ndarray) -> int:
    """64-bit perceptual hash: the 8x8 lowest DCT frequencies of the 32x32 image against their median."""
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


@dataclass(frozen=True)
class Image:
    entry: Entry
    sha256: str
    phash: int
    thumb: np.ndarray          # 32x32 grey, zero mean and unit variance, flattened
    width: int
    height: int


def _hash(entry: Entry) -> Image | None:
    """The image's hashes and size; None when the file cannot be read or decoded."""
    try:
        data = entry.path.read_bytes()
    except OSError:
        return None
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None or grey.size == 0:
        return None
    return Image(entry, hashlib.sha256(data).hexdigest(), phash(grey), thumbnail(grey), grey.shape[1], grey.shape[0])


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The 32x32 grey thumbnail, zero mean and unit variance, flattened (its dot product / 1024 is a correlation)."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return (small - small.mean()) / (small.std() + 1e-6)


def correlation(a: Image, b: Image) -> float:
    """Correlation of the two images' 32x32 grey thumbnails (1: the same picture up to brightness and contrast)."""
    return float(a.thumb @ b.thumb) / a.thumb.size


def find_duplicates(images: list[Image], threshold: int = NEAR_THRESHOLD,
                    min_correlation: float = NEAR_CORRELATION) -> list[tuple[int, int, str]]:
    """Pairs (i, j, 'exact' | 'near' | 'same id') of images that are one: equal sha256, or pHash within
    ``threshold`` bits and thumbnails correlated at least ``min_correlation``, or the same ``origin``."""
    pairs: list[tuple[int, int, str]] = []
    first: dict[str, int] = {}
    origins: dict[str, int] = {}
    for i, image in enumerate(images):
        if image.sha256 in first:
            pairs.append((first[image.sha256], i, "exact"))
        else:
            first[image.sha256] = i
        if image.entry.origin in origins:
            pairs.append((origins[image.entry.origin], i, "same id"))
        elif image.entry.origin:
            origins[image.entry.origin] = i
    hashes = np.array([image.phash for image in images], dtype=np.uint64)
    for start in range(0, len(images), 512):
        block = hashes[start:start + 512, None] ^ hashes[None, :]
        distance = np.bitwise_count(block)
        for a, j in zip(*np.nonzero(distance <= threshold)):
            i = start + int(a)
            if (i < j and images[i].sha256 != images[j].sha256
                    and correlation(images[i], images[j]) >= min_correlation):
                pairs.append((i, int(j), "near"))
    return pairs


def deduplicate(images: list[Image], pairs: list[tuple[int, int, str]]) -> tuple[list[Image], Counter]:
    """Images left once each group of duplicates keeps its copy from the earliest source of PRIORITY
    (then the first path); a group whose copies disagree on the class is dropped whole."""
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    groups = defaultdict(list)
    for i in range(len(images)):
        groups[root(i)].append(i)
    kept: list[Image] = []
    dropped: Counter[str] = Counter()
    for members in groups.values():
        labels = {images[i].entry.label for i in members}
        if len(labels) > 1:
            dropped["duplicates with conflicting classes"] += len(members)
            continue
        keep = min(members, key=lambda i: (PRIORITY.index(images[i].entry.source), str(images[i].entry.path)))
        kept.append(images[keep])
        dropped["duplicate"] += len(members) - 1
    return sorted(kept, key=lambda im: (im.entry.source, str(im.entry.path))), dropped


def montage(images: list[Image], title: str, seed: int = 0) -> np.ndarray:
    """A grey grid of up to MONTAGE_TILES images (seeded sample) under a title line."""
    rng = np.random.default_rng(seed)
    chosen = [images[i] for i in sorted(rng.choice(len(images), min(len(images), MONTAGE_TILES), replace=False))]
    columns = 6
    rows = -(-len(chosen) // columns)
    sheet = np.full((30 + rows * TILE, columns * TILE), 255, np.uint8)
    for k, image in enumerate(chosen):
        grey = cv2.imread(str(image.entry.path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            continue
        scale = TILE / max(grey.shape)
        tile = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
        y, x = 30 + (k // columns) * TILE, (k % columns) * TILE
        sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    cv2.putText(sheet, f"{title}: {len(images)} images, {len(chosen)} shown", (6, 21), cv2.FONT_HERSHEY_SIMPLEX,
                0.55, 0, 1, cv2.LINE_AA)
    return sheet


def import_collections(sources: dict[str, Path], out: Path, threshold: int = NEAR_THRESHOLD,
                       min_correlation: float = NEAR_CORRELATION) -> dict:
    """Read ``sources`` (reader name -> folder), write the manifest, duplicates, summary and montages
    into ``out``; returns the summary."""
    if not sources:
        raise CollectionError(out, "no collection given")
    entries: list[Entry] = []
    report: dict[str, dict] = {}
    for name, root in sources.items():
        refuse_reserved(root)
        if not root.is_dir():
            raise CollectionError(root, "not a folder")
        listed, skipped = READERS[name](root)
        entries += listed
        report[name] = {"folder": str(root), "listed": len(listed) + sum(skipped.values()), "dropped": dict(skipped)}
    images: list[Image] = []
    for entry in tqdm(entries, desc="hashing images"):
        image = _hash(entry)
        if image is None:
            report[entry.source]["dropped"]["unreadable image"] = report[entry.source]["dropped"].get("unreadable image", 0) + 1
        else:
            images.append(image)
    pairs = find_duplicates(images, threshold, min_correlation)
    kept, dropped = deduplicate(images, pairs)
    classes: defaultdict[str, set[str]] = defaultdict(set)
    for im in kept:
        classes[im.entry.patient].add(im.entry.label)
    for im in (im for im in kept if len(classes[im.entry.patient]) > 1):
        reasons = report[im.entry.source]["dropped"]
        reasons["patient with films in two classes"] = reasons.get("patient with films in two classes", 0) + 1
    kept = [im for im in kept if len(classes[im.entry.patient]) == 1]
    out.mkdir(parents=True, exist_ok=True)
    _write_duplicates(out / "duplicates.csv", images, pairs)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for im in kept:
            e = im.entry
            writer.writerow([str(e.path.resolve()), e.label, e.patient, e.view, e.source, e.licence, im.sha256,
                             im.width, im.height])
    summary = _summary(kept, images, pairs, dropped, report, manifest, threshold, min_correlation)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    (out / "montages").mkdir(exist_ok=True)
    by_group: defaultdict[tuple[str, str], list[Image]] = defaultdict(list)
    for im in kept:
        by_group[(im.entry.source, im.entry.label)].append(im)
    for (source, label), group in sorted(by_group.items()):
        cv2.imwrite(str(out / "montages" / f"{source}_{label}.png"), montage(group, f"{source} {label}"))
    return summary


def _write_duplicates(path: Path, images: list[Image], pairs: list[tuple[int, int, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("kind", "distance", "correlation", "source_a", "class_a", "path_a", "source_b", "class_b", "path_b"))
        for i, j, kind in pairs:
            a, b = images[i], images[j]
            writer.writerow((kind, int(np.bitwise_count(np.uint64(a.phash ^ b.phash))), round(correlation(a, b), 4),
                             a.entry.source, a.entry.label,
                             a.entry.path, b.entry.source, b.entry.label, b.entry.path))


def _summary(kept: list[Image], images: list[Image], pairs: list[tuple[int, int, str]], dropped: Counter,
             report: dict, manifest: Path, threshold: int, min_correlation: float) -> dict:
    counts: dict = defaultdict(lambda: defaultdict(Counter))
    for im in kept:
        counts[im.entry.label][im.entry.source][im.entry.view] += 1
    by_pair = Counter("~".join(sorted((images[i].entry.source, images[j].entry.source))) + f" ({kind})"
                      for i, j, kind in pairs)
    licences = Counter(im.entry.licence for im in kept)
    sources: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for im in kept:
        sources[im.entry.source][im.entry.label] += 1
    return {
        "manifest": {"path": str(manifest), "rows": len(kept), "patients": len({im.entry.patient for im in kept}),
                     "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
        "sources": report,
        "counts": {label: {s: dict(v) for s, v in by_source.items()} for label, by_source in sorted(counts.items())},
        "duplicates": {"hash": "sha256 of the file, and 64-bit pHash (DCT of the 32x32 grey image) confirmed by the "
                               "correlation of 32x32 grey thumbnails",
                       "near_threshold_bits": threshold, "near_min_correlation": min_correlation, "exact_pairs": sum(k == "exact" for *_, k in pairs),
                       "near_pairs": sum(k == "near" for *_, k in pairs), "same_id_pairs": sum(k == "same id" for *_, k in pairs),
                       "removed": dropped.get("duplicate", 0),
                       "removed_conflicting_classes": dropped.get("duplicates with conflicting classes", 0),
                       "pairs_by_sources": dict(sorted(by_pair.items())), "kept_from": list(PRIORITY)},
        "known_biases": [KNOWN_BIASES[name] for name in report],
        "training_data": {"sources": {s: dict(c) for s, c in sorted(sources.items())}, "licences": dict(licences.most_common()),
                          "non_commercial": any("NC" in licence for licence in licences),
                          "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
    }


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown tables (what ``summary.md`` holds)."""
    lines = [f"# Manifest summary\n\n{summary['manifest']['rows']} images, {summary['manifest']['patients']} patients "
             f"(or surrogates); manifest sha256 `{summary['manifest']['sha256']}`.\n",
             "| class | source | view | images |", "|---|---|---|---:|"]
    for label, by_source in summary["counts"].items():
        for source, views in by_source.items():
            lines += [f"| {label} | {source} | {view} | {n} |" for view, n in sorted(views.items())]
    lines += ["", "| source | listed | dropped (reason: count) |", "|---|---:|---|"]
    for name, r in summary["sources"].items():
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(r["dropped"].items())) or "none"
        lines.append(f"| {name} | {r['listed']} | {reasons} |")
    d = summary["duplicates"]
    lines += ["", f"Duplicates ({d['hash']}; near = pHash Hamming distance <= {d['near_threshold_bits']} bits and thumbnail correlation >= "
                  f"{d['near_min_correlation']}): "
                  f"{d['exact_pairs']} exact, {d['near_pairs']} near and {d['same_id_pairs']} same-id pairs (ieee8023 "
                  f"re-publishing Hannover images); {d['removed']} images removed, "
                  f"{d['removed_conflicting_classes']} more dropped where copies disagreed on the class; "
                  f"the copy kept is from the earliest of {', '.join(d['kept_from'])}.", "",
              "| sources (kind) | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in d["pairs_by_sources"].items()]
    t = summary["training_data"]
    lines += ["", "Licences: " + ", ".join(f"{k} ({v})" for k, v in t["licences"].items())
              + ("; some images are under non-commercial terms." if t["non_commercial"] else "."), ""]
    return "\n".join(lines)
