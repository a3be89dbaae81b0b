"""Execute a verified plan: copy artifacts, move tags by compare-and-swap, prune.

Every tag move is a compare-and-swap: check the tag still points at ``from_digest``,
PUT the exact manifest bytes, re-read and confirm ``to_digest``. The check is a read of
the tag no older than :data:`FRESH_S`: the pass's own observation when it is that fresh
(most moves: it saves a request per tag), else a re-read; a retried move always
re-reads. A tag that already points at
``to_digest`` (an interrupted earlier pass) is left alone, so re-running converges.
The apply record is written by the caller only after every move is confirmed.

Transient registry errors (a connection lost, 429, 5xx after the transport's own
retries) are retried here too, per copy, move and prune, with backoff, until the
environment's apply deadline (:class:`~reconciler.registry.steps.StepRetry`): one
flaky request does not fail the environment. A tag moved by another writer is not
retried (the next pass re-plans), nor is anything on a host whose breaker opened.

Prune deletes a tag only where it still points where it was observed; on a
registry without a tag-delete API the registry layer points it at a throwaway
manifest made unique to that deletion and deletes that, never a manifest another
tag names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial

from reconciler.errors import LeaseLost, Transient
from reconciler.fencing import UNFENCED, Fence
from reconciler.model import Action, Change
from reconciler.registry import (
    DEFAULT_CONCURRENCY,
    Manifest,
    Registry,
    RegistryRefused,
    RetryPolicy,
    Unsupported,
    copy_artifact,
)
from reconciler.registry.steps import StepRetry

log = logging.getLogger(__name__)

APPLY_DEADLINE = RetryPolicy.step_budget  # seconds one environment's apply may spend retrying
FRESH_S = 2.0  # an observation this recent is the compare of the compare-and-swap


class TagMoved(Transient):
    """The tag changed between observe and apply: another writer; the next pass re-plans."""


@dataclass
class ApplyResult:
    """What an apply did, for the outcome and the next record: tags moved and pruned, digests
    copied into the target, and prunes this registry could not do (no tag-delete API)."""

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
    concurrency: int = DEFAULT_CONCURRENCY,
    *,
    deadline: float = APPLY_DEADLINE,
    sleep: Callable[[float], None] = time.sleep,
    observed_at: float | None = None,
    fence: Fence = UNFENCED,
    executor: Executor | None = None,
) -> ApplyResult:
    """Apply ``changes`` of one environment; ``observed_at`` (monotonic) is when their
    ``from_digest`` were read; ``fence`` is asked right before every write; ``executor``
    runs the moves (a pass shares one among its environments: a pool per environment
    started 800 threads at 1,000 tags, all queueing on the same host's slots).

    Raises:
        LeaseLost: this replica lost its lease; nothing more was written.
        TagMoved: a tag changed since it was observed (the next pass re-plans).
        Transient: registry errors that outlasted ``deadline`` seconds of retries.
        Stalled: a permanent refusal (auth, a digest mismatch).
    """
    result = ApplyResult()
    retry = StepRetry(deadline, sleep, final=(TagMoved, LeaseLost))
    moves = [c for c in changes if c.action is not Action.DELETE]
    manifests = _bring_into_target(moves, registry_of, manifest_of, result, retry, fence)

    tried: set[str] = set()

    def move(change: Change) -> None:
        registry, repo = registry_of(change.repository)
        assert change.to_digest is not None
        fresh = observed_at is not None and time.monotonic() - observed_at <= FRESH_S
        if fresh and change.tag not in tried:
            current = change.from_digest  # read a moment ago by this pass
        else:
            current = registry.resolve(repo, change.tag)
        tried.add(change.tag)
        if current == change.to_digest:
            return  # done by an earlier, interrupted pass
        if current != change.from_digest:
            raise TagMoved(
                f"{change.repository}:{change.tag} moved to {current} since it was observed "
                f"(expected {change.from_digest})",
                "another writer changed it; the next pass re-plans",
            )
        manifest = manifests[(change.repository, change.to_digest)]
        fence.check(f"moving {change.repository}:{change.tag}")
        _put_tag(registry, repo, change.tag, manifest, sleep)
        confirmed = registry.resolve(repo, change.tag)
        if confirmed != change.to_digest:
            raise TagMoved(
                f"{change.repository}:{change.tag} reads {confirmed} after writing "
                f"{change.to_digest}"
            )
        result.moved.append(change.tag)
        log.info("moved %s:%s to %s", change.repository, change.tag, change.to_digest)

    # Tags of single manifests first, then of indexes: a registry validating an index's
    # children while one of them is being re-tagged can answer 400 (distribution 2.8).
    for phase in (False, True):
        batch = [c for c in moves if manifests[(c.repository, c.to_digest or "")].is_index is phase]
        _each(
            batch,
            lambda change: retry(f"move {change.tag}", lambda: move(change)),
            concurrency,
            executor,
        )
    for change in (c for c in changes if c.action is Action.DELETE):
        registry, repo = registry_of(change.repository)

        def prune(change: Change = change, registry: Registry = registry, repo: str = repo) -> bool:
            if registry.resolve(repo, change.tag) != change.from_digest:
                log.warning("not pruning %s:%s: it moved", change.repository, change.tag)
                return False
            fence.check(f"pruning {change.repository}:{change.tag}")
            registry.delete_tag(repo, change.tag, expected=change.from_digest)
            return True

        try:
            if not retry(f"prune {change.tag}", prune):
                continue
        except Unsupported as exc:
            result.unsupported.append(f"{change.repository}:{change.tag}: {exc.message}")
            continue
        result.deleted.append(change.tag)
        log.info("pruned %s:%s", change.repository, change.tag)
    return result


def _put_tag(
    registry: Registry, repo: str, tag: str, manifest: Manifest, sleep: Callable[[float], None]
) -> None:
    """PUT ``manifest`` under ``tag``. An index refused because a child is "unknown" while
    every child is in fact present is a registry storage race (distribution's filesystem
    driver rewrites a child's link as another tag moves to it): tried again, briefly."""
    for attempt in range(4):
        try:
            registry.put_manifest(repo, tag, manifest.data, manifest.media_type)
            return
        except RegistryRefused as exc:
            raced = "MANIFEST_BLOB_UNKNOWN" in exc.message or "DIGEST_INVALID" in exc.message
            if not (manifest.is_index and raced and attempt < 3):
                raise
            if not all(registry.manifest_exists(repo, c.digest) for c in manifest.children()):
                raise
            log.info("%s:%s: index refused while its children exist; again", repo, tag)
            sleep(0.1 * (attempt + 1))


def _bring_into_target(
    moves: Sequence[Change],
    registry_of: RegistryOf,
    manifest_of: ManifestOf,
    result: ApplyResult,
    retry: StepRetry,
    fence: Fence,
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
            fence.check(f"copying {change.to_digest[:19]} into {change.repository}")
            retry(
                f"copy {change.to_digest[:19]}",
                partial(copy_artifact, source, source_repo, change.to_digest, target, target_repo),
            )
            result.copied.append(change.to_digest)
        manifests[key] = retry(
            f"read {change.to_digest[:19]}",
            partial(manifest_of, change.repository, change.to_digest),
        )
    return manifests


def _each(
    changes: Sequence[Change],
    fn: Callable[[Change], None],
    concurrency: int,
    executor: Executor | None,
) -> None:
    """``fn`` for every change, at once; returns when all are done, raising the first
    failure in order (so nothing still moves a tag once the caller writes its record)."""
    if len(changes) <= 1 or concurrency <= 1:
        for change in changes:
            fn(change)
        return
    if executor is None:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(changes))) as pool:
            _each(changes, fn, concurrency, pool)
        return
    futures = [executor.submit(fn, c) for c in changes]
    wait(futures)
    for future in futures:
        future.result()
