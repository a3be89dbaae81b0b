"""Refusals, the rules they name, and what a pass does about each kind of error.

A leaf of the verify package, so every check can raise without import cycles.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from reconciler.errors import Stalled, Transient


class Rule(StrEnum):
    """The rules of the gate, in the order it applies them; names appear in output and metrics."""

    RECORDS = "records"  # records count only when signed by a key in force
    HISTORY = "history"  # the commit descends from the last applied one
    COMMITS = "commit-signature"  # every change since then is signed by the policy in force
    HAZARDS = "hazards"
    REQUIRES = "requires"  # the required environments ran exactly these digests
    INTEGRITY = "integrity"
    SIGNATURES = "signatures"
    # Governance (reconciler.verify.governance), judged under the rules in force:
    SIGNERS = "environment-signers"  # a change to an environment is signed by its signers
    APPROVALS = "four-eyes"  # and approved by another of them (approvals: 2)
    SOAK = "soak"  # the required environment ran these digests for that long
    FREEZE = "freeze"  # no change inside a freeze window


class Refused(Stalled):
    """Verification refused a change: a person must act (the hint says how)."""

    def __init__(self, rule: Rule, message: str, hint: str = "") -> None:
        super().__init__(f"refused ({rule}): {message}", hint)
        self.rule = rule
        self.reason = message


class Waiting(Refused):
    """Refused for now, but another environment's progress (``requires``) or time (soak,
    a freeze window's end: ``until``) will satisfy the rule: checked again every pass and,
    with ``until``, at that time; never backed off."""

    def __init__(
        self, rule: Rule, message: str, hint: str = "", until: datetime | None = None
    ) -> None:
        super().__init__(rule, message, hint)
        self.until = until


class Disposition(StrEnum):
    """What happens next to an environment whose pass raised an error."""

    WAIT = "wait"  # re-check every pass
    RETRY = "retry"  # back off and retry: the error may go away by itself
    STALL = "stall"  # a person must act: retry only when the inputs change


def disposition(error: BaseException) -> Disposition:
    """The one switch from an error to what the CLI and the daemon do about it."""
    if isinstance(error, Waiting):
        return Disposition.WAIT
    if isinstance(error, Transient):
        return Disposition.RETRY
    if isinstance(error, Stalled):
        return Disposition.STALL
    return Disposition.RETRY  # unclassified (a bug): retry with backoff, never spin
