"""The gate: everything one environment's change must pass, in order, before a tag moves.

(0) records: an environment that relies on records (requires, prune) has signed ones.
(1) history: the commit descends from the last applied one (no force-push back in time).
(2) commits: the repository's judgement put this commit in force (every commit since
    the last judged one signed under the policy in force, a clean merge, or undone:
    :mod:`reconciler.verify.inforce`).
(3) governance: each change to the environment since its last apply is signed by one of
    its signers and, with ``approvals: 2``, approved by another, under the rules in force
    before the change (:mod:`reconciler.verify.governance`, G1-G2).
(4) hazards: the release has none, or the environment accepts them (with an OpenVEX
    attestation rule in force, judged at (7) together with the VEX statements).
(5) requires: each required environment ran exactly the digests this one would apply
    (with ``soak``: for that long, G3).
(6) freeze: no freeze window is open, or the change is a rollback it allows, or an
    override with four eyes (G4).
(7) artifacts: each manifest hashes to its digest; signatures and attestations satisfy
    the environment's policy and, always, the catalog's own signers.

The gate takes values and does no I/O (the pass gathers the facts); like python-tuf's
trusted set it guards its own order: a step called out of order is a bug and raises,
and :meth:`Gate.receipt` exists only after all of them passed. Every refusal is a
:class:`Refused` naming the rule, the commit, file or record, and the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

from reconciler.model import DesiredState, FreezeWindow, Policy, Record
from reconciler.verify.attestations import VexStatement, is_openvex, judge_vex, latest
from reconciler.verify.errors import Refused, Rule, Waiting
from reconciler.verify.governance import Verdict, check_freeze, soaked
from reconciler.verify.inforce import Judgement
from reconciler.verify.signatures import Evidence, Match, Verifier, judge

UNVERIFIED = "UNVERIFIED (insecureSkipSignatures)"


class Role(StrEnum):
    """Whose policy a signature or attestation satisfied (as stored in receipts)."""

    ENVIRONMENT = "environment"  # the environment's verify (or settings.verify)
    CATALOG = "catalog"  # the catalog's own signers, which hold regardless


_ROLE_SUFFIX = {Role.ENVIRONMENT: "", Role.CATALOG: " (catalog signers)"}


class Step(IntEnum):
    """The gate's checks in order: each may run only right after the one before it."""

    NEW = 0
    RECORDS = 1
    HISTORY = 2
    COMMITS = 3
    GOVERNANCE = 4
    HAZARDS = 5
    REQUIRES = 6
    FREEZE = 7
    ARTIFACTS = 8


