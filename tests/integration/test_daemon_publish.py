"""The daemon from a signed build to an applied promotion, telling a receiver each step:
a new build is discovered and proposed as a release branch, the merged release makes
``follow: latest`` propose a promotion, the merged promotion is applied, drift by hand
is put back, and a refusal is told once however many passes see it. Every body is
checked against its HMAC-SHA256 signature."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from tests.support.daemon import DaemonProcess, Remote, eventually, within
from tests.support.publish import CATALOG_FILE, push_build, with_signers
from tests.support.receiver import Receiver, receiving
from tests.support.registry_servers import RegistryServer, build_image, push
from tests.support.staterepo import SIGNATURE
from tests.support.world import build_world, desired_only

SECRET = "notify-secret-0123456789abcdef"
DISCOVER = '\tdiscover: {tag: "^(v[0-9]+[.][0-9]+)$", items: {web: "web-", worker: "worker-"}}\n'


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as state:
        yield state


def commit_on(repo: pygit2.Repository, path: str, text: str, message: str) -> None:
    """A commit straight onto the bare remote's main (as someone with push rights does)."""
    main = repo.references["refs/heads/main"]
    parent = repo[main.target]
    directory, _, name = path.rpartition("/")
    sub = repo.TreeBuilder(parent.tree[directory])
    sub.insert(name, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
    root = repo.TreeBuilder(parent.tree)
    root.insert(directory, sub.write(), pygit2.enums.FileMode.TREE)
    repo.create_commit(
        "refs/heads/main", SIGNATURE, SIGNATURE, message, root.write(), [main.target]
    )


def merge(repo: pygit2.Repository, branch: str) -> None:
    head = repo.references[f"refs/heads/{branch}"].target
    main = repo.references["refs/heads/main"]
    assert repo.descendant_of(head, main.target)
    main.set_target(head)


def test_from_a_signed_build_to_an_applied_promotion_told_at_every_step(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, receiver: Receiver
) -> None:
    notify = f'[{{url: "{receiver.url}/hooks/reconciler", secretEnv: "RECONCILER_NOTIFY_SECRET"}}]'
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"environments/staging.cue": None, "environments/prod.cue": None},  # type: ignore[dict-item]
        verify=f"insecureSkipSignatures: true\n\tnotify: {notify}",
    )
    key = with_signers(world)
    catalog = (world.repo.path / CATALOG_FILE).read_text()
    world.repo.commit(
        {
            CATALOG_FILE: catalog.replace("\treleases: [", DISCOVER + "\treleases: [", 1),
            "environments/dev.cue": world.env("dev", "v1.2", '\n\tfollow: "latest"'),
        },
        "discover releases; dev follows the newest",
    )
    remote = Remote(world, tmp_path / "remote.git")
    bare = pygit2.Repository(str(remote.path))
    daemon = DaemonProcess(
        tmp_path / "daemon.log", remote.url, "--discover-interval", "1", "--drift-interval", "3",
        "--notify-allow-private", env={"RECONCILER_NOTIFY_SECRET": SECRET},
    )  # fmt: skip
    try:
        eventually(lambda: len(receiver.events("applied")) == 1, within(2), "first apply", daemon)
        assert receiver.events("applied")[0]["summary"] == (
            f"dev: applied example.org/acme/shop v1.2 at commit {bare.head.target!s:.12} "
            "(2 tags moved): dev first applied at v1.2"
        )

        # cosign sign of a new build (here: the same signature format, made in-process)
        v13 = push_build(world, "v1.3", key, tag="{item}-{version}")
        release = "release/example.org-acme-shop/v1.3"
        eventually(
            lambda: release in bare.branches.local, within(3), "the release proposed", daemon
        )
        eventually(lambda: len(receiver.events("proposed")) == 1, 10, "told: proposed", daemon)
        assert receiver.events("proposed")[0]["branch"] == release

        merge(bare, release)  # the release's merge request is merged
        promotion = "promote/dev/v1.3"
        eventually(lambda: promotion in bare.branches.local, within(3), "the promotion", daemon)
        eventually(lambda: len(receiver.events("proposed")) == 2, 10, "told: proposed", daemon)

        merge(bare, promotion)  # ... and the promotion's
        eventually(
            lambda: desired_only(world.tags())["dev-web"] == v13["web"],
            within(3),
            "applied",
            daemon,
        )
        eventually(lambda: len(receiver.events("applied")) == 2, 10, "told: applied", daemon)
        assert receiver.events("applied")[1]["summary"].endswith(  # type: ignore[union-attr]
            ": dev promoted from v1.2 to v1.3"
        )

        # a tag moved by hand is put back by the drift scan, and told as drift
        foreign = push(world.registry, world.source, build_image("by-hand"), tag="dev-web")
        eventually(
            lambda: desired_only(world.tags())["dev-web"] == v13["web"], within(5), "healed", daemon
        )
        eventually(lambda: len(receiver.events("drift")) == 1, 10, "told: drift", daemon)
        [drift] = receiver.events("drift")
        assert drift["changes"] == [
            {"tag": f"{world.host}/{world.source}:dev-web", "action": "update", "from": foreign,
             "to": v13["web"], "drift": "foreign"}
        ]  # fmt: skip

        # a refusal is told once, however many passes see it
        commit_on(bare, "environments/dev.cue", world.env("dev", "v1.0"), "dev to v1.0")
        eventually(lambda: len(receiver.events("refused")) == 1, within(3), "told: refused", daemon)
        passes = daemon.sample("reconciler_passes_total", result="failed")
        eventually(
            lambda: daemon.sample("reconciler_passes_total", result="failed") >= passes + 3,
            within(4),
            "three more passes",
            daemon,
        )
        assert len(receiver.events("refused")) == 1
        assert receiver.events("refused")[0]["rule"] == "hazards"
    finally:
        daemon.stop()
    assert receiver.signed_by(SECRET)
    assert [b["event"] for b in receiver.bodies()] == [
        "applied", "proposed", "proposed", "applied", "drift", "refused"
    ]  # fmt: skip
    assert SECRET not in daemon.log.read_text()
