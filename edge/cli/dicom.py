"""``ctedge receive`` (only the DICOM receiver of a profile) and ``ctedge bench-dicom``; heavy imports are lazy."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from edge.cli.common import add_model_options, model_profile
from edge.engine import Device
from edge.errors import UserError
from edge.ingest.parallel import warm_pool
from edge.profile import load_profile


def add_receive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("receive", help="receive studies over DICOM (C-STORE) into the profile's dicom.inbox",
                       description="Run the DICOM C-STORE/C-ECHO receiver of the profile's dicom: section: each "
                                   "image of a modality the profile has a model for (CT, Enhanced CT and Legacy "
                                   "Converted Enhanced CT Image Storage with a CT bundle; CR and DX with an X-ray "
                                   "bundle) is stored as dicom.inbox/"
                                   "<StudyInstanceUID>/<SOPInstanceUID>.dcm before it is acknowledged; others get "
                                   "0x0122. Nothing is analysed: run `ctedge watch INBOX --out OUTBOX "
                                   "--config PROFILE` to receive, analyse and send results in one process.")
    p.add_argument("--config", type=Path, required=True, help="device profile with a dicom: section")
    p.set_defaults(func=cmd_receive)


def cmd_receive(args: argparse.Namespace) -> int:
    profile = load_profile(args.config)
    if profile.dicom is None:
        raise UserError(args.config, "the profile has no dicom: section (see docs/dicom.md: Connecting to PACS)")
    if profile.dicom.inbox is None:
        raise UserError(args.config, "dicom.inbox is not set: where should received studies be written?")
    from edge.dicomnet.receiver import Receiver

    receiver = Receiver(profile.dicom, profile.dicom.inbox, profile.model.modalities)
    receiver.start()
    print(f"ctedge: receiving DICOM as {profile.dicom.ae_title} on {profile.dicom.host}:{receiver.port}, "
          f"studies in {profile.dicom.inbox}", flush=True)
    try:
        threading.Event().wait()  # until SIGTERM or Ctrl-C (edge.cli.main)
    finally:
        receiver.stop()
    return 0


def add_bench_dicom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-dicom", help="measure DICOM receive rate and time to the SR in PACS (storescu, Orthanc)",
                       description="Send STUDY to a ctedge receiver on loopback with `storescu -xs` (RUNS times) and "
                                   "report instances/s and MB/s; after each run, analyse it and report the time from the last "
                                   "instance acknowledged to the SR stored in a local Orthanc (watcher.stable_seconds "
                                   "is set to 0 here; in service it adds to that time), with CT slices decoded as they "
                                   "arrive (runs 1, 3, ...) and without (runs 2, 4, ...), after one untimed run.")
    p.add_argument("study", type=Path, help="a folder of DICOM files with valid UIDs (one study)")
    p.add_argument("--runs", type=int, default=3, help="receive runs (default 3); medians are reported")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench_dicom)


def cmd_bench_dicom(args: argparse.Namespace) -> int:
    from edge.dicomnet.bench import bench_dicom  # pydicom, pynetdicom, Orthanc: only for this command

    profile = model_profile(args)
    warm_pool()                     # measured as the services run: their decoding pool started with them
    doc = bench_dicom(args.study, args.runs, Device.from_profile(profile), profile.model.modalities)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"CPU: {doc['cpu']}")
    print(f"{doc['instances']} instances, {doc['megabytes']} MB ({doc['transfer_syntax']}), storescu -xs over loopback:"
          f" median of {args.runs}: {doc['receive_seconds_median']:.2f} s = {doc['instances_per_second']} instances/s, "
          f"{doc['megabytes_per_second']} MB/s")
    for key, how in (("decoded_ahead", "CT slices decoded as they arrived"), ("not_decoded_ahead", "not decoded ahead")):
        if part := doc[key]:
            print(f"last instance acknowledged -> SR stored in Orthanc, {how}: {part['seconds']:.2f} s (median of "
                  f"{part['runs']}): verdict after {part['verdict_seconds']:.2f} s (read {part.get('read_ms', 0):.0f} ms, "
                  f"segment {part.get('segment_ms', 0):.0f} ms, infer {part.get('infer_ms', 0):.0f} ms), then the SR "
                  f"made, sent and stored in {part['sr_made_and_sent_seconds']:.2f} s; heatmaps (explain "
                  f"{part.get('explain_ms', 0):.0f} ms) there after {part['heatmaps_in_orthanc_seconds']:.2f} s")
    print("(watcher.stable_seconds is not included)")
    print(f"load average {' '.join(f'{x:.2f}' for x in doc['load_average'])}")
    return 0
