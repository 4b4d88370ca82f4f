"""``ctedge serve``: the web form and API under waitress; ``--add-user`` manages the login users."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import UserError
from edge.ingest.parallel import warm_pool
from edge.profile import Profile, load_profile

if TYPE_CHECKING:
    from flask import Flask

    from edge.server.jobs import Analyser

REQUEST_THREADS = 8


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web form and JSON API for clinicians (waitress)",
                       description="Serve the upload form, the result pages and the JSON API /api/v1 with waitress. "
                                   "Binds to the profile's server.host (default 127.0.0.1) unless --host is given.")
    p.add_argument("--config", type=Path, required=True, help="device profile, e.g. firmware_config/cpu-minipc.yaml")
    p.add_argument("--host", help="bind address (default: the profile's server.host)")
    p.add_argument("--port", type=int, help="port (default: the profile's server.port; 0 = any free port)")
    p.add_argument("--add-user", metavar="NAME",
                   help="add or replace a login user in the users file (asks for the password, or reads one line "
                        "from standard input) and exit")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    profile = load_profile(args.config)
    server = dataclasses.replace(profile.server, host=args.host or profile.server.host,
                                 port=profile.server.port if args.port is None else args.port)
    profile = dataclasses.replace(profile, server=server)

    from edge.server import stop_app, users_file
    from edge.server.auth import add_user

    if args.add_user:
        path = users_file(profile)
        add_user(path, args.add_user, read_password(path))
        print(f"user {args.add_user} saved in {path}")
        return 0

    from edge.server.bodies import create_server

    logging.getLogger("ctedge.server").setLevel(logging.INFO)
    app = serve_app(profile)
    warm_pool()                     # study after study: decoding workers pay off (edge.ingest.parallel)
    httpd = create_server(app, server.host, server.port, REQUEST_THREADS)
    info = app.extensions["ctedge"]["engine"].info
    print(f"ctedge: serving on http://{httpd.effective_host}:{httpd.effective_port}/ "
          f"(profile {profile.name}, model {info.name} {info.version}, results in {server.results_dir})", flush=True)
    if dicom := app.extensions["ctedge"].get("dicom"):
        print(f"ctedge: receiving DICOM as {dicom.settings.ae_title} on {dicom.settings.host}:{dicom.receiver.port}, "
              f"studies in {dicom.inbox}, results sent to {len(dicom.settings.destinations)} destination(s)", flush=True)
    try:
        httpd.run()
    finally:
        stop_app(app)
    return 0


def serve_app(profile: Profile, engine: Analyser | None = None) -> Flask:
    """The app of ``ctedge serve`` with its workers running and, when the profile has a ``dicom:``
    section, its DICOM service started (receiver, the watch loop on its inbox with the app's engine,
    sender to the destinations; ``app.extensions["ctedge"]["dicom"]``). ``engine`` defaults to the
    profile's device, tuned on first start."""
    from edge.server import create_app

    dicom = None
    if profile.dicom is not None:
        from edge.dicomnet.service import DicomService  # pynetdicom: only when the profile has DICOM

        dicom = DicomService.for_server(profile)
    app = create_app(profile, engine, dicom=dicom)
    if dicom is not None:
        dicom.serve(app.extensions["ctedge"]["engine"], profile.watcher, profile.retention)
    return app


def read_password(path: Path) -> str:
    """A new password: typed twice on a terminal, or one line from standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        raise UserError(path, "the two passwords differ; nothing saved")
    return password
