"""One environment's pass: observe -> plan -> gate -> apply -> record.

The pass shares what several environments need (tag lists, manifests, evidence,
trusted record heads) through :class:`Once`, so each is read once per pass.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.engine.apply import ApplyResult, apply_changes
from reconciler.engine.outcomes import EnvOutcome, Mode, Status
from reconciler.engine.plan import (
    CatalogIndex,
    claimed_tags,
    owned_after,
    plan_environment,
)
from reconciler.errors import GitSourceError, LeaseLost, ReconcilerError
from reconciler.evidence import records, vsa
from reconciler.evidence.anchor import Anchor
from reconciler.evidence.signing import SigningKey
from reconciler.model import (
    RECORD_TAG_PREFIX,
    DesiredState,
    DesiredTag,
    EnvPlan,
    Observed,
    Policy,
    Record,
)
from reconciler.registry import (
    Manifest,
    Registry,
    canonical_repository,
    parse_reference,
)
from reconciler.registry.steps import StepRetry
from reconciler.verify import Gate, Receipt, Refused, Rule, check_integrity
from reconciler.verify.inforce import Judgement
from reconciler.verify.material import Verified
from reconciler.verify.signatures import Evidence, find_evidence, key_id, verify

if TYPE_CHECKING:
    from reconciler.engine.reconcile import Reconciler

log = logging.getLogger(__name__)


T = TypeVar("T")

CHAIN_LIMIT = 200  # records read back when looking for an older release of a requirement


class Once:
    """Computes each key's value once, even when several environment threads ask at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[object, Future[Any]] = {}

    def get(self, key: object, compute: Callable[[], T]) -> T:
        """The value, computed once; a failure is not kept: the next caller tries anew.

        So one environment's transient failure of a shared lookup is its own, and the
        environments waiting on that lookup each make their own attempt.
        """
        while True:
            with self._lock:
                future = self._futures.get(key)
                owner = future is None
                if future is None:
                    future = self._futures[key] = Future()
            if owner:
                try:
                    value = compute()
                except BaseException as exc:
                    with self._lock:
                        del self._futures[key]
                    future.set_exception(exc)
                    raise
                future.set_result(value)
                return value
            if future.exception() is None:  # waits; a failure: make our own attempt
                result: T = future.result()
                return result


