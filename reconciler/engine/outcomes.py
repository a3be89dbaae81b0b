"""What a pass reports: per environment its status, plan, receipt, record and
error; for the pass, the trusted state it reconciled towards and the judgement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.engine.apply import ApplyResult
from reconciler.errors import ReconcilerError, Transient
from reconciler.model import DesiredState, Environment, EnvPlan, Record
from reconciler.verify import Receipt
from reconciler.verify.inforce import Judgement

log = logging.getLogger(__name__)


class Mode(StrEnum):
    """How far a pass goes: ``status`` stops after the plan, ``plan`` after the gate.
    Only ``apply`` writes anything: tags, records, verification summaries, local anchors."""

    STATUS = "status"  # observe and plan: desired vs actual, no verification
    PLAN = "plan"  # observe, plan and verify; write nothing
    APPLY = "apply"


class Status(StrEnum):
    """What became of one environment in a pass: ``refused`` waits for a person, ``failed``
    is retried when the error is transient (:attr:`EnvOutcome.transient`)."""

    IN_SYNC = "in-sync"
    PENDING = "pending"  # changes verified, not applied (plan, dry run)
    APPLIED = "applied"
    REFUSED = "refused"  # verification said no: a person must act
    FAILED = "failed"  # an error; transient ones retry
    SUSPENDED = "suspended"


@dataclass
class EnvOutcome:
    """One environment's result, filled in step by step, so a failure still shows how far
    the pass got (the record observed, the plan, the receipt)."""

    environment: str
    status: Status
    plan: EnvPlan | None = None
    error: ReconcilerError | None = None
    record: Record | None = None
    verified: dict[str, str] = field(default_factory=dict)
    applied: ApplyResult | None = None
    note: str = ""  # the release transition, e.g. a rollback and the commit it reverts
    receipt: Receipt | None = None
    warnings: list[str] = field(default_factory=list)  # applied, but something was left

    @property
    def transient(self) -> bool:
        """The error is worth retrying later (network, 429, 5xx): no person need act."""
        return isinstance(self.error, Transient)


@dataclass
class PassResult:
    """``state`` is the trusted state the pass reconciled towards (see ``judgement``)."""

    state: DesiredState
    outcomes: list[EnvOutcome]
    judgement: Judgement | None = None
    proposed: DesiredState | None = None  # the newest commit's state, when not in force

    def environment(self, name: str) -> Environment:
        """An environment as shown: as in force, else as the refused commit proposes it."""
        for state in (self.state, self.proposed):
            if state is not None and name in state.environments:
                return state.environments[name]
        raise KeyError(name)

    def unverified(self, name: str) -> bool:
        """The environment skips its own signature policy (shown as UNVERIFIED)."""
        for state in (self.state, self.proposed):
            if state is not None and name in state.policies:
                return state.policies[name].insecure_skip_signatures
        return False

    @property
    def ok(self) -> bool:
        """No environment was refused or failed: the command succeeded."""
        return all(o.status not in (Status.REFUSED, Status.FAILED) for o in self.outcomes)

    @property
    def in_sync(self) -> bool:
        """Every environment was as desired (or suspended): nothing pending or applied."""
        return all(o.status in (Status.IN_SYNC, Status.SUSPENDED) for o in self.outcomes)
