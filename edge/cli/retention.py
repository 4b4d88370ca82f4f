"""``ctedge retention``: apply the profile's retention now (the services also apply it every hour)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from edge.errors import UserError
from edge.profile import load_profile
from edge.retention import Removal, WatchRetention, clean_results, pending_sends

SEND_DIR = ".dicom-send"   # edge.dicomnet.service.SEND_DIR, not imported: that would load pynetdicom


def add_retention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retention", help="remove patient data past the profile's retention: days (audit line each)",
                       description="Remove, now, what the profile's retention: section allows: inbox entries whose "
                                   "result is recorded and sent (inbox_days), result records whose inbox entry is gone "
                                   "(outbox_days), finished server studies (results_days). Without --inbox, the "
                                   "server's results and its DICOM inbox. One audit line per removal, no patient names.")
    p.add_argument("--config", type=Path, required=True, help="the profile the services run")
    p.add_argument("--inbox", type=Path, help="the inbox of a `ctedge watch` service (with --out)")
    p.add_argument("--out", type=Path, help="the outbox of that watcher")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=cmd_retention)


def cmd_retention(args: argparse.Namespace) -> int:
    profile = load_profile(args.config)
    if (args.inbox is None) != (args.out is None):
        raise UserError(args.inbox or args.out, "--inbox and --out go together (the watcher's two folders)")
    removed: list[Removal] = []
    pairs = [(args.inbox, args.out)] if args.inbox else []
    if profile.dicom and profile.dicom.inbox and (profile.server.results_dir / "dicom").is_dir():
        pairs.append((profile.dicom.inbox, profile.server.results_dir / "dicom"))
    for inbox, outbox in pairs:
        if not outbox.is_dir():
            raise UserError(outbox, "the outbox is not a folder")
        retention = WatchRetention(profile.retention, inbox, outbox, profile.watcher.marker_file,
                                   unsent=functools.partial(pending_sends, outbox / SEND_DIR))
        removed += retention.run(dry_run=args.dry_run)
    removed += clean_results(profile.server.results_dir, profile.retention, dry_run=args.dry_run)
    r = profile.retention
    print(f"{'would remove' if args.dry_run else 'removed'} {len(removed)} item(s) (retention: inbox {r.inbox_days} d, "
          f"outbox {r.outbox_days} d, results {r.results_days} d)")
    return 0
