"""Patient verdicts from group or slice predictions.

Group models: :func:`patient_verdict` (majority with a disease override). Slice models: a
:class:`PatientRule` recorded in the model card, over the probabilities of every selected slice.
The last class of a model is its negative class (``healthy``, or the second of a two-class model).
"""

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


RULES = ("fraction", "mean")


@dataclass(frozen=True)
class PatientRule:
    """How a slice model's per-slice probabilities become a patient verdict.

    ``fraction`` (Rahimzadeh et al.): a slice is positive when its most probable class is a disease
    class; the patient is positive when more than ``threshold`` of the slices are (the paper's
    variants: 0 and 0.1), with the disease class that most positive slices chose.
    ``mean``: the patient is positive when the mean disease probability (1 - mean probability of
    the negative class) is above ``threshold``, with the disease class of largest mean probability.
    Ties between disease classes go to the larger mean probability.
    """

    name: str = "fraction"
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"patient rule must be one of {', '.join(RULES)}, got {self.name!r}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"patient rule threshold must be in [0, 1), got {self.threshold}")

    def to_dict(self) -> dict:
        return {"name": self.name, "threshold": self.threshold}

    def verdict(self, slice_probs: np.ndarray, classes: tuple[str, ...] = CLASSES) -> Verdict:
        """The patient verdict from (n slices, len(classes)) probabilities."""
        probs = np.asarray(slice_probs, float).reshape(-1, len(classes))
        mean = probs.mean(axis=0)
        disease = mean[:-1]
        if self.name == "fraction":
            top = probs.argmax(axis=1)
            positive = top < len(classes) - 1
            counts = np.bincount(top[positive], minlength=len(classes) - 1)
            tied = np.flatnonzero(counts == counts.max())
            best = int(tied[np.argmax(disease[tied])])
            is_positive = slice_fraction_positive(positive, self.threshold)
            rule = (f"fraction rule: {positive.sum()} of {len(probs)} slice(s) positive "
                    f"({positive.mean():.1%}), {'above' if is_positive else 'not above'} {self.threshold:.0%}")
        else:
            best = int(np.argmax(disease))
            is_positive = bool(1.0 - mean[-1] > self.threshold)
            rule = (f"mean rule: mean disease probability over {len(probs)} slice(s) {1.0 - mean[-1]:.3f}, "
                    f"{'above' if is_positive else 'not above'} {self.threshold:g}")
        label = classes[best] if is_positive else classes[-1]
        return Verdict(label, {c: round(float(p), 6) for c, p in zip(classes, mean)}, rule)
