"""Prune on distribution 2.8, which has no tag-delete API: the tag is pointed at a
throwaway manifest made unique to its deletion and that digest is deleted, so every
other tag on the same manifest survives. A registry that deletes nothing leaves the
tag where it was, and the environment is applied with a warning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.evidence import records
from reconciler.registry import HostConfig, HttpRegistry
from tests.support.registry_servers import (
    FaultProxy,
    RegistryFactory,
    RegistryServer,
    build_image,
    push,
)
from tests.support.world import World, build_world, desired_only

pytestmark = pytest.mark.integration


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


@pytest.fixture
def no_deletes(registry_factory: RegistryFactory) -> Iterator[RegistryServer]:
    server = registry_factory.plain(deletes=False)
    yield server
    server.stop()


def by_name(result: dict[str, object]) -> dict[str, dict[str, object]]:
    return {e["name"]: e for e in result["environments"]}  # type: ignore[attr-defined, index]


def prune_dev_worker(world: World, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert world.cli(capsys, "apply")[0] == 0
    world.repo.commit(
        {"environments/dev.cue": world.env("dev", "v1.1", '\n\titems: ["web"]\n\tprune: true')}
    )
    code, result = world.cli(capsys, "apply")
    dev = by_name(result)["dev"]
    assert code == 0 and dev["status"] == "applied", dev.get("error")
    return dev


def test_prune_deletes_one_tag_and_every_other_tag_on_its_manifest_survives(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = world.digests["v1.1"]["worker"]
    dev = prune_dev_worker(world, capsys)
    assert dev["applied"]["deleted"] == ["dev-worker"]  # type: ignore[index]
    assert not dev["warnings"]
    tags = world.tags()
    assert "dev-worker" not in tags
    # staging and prod run the same digest: their tags, and the manifest, are intact.
    assert tags["staging-worker"] == tags["prod-worker"] == worker
    assert world.registry.manifest_exists(world.source, worker)
    head = records.read_head(world.registry, world.source, "dev")
    assert head is not None and "dev-worker" not in head.owned


def test_a_tag_someone_else_put_on_the_same_digest_survives_the_prune(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = world.digests["v1.1"]["worker"]
    assert world.cli(capsys, "apply")[0] == 0
    manifest = world.registry.get_manifest(world.source, worker)
    world.registry.put_manifest(world.source, "hand-made", manifest.data, manifest.media_type)
    world.repo.commit(
        {"environments/dev.cue": world.env("dev", "v1.1", '\n\titems: ["web"]\n\tprune: true')}
    )
    assert world.cli(capsys, "apply")[0] == 0
    tags = world.tags()
    assert "dev-worker" not in tags and tags["hand-made"] == worker
    before = desired_only(tags)
    assert world.cli(capsys, "apply")[0] == 0  # converged: a second pass changes nothing
    assert desired_only(world.tags()) == before


def test_on_a_registry_that_deletes_nothing_the_tag_stays_with_a_warning(
    no_deletes: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = build_world(no_deletes.host, tmp_path)
    dev = prune_dev_worker(world, capsys)
    (warning,) = dev["warnings"]  # type: ignore[misc]
    assert "not pruned" in warning and "dev-worker" in warning and "deletes nothing" in warning
    assert world.tags()["dev-worker"] == world.digests["v1.1"]["worker"]  # where it was
    head = records.read_head(world.registry, world.source, "dev")
    assert head is not None and "dev-worker" in head.owned  # still owned: retried later


def test_a_throwaway_is_never_a_manifest_another_tag_uses(fault_proxy: FaultProxy) -> None:
    """Every deletion by digest names a fresh throwaway, never the tagged manifest."""
    client = HttpRegistry(fault_proxy.host, HostConfig(plain_http=True))
    repo = "prune/throwaways"
    image = build_image("throwaways")
    for tag in ("a", "b", "c"):
        push(client, repo, image, tag=tag)
    client.delete_tag(repo, "a")
    client.delete_tag(repo, "b")
    assert client.resolve(repo, "c") == image.digest
    assert sorted(client.list_tags(repo)) == ["c"]
    deleted = [p.rsplit("/", 1)[1] for m, p, _ in fault_proxy.log if m == "DELETE"]
    by_digest = [d for d in deleted if d.startswith("sha256:")]
    assert len(by_digest) == 2 and len(set(by_digest)) == 2
    assert image.digest not in by_digest
