"""What the daemon tells: the events (which transitions are told), their bodies in
each format (generic JSON, Slack, Teams), and the HMAC that signs them with a
timestamp, and how a receiver checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from reconciler.engine.reconcile import EnvOutcome, Status
from reconciler.errors import ReconcilerError
from reconciler.model import DesiredState, Drift, NotificationKind
from reconciler.verify import Refused, Waiting

log = logging.getLogger(__name__)


SIGNATURE_HEADER = "X-Reconciler-Signature-256"
EVENT_HEADER = "X-Reconciler-Event"
DELIVERY_HEADER = "X-Reconciler-Delivery"
TIMESTAMP_HEADER = "X-Reconciler-Timestamp"
TOLERANCE = 300.0  # seconds a receiver accepts a signed timestamp away from its clock
SOURCE = "(git)"  # the git source, as an "environment" of failed / recovered events


@dataclass(frozen=True)
class Notification:
    """One thing that happened, as every format reports it."""

    kind: NotificationKind
    summary: str  # one line for people
    environment: str | None = None
    catalog: str | None = None
    release: str | None = None
    commit: str | None = None
    reason: str | None = None
    rule: str | None = None
    branch: str | None = None
    changes: tuple[Mapping[str, object], ...] = ()
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def document(self, reconciler: str, repository: str) -> dict[str, Any]:
        """The generic JSON body of the event; the other formats are built from it."""
        return {
            "id": self.id,
            "event": self.kind,
            "time": self.time,
            "summary": self.summary,
            "environment": self.environment,
            "catalog": self.catalog,
            "release": self.release,
            "commit": self.commit,
            "reason": self.reason,
            "rule": self.rule,
            "branch": self.branch,
            "changes": [dict(c) for c in self.changes],
            "repository": repository,
            "reconciler": reconciler,
        }


_SLACK_MARK = {
    "applied": ":white_check_mark:",
    "drift": ":warning:",
    "refused": ":no_entry:",
    "failed": ":x:",
    "recovered": ":large_green_circle:",
    "proposed": ":inbox_tray:",
}


def render(event: Notification, fmt: str, reconciler: str, repository: str) -> tuple[bytes, str]:
    """(body, content type) of ``event`` in ``fmt``."""
    doc = event.document(reconciler, repository)
    if fmt == "slack":
        text = f"{_SLACK_MARK.get(event.kind, '')} {event.summary}".strip()
        if event.reason and event.reason not in event.summary:
            text += f"\n> {event.reason.splitlines()[0]}"
        return json.dumps({"text": text}).encode(), "application/json"
    if fmt == "cloudevents":
        envelope = {
            "specversion": "1.0",
            "id": event.id,
            "source": repository or "reconciler",
            "type": f"dev.reconciler.{event.kind}",
            "subject": event.environment or event.catalog,
            "time": event.time,
            "datacontenttype": "application/json",
            "data": doc,
        }
        return json.dumps(envelope).encode(), "application/cloudevents+json"
    return json.dumps(doc).encode(), "application/json"


def sign(secret: bytes, body: bytes, timestamp: str) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256(secret, timestamp.body)>``."""
    return hmac_sha256(secret, timestamp.encode("ascii") + b"." + body)


def hmac_sha256(secret: bytes, data: bytes) -> str:
    """``sha256=<hex HMAC-SHA256>``, the form GitHub, Gitea and our notifications share."""
    return "sha256=" + hmac.new(secret, data, hashlib.sha256).hexdigest()


class BadSignature(ReconcilerError):
    """A notification whose signature or timestamp does not verify: drop it."""


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> None:
    """What a receiver runs on each notification (docs/daemon.md has it for others).

    (1) both headers are there, (2) the signature is the HMAC of ``timestamp.body``,
    compared in constant time, (3) the timestamp is within ``tolerance`` seconds of
    ``now``. A receiver should also refuse an ``X-Reconciler-Delivery`` it has seen
    within the tolerance: together that refuses every replay.

    Raises:
        BadSignature: any step failed.
    """
    if not secret or timestamp is None or signature is None:
        raise BadSignature("unsigned: no secret, timestamp or signature")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise BadSignature(f"{TIMESTAMP_HEADER} is not unix seconds")
    expected = sign(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise BadSignature("the signature does not match the body and timestamp")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance:
        raise BadSignature(f"signed {age:.0f} s ago: outside the {tolerance:.0f} s window")


def shown(url: str) -> str:
    """A receiver as logs name it: scheme and host, nothing that could be a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    return f"{parts.scheme}://{host}{port}/…"


# --------------------------------------------------------------------------- classification


def _changes(outcome: EnvOutcome) -> tuple[dict[str, object], ...]:
    plan = outcome.plan
    return tuple(
        {
            "tag": f"{c.repository}:{c.tag}",
            "action": c.action.value,
            "from": c.from_digest,
            "to": c.to_digest,
            "drift": c.drift.value,
        }
        for c in (plan.changes if plan else ())
    )


def classify(state: DesiredState, o: EnvOutcome) -> Notification | None:
    """The event an outcome is, before de-duplication (None: nothing to tell)."""
    env = state.environments.get(o.environment)
    base: dict[str, Any] = {
        "environment": o.environment,
        "catalog": env.catalog if env else None,
        "release": env.release if env else None,
        "commit": state.commit,
    }
    name, at = o.environment, state.commit[:12]
    changes = _changes(o)
    foreign = o.plan is not None and any(c.drift is Drift.FOREIGN for c in o.plan.changes)
    if o.status is Status.APPLIED:
        same_commit = o.receipt is not None and o.receipt.descends_from == state.commit
        if changes and not o.note and (same_commit or foreign):
            tags = ", ".join(f"{c['tag']} ({c['drift']})" for c in changes)
            summary = f"{name}: corrected drift at commit {at}: {tags}"
            return Notification(NotificationKind.DRIFT, summary, changes=changes, **base)
        moved = len(o.applied.moved) if o.applied else 0
        what = f"{base['catalog']} {base['release']}"
        summary = f"{name}: applied {what} at commit {at} ({moved} tags moved)"
        if o.note:
            summary += f": {o.note}"
        return Notification(NotificationKind.APPLIED, summary, changes=changes, **base)
    applied_here = o.record is not None and o.record.commit == state.commit
    if o.status is Status.PENDING and changes and o.receipt is None and (applied_here or foreign):
        tags = ", ".join(f"{c['tag']} ({c['drift']})" for c in changes)
        return Notification(
            NotificationKind.DRIFT,
            f"{name}: drift found at commit {at}: {tags}",
            changes=changes,
            **base,
        )
    if o.status in (Status.REFUSED, Status.FAILED) and o.error is not None:
        if isinstance(o.error, Waiting):
            return None
        kind = NotificationKind.REFUSED if isinstance(o.error, Refused) else NotificationKind.FAILED
        reason = o.error.message.splitlines()[0]
        rule = str(o.error.rule) if isinstance(o.error, Refused) else None
        return Notification(kind, f"{name}: {reason}", reason=o.error.message, rule=rule, **base)
    return None
