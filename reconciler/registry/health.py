"""Per-host health: the breaker that stops retrying against a dead registry.

Retries are for a host that answers some requests. A host that answers none (every
request a 5xx, a reset or a timeout) would otherwise be retried per request (8
attempts, minutes of budget) and per step on top, so a CI job against a registry that
is down would sit for minutes. One :class:`HostHealth` per host watches every answer;
when the failures with no success between them reach the policy's thresholds it
opens, and every request to the host, pending or new, fails at once with the same
:class:`HostDown` error naming the host and what it last answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from reconciler.registry.config import RetryPolicy
from reconciler.registry.errors import HostDown

log = logging.getLogger(__name__)


class HostHealth:
    """The breaker of one host (thresholds in :class:`RetryPolicy`). Thread-safe."""

    def __init__(
        self, host: str, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.host = host
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._streak = 0  # failures since the last success
        self._since: float | None = None  # when the first of them happened
        self._last = ""  # what the host answered last time it failed
        self._open_until: float | None = None  # None: closed
        self._down: HostDown | None = None
        self.trips = 0

    @property
    def is_open(self) -> bool:
        """The host is taken as down: requests fail at once (until a probe succeeds)."""
        with self._lock:
            return self._open_until is not None

    def check(self) -> None:
        """Before a request: raise :class:`HostDown` while the breaker is open.

        After ``probe_after`` seconds one caller is let through as the probe; the
        others keep failing fast until it succeeds.
        """
        with self._lock:
            if self._open_until is None:
                return
            now = self._clock()
            if now >= self._open_until:
                self._open_until = now + self._policy.probe_after
                log.info("%s: probing whether it answers again", self.host)
                return
            assert self._down is not None
            raise self._down

    def success(self) -> None:
        """The host answered (anything but a 5xx): it is alive."""
        if not self._streak and self._open_until is None:
            return  # the common case, without the lock (a stale read only costs a lock)
        with self._lock:
            if self._open_until is not None:
                log.warning("%s answers again", self.host)
            self._streak, self._since = 0, None
            self._open_until, self._down = None, None

    def failure(self, answered: str) -> None:
        """A request failed with ``answered`` (``HTTP 500 (...)``, ``Connection reset``)."""
        with self._lock:
            now = self._clock()
            self._streak += 1
            self._last = answered
            if self._since is None:
                self._since = now
            if self._open_until is not None:  # the probe (or a late request) failed too
                self._open_until = now + self._policy.probe_after
                return
            span = now - self._since
            if self._streak < self._policy.dead_after_failures and span < self._policy.dead_after:
                return
            self._open_until = now + self._policy.probe_after
            self.trips += 1
            self._down = HostDown(
                f"registry {self.host} is down: {self._streak} requests in a row over "
                f"{span:.0f} s failed, none succeeded; it answered: {answered}",
                "requests to it fail at once until a probe finds it answering again; check "
                "that the registry is up and reachable from here, then run again",
            )
            log.warning("%s", self._down.message)

    def down(self) -> HostDown | None:
        """The error to fail with while the breaker is open."""
        with self._lock:
            return self._down if self._open_until is not None else None
