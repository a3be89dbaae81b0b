"""Webhook deliveries already accepted, so that a replayed one is refused.

What a forge sends: GitHub ``X-GitHub-Delivery`` (a GUID per delivery), Gitea
``X-Gitea-Delivery`` (and the same value as ``X-GitHub-Delivery``), GitLab
``X-Gitlab-Event-UUID`` (``Idempotency-Key`` on recent versions). None of them is
covered by the signature, and no forge signs a timestamp: GitHub and Gitea sign the
body only, GitLab sends the secret itself. So what can be refused honestly is a
request seen before: :class:`Deliveries` remembers every accepted delivery id *and*
the digest of every accepted body for ``horizon`` seconds (at most ``capacity`` of
each, the oldest forgotten first), and refuses a request that repeats either. A
captured request replayed verbatim, or with a fresh delivery id, is refused within
the horizon; after it (or after a restart) it triggers one pass, which reads git and
can apply nothing that is not there: the body is never interpreted.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

DELIVERY_HEADERS = (
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Gitlab-Event-UUID",
    "Idempotency-Key",
)
HORIZON = 24 * 3600.0
CAPACITY = 10_000
MAX_ID = 200  # characters: forges send a GUID


class Headers(Protocol):
    """The request headers, as ``http.server`` gives them (a test passes a dict)."""

    def get(self, name: str) -> str | None:
        """The header's value, None if absent."""


def delivery_id(headers: Headers) -> str | None:
    """The request's delivery id from the first of :data:`DELIVERY_HEADERS` present."""
    for name in DELIVERY_HEADERS:
        value = headers.get(name)
        if value and value.strip() and len(value) <= MAX_ID:
            return value.strip()
    return None


class Deliveries:
    """Accepted delivery ids and body digests, each for ``horizon`` seconds. Thread-safe."""

    def __init__(
        self,
        horizon: float = HORIZON,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.horizon, self.capacity, self.clock = horizon, capacity, clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # key -> when, oldest first
        self._lock = threading.Lock()

    def first(self, delivery: str, body: bytes) -> bool:
        """True, and remembered, when neither ``delivery`` nor ``body`` was accepted within
        the horizon; False (nothing remembered) for a replay."""
        keys = ("id:" + delivery, "body:" + hashlib.sha256(body).hexdigest())
        now = self.clock()
        with self._lock:
            while self._seen and (
                now - next(iter(self._seen.values())) > self.horizon
                or len(self._seen) > 2 * self.capacity - len(keys)
            ):
                self._seen.popitem(last=False)
            if any(key in self._seen for key in keys):
                return False
            for key in keys:
                self._seen[key] = now
            return True


__all__ = ["CAPACITY", "DELIVERY_HEADERS", "HORIZON", "Deliveries", "delivery_id"]
