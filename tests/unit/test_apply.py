"""The compare-and-swap of a tag move, on an OCI layout: when the observation is the
compare, and when the tag is read again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.engine.apply import FRESH_S, TagMoved, apply_changes
from reconciler.model import Action, Change, Drift
from reconciler.registry import LayoutRegistry, Manifest, Registry
from tests.support.registry_servers import build_image, push


class Counting(LayoutRegistry):
    def __init__(self) -> None:
        super().__init__(None)
        self.resolved: list[str] = []

    def resolve(self, repo: str, tag: str) -> str | None:
        self.resolved.append(tag)
        return super().resolve(repo, tag)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Counting, str, str, str]:
    store, repo = Counting(), str(tmp_path / "layout")
    old = push(store, repo, build_image("old"), tag="prod-web")
    new = push(store, repo, build_image("new"))
    return store, repo, old, new


def move(repo: str, old: str | None, new: str) -> Change:
    return Change(
        Action.UPDATE, f"oci:{repo}", "prod-web", old, new, Drift.STALE, "web", f"oci:{repo}"
    )


def run(store: Counting, repo: str, change: Change, observed_at: float | None) -> None:
    def registry_of(_: str) -> tuple[Registry, str]:
        return store, repo

    def manifest_of(_: str, digest: str) -> Manifest:
        return store.get_manifest(repo, digest)

    apply_changes([change], registry_of, manifest_of, observed_at=observed_at)


def test_a_fresh_observation_is_the_compare(layout: tuple[Counting, str, str, str]) -> None:
    store, repo, old, new = layout
    run(store, repo, move(repo, old, new), observed_at=time.monotonic())
    assert store.resolved == ["prod-web"]  # the confirming re-read only
    assert LayoutRegistry(None).resolve(repo, "prod-web") == new


def test_an_old_observation_is_checked_again_and_a_moved_tag_refused(
    layout: tuple[Counting, str, str, str],
) -> None:
    store, repo, old, new = layout
    stale = time.monotonic() - FRESH_S - 1
    wrong = "sha256:" + "9" * 64  # what the pass believed the tag held
    with pytest.raises(TagMoved, match="moved to"):
        run(store, repo, move(repo, wrong, new), observed_at=stale)
    assert LayoutRegistry(None).resolve(repo, "prod-web") == old  # untouched
    store.resolved.clear()
    run(store, repo, move(repo, old, new), observed_at=None)  # no observation time: re-read
    assert store.resolved == ["prod-web", "prod-web"]