class Pass:
    """The work of one pass; caches what several environments share."""

    pool: ThreadPoolExecutor

    def __init__(
        self,
        owner: Reconciler,
        state: DesiredState,
        judgement: Judgement,
        mode: Mode,
        only_tags: Mapping[str, Collection[str]],
    ) -> None:
        self.owner, self.state, self.mode, self.only_tags = owner, state, mode, only_tags
        self.judgement, self.policy = judgement, judgement.policy
        self.persist = mode is Mode.APPLY  # read-only passes write no anchor
        self.registries = owner.registries(self.policy)
        self.index = CatalogIndex.of(state)
        self.claimed = claimed_tags(state)
        self.once = Once()
        self.heads: dict[str, Record | None] = {}
        self.now = owner.clock()  # one instant for the pass's rules (soak, freeze)

    def registry_of(self, repository: str) -> tuple[Registry, str]:
        """The client for ``repository``'s host, and the repository's name on that host."""
        ref = parse_reference(repository)
        return self.registries.get(ref), ref.repository

    def environment(self, name: str) -> EnvOutcome:
        """One environment's outcome. Every error is caught and classified here, a bug included,
        so that the other environments of the pass still converge."""
        outcome = EnvOutcome(name, Status.FAILED)
        try:
            self._environment(name, outcome)
        except Refused as exc:
            outcome.status, outcome.error = Status.REFUSED, exc
            log.debug("%s: %s", name, exc.message)
        except ReconcilerError as exc:
            outcome.status, outcome.error = Status.FAILED, exc
            log.debug("%s: %s", name, exc.message)
        except Exception as exc:  # a bug must not stop the other environments
            log.exception("%s: internal error", name)
            outcome.status = Status.FAILED
            outcome.error = ReconcilerError(f"internal error: {exc.__class__.__name__}: {exc}")
        return outcome

    def _environment(self, name: str, outcome: EnvOutcome) -> None:
        """observe -> plan -> gate -> apply -> record."""
        observed = self.observe(name)
        observed_at = time.monotonic()
        outcome.record = observed.record
        plan = plan_environment(self.state, name, observed, self.index, self.claimed)
        outcome.plan = plan
        if plan.in_sync and not plan.suspended:
            outcome.status = Status.IN_SYNC
            return
        if self.mode is Mode.STATUS:
            outcome.status = Status.SUSPENDED if plan.suspended else Status.PENDING
            return
        gate = Gate(self.state, name, observed.record)
        gate.records(self.trust.signed, self.policy.settings.records_insecure_unsigned)
        self.judge_history(gate, observed.record)
        if plan.suspended:  # honoured only when the change that suspends passed the gate
            outcome.status = Status.SUSPENDED
            return
        outcome.note = self.transition(name, observed.record)
        receipt = self.verify(gate, name)
        outcome.receipt, outcome.verified = receipt, receipt.verified()
        if self.mode is Mode.PLAN:
            outcome.status = Status.PENDING
            # Environments that require this one see it as applied, as they would
            # in a real pass, which runs in the same promotion order.
            self.heads[name] = self.new_record(name, observed, ApplyResult(), receipt)
            return
        key = self.signing_key(name)  # before any tag moves: the record must be writable
        registry, _ = self.registry_of(self.state.target_of(name))
        host = self.registries.settings.for_host(registry.name)
        applied = apply_changes(
            plan.changes,
            self.registry_of,
            self.manifest,
            host.concurrency,
            deadline=host.retry.step_budget,
            observed_at=observed_at,
            fence=self.owner.fence,
            executor=self.pool,
        )
        outcome.applied = applied
        try:
            if key is not None:
                self.summarise(name, plan, receipt, key)
            outcome.record = self.record(name, observed, applied, receipt, key)
        except ReconcilerError as exc:
            raise _record_not_written(exc, applied) from exc
        self.heads[name] = outcome.record
        outcome.status = Status.APPLIED
        if outcome.note:
            log.info("%s", outcome.note)
        for tag in applied.unsupported:
            outcome.warnings.append(
                f"not pruned: {tag} (this registry has no tag-delete API; set prune: false "
                "or delete the tag by hand)"
            )

    # ------------------------------------------------------------------ observe

    def observe(self, name: str) -> Observed:
        """Tag digests and the newest record of one environment.

        One tag listing per repository and pass tells which tags exist, so absent tags
        cost no request; the compare-and-swap in apply catches anything that appears
        after the listing.
        """
        repository = self.state.target_of(name)
        registry, repo = self.registry_of(repository)
        if name in self.only_tags:
            return self.observe_tags(name, set(self.only_tags[name]))
        retry = self.step_retry(registry)
        present = self.once.get(
            ("tags", repository),
            lambda: frozenset(retry(f"list {repository}", partial(registry.list_tags, repo))),
        )
        record = self.trusted_head(name, present)
        self.heads[name] = record
        tags = {t.tag for t in self.state.tags[name]}
        if record is not None and self.state.environments[name].prune:
            tags |= set(record.owned)
        found = sorted(t for t in tags if t in present)
        digests = self.pool.map(
            lambda tag: retry(f"read {tag}", partial(registry.resolve, repo, tag)), found
        )
        observed: dict[str, str | None] = dict.fromkeys(sorted(tags))
        observed.update(zip(found, digests, strict=True))
        return Observed(name, observed, record)

    def observe_tags(self, name: str, only: set[str]) -> Observed:
        """A targeted observation: these tags are read, the rest are taken as desired."""
        registry, repo = self.registry_of(self.state.target_of(name))
        record = self.trusted_head(name)
        self.heads[name] = record
        observed: dict[str, str | None] = {t.tag: t.digest for t in self.state.tags[name]}
        checked = sorted(only & set(observed))
        retry = self.step_retry(registry)
        digests = self.pool.map(
            lambda tag: retry(f"read {tag}", partial(registry.resolve, repo, tag)), checked
        )
        observed.update(zip(checked, digests, strict=True))
        return Observed(name, observed, record)

    def step_retry(self, registry: Registry, *final: type[BaseException]) -> StepRetry:
        """Reads and writes outside the tag moves are retried as the moves are."""
        budget = self.registries.settings.for_host(registry.name).retry.step_budget
        return StepRetry(budget, final=final)

    def ran(self, name: str) -> Iterator[Record]:
        """``name``'s records newest first: the head, then (read only if asked) its chain."""
        head = self.head_of(name)
        if head is None:
            return
        yield head

        def chain() -> records.Chain:
            registry, repo = self.registry_of(self.state.target_of(name))
            return records.walk(registry, repo, head, CHAIN_LIMIT, self.owner.record_cache)

        # The chain is hash-linked from a trusted head: each link is vouched for by it.
        yield from self.once.get(("chain", name, head.digest), chain).records[1:]

    def head_of(self, name: str) -> Record | None:
        """The newest record of ``name`` as this pass knows it: the one it observed or wrote (in
        a plan, the one it would write), else the trusted head, read once for the pass."""
        if name not in self.heads:
            self.heads[name] = self.once.get(("head", name), partial(self.trusted_head, name))
        return self.heads[name]

    # ------------------------------------------------------------------ records

    def trusted_head(self, name: str, present: frozenset[str] | None = None) -> Record | None:
        """The newest record of ``name`` that counts (:class:`records.RecordTrust`), or
        Refused (rule records); an applying pass moves the local anchor to it."""
        repository = self.state.target_of(name)
        registry, repo = self.registry_of(repository)
        anchored = canonical_repository(repository)
        head = self.record_trust.head(registry, repo, name, present, anchored)
        if head is not None and self.persist:
            self.owner.anchors.set(anchored, name, Anchor(head.digest, head.commit))
        return head

    @property
    def trust(self) -> records.Trust:
        """The record keys in force: one set for the repository, from its policy."""
        return records.Trust(self.policy.record_keys)

    @property
    def record_trust(self) -> records.RecordTrust:
        """The one judge of which records count, sharing this pass's :class:`Once`."""
        return records.RecordTrust(
            self.trust, self.owner.anchors, self.owner.record_cache, self.once.get
        )

    def signing_key(self, name: str) -> SigningKey | None:
        """The key the new record is signed with; Refused when records must be signed and
        it cannot be (no key, or one the keys in force do not list)."""
        key = self.owner.record_key
        in_force = self.policy.record_keys
        if not in_force:
            return key
        if key is None:
            raise Refused(
                Rule.RECORDS,
                f"apply records of {name} must be signed (record keys are in force), but this "
                "reconciler has no record key",
                "pass --record-key FILE or set RECONCILER_RECORD_KEY (reconciler keygen makes one)",
            )
        if key.keyid not in {key_id(k) for k in in_force}:
            raise Refused(
                Rule.RECORDS,
                f"this reconciler's record key {key.keyid} is not among the record keys in "
                "force: its records would not count",
                "add its public key to settings.records.keys in a signed commit, or to the "
                "trust root (docs/trust.md: rotation)",
            )
        return key

    # ------------------------------------------------------------------ verify

    def judge_history(self, gate: Gate, last: Record | None) -> None:
        """Gate steps (1) and (2): where the commit comes from, and whether the
        repository's judgement put it in force."""
        history = self.owner.history
        gate.history(last is None or history.descends(self.state.commit, last.commit))
        gate.commits(self.judgement, self.owner.trail_of(self.judgement))
        base = last.commit if last is not None else None
        for orphan in self.orphans(gate.name, last):  # its removal must have met its rules
            self.owner.governance.judge(orphan.environment, orphan.commit, self.state.commit)
        gate.governance(self.owner.governance.judge(gate.name, base, self.state.commit))

    def orphans(self, name: str, last: Record | None) -> list[Record]:
        """Trusted heads, in ``name``'s target repository, of environments the state no
        longer declares that own a tag ``name`` desires and its own record (``last``) does
        not: taking such a tag over is a change to the removed environment, judged by its
        governance (an untrusted head owns nothing)."""
        desired = {t.tag for t in self.state.tags[name]}
        if last is not None and desired <= set(last.owned):
            return []
        repository = self.state.target_of(name)
        registry, repo = self.registry_of(repository)
        retry = self.step_retry(registry)
        present = self.once.get(
            ("tags", repository),
            lambda: frozenset(retry(f"list {repository}", partial(registry.list_tags, repo))),
        )
        found = []
        for tag in sorted(present):
            other = tag.removeprefix(RECORD_TAG_PREFIX)
            if other == tag or other in self.state.environments or other.startswith("sha256-"):
                continue
            try:
                head = self.record_trust.head(
                    registry, repo, other, present, canonical_repository(repository)
                )
            except Refused:
                continue
            if head is not None and desired & set(head.owned):
                found.append(head)
        return found

    def verify(self, gate: Gate, name: str) -> Receipt:
        """Gate steps (3) to (5) for every digest the environment would point at.

        Raises:
            Refused: a rule said no (Waiting: a required environment is not there yet).
        """
        gate.hazards()
        gate.requires(self.ran, self.now)
        windows = (*gate.env.governance.freeze, *self.policy.settings.freeze)
        # Whether it is a rollback is read from the records only when a window could care.
        gate.freeze(windows, self.now, bool(windows) and self.rollback(name, gate.last))
        needs_evidence = gate.needs_evidence()

        def read(tag: DesiredTag) -> tuple[int, list[Evidence]]:
            source = tag.source_repository
            hashed = self.once.get(
                ("integrity", source, tag.digest),
                partial(check_integrity, partial(self.manifest, source), tag.digest, source),
            )
            if not needs_evidence:
                return hashed, []
            repositories = self.signature_repositories(name, source)
            return hashed, [e for r in repositories for e in self.evidence(r, tag.digest)]

        # In parallel: the first environments of a pass wait for these reads, and one after
        # another they left the registry idle for a second of a 1,000-tag converge.
        tags = self.state.tags[name]
        manifests: dict[str, int] = {}
        evidence: dict[str, list[Evidence]] = {}
        for tag, (hashed, found) in zip(tags, self.pool.map(read, tags), strict=True):
            manifests[tag.digest] = hashed
            if needs_evidence:
                evidence[tag.digest] = found
        gate.artifacts(manifests, evidence, self.verified)
        receipt = gate.receipt()
        if self.state.policies[name].insecure_skip_signatures:
            log.warning(
                "%s: applying digests UNVERIFIED by its policy (insecureSkipSignatures)", name
            )
        if any(a.tlog_ignored for a in receipt.artifacts):
            log.warning(
                "%s: key signatures accepted WITHOUT a transparency-log entry (insecureIgnoreTlog)",
                name,
            )
        return receipt

    def verified(
        self, policy: Policy, digest: str, item: Evidence, predicate_types: frozenset[str] | None
    ) -> Verified:
        """One piece of evidence against one policy, checked once per pass: environments
        that share a digest and a policy share the answer (a refusal is checked again)."""
        key = ("verified", policy, digest, item, predicate_types)
        return self.once.get(key, partial(verify, policy, digest, item, predicate_types))

    def signature_repositories(self, name: str, source: str) -> list[str]:
        """Where signatures of ``source``'s digests are looked for: the artifact's own
        repository, then each ``signatures.repository`` of the policies in force
        (cosign's ``COSIGN_REPOSITORY``)."""
        env = self.state.environments[name]
        policies = (self.state.policies[name], self.state.catalogs[env.catalog].signers)
        named = {p.signatures_repository for p in policies if p and p.signatures_repository}
        return [source, *sorted(named - {source})]

    def manifest(self, repository: str, digest: str) -> Manifest:
        """A manifest by digest, read once per pass (content addressed: it cannot change)."""

        def read() -> Manifest:
            registry, repo = self.registry_of(repository)
            return registry.get_manifest(repo, digest)

        return self.once.get(("manifest", repository, digest), read)

    def evidence(self, repository: str, digest: str) -> list[Evidence]:
        """The signatures and attestations of ``digest`` in ``repository``, looked up once per
        pass (environments promoting the same release share them)."""

        def find() -> list[Evidence]:
            registry, repo = self.registry_of(repository)
            return find_evidence(registry, repo, digest)

        return self.once.get(("evidence", repository, digest), find)

    def transition(self, name: str, previous: Record | None) -> str:
        """How the release changes: a promotion, or a rollback naming the reverted commit."""
        env = self.state.environments[name]
        if previous is None:
            return f"{name} first applied at {env.release}"
        if (previous.catalog, previous.release) == (env.catalog, env.release):
            return ""
        reverted = self.once.get(
            ("reverted", previous.commit, env.file),
            partial(self._reverted, previous.commit, env.file),
        )
        if reverted:
            return (
                f"{name} rolled back from {previous.release} to {env.release}, "
                f"reverting {reverted[:12]}"
            )
        return f"{name} promoted from {previous.release} to {env.release}"

    def rollback(self, name: str, previous: Record | None) -> bool:
        """The change returns ``name`` to the digests it ran right before its current ones,
        as its signed records show: what a freeze window lets through unless it says
        ``allowRollback: false``."""
        if previous is None:
            return False
        desired = {t.tag: t.digest for t in self.state.tags[name]}
        for record in self.ran(name):
            if dict(record.tags) != dict(previous.tags):
                return dict(record.tags) == desired
        return False

    def _reverted(self, since: str, path: str) -> str | None:
        """The commit undone (by content) by the newest change of ``path`` after ``since``."""
        history = self.owner.history
        try:
            changed = history.touching(history.between(since, self.state.commit), [path])
            return history.reverted(changed[0], [path]) if changed else None
        except (GitSourceError, ValueError):
            return None

    # ------------------------------------------------------------------ record

    def record(
        self,
        name: str,
        observed: Observed,
        applied: ApplyResult,
        receipt: Receipt,
        key: SigningKey | None,
    ) -> Record:
        """Write the apply record, once every move is confirmed, and move the local anchor to it.

        Raises:
            RecordConflict: another writer moved the record head since it was observed.
        """
        record = self.new_record(name, observed, applied, receipt)
        record = replace(record, note=self.transition(name, observed.record))
        registry, repo = self.registry_of(record.repository)
        previous = observed.record
        expected = previous.digest if previous else None
        tries = 0

        def write() -> str:
            nonlocal tries, record
            tries += 1
            record = replace(record, term=self.owner.fence.check(f"writing the record of {name}"))
            self.record_trust.admit(record, previous)
            try:
                return records.write(registry, repo, record, expected, key, self.owner.record_cache)
            except records.RecordConflict:
                # A retry finding the head at what an earlier try of this step wrote.
                head = records.read_head(registry, repo, name) if tries > 1 else None
                if head is not None and (head.commit, head.time) == (record.commit, record.time):
                    return head.digest
                raise

        # Its own step: a flaky moment after the tags moved must not lose the record.
        digest = self.step_retry(registry, records.RecordConflict, LeaseLost, Refused)(
            "write the record", write
        )
        anchored = canonical_repository(record.repository)
        self.owner.anchors.set(anchored, name, Anchor(digest, record.commit))  # applying
        return replace(record, digest=digest, signer=key.keyid if key else None)

    def summarise(self, name: str, plan: EnvPlan, receipt: Receipt, key: SigningKey) -> None:
        """A signed verification summary on every artifact whose tag this pass moved."""
        env = self.state.environments[name]
        moved = {c.to_digest for c in plan.changes if c.to_digest is not None}
        policy = f"{self.owner.source.display}@{self.state.commit}#{env.file}"
        verified_at = self.owner.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        steps: list[Callable[[], str]] = []
        for artifact in receipt.artifacts:
            tag = next(t for t in self.state.tags[name] if t.item == artifact.item)
            if artifact.digest not in moved:
                continue
            registry, repo = self.registry_of(tag.repository)
            statement = vsa.summary(
                subject=artifact.digest,
                resource=tag.reference,
                policy_uri=policy,
                evidence=artifact.to_json(),
                verified_at=verified_at,
                levels=receipt.levels(),
            )
            subject = self.manifest(tag.source_repository, artifact.digest)
            self.owner.fence.check(f"summarising {artifact.digest[:19]}")
            steps.append(
                partial(
                    self.step_retry(registry),
                    f"summarise {artifact.digest[:19]}",
                    partial(vsa.attach_summary, registry, repo, subject, statement, key),
                )
            )
        list(self.pool.map(lambda step: step(), steps))  # artifacts at once; each one's lock

    def new_record(
        self, name: str, observed: Observed, applied: ApplyResult, receipt: Receipt
    ) -> Record:
        """The record of this pass: the desired tags, the tags still owned (what prune may touch
        later) and the receipt. A plan pass builds it too, as the head required environments see."""
        env = self.state.environments[name]
        repository = self.state.target_of(name)
        desired = {t.tag: t.digest for t in self.state.tags[name]}
        previous = observed.record
        gone = {t for t, d in observed.tags.items() if d is None and t not in desired}
        return Record(
            environment=name,
            commit=self.state.commit,
            tree=self.state.tree,
            catalog=env.catalog,
            release=env.release,
            repository=repository,
            tags=desired,
            owned=owned_after(
                previous.owned if previous else {}, desired, set(applied.deleted), gone
            ),
            verified=receipt.verified(),
            time=self.owner.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            reconciler=self.owner.identity,
            previous=previous.digest if previous else None,
            policy=self.state.policy_fingerprint(name),
            receipt=receipt.to_json(),
        )


def _record_not_written(error: ReconcilerError, applied: ApplyResult) -> ReconcilerError:
    """``error`` (its class kept: retry or stall) saying that the tags did move."""
    said = copy.copy(error)
    said.message = (
        f"the tags are in place ({len(applied.moved)} moved, {len(applied.deleted)} pruned) "
        f"but the apply record could not be written: {error.message}"
    )
    said.hint = "the tags are in place; the next pass writes the record" + (
        f" ({error.hint})" if error.hint else ""
    )
    said.args = (said.message,)
    return said
