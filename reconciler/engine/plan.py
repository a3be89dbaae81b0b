"""Plan: a pure function (desired, observed) -> the changes one environment needs.

No I/O here. The registry was read by the observe step; what may be applied is decided
by verify/; apply.py executes. Tags the environment desires are the reconciler's to
move (git declares them); any other tag is touched only by ``prune``, and only when an
apply record owns it and it still points where the reconciler left it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.model import Action, Change, DesiredState, Drift, EnvPlan, Observed
from reconciler.registry import canonical_repository


@dataclass(frozen=True)
class CatalogIndex:
    """Every digest the catalogs name, and those of releases with hazards."""

    known: frozenset[str]
    hazardous: frozenset[str]

    @classmethod
    def of(cls, state: DesiredState) -> CatalogIndex:
        """Every release of every catalog, indexed once per pass rather than scanned per tag."""
        known, hazardous = set(), set()
        for catalog in state.catalogs.values():
            for release in catalog.releases:
                digests = {ref.digest for ref in release.items.values()}
                known |= digests
                if release.hazardous:
                    hazardous |= digests
        return cls(frozenset(known), frozenset(hazardous))

    def classify(self, current: str) -> Drift:
        """Why a tag points at ``current`` instead of the desired digest; a digest that no
        catalog names is foreign, a tamper signal."""
        if current not in self.known:
            return Drift.FOREIGN
        if current in self.hazardous:
            return Drift.HAZARDOUS
        return Drift.STALE


def claimed_tags(state: DesiredState) -> dict[str, str]:
    """Every desired tag as a canonical reference -> the environment that desires it."""
    claimed: dict[str, str] = {}
    for env, tags in sorted(state.tags.items()):
        for t in tags:
            claimed.setdefault(canonical_tag(t.repository, t.tag), env)
    return claimed


def canonical_tag(repository: str, tag: str) -> str:
    """``repository:tag`` as one string per tag, however the repository is spelled."""
    return f"{canonical_repository(repository)}:{tag}"


def plan_environment(
    state: DesiredState,
    name: str,
    observed: Observed,
    index: CatalogIndex | None = None,
    claimed: Mapping[str, str] | None = None,
) -> EnvPlan:
    """The changes ``name`` needs. ``claimed`` (from :func:`claimed_tags`) keeps prune
    off every tag some environment desires, whoever owned it before."""
    env = state.environments[name]
    index = index or CatalogIndex.of(state)
    claimed = claimed if claimed is not None else claimed_tags(state)
    if env.suspend:
        return EnvPlan(name, env.catalog, env.release, (), False, ("suspended",), suspended=True)
    desired = state.tags[name]
    changes: list[Change] = []
    notes: list[str] = []
    for t in desired:
        current = observed.tags.get(t.tag)
        if current == t.digest:
            continue
        changes.append(
            Change(
                action=Action.CREATE if current is None else Action.UPDATE,
                repository=t.repository,
                tag=t.tag,
                from_digest=current,
                to_digest=t.digest,
                drift=Drift.MISSING if current is None else index.classify(current),
                item=t.item,
                source_repository=t.source_repository,
            )
        )
    record = observed.record
    if env.prune and record is not None:
        wanted = {t.tag for t in desired}
        repository = desired[0].repository if desired else record.repository
        for tag, written in sorted(record.owned.items()):
            current = observed.tags.get(tag)
            if tag in wanted or current is None:
                continue
            other = claimed.get(canonical_tag(repository, tag))
            if other is not None:
                notes.append(f"owned tag {tag} is now desired by {other}; not pruned")
                continue
            if current != written:
                notes.append(
                    f"owned tag {tag} was moved outside the reconciler "
                    f"(to {current[:19]}); not pruned"
                )
                continue
            changes.append(Change(Action.DELETE, repository, tag, current, None, Drift.UNOWNED))
    desired_map = {t.tag: t.digest for t in desired}
    record_due = (
        bool(changes)
        or record is None
        or record.release != env.release
        or record.catalog != env.catalog
        or dict(record.tags) != desired_map
        or record.policy != state.policy_fingerprint(name)
    )
    return EnvPlan(name, env.catalog, env.release, tuple(changes), record_due, tuple(notes))


def owned_after(
    previous: Mapping[str, str], desired: Mapping[str, str], deleted: set[str], gone: set[str]
) -> dict[str, str]:
    """The inventory a new record carries: what it owned, minus deletions, plus what it wrote."""
    owned = {t: d for t, d in previous.items() if t not in deleted and t not in gone}
    owned.update(desired)
    return dict(sorted(owned.items()))
