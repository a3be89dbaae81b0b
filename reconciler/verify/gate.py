"""The gate: everything one environment's change must pass, in order, before a tag moves.

(0) records: an environment that relies on records (requires, prune) has signed ones.
(1) history: the commit descends from the last applied one (no force-push back in time).
(2) commits: with signed commits in force, every change since the last applied commit
    is signed by the policy of that commit, or undone by a later signed commit.
(3) hazards: the release has none, or the environment accepts them (with an OpenVEX
    attestation rule in force, judged at (5) together with the VEX statements).
(4) requires: each required environment ran exactly the digests this one would apply.
(5) artifacts: each manifest hashes to its digest; signatures and attestations satisfy
    the environment's policy and, always, the catalog's own signers.

The gate takes values and does no I/O (the pass gathers the facts); like python-tuf's
trusted set it guards its own order: a step called out of order is a bug and raises,
and :meth:`Gate.receipt` exists only after all five passed. Every refusal is a
:class:`Refused` naming the rule, the commit, file or record, and the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from reconciler.model import DesiredState, Policy, Record
from reconciler.verify.attestations import VexStatement, is_openvex, judge_vex, latest
from reconciler.verify.commits import CommitFact, CommitTrail
from reconciler.verify.errors import Refused, Rule, Waiting
from reconciler.verify.signatures import Evidence, Match, judge

UNVERIFIED = "UNVERIFIED (insecureSkipSignatures)"
_ROLE_SUFFIX = {"environment": "", "catalog": " (catalog signers)"}


class Step(IntEnum):
    NEW = 0
    RECORDS = 1
    HISTORY = 2
    COMMITS = 3
    HAZARDS = 4
    REQUIRES = 5
    ARTIFACTS = 6


@dataclass(frozen=True)
class ArtifactReceipt:
    """How one digest was verified: the manifests hashed and the signatures accepted."""

    item: str
    digest: str
    manifests: int
    signatures: tuple[tuple[str, Match], ...] = ()  # (whose policy, the match)
    unverified: bool = False  # the environment skipped its own policy (insecureSkipSignatures)
    attestations: tuple[tuple[str, Match], ...] = ()  # (whose policy, the match) per rule
    vex: Mapping[str, str] = field(default_factory=dict)  # vulnerability -> VEX status in force

    @property
    def tlog_ignored(self) -> bool:
        return any(m.insecure_ignore_tlog for _, m in (*self.signatures, *self.attestations))

    def describe(self) -> str:
        parts = [f"integrity ({self.manifests} manifests)"]
        if self.unverified:
            parts.append(UNVERIFIED)
        for role, match in self.signatures:
            parts.append(f"{'signed' if role == 'environment' else 'catalog signer'}: {match}")
        for _, match in self.attestations:
            parts.append(f"attested {match.predicate_type}: {match}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "item": self.item,
            "digest": self.digest,
            "manifests": self.manifests,
            "unverified": self.unverified,
            "signatures": [{"policy": role, **m.to_json()} for role, m in self.signatures],
        }
        if self.attestations:
            doc["attestations"] = [{"policy": role, **m.to_json()} for role, m in self.attestations]
        if self.vex:
            doc["vex"] = dict(sorted(self.vex.items()))
        if self.tlog_ignored:
            doc["insecureIgnoreTlog"] = True
        return doc


@dataclass(frozen=True)
class Receipt:
    """What the gate checked for one environment's change: stored as JSON in the record."""

    environment: str
    commit: str
    descends_from: str | None  # the last applied commit (None: first apply)
    commits: tuple[tuple[str, str], ...] = ()  # (commit, "signed by P" / "undone by C")
    hazards: Mapping[str, str] = field(default_factory=dict)  # accepted with allowHazards
    requires: tuple[tuple[str, str], ...] = ()  # (environment, digest of its record)
    artifacts: tuple[ArtifactReceipt, ...] = ()

    @property
    def signers(self) -> list[str]:
        return sorted(
            {how.removeprefix("signed by ") for _, how in self.commits if "signed" in how}
        )

    def verified(self) -> dict[str, str]:
        """digest -> how it was verified, for people (and records' ``verified``)."""
        suffix = f"; commits signed by {', '.join(self.signers)}" if self.signers else ""
        return {a.digest: a.describe() + suffix for a in self.artifacts}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "environment": self.environment,
            "commit": self.commit,
            "descendsFrom": self.descends_from,
            "commits": [{"commit": c, "how": how} for c, how in self.commits],
            "hazards": dict(sorted(self.hazards.items())),
            "requires": [{"environment": e, "record": d} for e, d in self.requires],
            "artifacts": [a.to_json() for a in self.artifacts],
        }


