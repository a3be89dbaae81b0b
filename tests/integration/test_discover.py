"""`reconciler discover`: new signed builds in a real registry become release branches,
once; environments with `follow: latest` get one promotion branch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.publish import CATALOG_FILE, Origin, push_build, with_signers
from tests.support.registry_servers import RegistryServer
from tests.support.signing import sign_legacy
from tests.support.world import World, build_world

DISCOVER = '\tdiscover: {tag: "^(v[0-9]+[.][0-9]+)$", items: {web: "web-", worker: "worker-"}}\n'


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


def by_release(findings: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {f["release"]: (f["status"], f["reason"]) for f in findings}


def test_discovery_proposes_each_new_complete_signed_release_once(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = with_signers(world)
    text = (
        (world.repo.path / CATALOG_FILE)
        .read_text()
        .replace("\treleases: [", DISCOVER + "\treleases: [", 1)
    )
    world.repo.commit({CATALOG_FILE: text}, "discover releases from tags")
    origin = Origin(world, tmp_path / "origin.git")
    tagged = "{item}-{version}"
    push_build(world, "v1.1", key, tag=tagged)  # older than the catalog's newest: ignored
    v13 = push_build(world, "v1.3", key, tag=tagged)
    push_build(world, "v1.4", key, items=("web",), tag=tagged)  # worker not built yet
    v15 = push_build(world, "v1.5", None, tag=tagged)  # not signed yet
    tags = world.tags()

    code, out = origin.run(capsys, "discover", "--push")
    assert code == 0, out
    found = by_release(out["findings"])
    assert set(found) == {"v1.3", "v1.4", "v1.5"}
    assert found["v1.3"][0] == "proposed"
    assert found["v1.4"] == ("skipped", "no tag yet for worker")
    assert found["v1.5"][0] == "skipped" and "no signature found" in found["v1.5"][1]
    assert origin.branches() == {"main", "release/example.org-acme-shop/v1.3"}
    assert f'web: "{v13["web"]}"' in origin.file(CATALOG_FILE, "release/example.org-acme-shop/v1.3")
    assert world.tags() == tags  # discovery only reads

    refs = {r: origin.repo.references[r].target for r in origin.repo.references}
    code, out = origin.run(capsys, "discover", "--push")
    assert code == 0
    assert by_release(out["findings"])["v1.3"] == ("exists", "proposed before (the branch exists)")
    assert {r: origin.repo.references[r].target for r in origin.repo.references} == refs

    for digest in v15.values():
        sign_legacy(world.registry, world.source, digest, key)
    code, out = origin.run(capsys, "discover", "--push")
    assert by_release(out["findings"])["v1.5"][0] == "proposed"
    assert by_release(out["findings"])["v1.3"][0] == "exists"
    assert "release/example.org-acme-shop/v1.5" in origin.branches()

    # once merged, v1.3 is in the catalog: nothing older than it is proposed again
    origin.merge("release/example.org-acme-shop/v1.3")
    code, out = origin.run(capsys, "discover", "--push")
    assert "v1.3" not in by_release(out["findings"])


def test_follow_latest_opens_one_promotion_branch_and_never_an_unready_one(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    follow = '\n\tfollow: "latest"'
    world.repo.commit(
        {
            "environments/dev.cue": world.env("dev", "v1.1", follow),
            "environments/staging.cue": world.env("staging", "v1.1", follow),
        },
        "dev and staging follow the newest release",
    )
    origin = Origin(world, tmp_path / "origin.git")
    assert origin.run(capsys, "apply")[0] == 0

    code, out = origin.run(capsys, "discover", "--follow", "--push")
    assert code == 0, out
    promotions = {(f["environment"], f["release"]): f for f in out["findings"]}
    assert promotions[("dev", "v1.2")]["status"] == "proposed"
    # staging requires dev, which does not run v1.2 yet: not proposed (nor v1.1's older)
    staging = promotions[("staging", "v1.2")]
    assert staging["status"] == "skipped" and "dev runs v1.1" in staging["reason"]
    assert origin.branches() == {"main", "promote/dev/v1.2"}

    code, out = origin.run(capsys, "discover", "--follow", "--push")
    assert [f["status"] for f in out["findings"] if f["environment"] == "dev"] == ["exists"]
    assert origin.branches() == {"main", "promote/dev/v1.2"}

    origin.merge("promote/dev/v1.2")
    assert origin.run(capsys, "apply")[0] == 0
    code, out = origin.run(capsys, "discover", "--follow", "--push")
    statuses = {(f["environment"], f["status"]) for f in out["findings"]}
    assert statuses == {("staging", "proposed")}
    assert origin.branches() == {"main", "promote/dev/v1.2", "promote/staging/v1.2"}


def test_discover_on_a_url_needs_push(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = Origin(world, tmp_path / "origin.git")
    code, out = origin.run(capsys, "discover")
    assert code == 1 and "pass --push" in out["errors"][0]["hint"]
