"""``ctedge watch``: the watcher of an inbox folder, with the profile's DICOM receiver and sender."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge.cli.common import add_model_options, model_profile
from edge.ingest.parallel import warm_pool
from edge.engine import Device
from edge.retention import WatchRetention
from edge.watch import watch


def add_watch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="process every study dropped into an inbox folder, once each",
                       description="Watch INBOX for studies (a folder or a zip per study) and write each result "
                                   "to OUTBOX/<study>/ (result.json, heatmaps, report.html), or the error to "
                                   "OUTBOX/failed/<study>/error.txt. Crash-safe; the inbox is never modified. With a "
                                   "profile that has a dicom: section, also receive studies into INBOX and send the "
                                   "results to its destinations.")
    p.add_argument("inbox", type=Path, help="folder where studies are dropped")
    p.add_argument("--out", type=Path, required=True, help="folder for the results (OUTBOX)")
    add_model_options(p)
    p.add_argument("--once", action="store_true", help="process the studies that are ready, then exit")
    p.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    profile = model_profile(args)
    logging.getLogger("ctedge.watch").setLevel(logging.DEBUG if args.debug else logging.INFO)  # a line per study
    engine = Device.from_profile(profile, tune_if_missing=True)
    warm_pool()                     # study after study: decoding workers pay off (edge.ingest.parallel)
    dicom = None
    if profile.dicom:  # receive into INBOX, send results to the profile's destinations
        from edge.dicomnet.service import DicomService  # pynetdicom: only when a profile needs it

        dicom = DicomService(profile.dicom, args.inbox, args.out, profile.model.modalities)
        dicom.start(receive=not args.once, send=not args.once, decode_for=engine)  # --once: after_pass delivers
    retention = WatchRetention(profile.retention, args.inbox, args.out, profile.watcher.marker_file,
                               unsent=dicom.unsent if dicom else tuple)

    def after_pass() -> None:
        if dicom:
            dicom.after_pass()
        retention.after_pass()

    try:
        summary = watch(engine, args.inbox, args.out, profile.watcher, args.once, after_pass=after_pass,
                        receiving=dicom.receiver.receiving if dicom else None,
                        on_verdict=dicom.send_verdict if dicom else None)
    finally:
        if dicom:
            dicom.stop()
    print(f"{summary.done} done, {summary.failed} failed, {summary.waiting} waiting for their copy to finish")
    return 0