class Gate:
    """One environment's verification; raises :class:`Refused` at the first rule that fails."""

    def __init__(self, state: DesiredState, env: str, last: Record | None) -> None:
        self.state, self.name, self.last = state, env, last
        self.env = state.environments[env]
        self._step = Step.NEW
        self._commits: tuple[tuple[str, str], ...] = ()
        self._hazards: Mapping[str, str] = {}
        self._requires: list[tuple[str, str]] = []
        self._artifacts: tuple[ArtifactReceipt, ...] = ()

    def _enter(self, step: Step) -> None:
        if self._step != step - 1:
            raise RuntimeError(f"gate: {step.name.lower()} checked after {self._step.name.lower()}")

    # (0) ----------------------------------------------------------------- records

    def records(self, signed: bool) -> None:
        """``signed``: records count only when signed by a key in force.

        ``requires`` and ``prune`` act on what other records say; unsigned, anyone with
        push to the registry could say it.

        Raises:
            Refused: the environment relies on records that are not signed.
        """
        self._enter(Step.RECORDS)
        uses = [w for w, on in (("requires", self.env.requires), ("prune", self.env.prune)) if on]
        if uses and not signed and not self.state.settings.records_insecure_unsigned:
            raise Refused(
                Rule.RECORDS,
                f"{self.name} uses {' and '.join(uses)}, which trusts apply records, but no "
                "settings.records.keys are in force: anyone with push to the registry "
                "could write those records",
                "add settings.records.keys and run the reconciler with --record-key (reconciler "
                "keygen), or set settings.records.insecureUnsigned: true to accept unsigned "
                "records knowingly",
            )
        self._step = Step.RECORDS

    # (1) ----------------------------------------------------------------- history

    def history(self, descends: bool) -> None:
        """``descends``: the commit is the last applied one or descends from it.

        Raises:
            Refused: a force-push back in time.
        """
        self._enter(Step.HISTORY)
        if self.last is not None and not descends:
            raise Refused(
                Rule.HISTORY,
                f"commit {self.state.commit[:12]} does not descend from {self.last.commit[:12]}, "
                f"the last commit applied to {self.name}",
                "roll back with a new commit (git revert), not by moving the branch back",
            )
        self._step = Step.HISTORY

    # (2) ----------------------------------------------------------------- commits

    def commits(self, trail: CommitTrail) -> None:
        """Judge the commits since the last applied one by the policy in force then.

        Raises:
            Refused: a commit changing an input is neither signed by an allowed signer
                nor undone by a later signed commit.
        """
        self._enter(Step.COMMITS)
        self._commits = judge_commits(trail)
        self._step = Step.COMMITS

    # (3) ----------------------------------------------------------------- hazards

    def hazards(self) -> None:
        """Raises: Refused: the release has hazards and ``allowHazards`` is not set."""
        self._enter(Step.HAZARDS)
        release = self.state.release_of(self.name)
        # With a VEX attestation rule in force, the hazards are judged with the VEX
        # statements at step (5), where they may clear one: they are only noted here.
        if release.hazardous and not self.env.allow_hazards and not self._vex_rules():
            self._refuse_hazards(release.hazards)
        self._hazards = dict(release.hazards)
        self._step = Step.HAZARDS

    def _refuse_hazards(self, hazards: Mapping[str, str], cleared: Iterable[str] = ()) -> None:
        release = self.state.release_of(self.name)
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(hazards.items()))
        also = f" (VEX cleared {', '.join(sorted(cleared))})" if cleared else ""
        raise Refused(
            Rule.HAZARDS,
            f"release {release.name} of {self.env.catalog} has hazards ({listed}){also}",
            f"promote another release, or set allowHazards: true in {self.env.file} "
            "to accept them knowingly",
        )

    # (4) ----------------------------------------------------------------- requires

    def requires(self, ran: Callable[[str], Iterable[Record]]) -> None:
        """``ran(env)``: that environment's trusted records, newest first (may be lazy).

        Satisfied when a record of the required environment, for this catalog, shows
        every digest this environment would apply: a rebuilt digest under an old
        release name has not been through the chain.

        Raises:
            Waiting: a required environment never ran these digests (yet).
        """
        self._enter(Step.REQUIRES)
        wanted = {t.item: t.digest for t in self.state.tags[self.name]}
        for name in self.env.requires:
            newest: Record | None = None
            for record in ran(name):
                newest = newest or record
                if record.catalog == self.env.catalog and set(wanted.values()) <= set(
                    record.tags.values()
                ):
                    self._requires.append((name, record.digest))
                    break
            else:
                raise Waiting(
                    Rule.REQUIRES, self._unmet(name, newest, wanted), self._wait_hint(name)
                )
        self._step = Step.REQUIRES

    def _unmet(self, name: str, newest: Record | None, wanted: Mapping[str, str]) -> str:
        release = self.env.release
        if newest is None:
            return f"{name} has no apply record yet, so {release} cannot reach {self.name}"
        ran = set(newest.tags.values())
        missing = ", ".join(f"{i} {d[:19]}" for i, d in sorted(wanted.items()) if d not in ran)
        return (
            f"{name} runs {newest.release} and never ran the digests {self.name} would apply "
            f"({missing}); its last apply record: commit {newest.commit[:12]}"
        )

    def _wait_hint(self, name: str) -> str:
        return f"apply {self.env.release} to {name} first (same catalog entry, same digests)"

    # (5) ----------------------------------------------------------------- artifacts

    def artifacts(
        self, manifests: Mapping[str, int], evidence: Mapping[str, Sequence[Evidence]]
    ) -> None:
        """``manifests``: digest -> manifests hashed (integrity, checked by the pass);
        ``evidence``: digest -> the signatures and attestations found for it.

        The environment's policy may be skipped only by its own ``insecureSkipSignatures``;
        the catalog's ``signers`` hold regardless, unless the catalog itself opts out.
        Each policy needs a signature and, per attestation rule, an attestation. With an
        OpenVEX rule, the hazards noted at step (3) are judged here: ``affected``
        statements add hazards, ``not_affected``/``fixed`` for every digest clear one.

        Raises:
            Refused: (``signatures``) a policy is not satisfied; (``hazards``) hazards
                remain after VEX and ``allowHazards`` is not set.
        """
        self._enter(Step.ARTIFACTS)
        release = self.state.release_of(self.name)
        receipts = []
        vex: dict[str, list[VexStatement]] = {}
        for tag in self.state.tags[self.name]:
            what = f"{self.name}/{tag.item}"
            found = evidence.get(tag.digest, ())
            matched: list[tuple[str, Match]] = []
            attested: list[tuple[str, Match]] = []
            statements = vex.setdefault(tag.digest, [])
            for role, policy in self._policies():
                judged = judge(policy, tag.digest, found, what + _ROLE_SUFFIX[role])
                matched.append((role, judged.signature))
                attested += [(role, m) for m in judged.attestations]
                statements += judged.vex
            receipts.append(
                ArtifactReceipt(
                    tag.item,
                    tag.digest,
                    manifests[tag.digest],
                    tuple(matched),
                    self.state.policies[self.name].insecure_skip_signatures,
                    tuple(attested),
                    {name: s.status for name, s in sorted(latest(statements).items())},
                )
            )
        if self._vex_rules():
            verdict = judge_vex(vex, release.hazards)
            hazards = {k: v for k, v in self._hazards.items() if k not in verdict.cleared}
            hazards.update(verdict.hazards)
            if hazards and not self.env.allow_hazards:
                self._refuse_hazards(hazards, verdict.cleared)
            self._hazards = hazards
        self._artifacts = tuple(receipts)
        self._step = Step.ARTIFACTS

    def _policies(self) -> list[tuple[str, Policy]]:
        """The policies that hold for this environment: its own unless it opted out, and
        the catalog's signers unless the catalog opted out."""
        policy = self.state.policies[self.name]
        signers = self.state.catalogs[self.env.catalog].signers
        held = [] if policy.insecure_skip_signatures else [("environment", policy)]
        if signers is not None and not signers.insecure_skip_signatures:
            held.append(("catalog", signers))
        return held

    def _vex_rules(self) -> bool:
        return any(
            is_openvex(rule.predicate_type)
            for _, policy in self._policies()
            for rule in policy.attestations
        )

    def needs_evidence(self) -> bool:
        """Whether any signature policy applies (else the pass need not look for any)."""
        policy = self.state.policies[self.name]
        signers = self.state.catalogs[self.env.catalog].signers
        return not policy.insecure_skip_signatures or (
            signers is not None and not signers.insecure_skip_signatures
        )

    # ------------------------------------------------------------------ receipt

    def receipt(self) -> Receipt:
        if self._step != Step.ARTIFACTS:
            raise RuntimeError(f"gate: no receipt after only {self._step.name.lower()}")
        return Receipt(
            environment=self.name,
            commit=self.state.commit,
            descends_from=self.last.commit if self.last else None,
            commits=self._commits,
            hazards=self._hazards,
            requires=tuple(self._requires),
            artifacts=self._artifacts,
        )


