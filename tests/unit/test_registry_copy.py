"""Copy order: blobs, then children, then the manifest, referrers after, the tag last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.registry import (
    LayoutRegistry,
    RegistryUnavailable,
    copy_artifact,
    referrers_tag,
)
from tests.support.registry_servers import (
    build_index,
    build_referrer,
    build_signature,
    push,
    referrers_index,
)


class Recording:
    """Wraps a store, records put_manifest refs, and can fail the n-th write."""

    def __init__(self, inner: LayoutRegistry, fail_at: int | None = None) -> None:
        self.inner = inner
        self.puts: list[str] = []
        self.fail_at = fail_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _write(self) -> None:
        if self.fail_at is not None and len(self.puts) + 1 >= self.fail_at:
            raise RegistryUnavailable("injected failure")

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str | None = None) -> str:
        self._write()
        self.puts.append(ref)
        return self.inner.put_manifest(repo, ref, data, media_type)


@pytest.fixture
def release(tmp_path: Path) -> tuple[LayoutRegistry, str, Any, Any, Any]:
    store = LayoutRegistry()
    repo = str(tmp_path / "src")
    index = build_index("release")
    signature = build_signature(index, "example.com/app")
    referrer = build_referrer(index)
    push(store, repo, index, tag="v1")
    push(store, repo, signature, tag=referrers_tag(index.digest) + ".sig")
    push(store, repo, referrer)
    push(store, repo, referrers_index(referrer), tag=referrers_tag(index.digest))
    return store, repo, index, signature, referrer


def test_children_come_before_their_index_and_the_tag_comes_last(
    release: tuple[LayoutRegistry, str, Any, Any, Any], tmp_path: Path
) -> None:
    store, repo, index, signature, referrer = release
    dst = Recording(LayoutRegistry())
    copy_artifact(store, repo, index.digest, dst, str(tmp_path / "dst"), tag="v1")
    children = [c.digest for c in index.children]
    assert dst.puts.index(index.digest) > max(dst.puts.index(c) for c in children)
    assert dst.puts.index(referrer.digest) > dst.puts.index(index.digest)
    assert dst.puts[-1] == "v1"
    assert referrers_tag(index.digest) in dst.puts
    assert referrers_tag(index.digest) + ".sig" in dst.puts
    assert signature.digest in dst.puts


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 6])
def test_a_failure_anywhere_leaves_no_tag(
    release: tuple[LayoutRegistry, str, Any, Any, Any], tmp_path: Path, fail_at: int
) -> None:
    store, repo, index, _, _ = release
    target = str(tmp_path / "dst")
    dst = Recording(LayoutRegistry(), fail_at=fail_at)
    with pytest.raises(RegistryUnavailable):
        copy_artifact(store, repo, index.digest, dst, target, tag="v1")
    assert store.resolve(target, "v1") is None
    # The next pass finishes the job.
    copy_artifact(store, repo, index.digest, store, target, tag="v1")
    assert store.resolve(target, "v1") == index.digest


def test_without_referrers_only_the_tree_is_copied(
    release: tuple[LayoutRegistry, str, Any, Any, Any], tmp_path: Path
) -> None:
    store, repo, index, _, _ = release
    target = str(tmp_path / "dst")
    result = copy_artifact(store, repo, index.digest, store, target, tag="v1", referrers=False)
    assert store.list_tags(target) == ["v1"]
    assert result.manifests_put == 3


def test_a_differing_destination_referrers_index_is_merged(
    release: tuple[LayoutRegistry, str, Any, Any, Any], tmp_path: Path
) -> None:
    store, repo, index, _, referrer = release
    target = str(tmp_path / "dst")
    other = build_referrer(index, "application/vnd.example.other")
    push(store, target, index)
    push(store, target, other)
    push(store, target, referrers_index(other), tag=referrers_tag(index.digest))
    copy_artifact(store, repo, index.digest, store, target, tag="v1")
    found = {d.digest for d in store.referrers(target, index.digest)}
    assert found == {other.digest, referrer.digest}
