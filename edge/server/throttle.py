"""Back-off after failed logins, per user name and per client address, with lockouts logged."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from edge.untrusted import printable

log = logging.getLogger("ctedge.server")
FREE_FAILURES = {"user": 5, "address": 20}   # failures before the back-off starts
MAX_DELAY_S = 900.0                          # the back-off doubles per failure up to this
MAX_TRACKED = 10_000                         # names and addresses remembered; the oldest is forgotten


class LoginThrottle:
    """Counts failed logins per user name and per address; :meth:`wait` says how long to refuse."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._failures: collections.OrderedDict[tuple[str, str], tuple[int, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wait(self, user: str, address: str) -> float:
        """Seconds before ``user`` may try again from ``address`` (0: now)."""
        with self._lock:
            until = max(self._failures.get(key, (0, 0.0))[1] for key in self._keys(user, address))
        return max(0.0, until - self.clock())

    def failed(self, user: str, address: str) -> None:
        """Count a failed login; log when it starts or extends a back-off."""
        now = self.clock()
        with self._lock:
            for key in self._keys(user, address):
                count = self._failures.pop(key, (0, 0.0))[0] + 1
                over = count - FREE_FAILURES[key[0]] + 1
                until = now + min(MAX_DELAY_S, 2.0 ** (over - 1)) if over > 0 else 0.0
                self._failures[key] = (count, until)
                if over > 0:
                    log.warning("login locked for %.0f s after %d failures: %s %s", until - now, count, key[0],
                                printable(key[1], 40))
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """Forget the user's failures (not the address's: others may be guessing from there)."""
        with self._lock:
            self._failures.pop(("user", user), None)

    @staticmethod
    def _keys(user: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", user), ("address", address)
