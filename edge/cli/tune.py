"""``ctedge tune``: measure the variants and thread counts of a profile's bundles on this CPU."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge.card import MODALITY_TERMS, load_card
from edge.cli.common import add_model_options, model_profile
from edge.errors import UserError
from edge.ingest.radiograph import study_modality
from edge.kinds import KINDS
from edge.tune import (Choice, bundle_key, cache_path, cpu_identity, cpu_key, eligible_variants, phantom_group, record,
                       study_group, tune)


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure the model variants and thread counts on this CPU and record the fastest",
                       description="For every model bundle of the profile (CT, X-ray), times each variant that passes "
                                   "the bundle's fidelity thresholds (a bundle of one variant: that one) on every edge "
                                   "runtime (LiteRT; OpenVINO f32 and bf16 when installed, each checked against LiteRT "
                                   "float32 first) with 1..N threads on one input (of STUDY for the "
                                   "bundle of the study's modality, else of a synthetic phantom) and records the "
                                   "fastest for this CPU, runtime and bundle in the install's tune record (tuned.json "
                                   "in the profile's server.results_dir; $CTEDGE_TUNE_CACHE overrides it); profiles "
                                   "with model.variant: auto (the default) then run it. Waits for an idle CPU first.")
    add_model_options(p, variant=False)
    p.add_argument("--study", type=Path, default=None,
                   help="time the bundle of this study's modality on the study's first input instead of a phantom")
    p.add_argument("--max-threads", type=int, default=None, help="largest thread count tried (default: all cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    if args.repeats < 1 or (args.max_threads is not None and args.max_threads < 1):
        raise UserError("ctedge tune", "--repeats and --max-threads must be at least 1")
    profile = model_profile(args)
    cards = [load_card(b) for b in profile.model.bundles]
    modality = study_modality(args.study) if args.study else None
    if modality and modality not in {c.modality for c in cards}:
        raise UserError(args.study, f"a {MODALITY_TERMS[modality].name} study, but no bundle tuned here reads "
                                    f"{MODALITY_TERMS[modality].name} (bundles: {', '.join(str(c.bundle) for c in cards)})")
    for card in cards:              # every bundle can be tuned, before the first is timed
        eligible_variants(card)
    done: list[dict[str, Any]] = []
    path = cache_path(profile)
    for card in cards:
        on_study = card.modality == modality
        unit = study_group(card, args.study) if on_study else phantom_group(card)
        choice, rows = tune(card, unit, args.max_threads, args.repeats)
        record(card, choice, path)
        done.append({"bundle": bundle_key(card), "path": str(card.bundle), "modality": card.modality,
                     "unit": KINDS[card.kind].unit, "input": str(args.study) if on_study else "synthetic phantom", "rows": rows,
                     "choice": asdict(choice)})
    if args.json:
        print(json.dumps({"cpu": cpu_identity(), "cache": str(path), "bundles": done}, indent=2))
        return 0
    print(f"CPU: {cpu_key()}")
    for d in done:
        print(f"\n{MODALITY_TERMS[d['modality']].name} bundle {d['path']} ({d['bundle']}), timed on {d['input']}:")
        print(f"{'runtime':<15}{'variant':<10}{'threads':>8}{'median ms/' + d['unit']:>17}{'max |dp| vs first':>19}"
              f"{'run-off ms':>12}")
        for r in d["rows"]:
            if "skipped" in r:
                print(f"{r['runtime']:<15}{r['variant']:<10} skipped: {r['skipped']}")
                continue
            runoff = f"{r['runoff_ms_per_group_median']:.1f}" if "runoff_ms_per_group_median" in r else "-"
            print(f"{r['runtime']:<15}{r['variant']:<10}{r['threads']:>8}{r['ms_per_group_median']:>17.1f}"
                  f"{r['max_prob_diff_vs_first']:>19.4f}{runoff:>12}")
        print(f"chosen: {Choice(**d['choice']).describe()}")
    print(f"recorded in {path}")
    return 0
