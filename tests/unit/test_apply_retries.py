"""apply_changes retries transient registry errors per step until its deadline, never a
tag another writer moved; against an OCI layout behind a flaky wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.apply import TagMoved, apply_changes
from reconciler.model import Action, Change, Drift
from reconciler.registry import LayoutRegistry, Manifest, RegistryUnavailable

EMPTY = b"{}"


class Flaky:
    """A registry whose listed methods fail their first ``n`` calls (transiently)."""

    def __init__(self, inner: LayoutRegistry, failures: dict[str, int]) -> None:
        self.inner = inner
        self.failures = dict(failures)
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                raise RegistryUnavailable(f"{name}: injected 503")
            return target(*args, **kwargs)

        return call


def image(root: Path, name: str) -> Manifest:
    store = LayoutRegistry(root)
    digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    store.put_blob("repo", digest, 2, [EMPTY])
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest,
                       "size": 2},
            "layers": [],
            "annotations": {"name": name},
        }
    ).encode()  # fmt: skip
    store.put_manifest("repo", Manifest(data, "").digest, data)
    return Manifest(data, "application/vnd.oci.image.manifest.v1+json")


def change(tag: str, to: Manifest, from_digest: str | None = None) -> Change:
    action = Action.CREATE if from_digest is None else Action.UPDATE
    return Change(action, "oci:/x/repo", tag, from_digest, to.digest, Drift.MISSING,
                  "item", "oci:/x/repo")  # fmt: skip


def run(registry: Any, changes: list[Change], deadline: float = 60.0) -> list[float]:
    slept: list[float] = []
    apply_changes(
        changes,
        lambda repository: (registry, "repo"),
        lambda repository, digest: registry.get_manifest("repo", digest),
        concurrency=4,
        deadline=deadline,
        sleep=slept.append,
    )
    return slept


def test_transient_failures_of_moves_are_retried_until_they_succeed(tmp_path: Path) -> None:
    manifest = image(tmp_path, "a")
    flaky = Flaky(LayoutRegistry(tmp_path), {"put_manifest": 3, "resolve": 2})
    slept = run(flaky, [change(f"t{n}", manifest) for n in range(4)])
    assert len(slept) == 5 and all(0 < s <= 8 for s in slept)
    store = LayoutRegistry(tmp_path)
    assert all(store.resolve("repo", f"t{n}") == manifest.digest for n in range(4))


def test_retries_stop_at_the_deadline_and_the_error_surfaces(tmp_path: Path) -> None:
    manifest = image(tmp_path, "b")
    flaky = Flaky(LayoutRegistry(tmp_path), {"put_manifest": 1000})
    with pytest.raises(RegistryUnavailable):
        run(flaky, [change("t", manifest)], deadline=0.0)
    assert LayoutRegistry(tmp_path).resolve("repo", "t") is None


def test_a_tag_moved_by_another_writer_is_not_retried(tmp_path: Path) -> None:
    first, second = image(tmp_path, "c1"), image(tmp_path, "c2")
    store = LayoutRegistry(tmp_path)
    store.put_manifest("repo", "t", second.data)  # someone else got there
    flaky = Flaky(store, {})
    with pytest.raises(TagMoved):
        run(flaky, [change("t", first, from_digest="sha256:" + "0" * 64)])
    assert flaky.calls.get("put_manifest", 0) == 0
    assert store.resolve("repo", "t") == second.digest


def test_prune_is_retried_and_only_where_the_tag_still_is(tmp_path: Path) -> None:
    manifest = image(tmp_path, "d")
    store = LayoutRegistry(tmp_path)
    store.put_manifest("repo", "gone", manifest.data)
    store.put_manifest("repo", "kept", manifest.data)
    flaky = Flaky(store, {"delete_tag": 2})
    prune = Change(Action.DELETE, "oci:/x/repo", "gone", manifest.digest, None, Drift.UNOWNED)
    slept = run(flaky, [prune])
    assert len(slept) == 2
    assert store.resolve("repo", "gone") is None and store.resolve("repo", "kept")
