"""Health and backoff per environment (and for the git source): what to retry, when."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.errors import Stalled

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


# --------------------------------------------------------------------------- backoff


class Health(StrEnum):
    """Where an environment (or the git source) stands, and so when it is tried again; the
    health metrics export it."""

    OK = "ok"
    WAITING = "waiting"  # on another environment: retried every pass
    BACKOFF = "backoff"  # transient error: retried after a growing delay
    STALLED = "stalled"  # a person must act: retried on new input or the safety retry


@dataclass(frozen=True)
class BackoffPolicy:
    """Seconds. Transient delays are ``uniform(0, min(cap, base * 2**(failures-1)))``."""

    base: float = 5.0
    cap: float = 300.0
    stalled_retry: float = 900.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or self.stalled_retry <= 0:
            raise Stalled(
                "invalid backoff settings",
                "need 0 < --backoff-base <= --backoff-cap and --stalled-retry > 0",
            )


class Backoff:
    """When one environment (or the git source) is due again, from what it last did.

    Pure: the caller passes ``now`` (a monotonic clock) and the ``inputs`` fingerprint
    (commit and policy), so unit tests drive it with a fake clock. Every method that
    records an outcome returns True when it is a transition worth logging: the first
    failure, a new reason, a change of health, a recovery.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        self._rand = rand
        self.health = Health.OK
        self.failures = 0  # consecutive transient failures
        self.reason = ""
        self.not_before = 0.0
        self.inputs: Hashable = None

    def due(self, now: float, inputs: Hashable = None) -> bool:
        """Whether to run now. New ``inputs`` (None: unknown yet) end any wait at once."""
        if self.health in (Health.OK, Health.WAITING):
            return True
        if inputs is not None and inputs != self.inputs:
            return True
        return now >= self.not_before

    def succeeded(self) -> bool:
        """A pass worked: all waits end. True when this is a recovery."""
        recovered = self.health is not Health.OK
        self.health, self.failures, self.reason, self.not_before = Health.OK, 0, "", 0.0
        return recovered

    def waiting(self, inputs: Hashable, reason: str) -> bool:
        """Waiting on another environment (``requires``): retried every pass, no backoff."""
        return self._enter(Health.WAITING, inputs, reason, 0.0)

    def transient(self, now: float, inputs: Hashable, reason: str) -> bool:
        """A transient failure: the next try is after a random delay that doubles per failure,
        up to the cap (full jitter, so replicas and environments do not retry in step)."""
        self.failures += 1
        ceiling = min(self.policy.cap, self.policy.base * 2 ** min(self.failures - 1, 60))
        return self._enter(Health.BACKOFF, inputs, reason, now + self._rand(0.0, ceiling))

    def stalled(self, now: float, inputs: Hashable, reason: str) -> bool:
        """A person must act: tried again on new ``inputs``, else only after ``stalled_retry``."""
        self.failures = 0
        return self._enter(Health.STALLED, inputs, reason, now + self.policy.stalled_retry)

    def _enter(self, health: Health, inputs: Hashable, reason: str, not_before: float) -> bool:
        # Transient messages carry attempt counts and the like; only the kind matters.
        changed = health is not self.health or (
            health is not Health.BACKOFF and reason != self.reason
        )
        self.health, self.inputs, self.reason, self.not_before = health, inputs, reason, not_before
        return changed
