"""What a result's numbers are and how far its evidence agrees, in words a radiologist can act on.

:func:`uncertainty_keys` adds to a result document (``edge.stages.StudyResult.to_dict``):

``score``       what ``probabilities`` is: ``{"name", "explanation"}`` (a mean of group or slice
                outputs, or one image's output: never a calibrated patient probability)
``agreement``   how the groups or slices voted: ``{"unit", "n", "for_verdict", "votes", "level", "text"}``;
                ``level`` is ``unanimous``, ``majority`` or ``split`` (see :data:`SPLIT_RULE`); None
                for a single image
``concern``     1 - the mean probability of the negative class: how suspicious the study is, for
                sorting a worklist (not a probability of disease)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from edge.result import AgreementDoc, ScoreDoc

CONFIDENT = 0.9
"""A dissenting group whose own top probability is at least this counts as a confident dissent."""
SPLIT_SHARE = 1 / 3
SPLIT_RULE = (f"split: at least {SPLIT_SHARE:.0%} of the groups or slices call another class than the verdict, "
              f"or any group does so with its own probability of {CONFIDENT} or more")
"""When the agreement of a result is ``split`` (shown with every result and in docs/viewer.md)."""


def uncertainty_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``score``, ``agreement`` and ``concern`` keys of a result document (see the module docstring)."""
    return {"score": score_meaning(doc), "agreement": agreement(doc), "concern": concern(doc)}


def score_meaning(doc: Mapping[str, Any]) -> ScoreDoc:
    """What the ``probabilities`` of a result document are."""
    n_groups = len(doc.get("groups") or [])
    scored = [s for s in doc.get("slices_used", []) if "probabilities" in s]
    rule = str(doc.get("decision_rule", ""))
    if n_groups:
        return {"name": "mean group probability",
                "explanation": f"the mean of the model's outputs for {n_groups} group(s) of slices; not a calibrated "
                               "probability that the patient has the disease"}
    if len(scored) > 1:
        decided = ("the verdict counts positive slices (fraction rule), it does not threshold this mean"
                   if rule.startswith("fraction") else "the verdict thresholds this mean (mean rule)")
        return {"name": "mean slice probability",
                "explanation": f"the mean of the model's outputs for {len(scored)} slices; {decided}; not a calibrated "
                               "probability that the patient has the disease"}
    return {"name": "model output",
            "explanation": "the model's softmax output for this one image; not a calibrated probability"}


def agreement(doc: Mapping[str, Any]) -> AgreementDoc | None:
    """How the units that decided the verdict (groups, or scored slices) voted, with a sentence saying
    so; None when one image decided."""
    label = doc["label"]
    groups = doc.get("groups") or []
    if groups:
        unit, voters = "group", [(g["label"], max(g["probabilities"].values())) for g in groups]
    else:
        voters = [(s["label"], max(s["probabilities"].values())) for s in doc.get("slices_used", []) if "label" in s]
        unit = "slice"
    if len(voters) < 2:
        return None
    votes = Counter(v for v, _ in voters)
    n, agree = len(voters), votes[label]
    confident_dissent = unit == "group" and any(v != label and p >= CONFIDENT for v, p in voters)
    if agree == n:
        level = "unanimous"
    elif confident_dissent or (n - agree) / n >= SPLIT_SHARE:
        level = "split"
    else:
        level = "majority"
    others = ", ".join(f"{k} {c}" for c, k in votes.most_common() if c != label)
    text = f"{agree} of {n} {unit}s call it {label}" + (f"; {others}" if others else "")
    if unit == "group" and agree < n:
        text += " (" + "; ".join(f"group {g['index']}: {g['label']} {max(g['probabilities'].values()):.3f}"
                                 for g in groups if g["label"] != label) + ")"
    text += {"unanimous": ": the groups agree" if unit == "group" else ": the slices agree",
             "majority": ": most agree",
             "split": f": the {unit}s disagree, read the study yourself"}[level]
    return {"unit": unit, "n": n, "for_verdict": agree, "votes": dict(votes), "level": level, "text": text,
            "rule": SPLIT_RULE}


def concern(doc: Mapping[str, Any]) -> float:
    """1 - the mean probability of the model's negative class (its last class): the worklist's
    suspicion order."""
    negative = doc["classes"][-1]
    return round(1.0 - float(doc["probabilities"][negative]), 6)


def supports_verdict(doc: Mapping[str, Any], heatmap: Mapping[str, Any]) -> bool:
    """True when the group or slice a heatmap of ``doc`` explains voted for the verdict (its own
    label is the verdict's); a single image always does. Older results are judged from their groups
    and slices."""
    label = doc["label"]
    if heatmap.get("group") is not None:
        return any(g["index"] == heatmap["group"] and g["label"] == label for g in doc.get("groups", []))
    scored = {s["index"]: s.get("label") for s in doc.get("slices_used", [])}
    return scored.get(heatmap["slice_index"], label) in (label, None)