def judge_commits(trail: CommitTrail) -> tuple[tuple[str, str], ...]:
    """(commit, how it passed) for each commit that changes an input; Refused otherwise.

    An unsigned commit is excused only by a later signed commit that descends from it
    and whose tree holds, at every path it changed, what its parents held: undone by
    content, whatever the messages say. The newest offending commit is named.
    """
    if trail.signers_path is None:
        return ()
    if trail.first_apply:
        if not trail.commits:
            raise Refused(Rule.COMMITS, "there is no commit to judge")
        newest = trail.commits[0]
        if newest.signer is None:
            raise Refused(
                Rule.COMMITS,
                f"{newest.problem} (a first apply trusts the history up to the newest "
                "commit only if that commit is signed)",
                newest.hint,
            )
        return ((newest.commit.id, f"signed by {newest.signer}"),)
    ancestors = _ancestors(trail.commits)
    judged: list[tuple[str, str]] = []
    for fact in trail.commits:
        if not fact.changes:
            continue
        if fact.signer is not None:
            judged.append((fact.commit.id, f"signed by {fact.signer}"))
            continue
        undo = next((s for s in trail.commits if _undoes(s, fact, ancestors)), None)
        if undo is not None:
            judged.append((fact.commit.id, f"undone by {undo.commit.short}"))
            continue
        changed = ", ".join(sorted(fact.changes)[:5]) + (", …" if len(fact.changes) > 5 else "")
        since = f" as of commit {trail.policy_commit[:12]}" if trail.policy_commit else ""
        raise Refused(
            Rule.COMMITS,
            f"{fact.problem} (it changes {changed}; the policy in force is "
            f"{trail.signers_path}{since})",
            (fact.hint + "; or " if fact.hint else "")
            + "undo it with a signed commit that restores those files (reconciler rollback, "
            "git revert -S)",
        )
    return tuple(judged)


def _ancestors(commits: Sequence[CommitFact]) -> dict[str, set[str]]:
    """Each commit's ancestors among ``commits`` (newest first, so walk them reversed)."""
    known: dict[str, set[str]] = {}
    for fact in reversed(commits):
        mine: set[str] = set()
        for parent in fact.commit.parents:
            if parent in known:
                mine |= {parent} | known[parent]
        known[fact.commit.id] = mine
    return known


def _undoes(later: CommitFact, earlier: CommitFact, ancestors: Mapping[str, set[str]]) -> bool:
    return (
        later.signer is not None
        and earlier.commit.id in ancestors.get(later.commit.id, set())
        and all(later.entries.get(p) in before for p, before in earlier.changes.items())
    )
