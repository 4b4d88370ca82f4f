"""``ctedge doctor``: is this box ready to run the services of a profile (see ``edge.doctor``)?"""

from __future__ import annotations

import argparse
import json
import os
import pwd
from pathlib import Path

from edge.errors import UserError


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check that this box is ready to run a profile (exit 0 when ready)",
                       description="Check Python and packages, every model bundle of the profile (CT, X-ray) and its "
                                   "tuned variant (age, load), CPU, Coral delegate, data folders, config files, port, "
                                   "API token and the permissions of its file, login users, the dicom: section (AE "
                                   "titles, receiver port, C-ECHO to each destination) and the retention for a "
                                   "profile. Exit 0 only when every check passes.")
    p.add_argument("--config", type=Path, required=True, help="the profile the services run, e.g. /etc/ctedge/ctedge.yaml")
    p.add_argument("--folder", type=Path, action="append", default=[],
                   help="another data folder to check, e.g. the watcher's inbox and outbox (repeatable)")
    p.add_argument("--user", default=None, help="account the services run as (default: the current user)")
    p.add_argument("--env-file", type=Path, default=None,
                   help="environment file of the services (default: ctedge.env next to the profile, if present)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import run_checks  # Flask (the server's users): only for this command

    try:
        user = pwd.getpwnam(args.user) if args.user else pwd.getpwuid(os.getuid())
    except KeyError:
        raise UserError(args.user, "no such user (--user)") from None
    env_file = args.env_file or args.config.parent / "ctedge.env"
    if not args.env_file and not env_file.is_file():
        env_file = None
    checks = run_checks(args.config, args.folder, user, env_file)
    failed = [c for c in checks if not c.ok and not c.warning]
    if args.json:
        print(json.dumps({"ready": not failed, "checks": [c.__dict__ for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{'ok' if c.ok else 'warn' if c.warning else 'FAIL':>4}] {c.name}: {c.detail}")
        print("READY" if not failed else f"NOT READY: {len(failed)} check(s) failed")
    return 0 if not failed else 1
