"""The validation evidence that travels with a model: the summary ``ctedge validate --record`` appends
to the bundle's card (``model.json`` key ``validations``) and the one line shown wherever the model is."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

from edge import __version__
from edge.card import ModelCard, load_card, write_card
from edge.errors import ModelLoadError
from edge.result import ModelDoc

MIN_PATIENTS = 20
"""Fewer patients of a class than this support no claim about its sensitivity or specificity."""

NO_EVIDENCE = "no validation recorded"


def card_summary(summary: dict, description: str, model: ModelDoc) -> dict:
    """What ``--record`` stores: date, data description, patients per class and the metrics with their
    intervals (from ``edge.validate.summarise``); no patient identifiers."""
    table = summary["table2"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": description,
        "model": {"name": model["name"], "version": model["version"]},
        "n_patients": summary["n_patients"],
        "n_studies": summary["n_studies"],
        "sufficient": summary["sufficient"],
        "metrics": {name: {m: {"value": v[m], "ci95": table["ci95"][name][m]} for m in ("sensitivity", "specificity", "f1")}
                    for name, v in [*table["per_class"].items(), ("macro", table["macro"])]},
        "roc_auc": summary["roc_auc"],
        "ece": summary["calibration"]["ece"],
        "software": {"name": "ctedge", "version": __version__},
    }


def _pct(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.0f}%"
    return text + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%]" if ci else "")


def evidence_line(records: Sequence[dict], variant: str | None = None) -> str:
    """"validated on N patients with VARIANT (sens x [a-b], spec y [c-d])" from the card's latest
    recorded validation of ``variant`` (its ``model.version`` ends in "(variant)"), or without "with" from
    the latest of any variant where ``variant`` has none; macro averages with 95% intervals. "no
    validation recorded" for a card without ``validations``."""
    if not records:
        return NO_EVIDENCE
    own = [r for r in records if variant and r.get("model", {}).get("version", "").endswith(f"({variant})")]
    last = (own or records)[-1]
    macro = last["metrics"]["macro"]
    line = (f"validated on {sum(last['n_patients'].values())} patients{f' with {variant}' if own else ''} "
            f"(sens {_pct(macro['sensitivity']['value'], macro['sensitivity']['ci95'])}, "
            f"spec {_pct(macro['specificity']['value'], macro['specificity']['ci95'])}) on {last['date'][:10]}")
    if not last["sufficient"]:
        line += f"; fewer than {MIN_PATIENTS} patients in a class: not enough to support a claim"
    return line


def record(bundle: Path, entry: dict) -> ModelCard:
    """Append ``entry`` to the ``validations`` of the bundle's model card (written atomically, mode kept)."""
    card = load_card(bundle)
    card = dataclasses.replace(card, validations=card.validations + (entry,))
    try:
        write_card(card)
    except OSError as exc:
        raise ModelLoadError(card.path, f"cannot record the validation in the model card ({exc})") from exc
    return card
