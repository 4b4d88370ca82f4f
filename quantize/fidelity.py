"""Compare model variants on the same real groups: agreement with a reference, probability
differences, size and latency. Used by ``ctedge quantize`` (fidelity report) and ``ctedge bench``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
import numpy as np
from tqdm import tqdm

from edge.card import ModelCard

Predict = Callable[[np.ndarray], np.ndarray]


def compare(predictors: dict[str, Predict], studies: list[list[np.ndarray]], reference: str,
            repeats: int = 3, unit: str = "group") -> dict[str, dict]:
    """Run every predictor on every unit (a group, or a slice: ``unit``) of every study.

    Returns per variant: top-1 agreement with ``reference`` over units, mean and max absolute
    probability difference, median and min latency per unit (``ms_per_<unit>_median``,
    ``ms_per_<unit>_min``, over ``repeats``) and the median time per patient (all of a study's units, ms).
    The variants take turns, study by study, in every repeat, so that a busy spell of a shared
    machine slows them all rather than one, and the ratios between them hold.
    """
    groups = [g for study in studies for g in study]
    probs = {name: np.stack([predict(g) for g in groups]) for name, predict in predictors.items()}  # also the warm-up
    per_group: dict[str, list[float]] = {name: [] for name in predictors}
    per_patient: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in tqdm(range(repeats), desc="repeats", leave=False):
        for study in studies:
            for name, predict in predictors.items():
                seconds = [_seconds(predict, g) for g in study]
                per_group[name] += seconds
                per_patient[name].append(sum(seconds))
    ref = probs[reference]
    results = {}
    for name, p in probs.items():
        diff = np.abs(p - ref)
        results[name] = {f"ms_per_{unit}_median": round(1000 * statistics.median(per_group[name]), 2),
                         f"ms_per_{unit}_min": round(1000 * min(per_group[name]), 2),
                         "ms_per_patient_median": round(1000 * statistics.median(per_patient[name]), 2),
                         "top1_agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
                         "mean_abs_prob_diff": float(diff.mean()), "max_abs_prob_diff": float(diff.max())}
    return results


def _seconds(predict: Predict, group: np.ndarray) -> float:
    start = time.perf_counter()
    predict(group)
    return time.perf_counter() - start


def bundle_sizes(card: ModelCard) -> dict[str, int]:
    """Bytes on disk of each variant (all its model files)."""
    return {v: sum((card.bundle / f).stat().st_size for f in files.values()) for v, files in card.variants.items()}


def format_table(results: dict[str, dict], sizes: dict[str, int] | None = None, reference: str = "keras",
                 unit: str = "group") -> str:
    """A readable table of ``compare`` results."""
    sizes = sizes or {}
    lines = [f"{'variant':<18}{'agree':>8}{'mean |dp|':>11}{'max |dp|':>10}{f'ms/{unit}':>10}{'ms/patient':>12}{'KiB':>9}"]
    for name, r in results.items():
        size = sizes.get(name.removeprefix("tflite_"))
        lines.append(f"{name:<18}{r['top1_agreement']:>8.1%}{r['mean_abs_prob_diff']:>11.4f}{r['max_abs_prob_diff']:>10.4f}"
                     f"{r[f'ms_per_{unit}_median']:>10.1f}{r['ms_per_patient_median']:>12.1f}"
                     f"{(f'{size / 1024:.0f}' if size else '-'):>9}")
    lines += [f"{name}: max |feature diff| {r['max_abs_feature_diff']:.2e} (features up to {r['feature_scale']:.3g})"
              for name, r in results.items() if "max_abs_feature_diff" in r]
    lines.append(f"(agreement and differences against {reference}, on the same {unit}s)")
    return "\n".join(lines)
