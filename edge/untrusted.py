"""Make text that comes from outside (inbox entries, user names, DICOM strings) safe to put in a log line."""

from __future__ import annotations

import logging
import textwrap

LOG_FORMAT = "%(levelname)s %(message)s"


def printable(text: str, limit: int = 80) -> str:
    """``text`` with control and non-ASCII characters escaped, cut to ``limit`` characters."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (newlines, carriage returns, escape
    sequences, Unicode line separators) escaped, so that it cannot start a log line of its own."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


class OneLineFormatter(logging.Formatter):
    """Formats each record's message on one line (its arguments may be DICOM strings, AE titles, a
    PACS's error comment: a newline in them would forge a log line); a traceback that follows is
    indented, so that no line of it can pass for a record either."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        first, _, rest = super().format(record).partition("\n")
        return f"{first}\n{textwrap.indent(rest, '    ', lambda line: True)}" if rest else first


def log_handler() -> logging.Handler:
    """The handler ``ctedge`` logs through (stderr, ``LOG_FORMAT``, one line per record)."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    return handler
