"""The publish side for tests: new builds pushed (and signed) into a world's source, a
catalog with signers, and a bare origin that merge requests land in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.cli.main import main
from tests.support.registry_servers import Built, build_image, build_index, push
from tests.support.signing import new_key, sign_legacy
from tests.support.world import ITEMS, World

CATALOG = "example.org/acme/shop"
CATALOG_FILE = "catalogs/shop.cue"


def with_signers(world: World) -> ec.EllipticCurvePrivateKey:
    """Give the world's catalog ``signers`` (a new key) and sign v1.0-v1.2 with it, so
    everything already in the catalog stays appliable; the private key signs new builds."""
    private, pem = new_key()
    text = (world.repo.path / CATALOG_FILE).read_text()
    text = text.replace("\treleases: [", '\tsigners: keys: ["keys/cosign.pub"]\n\treleases: [', 1)
    world.repo.commit({CATALOG_FILE: text, "keys/cosign.pub": pem}, "the catalog is signed")
    for items in world.digests.values():
        for digest in items.values():
            sign_legacy(world.registry, world.source, digest, private)
    return private


def push_build(
    world: World,
    version: str,
    key: ec.EllipticCurvePrivateKey | None,
    items: tuple[str, ...] = ITEMS,
    tag: str = "{version}-{item}",
) -> dict[str, str]:
    """A new build of each item, tagged in the source (``v1.3-web``), signed with ``key``
    (None: unsigned); item -> digest."""
    digests = {}
    for item in items:
        name = f"{world.source}-{item}-{version}-new"
        built: Built = build_index(name) if item == "web" else build_image(name)
        digest = push(
            world.registry, world.source, built, tag=tag.format(version=version, item=item)
        )
        if key is not None:
            sign_legacy(world.registry, world.source, digest, key)
        digests[item] = digest
    return digests


class Origin:
    """A bare clone of the world's state repository: the remote the CLI reads by URL and
    pushes branches to, where merge requests are merged."""

    def __init__(self, world: World, path: Path) -> None:
        self.world = world
        self.repo = pygit2.clone_repository(str(world.repo.path), str(path), bare=True)
        self.url = f"file://{path}"

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
        code = main([*args, "--repo", self.url, "--json"])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else {"stderr": err}

    def merge(self, branch: str) -> str:
        """Fast-forward main to the branch, as merging its merge request does."""
        head = self.repo.references[f"refs/heads/{branch}"].target
        main_ref = self.repo.references["refs/heads/main"]
        assert self.repo.descendant_of(head, main_ref.target), "not a fast-forward"
        main_ref.set_target(head)
        return str(head)

    def branches(self) -> set[str]:
        return {
            r.removeprefix("refs/heads/")
            for r in self.repo.references
            if r.startswith("refs/heads/")
        }

    def head(self, ref: str = "main") -> str:
        return str(self.repo.revparse_single(ref).peel(pygit2.Commit).id)

    def file(self, path: str, ref: str = "main") -> str:
        commit = self.repo.revparse_single(ref).peel(pygit2.Commit)
        return str(commit.tree[path].data.decode())

    def changed(self, ref: str) -> list[str]:
        """The paths the (one) commit at ``ref`` changes."""
        commit = self.repo.revparse_single(ref).peel(pygit2.Commit)
        diff = self.repo.diff(commit.parents[0], commit)
        return [p.delta.new_file.path for p in diff]
