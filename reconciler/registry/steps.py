"""Retrying a whole step (a copy, a tag move, a read, a record write) until a deadline.

The transport retries one request; some failures only a step can recover from (an
upload session the registry forgot, a request whose attempts all met a flaky moment).
A step is re-run on :class:`~reconciler.errors.Transient` errors with backoff until
the deadline (``RetryPolicy.step_budget`` from the start), except on
:class:`HostDown` (the host answers nothing: waiting will not help this pass) and on
the caller's ``final`` types (e.g. a tag another writer moved).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from reconciler.errors import Transient
from reconciler.registry.config import RetryPolicy
from reconciler.registry.errors import HostDown

log = logging.getLogger(__name__)
T = TypeVar("T")


class StepRetry:
    """Re-runs steps on Transient errors (not HostDown, not ``final``) until a deadline."""

    def __init__(
        self,
        budget: float = RetryPolicy.step_budget,
        sleep: Callable[[float], None] = time.sleep,
        final: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.deadline = time.monotonic() + budget
        self.sleep = sleep
        self.final: tuple[type[BaseException], ...] = (HostDown, *final)

    def __call__(self, what: str, step: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return step()
            except self.final:
                raise
            except Transient as exc:
                failures += 1
                delay = random.uniform(0.5, 1.0) * min(8.0, 0.5 * 2**failures)
                if time.monotonic() + delay > self.deadline:
                    raise
                log.info("%s: %s; retrying in %.1fs", what, exc.message, delay)
                self.sleep(delay)
