"""Make names that come from outside (inbox entries, user names) safe to put in a log line."""

from __future__ import annotations


def printable(text: str, limit: int = 80) -> str:
    """``text`` with control and non-ASCII characters escaped, cut to ``limit`` characters."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