@dataclass(frozen=True)
class ArtifactReceipt:
    """How one digest was verified: the manifests hashed and the signatures accepted."""

    item: str
    digest: str
    manifests: int
    signatures: tuple[tuple[Role, Match], ...] = ()  # (whose policy, the match)
    unverified: bool = False  # the environment skipped its own policy (insecureSkipSignatures)
    attestations: tuple[tuple[Role, Match], ...] = ()  # (whose policy, the match) per rule
    vex: Mapping[str, str] = field(default_factory=dict)  # vulnerability -> VEX status in force

    @property
    def tlog_ignored(self) -> bool:
        """A signature or attestation was accepted without a transparency-log entry: said loudly."""
        return any(m.insecure_ignore_tlog for _, m in (*self.signatures, *self.attestations))

    def describe(self) -> str:
        """How the digest was verified, in one line for people (records' ``verified``)."""
        parts = [f"integrity ({self.manifests} manifests)"]
        if self.unverified:
            parts.append(UNVERIFIED)
        for role, match in self.signatures:
            parts.append(f"{'signed' if role is Role.ENVIRONMENT else 'catalog signer'}: {match}")
        for _, match in self.attestations:
            parts.append(f"attested {match.predicate_type}: {match}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The receipt's entry for this digest, as stored in the record."""
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
    trust: str = ""  # where trust started: "trust root FILE", "trust on first use" (loud)
    hazards: Mapping[str, str] = field(default_factory=dict)  # accepted with allowHazards
    requires: tuple[tuple[str, str], ...] = ()  # (environment, digest of its record)
    artifacts: tuple[ArtifactReceipt, ...] = ()
    governance: Verdict | None = None  # who changed and approved it (None: no rules)
    freeze: str = ""  # what the freeze windows said ("" none open)

    @property
    def signers(self) -> list[str]:
        """The principals that signed the commits of the trail."""
        return sorted(
            {how.removeprefix("signed by ") for _, how in self.commits if "signed" in how}
        )

    def levels(self) -> tuple[str, ...]:
        """The governance rules that held, as the VSA's ``verifiedLevels`` name them."""
        said = []
        if self.governance is not None and self.governance.governance.signers:
            said.append("RECONCILER_GOVERNANCE_SIGNERS")
        if self.governance is not None and self.governance.governance.approvals > 1:
            said.append("RECONCILER_GOVERNANCE_FOUR_EYES")
        soaked = self.governance.governance.soak if self.governance else {}
        if any(e in soaked for e, _ in self.requires):
            said.append("RECONCILER_GOVERNANCE_SOAK")
        if self.freeze:
            said.append("RECONCILER_GOVERNANCE_FREEZE")
        return tuple(said)

    def verified(self) -> dict[str, str]:
        """digest -> how it was verified, for people (and records' ``verified``)."""
        suffix = f"; commits signed by {', '.join(self.signers)}" if self.signers else ""
        return {a.digest: a.describe() + suffix for a in self.artifacts}

    def to_json(self) -> dict[str, Any]:
        """As stored in the apply record (its ``receipt``), with its own ``schema``."""
        return {
            "schema": 1,
            "environment": self.environment,
            "commit": self.commit,
            "descendsFrom": self.descends_from,
            "commits": [{"commit": c, "how": how} for c, how in self.commits],
            "trust": self.trust,
            "hazards": dict(sorted(self.hazards.items())),
            "requires": [{"environment": e, "record": d} for e, d in self.requires],
            "artifacts": [a.to_json() for a in self.artifacts],
            **({"governance": self.governance.to_json()} if self.governance else {}),
            **({"freeze": self.freeze} if self.freeze else {}),
        }


class Gate:
    """One environment's verification; raises :class:`Refused` at the first rule that fails."""

    def __init__(self, state: DesiredState, env: str, last: Record | None) -> None:
        self.state, self.name, self.last = state, env, last
        self.env = state.environments[env]
        self._step = Step.NEW
        self._commits: tuple[tuple[str, str], ...] = ()
        self._trust = ""
        self._hazards: Mapping[str, str] = {}
        self._requires: list[tuple[str, str]] = []
        self._artifacts: tuple[ArtifactReceipt, ...] = ()
        self._verdict: Verdict | None = None
        self._freeze = ""

    def _enter(self, step: Step) -> None:
        if self._step != step - 1:
            raise RuntimeError(f"gate: {step.name.lower()} checked after {self._step.name.lower()}")

    # (0) ----------------------------------------------------------------- records

    def records(self, signed: bool, insecure_unsigned: bool = False) -> None:
        """``signed``: records count only when signed by a key in force;
        ``insecure_unsigned``: the policy in force accepts unsigned records knowingly.

        ``requires`` and ``prune`` act on what other records say; unsigned, anyone with
        push to the registry could say it.

        Raises:
            Refused: the environment relies on records that are not signed.
        """
        self._enter(Step.RECORDS)
        uses = [w for w, on in (("requires", self.env.requires), ("prune", self.env.prune)) if on]
        if uses and not signed and not insecure_unsigned:
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

    def commits(self, judgement: Judgement, trail: tuple[tuple[str, str], ...] = ()) -> None:
        """``judgement``: the repository's verdict on its newest commit; ``trail``: how
        the commit in force was judged (for the receipt).

        Raises:
            Refused: this commit is not the one in force.
        """
        self._enter(Step.COMMITS)
        if judgement.policy.commit != self.state.commit:
            raise judgement.refusal or Refused(
                Rule.COMMITS, f"commit {self.state.commit[:12]} is not in force"
            )
        self._commits = trail
        root = judgement.policy.root
        self._trust = judgement.first_contact or (
            "trust on first use" if root.first_use else f"trust root {root.origin}"
        )
        self._step = Step.COMMITS

    # (3) ----------------------------------------------------------------- governance

    def governance(self, verdict: Verdict | None) -> None:
        """``verdict``: how the change since the last apply passed (G1) and (G2), judged by
        :class:`~reconciler.verify.governance.GovernanceJudge` (which raises its refusal);
        None: the environment has no governance to judge by."""
        self._enter(Step.GOVERNANCE)
        self._verdict = verdict
        self._step = Step.GOVERNANCE

    # (4) ----------------------------------------------------------------- hazards

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

    # (5) ----------------------------------------------------------------- requires

    def requires(self, ran: Callable[[str], Iterable[Record]], now: datetime) -> None:
        """``ran(env)``: that environment's trusted records, newest first (may be lazy);
        ``now``: the reconciler's clock, for ``soak``.

        Satisfied when a record of the required environment, for this catalog, shows
        every digest this environment would apply: a rebuilt digest under an old
        release name has not been through the chain. With ``soak``, the records show
        it ran them for that long (:func:`~reconciler.verify.governance.soaked`).

        Raises:
            Waiting: a required environment never ran these digests (yet), or not for
                its soak time (``until``: when it will have).
        """
        self._enter(Step.REQUIRES)
        wanted = {t.item: t.digest for t in self.state.tags[self.name]}
        soak = self.env.governance.soak
        for name in self.env.requires:
            if name in soak:
                digests = set(wanted.values())
                found = soaked(name, ran(name), self.env.catalog, digests, soak[name], now)
                self._requires.append((name, found))
                continue
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

    # (6) ----------------------------------------------------------------- freeze

    def freeze(self, windows: Sequence[FreezeWindow], now: datetime, rollback: bool) -> None:
        """``windows``: the environment's and ``settings.freeze`` in force; ``rollback``:
        the change reverts an earlier promotion (by content). Correcting drift towards the
        last apply record is not a change: a freeze never stops repair.

        Raises:
            Waiting: (freeze) a window is open (``until``: when it closes).
        """
        self._enter(Step.FREEZE)
        desired = {t.tag: t.digest for t in self.state.tags[self.name]}
        if self.last is None or dict(self.last.tags) != desired:  # a repair is no change
            verdict = self._verdict or Verdict(self.name, None)
            self._freeze = check_freeze(self.name, windows, now, rollback, verdict)
        self._step = Step.FREEZE

    # (7) ----------------------------------------------------------------- artifacts

    def artifacts(
        self,
        manifests: Mapping[str, int],
        evidence: Mapping[str, Sequence[Evidence]],
        verifier: Verifier | None = None,
    ) -> None:
        """``manifests``: digest -> manifests hashed (integrity, checked by the pass);
        ``evidence``: digest -> the signatures and attestations found for it;
        ``verifier``: checks one piece of evidence (the pass's remembers its answers).

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
            matched: list[tuple[Role, Match]] = []
            attested: list[tuple[Role, Match]] = []
            statements = vex.setdefault(tag.digest, [])
            for role, policy in self._policies():
                judged = judge(policy, tag.digest, found, what + _ROLE_SUFFIX[role], verifier)
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

    def _policies(self) -> list[tuple[Role, Policy]]:
        """The policies that hold for this environment: its own unless it opted out, and
        the catalog's signers unless the catalog opted out."""
        policy = self.state.policies[self.name]
        signers = self.state.catalogs[self.env.catalog].signers
        held = [] if policy.insecure_skip_signatures else [(Role.ENVIRONMENT, policy)]
        if signers is not None and not signers.insecure_skip_signatures:
            held.append((Role.CATALOG, signers))
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

    def _governed(self) -> bool:
        """Governance applied to this change: there is something to put in the receipt."""
        v = self._verdict
        return v is not None and bool(v.changes or v.governance.governed or v.governance.soak)

    def receipt(self) -> Receipt:
        """What was checked, handed out only after every step passed.

        Raises:
            RuntimeError: a step was skipped (a bug, not a refusal).
        """
        if self._step != Step.ARTIFACTS:
            raise RuntimeError(f"gate: no receipt after only {self._step.name.lower()}")
        return Receipt(
            environment=self.name,
            commit=self.state.commit,
            descends_from=self.last.commit if self.last else None,
            commits=self._commits,
            trust=self._trust,
            hazards=self._hazards,
            requires=tuple(self._requires),
            artifacts=self._artifacts,
            governance=self._verdict if self._governed() else None,
            freeze=self._freeze,
        )
