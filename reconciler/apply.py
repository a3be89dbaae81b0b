"""Execute a verified plan: copy artifacts, move tags by compare-and-swap, prune.

Every tag move is: re-check the tag still points at ``from_digest``, PUT the exact
manifest bytes, re-read and confirm ``to_digest``. A tag that already points at
``to_digest`` (an interrupted earlier pass) is left alone, so re-running converges.
The apply record is written by the caller only after every move is confirmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from reconciler.errors import Transient
from reconciler.model import Action, Change
from reconciler.registry import Manifest, Registry, Unsupported, copy_artifact

log = logging.getLogger(__name__)


class TagMoved(Transient):
    """The tag changed between observe and apply: another writer; the next pass re-plans."""


@dataclass
class ApplyResult:
    moved: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


RegistryOf = Callable[[str], tuple[Registry, str]]
ManifestOf = Callable[[str, str], Manifest]  # (repository, digest) -> manifest


def apply_changes(
    changes: Sequence[Change],
    registry_of: RegistryOf,
    manifest_of: ManifestOf,
    concurrency: int = 8,
) -> ApplyResult:
    """Apply ``changes`` of one environment; raises on the first failed move."""
    result = ApplyResult()
    moves = [c for c in changes if c.action is not Action.DELETE]
    manifests = _bring_into_target(moves, registry_of, manifest_of, result)

    def move(change: Change) -> None:
        registry, repo = registry_of(change.repository)
        assert change.to_digest is not None
        current = registry.resolve(repo, change.tag)
        if current == change.to_digest:
            return  # done by an earlier, interrupted pass
        if current != change.from_digest:
            raise TagMoved(
                f"{change.repository}:{change.tag} moved to {current} since it was observed "
                f"(expected {change.from_digest})",
                "another writer changed it; the next pass re-plans",
            )
        manifest = manifests[(change.repository, change.to_digest)]
        registry.put_manifest(repo, change.tag, manifest.data, manifest.media_type)
        confirmed = registry.resolve(repo, change.tag)
        if confirmed != change.to_digest:
            raise TagMoved(
                f"{change.repository}:{change.tag} reads {confirmed} after writing "
                f"{change.to_digest}"
            )
        result.moved.append(change.tag)
        log.info("moved %s:%s to %s", change.repository, change.tag, change.to_digest)

    _each(moves, move, concurrency)
    for change in (c for c in changes if c.action is Action.DELETE):
        registry, repo = registry_of(change.repository)
        if registry.resolve(repo, change.tag) != change.from_digest:
            log.warning("not pruning %s:%s: it moved", change.repository, change.tag)
            continue
        try:
            registry.delete_tag(repo, change.tag)
        except Unsupported as exc:
            result.unsupported.append(f"{change.repository}:{change.tag}: {exc.message}")
            continue
        result.deleted.append(change.tag)
        log.info("pruned %s:%s", change.repository, change.tag)
    return result


def _bring_into_target(
    moves: Sequence[Change], registry_of: RegistryOf, manifest_of: ManifestOf, result: ApplyResult
) -> dict[tuple[str, str], Manifest]:
    """Copy each artifact into its target repository when that differs from its source,
    signatures and referrers included, and return the manifests to tag there."""
    manifests: dict[tuple[str, str], Manifest] = {}
    for change in moves:
        assert change.to_digest is not None and change.source_repository is not None
        key = (change.repository, change.to_digest)
        if key in manifests:
            continue
        target, target_repo = registry_of(change.repository)
        if change.source_repository != change.repository:
            source, source_repo = registry_of(change.source_repository)
            copy_artifact(source, source_repo, change.to_digest, target, target_repo)
            result.copied.append(change.to_digest)
        manifests[key] = manifest_of(change.repository, change.to_digest)
    return manifests


def _each(changes: Sequence[Change], fn: Callable[[Change], None], concurrency: int) -> None:
    if len(changes) <= 1 or concurrency <= 1:
        for change in changes:
            fn(change)
        return
    with ThreadPoolExecutor(max_workers=min(concurrency, len(changes))) as pool:
        for future in [pool.submit(fn, c) for c in changes]:
            future.result()
