"""Write docs/cli.md, the command-line reference, from the ``ctedge`` parsers.

    .venv/bin/python docs/make_cli_reference.py            # rewrites docs/cli.md
    .venv/bin/python docs/make_cli_reference.py --out FILE

Every subcommand is included, the training and quantize commands too (they register through the
``ctedge.commands`` entry points and are loaded without TensorFlow). The help is formatted at a fixed
width, with the tune cache shown as ``~/.cache/...``, so the page does not depend on the terminal or
the user. ``tests/test_docs.py`` fails when docs/cli.md differs from what this writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.cli import build_parser

WIDTH = 100
DEFAULT_OUT = Path(__file__).with_name("cli.md")
# Variables that the help texts read (terminal width, the tune cache's folder): fixed while writing.
FIXED_ENV: dict[str, str | None] = {"COLUMNS": str(WIDTH), "XDG_CACHE_HOME": "~/.cache", "CTEDGE_TUNE_CACHE": None}


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def fixed_environment() -> Iterator[None]:
    """FIXED_ENV while the parsers are built and formatted; the caller's environment afterwards."""
    saved = {key: os.environ.get(key) for key in FIXED_ENV}
    try:
        _set_environment(FIXED_ENV)
        yield
    finally:
        _set_environment(saved)


def _subcommands(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    return dict(sorted(action.choices.items())), helps


def cli_reference() -> str:
    """The Markdown text of docs/cli.md: a table of commands, then each command's full help."""
    with fixed_environment():
        parser = build_parser([])  # no command named: every plugin command is loaded
        commands, helps = _subcommands(parser)
        intro = ("Generated from the parsers by `docs/make_cli_reference.py`; do not edit by hand "
                 "(`tests/test_docs.py` fails when this page is stale). Commands whose help says *(needs [train])* "
                 "run only with the training extra (`pip install 'ctedge[train]'`).")
        lines = ["# Command-line reference", "", intro, "", "| command | what it does |", "| --- | --- |"]
        lines += [f"| [`ctedge {name}`](#ctedge-{name}) | {helps[name]} |" for name in commands]
        lines += ["", "## ctedge", "", "```text", parser.format_help().rstrip(), "```"]
        for name, sub in commands.items():
            lines += ["", f"## ctedge {name}", "", helps[name], "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default: docs/cli.md)")
    out = args.parse_args(argv).out
    out.write_text(cli_reference())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
