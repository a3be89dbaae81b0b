"""The audit: git history joined with the apply records.

Per environment, every commit that changed its file (who asked, who merged, when),
and its fate from the records that count: applied (when, by which reconciler,
verified how), superseded, refused (from a fresh verification) or pending; records
that do not count and gaps in the chain are listed as such.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from reconciler.engine.reconcile import Mode, Status
from reconciler.errors import ReconcilerError
from reconciler.evidence import records
from reconciler.forge import Forge, ForgeError, open_forge
from reconciler.git import reverted_commit
from reconciler.git.history import History
from reconciler.model import Record
from reconciler.proposals.workflows import AUDIT_LIMIT, WorkflowRefused, Workflows, release_in
from reconciler.registry import Registry, canonical_repository, parse_reference
from reconciler.verify import Refused
from reconciler.verify.inforce import PolicyInForce

log = logging.getLogger(__name__)


_MR = (
    re.compile(r"See merge request (\S+![0-9]+)"),  # GitLab
    re.compile(r"Merge pull request (#[0-9]+)"),  # GitHub merge commit
    re.compile(r"\((#[0-9]+)\)\s*$", re.M),  # GitHub squash
)
# --------------------------------------------------------------------------- audit


class EntryKind(StrEnum):
    """What an audit line is about."""

    PROMOTION = "promotion"
    ROLLBACK = "rollback"  # a revert, or a commit that says it rolls back
    OTHER = "other"  # changed the file, not the release
    RECORD = "record"  # a record that does not count, or a gap in the chain


class EntryStatus(StrEnum):
    """The fate of a commit, joined from the records that count (or a record's problem)."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"  # a later applied commit carried it
    PENDING = "pending"
    REFUSED = "refused"  # from a fresh verification
    UNTRUSTED = "untrusted"  # a record whose signature does not count
    GAP = "gap"  # records before it are gone (garbage-collected)
    MISSING = "missing"  # the record this host last trusted is not in the chain


@dataclass
class AuditEntry:
    """One line of the audit: a commit that changed an environment's release and what became
    of it (from the records that count), or a record that does not count."""

    environment: str
    commit: str
    author: str
    committer: str
    time: str
    subject: str
    merge_request: str | None
    release_from: str | None
    release_to: str | None
    kind: EntryKind
    status: EntryStatus
    applied_at: str | None = None
    applied_by: str | None = None
    signer: str | None = None  # the key that signed the record that applied it
    verified: dict[str, str] = field(default_factory=dict)
    record: str | None = None
    reason: str | None = None
    governance: list[str] = field(default_factory=list)  # the rules the record says held
    forge: dict[str, Any] | None = None  # the merge request as the forge's API says

    def to_json(self) -> dict[str, object]:
        """The documented ``audit --json`` shape of one entry."""
        return {
            "environment": self.environment,
            "commit": self.commit,
            "author": self.author,
            "committer": self.committer,
            "time": self.time,
            "subject": self.subject,
            "mergeRequest": self.merge_request,
            "from": self.release_from,
            "to": self.release_to,
            "kind": self.kind,
            "status": self.status,
            "appliedAt": self.applied_at,
            "appliedBy": self.applied_by,
            "signer": self.signer,
            "verified": self.verified,
            "record": self.record,
            "reason": self.reason,
            "governance": self.governance,
            "forge": self.forge,
        }


def merge_request(message: str) -> str | None:
    """The merge request a commit came through (GitLab ``group/repo!12``, GitHub ``#12``),
    read from the message the forge wrote, or None."""
    for pattern in _MR:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


def commit_kind(message: str, before: str | None, after: str | None) -> EntryKind:
    """How a commit changed the release: a rollback (a revert, or made by ``rollback``), a
    promotion, or ``other`` when the release stayed."""
    if before == after:
        return EntryKind.OTHER
    if reverted_commit(message) or "Rollback-Environment:" in message:
        return EntryKind.ROLLBACK
    return EntryKind.PROMOTION


def _forge(policy: PolicyInForce) -> Forge | None:
    """The forge of the policy in force, None when there is none or it cannot be used
    (the audit then stands on git alone, which stays the source of truth)."""
    if policy.forge is None:
        return None
    try:
        return open_forge(policy.forge)
    except ForgeError as exc:
        log.warning("audit without the forge: %s", exc.message)
        return None


def _from_forge(forge: Forge, commit: str) -> dict[str, Any] | None:
    """Number, author, approvers and merger of the merge request that merged ``commit``."""
    try:
        mr = forge.merged_for(commit)
        if mr is None:
            return None
        approvers = list(forge.approvers(mr.number))
    except ForgeError as exc:
        log.warning("audit: the forge did not say who merged %s: %s", commit[:12], exc.message)
        return None
    return {
        "number": mr.number,
        "url": mr.url,
        "author": mr.author,
        "approvers": approvers,
        "mergedBy": mr.merged_by,
    }


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit(
    flows: Workflows, envs: Sequence[str] | None = None, since: datetime | None = None
) -> list[AuditEntry]:
    """A timeline per environment: commits that changed its file, joined with its records."""
    reconciler = flows.reconciler
    candidate = reconciler.load()
    policy = reconciler.in_force(candidate)
    state = policy.trusted  # targets and record keys as the policy in force has them
    names = sorted(envs or state.environments)
    unknown = [n for n in names if n not in state.environments]
    if unknown:
        raise WorkflowRefused(f"unknown environment(s): {', '.join(unknown)}")
    history = flows.history
    head = str(flows.source.resolve(reconciler.ref).id)
    registries = reconciler.registries(policy)
    forge = _forge(policy)
    asked_forge: dict[str, dict[str, Any] | None] = {}
    timelines: dict[str, list[AuditEntry]] = {}
    anomalies_of: dict[str, list[AuditEntry]] = {}
    for name in names:
        path = state.environments[name].file
        target = parse_reference(state.target_of(name))
        chain, anomalies = _records(registries.get(target), target.repository, name, policy)
        anchor = reconciler.anchors.get(canonical_repository(state.target_of(name)), name)
        if anchor is not None and all(r.digest != anchor.digest for r in chain):
            why = (
                f"the last record this host trusted, {anchor.digest}, is not in the registry's "
                "chain (a deleted head, a rewind or a forged history)"
            )
            anomalies.insert(
                0,
                AuditEntry(name, anchor.commit, "", "", "", why, None, None, None,
                           EntryKind.RECORD, EntryStatus.MISSING, record=anchor.digest),
            )  # fmt: skip
        mine: list[AuditEntry] = []
        # The mainline (first-parent) history: with merge requests, each merge is one
        # change, asked for by the branch's author and approved by whoever merged it.
        for commit in history.mainline(head, AUDIT_LIMIT):
            if since is not None and commit.time < since.timestamp():
                break
            parents = commit.parents
            if history.entry(commit.id, path) == (
                history.entry(parents[0], path) if parents else None
            ):
                continue
            before = release_in(history, parents[0], path, name) if parents else None
            after = release_in(history, commit.id, path, name)
            asked = history.commit(parents[1]) if len(parents) > 1 else commit  # a merge
            text = f"{asked.message}\n{commit.message}"
            entry = AuditEntry(
                environment=name,
                commit=commit.id,
                author=asked.author,
                committer=commit.committer,
                time=_when(commit.time),
                subject=asked.message.splitlines()[0] if asked.message else "",
                merge_request=merge_request(commit.message),
                release_from=before,
                release_to=after,
                kind=commit_kind(text, before, after),
                status=EntryStatus.PENDING,
            )
            if forge is not None:
                if commit.id not in asked_forge:  # a commit that changed several files
                    asked_forge[commit.id] = _from_forge(forge, commit.id)
                entry.forge = asked_forge[commit.id]
                if entry.forge is not None:
                    entry.merge_request = f"!{entry.forge['number']}"
            mine.append(entry)
        _settle(mine, chain, history)
        timelines[name] = mine
        anomalies_of[name] = anomalies
    # Only an environment whose newest change is unapplied needs a verification now, to
    # tell a refused change from a pending one.
    waiting = [
        name for name, mine in timelines.items() if mine and mine[0].status is EntryStatus.PENDING
    ]
    if waiting:
        for outcome in reconciler.run(Mode.PLAN, waiting, state=candidate).outcomes:
            if outcome.status in (Status.REFUSED, Status.FAILED) and outcome.error is not None:
                newest = timelines[outcome.environment][0]
                newest.status, newest.reason = EntryStatus.REFUSED, outcome.error.message
    return [entry for name in names for entry in [*anomalies_of[name], *timelines[name]]]


def _records(
    registry: Registry, repository: str, env: str, policy: PolicyInForce
) -> tuple[list[Record], list[AuditEntry]]:
    """The records of ``env`` that count (signed by the record keys in force, when there
    are any), and entries for those that do not: untrusted (forged, unsigned) records
    and gaps."""
    trust = records.Trust(policy.record_keys)
    anomalies: list[AuditEntry] = []

    def anomaly(commit: str, when: str, status: EntryStatus, why: str, digest: str | None) -> None:
        anomalies.append(
            AuditEntry(env, commit, "", "", when, why, None, None, None, EntryKind.RECORD, status,
                       record=digest)
        )  # fmt: skip

    try:
        chain = records.walk(registry, repository, records.read_head(registry, repository, env))
    except ReconcilerError as exc:
        anomaly("", "", EntryStatus.UNTRUSTED, exc.message, None)
        return [], anomalies
    trusted = []
    for record in chain.records:
        try:
            trusted.append(records.verify(record, trust))
        except Refused as exc:
            anomaly(record.commit, record.time, EntryStatus.UNTRUSTED, exc.reason, record.digest)
    if chain.gap is not None:
        why = f"the records before {chain.gap} are gone (garbage-collected?): history has a gap"
        anomaly("", "", EntryStatus.GAP, why, chain.gap)
    return trusted, anomalies


def governance_of(record: Record) -> list[str]:
    """What the record's receipt says of governance (README: Governance): who signed and
    approved the change, and what the freeze windows said."""
    receipt = record.receipt or {}
    said = receipt.get("governance")
    notes = [str(n) for n in said.get("notes", [])] if isinstance(said, dict) else []
    freeze = receipt.get("freeze")
    return notes + ([str(freeze)] if freeze else [])


def _settle(entries: list[AuditEntry], chain: Sequence[Record], history: History) -> None:
    """Join commits (newest first) with apply records.

    A record applies the newest commit of the timeline that its own commit contains;
    older commits it contains were superseded before anyone applied them; the rest stay
    pending.
    """
    for record in reversed(chain):  # oldest first: a later record of the same commit re-applies
        entry = next((e for e in entries if history.descends(record.commit, e.commit)), None)
        if entry is not None and entry.record is None:
            entry.status, entry.applied_at = EntryStatus.APPLIED, record.time
            entry.applied_by, entry.verified = record.reconciler, dict(record.verified)
            entry.signer = record.signer
            entry.record = record.digest
            entry.governance = governance_of(record)
    applied = [e.commit for e in entries if e.status is EntryStatus.APPLIED]
    for entry in entries:
        if entry.status is not EntryStatus.APPLIED and any(
            history.descends(a, entry.commit) for a in applied
        ):
            entry.status = EntryStatus.SUPERSEDED
