"""How much disease each slice-selection rule keeps, against radiologists' slice labels.

Backs ``ctedge evaluate-selection``: a retention table and one montage PNG per study.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from edge.ingest import Volume, load_study
from edge.preprocess.segment import LungSegmenter, ThresholdSegmenter
from edge.preprocess.select import METHODS, Selection, select_slices
from edge.preprocess.window import lung_window, resize_slices

GREEN, GREY, RED, WHITE, YELLOW = (60, 200, 60), (110, 110, 110), (40, 40, 230), (255, 255, 255), (0, 220, 255)


@dataclass(frozen=True)
class Retention:
    study: str
    method: str
    infected_kept: int
    infected: int
    kept: int
    total: int

    @property
    def infected_fraction(self) -> float | None:
        return self.infected_kept / self.infected if self.infected else None


class LabelsError(UserError):
    """A slice-labels CSV that cannot be used."""


def read_labels(path: str | Path) -> dict[tuple[str, str], int]:
    """Slice labels CSV (columns ``patient_folder``, ``file``, ``infection``) -> {(folder, file): 0/1}.
    The one reader of slice labels; LabelsError names the file and the row."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(path, f"cannot be read as a CSV ({exc})") from exc
    missing = {"patient_folder", "file", "infection"} - set(rows[0] if rows else {})
    if missing:
        raise LabelsError(path, f"missing column(s) {', '.join(sorted(missing))} "
                                "(expected patient_folder,file,infection)")
    labels = {}
    for row_number, r in enumerate(rows, start=2):
        if r["infection"] not in ("0", "1"):
            raise LabelsError(path, f"row {row_number}: infection must be 0 or 1, got {r['infection']!r}")
        labels[(r["patient_folder"], r["file"])] = int(r["infection"])
    return labels


def evaluate_study(study: Path, labels: dict[tuple[str, str], int], out_dir: Path | None,
                   segmenter: LungSegmenter | None = None) -> list[Retention]:
    """Apply every selection rule to one study; write its montage to ``out_dir`` if given."""
    volume = load_study(study)
    hu256 = resize_slices(volume.hu)  # type: ignore[arg-type]
    mask = (segmenter or ThresholdSegmenter()).segment(hu256)
    infected = np.array([labels.get((study.name, f), 0) == 1 for f in volume.files])
    selections = [select_slices(m, volume.hu, mask) for m in METHODS]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_dir / f"{study.name}-selection.png"), montage(volume, hu256, mask, selections, infected))
    return [Retention(study.name, s.method, int((s.keep & infected).sum()), int(infected.sum()),
                      int(s.keep.sum()), volume.n_slices) for s in selections]


def montage(volume: Volume, hu256: np.ndarray, mask: np.ndarray, selections: list[Selection],
            infected: np.ndarray, tile: int = 128, columns: int = 12) -> np.ndarray:
    """All slices as tiles, most superior first: lung mask outlined in yellow, a red frame on
    radiologist-labelled infected slices, and under each tile one bar per rule (green kept, grey dropped)."""
    bar, pad = 6, 4
    cell_h = tile + len(selections) * bar + pad + 14
    rows = -(-volume.n_slices // columns)
    legend = 40
    canvas = np.zeros((legend + rows * cell_h, columns * (tile + pad), 3), np.uint8)
    text = "bars: " + " / ".join(s.method for s in selections) + " (green kept, grey dropped); red frame: infected"
    cv2.putText(canvas, text, (6, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
    windowed = lung_window(hu256)
    for i in range(volume.n_slices):
        y, x = legend + (i // columns) * cell_h, (i % columns) * (tile + pad)
        img = cv2.cvtColor(cv2.resize(windowed[i], (tile, tile), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        small = cv2.resize(mask[i].astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, YELLOW, 1)
        if infected[i]:
            cv2.rectangle(img, (0, 0), (tile - 1, tile - 1), RED, 3)
        canvas[y:y + tile, x:x + tile] = img
        for k, s in enumerate(selections):
            top = y + tile + k * bar
            canvas[top:top + bar - 1, x:x + tile] = GREEN if s.keep[i] else GREY
        cv2.putText(canvas, str(i), (x + 2, y + cell_h - pad - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, WHITE, 1, cv2.LINE_AA)
    return canvas


def format_table(rows: list[Retention]) -> str:
    """The retention table as aligned text."""
    lines = [f"{'study':<20} {'method':<12} {'infected slices kept':>22} {'all slices kept':>18}"]
    for r in rows:
        inf = f"{r.infected_kept}/{r.infected} ({r.infected_fraction:.0%})" if r.infected else "no labels"
        lines.append(f"{r.study:<20} {r.method:<12} {inf:>22} {f'{r.kept}/{r.total} ({r.kept / r.total:.0%})':>18}")
    return "\n".join(lines)
