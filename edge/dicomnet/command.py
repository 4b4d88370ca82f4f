"""``ctedge receive``: only the DICOM receiver of a profile, writing studies into ``dicom.inbox``."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from edge.errors import UserError
from edge.profile import load_profile


def add_receive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("receive", help="receive studies over DICOM (C-STORE) into the profile's dicom.inbox",
                       description="Run the DICOM C-STORE/C-ECHO receiver of the profile's dicom: section: each CT "
                                   "instance is stored as dicom.inbox/<StudyInstanceUID>/<SOPInstanceUID>.dcm before "
                                   "it is acknowledged. Nothing is analysed: run `ctedge watch INBOX --out OUTBOX "
                                   "--config PROFILE` to receive, analyse and send results in one process.")
    p.add_argument("--config", type=Path, required=True, help="device profile with a dicom: section")
    p.set_defaults(func=cmd_receive)


def cmd_receive(args: argparse.Namespace) -> int:
    profile = load_profile(args.config)
    if profile.dicom is None:
        raise UserError(args.config, "the profile has no dicom: section (see README: Connecting to PACS)")
    if profile.dicom.inbox is None:
        raise UserError(args.config, "dicom.inbox is not set: where should received studies be written?")
    from edge.dicomnet.receiver import Receiver

    receiver = Receiver(profile.dicom, profile.dicom.inbox)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start()
    print(f"ctedge: receiving DICOM as {profile.dicom.ae_title} on {profile.dicom.host}:{receiver.port}, "
          f"studies in {profile.dicom.inbox}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        receiver.stop()
    return 0
