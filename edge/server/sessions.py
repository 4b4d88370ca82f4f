"""Server-side login sessions: the signed cookie carries only a session id that logout, expiry or the
user's removal from the users file ends."""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Callable

MAX_SESSIONS = 1000   # the oldest session ends when more are open


class Sessions:
    """Open sessions: ``id -> (user, expiry)``, kept in memory (a restart logs everyone out)."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic):
        self.lifetime_s, self.clock = lifetime_s, clock
        self._open: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        """Open a session for ``user``; return its id."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._open[sid] = (user, self.clock() + self.lifetime_s)
            while len(self._open) > MAX_SESSIONS:
                self._open.popitem(last=False)
        return sid

    def user(self, sid: str | None) -> str | None:
        """The user of an open, unexpired session, else None."""
        with self._lock:
            user, expiry = self._open.get(sid or "", ("", 0.0))
            if user and expiry > self.clock():
                return user
            self._open.pop(sid or "", None)
            return None

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._open.pop(sid or "", None)
