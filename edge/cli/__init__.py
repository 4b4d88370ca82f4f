"""The ``ctedge`` command: the composition root of the edge package.

Each subcommand lives in its own module here (``add_<name>`` declares its flags, ``cmd_<name>`` turns
them into typed calls of the library and wires the services); this package is the only part of
``edge`` that imports argparse. Subcommands register themselves in ``COMMANDS``; the training and
quantize packages add theirs through the ``ctedge.commands`` entry points (see ``plugin_commands``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from edge import CLASSES, __version__
from edge.cli.dicom import add_bench_dicom, add_receive
from edge.cli.doctor import add_doctor
from edge.cli.predict import add_predict
from edge.cli.retention import add_retention
from edge.cli.selection import add_evaluate_selection
from edge.cli.serve import add_serve
from edge.cli.tune import add_tune
from edge.cli.validate import add_validate
from edge.cli.watch import add_watch
from edge.errors import UserError
from edge.ingest import configure_pydicom
from edge.untrusted import log_handler

log = logging.getLogger("ctedge")
LIBRARY_LOGGERS = {"highdicom": logging.WARNING, "waitress.queue": logging.ERROR}
"""Libraries whose routine lines (highdicom's per-object INFO, waitress's "Task queue depth" while one
user loads a page's heatmaps) are kept below this level unless --debug (pynetdicom: edge.dicomnet.receiver)."""

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_predict, add_evaluate_selection, add_serve, add_watch,
                                                                add_validate, add_receive, add_bench_dicom, add_doctor,
                                                                add_tune, add_retention]


def plugin_commands(command: str | None) -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by the training and quantize packages (entry point group
    ``ctedge.commands``), so that ``edge`` never imports them: dependencies point one way. Only the
    plugin of ``command`` is loaded (all of them when it names none, for the help)."""
    plugins = sorted(entry_points(group="ctedge.commands"), key=lambda ep: ep.name)
    chosen = [ep for ep in plugins if ep.name == command]
    return [ep.load() for ep in chosen or plugins]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ctedge`` parser for ``argv``: the edge commands, and the plugin command it names."""
    parser = argparse.ArgumentParser(prog="ctedge", description="Chest-CT pneumonia triage on edge devices "
                                     f"(classes: {', '.join(CLASSES)}).")
    parser.add_argument("--version", action="version", version=f"ctedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if command not in sub.choices:
        for add in plugin_commands(command):
            add(sub)
    return parser


def configure_logging(verbose: bool, debug: bool) -> None:
    """ctedge's progress at INFO with ``-v`` (else warnings only; retention's audit lines always); the libraries of LIBRARY_LOGGERS
    stay quiet unless ``--debug``, which shows everything down to DEBUG."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, handlers=[log_handler()])
    for name, quiet in LIBRARY_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if debug else quiet)
    logging.getLogger("ctedge.retention").setLevel(logging.DEBUG if debug else logging.INFO)  # the audit trail


class Stopped(KeyboardInterrupt):
    """SIGTERM (systemd's stop, ``kill``): unwinds the command like Ctrl-C, so that its ``finally``
    blocks and the exit handlers run (the decoding workers stop; a server re-queues its running studies)."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    configure_pydicom()
    configure_logging(args.verbose, args.debug)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ctedge: error: {exc}", file=sys.stderr)
        return 2
    except Stopped:
        print("ctedge: stopped", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("ctedge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if args.debug:
            raise
        print(f"ctedge: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1
