"""The worklist: the history of studies sorted and filtered for triage, and its CSV export.

The default order puts finished studies nobody has marked yet first, the most suspicious first
(``concern``, see ``edge.uncertainty``), then everything else newest first. Readers mark a study
``reviewed`` or ``disagree`` (``StudyStore.review``): who and when is kept in its ``status.json``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

SORTS = {
    "triage": "unread and most suspicious first",
    "received": "newest first",
    "concern": "most suspicious first",
    "verdict": "by verdict",
    "status": "by status",
}
"""The worklist orders (``?sort=``), each in words."""

CSV_COLUMNS = ("study", "received", "accession", "study_uid", "status", "verdict", "concern", "agreement",
               "model_banner", "reviewer", "mark", "marked_at")
"""The export's columns: one row per study and reviewer (one row with empty review columns when none).
No patient name or ID: the accession and StudyInstanceUID link a row to the PACS."""


def unread(state: Mapping[str, Any]) -> bool:
    """A finished study that no reader has marked yet."""
    return state.get("status") == "done" and not state.get("reviews")


def worklist(states: Iterable[Mapping[str, Any]], sort: str = "triage", verdict: str = "", status: str = "",
             only_unread: bool = False) -> list[Mapping[str, Any]]:
    """The study states (newest first, as ``StudyStore.all`` gives them) filtered by ``verdict``,
    ``status`` and ``only_unread`` and ordered by ``sort`` (one of ``SORTS``; ties keep newest first)."""
    chosen = [s for s in states if (not verdict or s.get("label") == verdict) and (not status or s.get("status") == status)
              and (not only_unread or unread(s))]
    if sort == "triage":
        return sorted(chosen, key=lambda s: (not unread(s), -_concern(s) if unread(s) else 0.0))
    if sort == "concern":
        return sorted(chosen, key=lambda s: -_concern(s))
    if sort in ("verdict", "status"):
        return sorted(chosen, key=lambda s: s.get("label" if sort == "verdict" else "status") or "~")
    return chosen


def _concern(state: Mapping[str, Any]) -> float:
    """A study's concern; -1 (last) when it has none (not finished)."""
    value = state.get("concern")
    return -1.0 if value is None else float(value)


def to_csv(states: Iterable[Mapping[str, Any]]) -> str:
    """The worklist as CSV (``CSV_COLUMNS``): the feedback a site validates the model on its own cases with."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for s in states:
        study = s.get("study") or {}
        base = [s["id"], s.get("created", ""), study.get("accession", ""), study.get("study_uid", ""), s.get("status", ""),
                s.get("label") or "", "" if s.get("concern") is None else f"{s['concern']:.4f}", s.get("agreement") or "",
                s.get("banner") or ""]
        reviews = s.get("reviews") or {}
        for user, review in sorted(reviews.items()) or [("", {})]:
            writer.writerow([_safe(v) for v in [*base, user, review.get("mark", ""), review.get("at", "")]])
    return out.getvalue()


def _safe(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
