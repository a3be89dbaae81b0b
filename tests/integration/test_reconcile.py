"""Plan and apply against a real registry, a real git repository and the real cue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reconciler.cli.main import main
from reconciler.engine.reconcile import Mode, Status
from reconciler.evidence import records
from reconciler.model import record_tag
from reconciler.registry import HostConfig, Registries, RegistrySettings
from tests.support import recordkeys
from tests.support.registry_servers import (
    Built,
    Fault,
    FaultProxy,
    RegistryFactory,
    RegistryServer,
    build_image,
    build_signature,
    push,
)
from tests.support.staterepo import SIGNATURE, StateRepo
from tests.support.world import (
    ITEMS,
    World,
    build_world,
    desired_only,
    expected_tags,
    plain,
    without_history,
)


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


# --------------------------------------------------------------------------- tests


def test_first_apply_converges_three_environments_in_promotion_order(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, plan = world.cli(capsys, "plan", "--detailed-exitcode")
    assert code == 2
    assert [e["name"] for e in plan["environments"]] == ["dev", "staging", "prod"]
    assert all(e["status"] == "pending" for e in plan["environments"])
    assert {c["drift"] for e in plan["environments"] for c in e["changes"]} == {"missing"}
    assert desired_only(world.tags()) == {}  # plan wrote nothing

    code, applied = world.cli(capsys, "apply")
    assert code == 0, applied
    assert [e["status"] for e in applied["environments"]] == ["applied"] * 3
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.1", staging="v1.1", prod="v1.1"
    )

    head = records.read_head(world.registry, world.source, "prod")
    assert head is not None
    assert head.release == "v1.1" and head.commit == str(world.repo.repo.head.target)
    assert head.tags == expected_tags(world, prod="v1.1")
    assert all("UNVERIFIED" in how for how in head.verified.values())

    code, status = world.cli(capsys, "status")
    assert code == 0 and status["inSync"] is True


def test_promotion_waits_for_required_environment_while_others_converge(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2", prod="v1.2")  # prod jumps ahead of staging
    before_prod = records.read_head(world.registry, world.source, "prod")
    code, result = world.cli(capsys, "apply")
    assert code == 1
    by_name = {e["name"]: e for e in result["environments"]}
    assert by_name["dev"]["status"] == "applied"
    assert by_name["staging"]["status"] == "in-sync"
    assert by_name["prod"]["status"] == "refused"
    assert by_name["prod"]["error"]["rule"] == "requires"
    assert "staging runs v1.1 and never ran the digests" in by_name["prod"]["error"]["message"]
    tags = desired_only(world.tags())
    assert tags == expected_tags(world, dev="v1.2", staging="v1.1", prod="v1.1")
    assert records.read_head(world.registry, world.source, "prod") == before_prod

    world.promote(staging="v1.2")
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.2", staging="v1.2", prod="v1.2"
    )


def test_drift_is_reported_then_restored(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.cli(capsys, "apply")[0] == 0
    registry = world.registry
    stale = registry.get_manifest(world.source, world.digests["v1.0"]["worker"])
    registry.put_manifest(world.source, "dev-worker", stale.data, stale.media_type)
    foreign = build_image(f"{world.source}-foreign")
    push(registry, world.source, foreign, tag="staging-worker")

    code, status = world.cli(capsys, "status")
    assert code == 2
    drift = {c["tag"]: c["drift"] for e in status["environments"] for c in e["changes"]}
    assert drift == {"dev-worker": "hazardous", "staging-worker": "foreign"}

    assert world.cli(capsys, "apply")[0] == 0
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.1", staging="v1.1", prod="v1.1"
    )


def test_hazardous_release_is_refused_and_registry_untouched(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.0")
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    assert code == 1
    dev = result["environments"][0]
    assert dev["status"] == "refused" and dev["error"]["rule"] == "hazards"
    assert "CVE-2026-1: broken" in dev["error"]["message"]
    assert "allowHazards" in dev["error"]["hint"]
    assert world.tags() == before

    world.repo.commit(
        {"environments/dev.cue": world.env("dev", "v1.0", "\n\tallowHazards: true")}, "accept"
    )
    assert world.cli(capsys, "apply")[0] == 0
    assert world.tags()["dev-web"] == world.digests["v1.0"]["web"]


def test_missing_digest_is_refused_while_other_environments_converge(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "sha256:" + "0" * 64
    catalog = world.repo.path / "catalogs" / "shop.cue"
    text = catalog.read_text().replace(
        "\t]\n}",
        f'\t\t{{name: "v1.3", items: {{web: "{missing}", worker: "{missing}"}}}},\n\t]\n}}',
    )
    world.repo.commit({"catalogs/shop.cue": text}, "add v1.3")
    world.promote(dev="v1.3")
    code, result = world.cli(capsys, "apply")
    assert code == 1
    by_name = {e["name"]: e for e in result["environments"]}
    assert by_name["dev"]["status"] == "refused"
    assert by_name["dev"]["error"]["rule"] == "integrity"
    assert missing in by_name["dev"]["error"]["message"]
    assert by_name["staging"]["status"] == "refused"  # requires dev on v1.1, dev never got there
    tags = world.tags()
    assert "dev-web" not in tags and record_tag("dev") not in tags


def test_git_revert_rolls_back_and_force_push_back_in_time_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli(capsys, "apply")[0] == 0
    base = str(world.repo.repo.head.target)
    promoted = world.promote(dev="v1.2")
    assert world.cli(capsys, "apply")[0] == 0
    assert world.tags()["dev-web"] == world.digests["v1.2"]["web"]

    # Roll back the way users do: a revert commit on top.
    repo = world.repo.repo
    head = repo[repo.head.target]
    index = repo.revert_commit(repo[pygit2.Oid(hex=promoted)], head)
    tree = index.write_tree(repo)
    repo.create_commit("refs/heads/main", SIGNATURE, SIGNATURE, "Revert dev", tree, [head.id])
    repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert world.tags()["dev-web"] == world.digests["v1.1"]["web"]

    # Moving the branch back in time is not a rollback: refused, nothing moves.
    world.promote(dev="v1.2")
    assert world.cli(capsys, "apply")[0] == 0
    repo.references["refs/heads/main"].set_target(pygit2.Oid(hex=base))
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    assert code == 1
    dev = result["environments"][0]
    assert dev["error"]["rule"] == "history"
    assert "git revert" in dev["error"]["hint"]
    assert world.tags() == before


def test_cross_registry_promotion_copies_artifact_and_signature(
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    web = world.digests["v1.1"]["web"]
    sig_digest = push(
        world.registry,
        world.source,
        build_signature(
            Built(world.registry.get_manifest(world.source, web).data, "x"), world.source
        ),
        tag="sha256-" + web.removeprefix("sha256:") + ".sig",
    )
    target = f"{world.source.split('/')[0]}/prod-shop"
    world.repo.commit(
        {
            "reconciler.cue": (
                "package reconciler\n\nsettings: {\n"
                f'\tregistries: "{plain_registry.host}": plainHTTP: true\n'
                f'\tregistries: "{second_registry.host}": plainHTTP: true\n'
                f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n"
            ),
            "environments/prod.cue": world.env(
                "prod", "v1.1", f'\n\ttarget: repository: "{second_registry.host}/{target}"'
            ),
        },
        "prod lives in its own registry",
    )
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    prod_tags = world.tags(target, second_registry.host)
    assert desired_only(prod_tags) == {
        "prod-web": web,
        "prod-worker": world.digests["v1.1"]["worker"],
        "sha256-" + web.removeprefix("sha256:") + ".sig": sig_digest,
    }
    second = plain(second_registry.host)
    for child in second.get_manifest(target, web).children():  # the index came whole
        assert second.manifest_exists(target, child.digest)
    assert "prod-web" not in world.tags()  # nothing written at the source for prod


def test_idempotent_rerun_makes_zero_writes(world: World) -> None:
    host = world.host
    registries = Registries(RegistrySettings(hosts={host: HostConfig(plain_http=True)}))
    reconciler = world.reconciler(registries)
    first = reconciler.run(Mode.APPLY)
    assert first.ok and registries.stats.writes() > 0
    writes = registries.stats.writes()
    for _ in range(2):
        again = reconciler.run(Mode.APPLY)
        assert again.ok and all(o.status is Status.IN_SYNC for o in again.outcomes)
    assert registries.stats.writes() == writes


def test_tags_not_owned_are_left_alone_and_owned_ones_pruned(
    tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """On an OCI layout (which has a tag-delete API): prune deletes only owned tags."""
    from reconciler.registry import LayoutRegistry

    layout = tmp_path / "layout"
    store = LayoutRegistry(None)
    digests = {item: push(store, str(layout), build_image(f"layout-{item}")) for item in ITEMS}
    keep = push(store, str(layout), build_image("someone-elses"), tag="latest")
    catalog = json.dumps(
        {
            "name": "example.org/l",
            "source": f"oci:{layout}",
            "releases": [
                {"name": "v1", "items": digests},
                {"name": "v2", "items": {"web": digests["web"]}},
            ],
        }
    )
    env = {
        "catalog": "example.org/l",
        "release": "v1",
        "prune": True,
        "verify": {"insecureSkipSignatures": True},
    }
    repo = StateRepo(tmp_path / "state")
    repo.commit(
        {
            "catalogs/l.json": catalog,
            "environments/dev.json": json.dumps(env),
            **recordkeys.json_settings(),
        }
    )
    assert main(["apply", "--repo", str(repo.path)]) == 0
    capsys.readouterr()
    assert without_history(store.list_tags(str(layout))) == {
        "latest",
        "dev-web",
        "dev-worker",
        record_tag("dev"),
    }

    repo.commit({"environments/dev.json": json.dumps({**env, "release": "v2"})})
    assert main(["apply", "--repo", str(repo.path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["environments"][0]["applied"]["deleted"] == ["dev-worker"]
    assert without_history(store.list_tags(str(layout))) == {"latest", "dev-web", record_tag("dev")}
    assert store.resolve(str(layout), "latest") == keep
    head = records.read_head(store, str(layout), "dev")
    assert head is not None and dict(head.owned) == {"dev-web": digests["web"]}
    assert [r.release for r in records.read_chain(store, str(layout), "dev")] == ["v2", "v1"]


def test_prune_on_a_registry_that_cannot_delete_applies_with_a_warning(
    registry_factory: RegistryFactory,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A registry with deletes disabled: the tags moved and the record was written, so
    the environment is applied, with a warning that the old tag stays; not failed."""
    world = build_world(registry_factory.plain(deletes=False).host, tmp_path)
    assert world.cli(capsys, "apply")[0] == 0
    world.repo.commit(
        {"environments/dev.cue": world.env("dev", "v1.1", '\n\titems: ["web"]\n\tprune: true')}
    )
    code, result = world.cli(capsys, "apply")
    dev = result["environments"][0]
    assert code == 0 and dev["status"] == "applied"  # applied what it could: a warning
    (warning,) = dev["warnings"]
    assert "not pruned" in warning and "dev-worker" in warning
    assert world.tags()["dev-worker"] == world.digests["v1.1"]["worker"]  # not deleted
    head = records.read_head(world.registry, world.source, "dev")
    assert head is not None and "dev-worker" in head.owned  # still owned, retried later


