"""Proposals nobody has to type: new releases found in the registry, and promotions of
environments that ``follow: latest``.

Both end in the same place as a person's work: a branch for a merge request, never a
commit to the main branch, each verified before it is proposed.

- **Discovery** (:func:`discover_releases`): a catalog's ``discover`` names a tag regexp
  with a version group and, per item, where its tags are. A version that every item has
  a tag for, newer than every release of the catalog, becomes ``release/<catalog>/<v>``
  through ``Workflows.release_add`` (so it must pass integrity and the catalog's
  signers: an unsigned build is skipped, and tried again on the next run).
- **Follow** (:func:`follow_latest`): an environment with ``follow: latest`` gets
  ``promote/<env>/<release>`` for the newest release newer than its own that passes
  ``promote``'s pre-check (hazards, requires, signatures); an older one if the newest
  cannot pass yet.

Each branch is proposed once: a branch that exists (on origin, as last fetched) is the
memory. Deleting it asks for the proposal again.

:class:`Proposer` runs both for the daemon on a cadence of its own and tells the
notifier about every new proposal.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.engine.reconcile import Reconciler
from reconciler.errors import ReconcilerError, Stalled
from reconciler.git import is_url
from reconciler.git.branches import branch_exists
from reconciler.model import Catalog, DesiredState
from reconciler.proposals.releases import open_repository, version_key
from reconciler.proposals.workflows import Proposal, Workflows, promote_branch, release_branch
from reconciler.registry import Registries

log = logging.getLogger(__name__)

MAX_NEW = 10  # versions proposed per catalog and run, newest kept: a first run stays small


class FindingKind(StrEnum):
    """What was found: a new version for a catalog, or a newer release for an environment."""

    RELEASE = "release"  # discovery: a branch adding the release to its catalog
    PROMOTION = "promotion"  # follow: latest: a branch promoting the environment


class FindingStatus(StrEnum):
    """What one run did about it."""

    PROPOSED = "proposed"  # a branch was made (and pushed, with --push)
    EXISTS = "exists"  # the branch is there already: proposed by an earlier run
    SKIPPED = "skipped"  # incomplete, unsigned or already in the catalog
    FAILED = "failed"  # the registry or the remote failed; tried again next run


@dataclass
class Finding:
    """What one run did about one version (discovery) or one environment (follow)."""

    kind: FindingKind
    catalog: str
    release: str
    status: FindingStatus
    branch: str
    environment: str | None = None
    reason: str = ""
    proposal: Proposal | None = None

    def to_json(self) -> dict[str, object]:
        """The documented ``discover --json`` shape of one finding."""
        return {
            "kind": self.kind,
            "catalog": self.catalog,
            "release": self.release,
            "environment": self.environment,
            "status": self.status,
            "branch": self.branch,
            "reason": self.reason,
            "commit": self.proposal.commit if self.proposal else None,
            "pushed": self.proposal.pushed if self.proposal else False,
        }


@dataclass
class Candidate:
    """A version the registry holds: the tag of each item that has one."""

    version: str
    tags: dict[str, str] = field(default_factory=dict)  # item -> "repository:tag"
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # item -> tags


# --------------------------------------------------------------------------- discovery


def candidates(registries: Registries, catalog: Catalog) -> list[Candidate]:
    """Every version the catalog's ``discover`` finds, oldest first.

    The regexp must match the whole tag after the item's prefix; the release name is
    its ``version`` group, else its first group.

    Raises:
        RegistryError: a tag listing failed.
    """
    spec = catalog.discover
    if spec is None:
        return []
    pattern = re.compile(spec.tag)
    found: dict[str, Candidate] = {}
    for item in spec.items:
        repository, prefix = spec.location(item, catalog.source)
        registry, repo = open_repository(registries, repository)
        for tag in registry.list_tags(repo):
            if not tag.startswith(prefix):
                continue
            m = pattern.fullmatch(tag[len(prefix) :])
            if m is None:
                continue
            version = m.group("version") if "version" in pattern.groupindex else m.group(1)
            if not version:
                continue
            candidate = found.setdefault(version, Candidate(version))
            ref = f"{repository}:{tag}"
            if item in candidate.tags and candidate.tags[item] != ref:
                candidate.ambiguous.setdefault(item, [candidate.tags[item]]).append(ref)
            candidate.tags[item] = ref
    return sorted(found.values(), key=lambda c: version_key(c.version))


def discover_releases(
    flows: Workflows,
    state: DesiredState,
    *,
    push: bool,
    only: Sequence[str] | None = None,
) -> list[Finding]:
    """Propose each new, complete, signed version of every catalog with ``discover``.

    New means newer (:func:`version_key`) than every release the catalog has, so a
    release deleted from the catalog is not proposed again.
    """
    policy = flows.reconciler.in_force(state)
    state = policy.trusted  # catalogs and their registries as the policy in force has them
    registries = flows.reconciler.registries(policy)
    findings: list[Finding] = []
    for name in sorted(state.catalogs):
        catalog = state.catalogs[name]
        if catalog.discover is None or (only and name not in only):
            continue
        try:
            found = candidates(registries, catalog)
        except ReconcilerError as exc:
            findings.append(
                Finding(FindingKind.RELEASE, name, "", FindingStatus.FAILED, "", reason=exc.message)
            )
            continue
        newest = max((version_key(r.name) for r in catalog.releases), default=None)
        new = [
            c
            for c in found
            if catalog.release(c.version) is None
            and (newest is None or version_key(c.version) > newest)
        ][-MAX_NEW:]
        for candidate in new:
            findings.append(_propose_release(flows, catalog, candidate, push))
    return findings


def _propose_release(flows: Workflows, catalog: Catalog, c: Candidate, push: bool) -> Finding:
    assert catalog.discover is not None
    branch = release_branch(catalog.name, c.version)
    finding = Finding(FindingKind.RELEASE, catalog.name, c.version, FindingStatus.SKIPPED, branch)
    if branch_exists(flows.source, branch):
        finding.status, finding.reason = FindingStatus.EXISTS, "proposed before (the branch exists)"
        return finding
    missing = [i for i in catalog.discover.items if i not in c.tags]
    if missing:
        finding.reason = f"no tag yet for {', '.join(missing)}"
        return finding
    if c.ambiguous:
        item, tags = next(iter(c.ambiguous.items()))
        finding.reason = f"{item} has several tags for {c.version}: {', '.join(tags)}"
        return finding
    items = {item: c.tags[item] for item in catalog.discover.items}
    try:
        finding.proposal = flows.release_add(catalog.name, c.version, items, push=push)
    except Stalled as exc:  # unsigned, not verifiable, not editable: skipped until fixed
        finding.reason = exc.message
        return finding
    except ReconcilerError as exc:
        finding.status, finding.reason = FindingStatus.FAILED, exc.message
        return finding
    finding.status = FindingStatus.PROPOSED
    return finding


# --------------------------------------------------------------------------- follow


def follow_latest(
    flows: Workflows,
    state: DesiredState,
    *,
    push: bool,
    only: Sequence[str] | None = None,
) -> list[Finding]:
    """For each environment with ``follow: latest``, propose the newest release newer
    than its own that ``promote`` accepts; nothing while such a branch exists."""
    findings: list[Finding] = []
    for name in sorted(state.environments):
        env = state.environments[name]
        if env.follow != "latest" or env.suspend or (only and name not in only):
            continue
        catalog = state.catalogs[env.catalog]
        current = version_key(env.release)
        newer = sorted(
            (r.name for r in catalog.releases if version_key(r.name) > current),
            key=version_key,
            reverse=True,
        )
        for release in newer:
            branch = promote_branch(name, release)
            finding = Finding(
                FindingKind.PROMOTION, env.catalog, release, FindingStatus.SKIPPED, branch, name
            )
            findings.append(finding)
            if branch_exists(flows.source, branch):
                finding.status, finding.reason = (
                    FindingStatus.EXISTS,
                    "proposed before (the branch exists)",
                )
                break
            try:
                finding.proposal = flows.promote(name, release, push=push)
            except Stalled as exc:  # refused for now: try an older release
                finding.reason = exc.message
                continue
            except ReconcilerError as exc:
                finding.status, finding.reason = FindingStatus.FAILED, exc.message
                break
            finding.status = FindingStatus.PROPOSED
            break
    return findings


# --------------------------------------------------------------------------- the daemon


Listener = Callable[[Finding], object]


class Proposer:
    """Discovery and ``follow: latest`` for ``reconciler run``, every ``interval``
    seconds (0: never). Never raises: a failure is logged once and tried next time.

    Branches are pushed when the state repository is a URL (the daemon's mirror would
    lose them); for a local path they stay local branches.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        interval: float,
        listener: Listener | None = None,
        clock: Callable[[], float] = time.monotonic,
        only: Sequence[str] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.only = list(only) if only else None  # a shard's environments (follow)
        self.interval = interval
        self.listener = listener
        self.clock = clock
        self._next = 0.0
        self._said: dict[tuple[str, str, str], tuple[str, str]] = {}

    @staticmethod
    def wanted(state: DesiredState) -> bool:
        """Some catalog has ``discover`` or some environment ``follow``: else no tick touches
        the registry."""
        return any(c.discover for c in state.catalogs.values()) or any(
            e.follow for e in state.environments.values()
        )

    def tick(self, state: DesiredState, now: float | None = None) -> list[Finding]:
        """Run when due; the findings (empty when not due or nothing asks for it)."""
        now = self.clock() if now is None else now
        if self.interval <= 0 or now < self._next or not self.wanted(state):
            return []
        self._next = now + self.interval
        flows = Workflows(self.reconciler)
        push = is_url(self.reconciler.source.location)
        findings: list[Finding] = []
        try:
            findings += discover_releases(flows, state, push=push)
            findings += follow_latest(flows, state, push=push, only=self.only)
        except Exception as exc:  # a bug must not stop the daemon's passes
            log.exception("proposals: internal error: %s", exc.__class__.__name__)
        for finding in findings:
            self._report(finding)
        return findings

    def _report(self, f: Finding) -> None:
        """Log each finding's transitions only; tell the listener about new proposals."""
        key = (f.kind, f.release, f.environment or f.catalog)
        said = (f.status, f.reason)
        if self._said.get(key) == said:
            return
        self._said[key] = said
        what = f"{f.environment} to {f.release}" if f.environment else f"{f.catalog} {f.release}"
        extra = {"event": f"proposal-{f.status}", "environment": f.environment or f.catalog}
        if f.status == FindingStatus.PROPOSED:
            pushed = " (pushed)" if f.proposal and f.proposal.pushed else ""
            log.info("proposed %s %s on %s%s", f.kind, what, f.branch, pushed, extra=extra)
            if self.listener is not None:
                try:
                    self.listener(f)
                except Exception:
                    log.exception("proposals: the listener failed")
        elif f.status == FindingStatus.SKIPPED:
            log.info("not proposing %s %s yet: %s", f.kind, what, f.reason, extra=extra)
        elif f.status == FindingStatus.FAILED:
            log.warning("proposing %s %s failed: %s", f.kind, what, f.reason, extra=extra)
        else:
            log.debug("%s %s: %s", f.kind, what, f.reason)
