"""How fast requests go: per-host rate limits, backoff with jitter, Retry-After, and
the request counts the daemon's metrics and the benchmarks read.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.registry.config import RetryPolicy

WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})

log = logging.getLogger(__name__)


class RequestStats:
    """Thread-safe request counter keyed by (host, method, status).

    ``status`` is the HTTP status as a string, or ``"error"`` when no response came
    back. The daemon exports it as metrics; tests assert "zero writes" with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def record(self, host: str, method: str, status: str) -> None:
        """Count one request (``status`` "error" when no response came back)."""
        with self._lock:
            self._counts[(host, method, status)] += 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """A consistent copy of the counts, for metrics."""
        with self._lock:
            return dict(self._counts)

    def total(
        self, *, host: str | None = None, method: str | None = None, status: str | None = None
    ) -> int:
        """Requests matching every filter given."""
        return sum(
            n
            for (h, m, s), n in self.snapshot().items()
            if (host is None or h == host)
            and (method is None or m == method)
            and (status is None or s == status)
        )

    def writes(self, host: str | None = None) -> int:
        """Write requests (PUT, POST, PATCH, DELETE): what a read-only command must not make."""
        return sum(
            n
            for (h, m, _), n in self.snapshot().items()
            if m in WRITE_METHODS and (host is None or h == host)
        )


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart (no bursts), and holds
    every start back while the host asked for a pause (``Retry-After``)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (the longest pause asked wins)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def acquire(self, respect_pause: bool = True) -> None:
        """Wait for this request's start; ``respect_pause=False`` for the request that
        was told to wait and already did."""
        with self._lock:
            now = self._clock()
            start = max(now, self._paused_until) if respect_pause else now
            if self._interval:
                start = max(start, self._next)
                self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


def backoff(policy: RetryPolicy, failures: int) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**(failures-1)))."""
    return random.uniform(0.0, min(policy.cap, policy.base * (2 ** max(failures - 1, 0))))


def retry_after(value: str | None, policy: RetryPolicy) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, policy.retry_after_cap))