# --------------------------------------------------------------------------- interruption


@pytest.fixture
def proxied_world(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path, cue_bin: str
) -> Iterator[tuple[World, FaultProxy]]:
    """A world whose state names the registry through a fault proxy."""
    world = build_world(plain_registry.host, tmp_path)
    world.repo.commit(
        {
            "reconciler.cue": "package reconciler\n\nsettings: {\n"
            f'\tregistries: "{fault_proxy.host}": plainHTTP: true\n'
            f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
            "catalogs/shop.cue": (world.repo.path / "catalogs/shop.cue")
            .read_text()
            .replace(plain_registry.host, fault_proxy.host),
        }
    )
    yield world, fault_proxy


@pytest.mark.parametrize("kill_at", [1, 3, 4, 6, 8, 11])
def test_sigkill_during_apply_then_next_apply_converges_with_intact_chain(
    proxied_world: tuple[World, FaultProxy], kill_at: int
) -> None:
    world, proxy = proxied_world
    env = {**os.environ, "RECONCILER_CACHE_DIR": str(world.cache)}
    cmd = [sys.executable, "-m", "reconciler", "apply", "--repo", str(world.repo.path)]
    # A first pass, then a promotion of all three, so the interrupted pass moves tags
    # AND extends each record chain.
    assert subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0
    world.promote(dev="v1.2", staging="v1.2", prod="v1.2")

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = {"puts": 0}

    def kill_on_nth_put() -> None:
        seen["puts"] += 1
        if seen["puts"] == kill_at:
            proc.send_signal(signal.SIGKILL)

    proxy.add(Fault("hook", times=-1, method="PUT", action=kill_on_nth_put))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    proxy.clear()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.2", staging="v1.2", prod="v1.2"
    )
    for name in ("dev", "staging", "prod"):
        chain = records.read_chain(world.registry, world.source, name)
        assert [r.release for r in chain] == ["v1.2", "v1.1"]
        assert chain[0].previous == chain[1].digest
