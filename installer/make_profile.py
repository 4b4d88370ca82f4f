"""Print the installed box's profile: a device profile from the archive with absolute paths.

Run by install.sh with the installed Python:
    python make_profile.py /opt/ctedge/current/profiles/cpu-minipc.yaml \
        --models /opt/ctedge/current/models --results /srv/ctedge/results
The model bundle is named through /opt/ctedge/current, so the profile stays valid across upgrades.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HEADER = """\
# ctedge profile of this box, written by install.sh from the device profile {source}.
# Edit freely: upgrades never overwrite it (they put their default in ctedge.yaml.dist).
# Keys and defaults: {template}. Check it with `ctedge doctor --config <this file>`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="a device profile from the archive's profiles/")
    parser.add_argument("--models", type=Path, required=True, help="folder holding the model bundles")
    parser.add_argument("--results", type=Path, required=True, help="the server's results folder")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(args.profile.read_text())
    raw["model"]["bundle"] = str(args.models / Path(raw["model"]["bundle"]).name)
    raw["server"] = {"host": "127.0.0.1", "port": 8080} | raw.get("server", {}) | {"results_dir": str(args.results)}
    header = HEADER.format(source=args.profile.name, template=args.profile.parent / "template.yaml")
    sys.stdout.write(header + yaml.safe_dump(raw, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
