"""Server-side login sessions: the signed cookie carries a session id that logout, expiry, a restart,
or a change of the user's line in the users file (removed, new password) ends."""

from __future__ import annotations

import collections
import secrets
import threading
import time
from collections.abc import Callable

MAX_SESSIONS = 1000   # the oldest session ends when more are open


class Sessions:
    """Open sessions: ``id -> (user, password hash at login, expiry)``, kept in memory."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic):
        self.lifetime_s, self.clock = lifetime_s, clock
        self._open: collections.OrderedDict[str, tuple[str, str, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def start(self, user: str, hashed: str) -> str:
        """Open a session for ``user`` whose users-file hash is ``hashed``; return its id."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._open[sid] = (user, hashed, self.clock() + self.lifetime_s)
            while len(self._open) > MAX_SESSIONS:
                self._open.popitem(last=False)
        return sid

    def user(self, sid: str | None, users: dict[str, str] | None = None) -> str | None:
        """The user of an open, unexpired session, else None; with ``users`` (the users file), also None
        when the user's line is gone or changed since the login."""
        with self._lock:
            user, hashed, expiry = self._open.get(sid or "", ("", "", 0.0))
            if user and expiry > self.clock() and (users is None or users.get(user) == hashed):
                return user
            self._open.pop(sid or "", None)
            return None

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._open.pop(sid or "", None)
