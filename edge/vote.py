"""Patient verdicts from group (or slice) predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge import CLASSES

HEALTHY = CLASSES.index("healthy")


@dataclass(frozen=True)
class Verdict:
    label: str
    probabilities: dict[str, float]  # mean of the group probabilities
    rule: str                        # which rule decided, in words


def patient_verdict(group_probs: np.ndarray, override: float = 0.9) -> Verdict:
    """Majority of group labels (argmax); a healthy majority is overridden by any group that gives
    ``covid`` or ``other_pneumonia`` a probability above ``override`` (the larger such probability wins).

    Ties between majority classes go to the class with the larger mean probability.
    """
    probs = np.asarray(group_probs, float).reshape(-1, len(CLASSES))
    mean = probs.mean(axis=0)
    votes = np.bincount(probs.argmax(axis=1), minlength=len(CLASSES))
    tied = np.flatnonzero(votes == votes.max())
    label = int(tied[np.argmax(mean[tied])])
    rule = f"majority of {len(probs)} group(s): {votes[label]} vote(s) for {CLASSES[label]}"
    if label == HEALTHY:
        disease = probs.copy()
        disease[:, HEALTHY] = 0.0
        group, cls = np.unravel_index(np.argmax(disease), disease.shape)
        if disease[group, cls] > override:
            label = int(cls)
            rule = (f"override: group {group} gives {CLASSES[cls]} probability "
                    f"{disease[group, cls]:.3f} > {override}, above a healthy majority")
    return Verdict(CLASSES[label], {c: round(float(p), 6) for c, p in zip(CLASSES, mean)}, rule)


def slice_fraction_positive(slice_positive: np.ndarray, fraction: float = 0.0) -> bool:
    """Rahimzadeh et al.'s rule for binary slice models: the patient is positive when more than
    ``fraction`` (0 or 0.1 in the paper) of the selected slices are positive."""
    flags = np.asarray(slice_positive, bool)
    return bool(flags.size and flags.mean() > fraction)
