"""A promotion world for integration tests: a source repository in a real registry with
releases v1.0 (hazardous), v1.1 and v1.2, and a state repository that names them."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.evidence.signing import signing_key_from
from reconciler.git import GitSource
from reconciler.registry import HostConfig, HttpRegistry, Registries
from reconciler.verify.root import trust_root_from
from tests.support import recordkeys
from tests.support.registry_servers import Built, build_image, build_index, push
from tests.support.staterepo import StateRepo

ITEMS = ("web", "worker")


def plain(host: str) -> HttpRegistry:
    return HttpRegistry(host, HostConfig(plain_http=True))


@dataclass
class World:
    """A source repository with releases v1.0 (hazardous), v1.1, v1.2 and a state repo."""

    host: str
    source: str  # repository path in the registry, e.g. "t1234/shop"
    repo: StateRepo
    digests: dict[str, dict[str, str]]  # release -> item -> digest
    cache: Path

    @property
    def registry(self) -> HttpRegistry:
        return plain(self.host)

    def env(self, name: str, release: str, extra: str = "") -> str:
        requires = {"staging": '\n\trequires: ["dev"]', "prod": '\n\trequires: ["staging"]'}
        return (
            f"package reconciler\n\nenvironments: {name}: {{\n"
            f'\tcatalog: "example.org/acme/shop"\n\trelease: "{release}"'
            f"{requires.get(name, '')}{extra}\n}}\n"
        )

    def promote(self, **releases: str) -> str:
        return self.repo.commit(
            {f"environments/{e}.cue": self.env(e, r) for e, r in releases.items()},
            "promote " + ", ".join(f"{e} to {r}" for e, r in releases.items()),
        )

    def tags(self, repository: str | None = None, host: str | None = None) -> dict[str, str]:
        """Every tag of the target repository and its digest, as the registry says."""
        registry = plain(host or self.host)
        repo = repository or self.source
        return {t: registry.resolve(repo, t) or "" for t in sorted(registry.list_tags(repo))}

    def reconciler(self, registries: Registries | None = None) -> Reconciler:
        return Reconciler(
            GitSource(str(self.repo.path), self.cache),
            Loader(self.cache),
            registries=registries,
            record_key=signing_key_from(None),
            trust_root=trust_root_from(None),
        )

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
        code = main([*args, "--repo", str(self.repo.path), "--json"])
        out, err = capsys.readouterr()
        assert out, f"`reconciler {' '.join(args)}` printed no JSON (exit {code}): {err}"
        return code, json.loads(out)


def build_world(
    host: str,
    tmp_path: Path,
    extra_files: dict[str, str] | None = None,
    verify: str = "insecureSkipSignatures: true",
) -> World:
    """``verify`` is the CUE of settings.verify, every environment's default policy."""
    source = f"t{uuid.uuid4().hex[:10]}/shop"
    registry = plain(host)
    digests: dict[str, dict[str, str]] = {}
    for release in ("v1.0", "v1.1", "v1.2"):
        digests[release] = {}
        for item in ITEMS:
            built: Built = (
                build_index(f"{source}-{item}-{release}")
                if item == "web"
                else build_image(f"{source}-{item}-{release}")
            )
            digests[release][item] = push(registry, source, built)
    releases = []
    for release, items in digests.items():
        hazards = ', hazards: {"CVE-2026-1": "broken"}' if release == "v1.0" else ""
        body = ", ".join(f'{i}: "{d}"' for i, d in items.items())
        releases.append(f'\t\t{{name: "{release}", items: {{{body}}}{hazards}}},')
    catalog = (
        'package reconciler\n\ncatalogs: "example.org/acme/shop": {\n'
        f'\tsource: "{host}/{source}"\n\treleases: [\n' + "\n".join(releases) + "\n\t]\n}\n"
    )
    settings = (
        "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{host}": plainHTTP: true\n'
        f"\tverify: {verify}\n\t{recordkeys.SETTINGS}\n}}\n"
    )
    repo = StateRepo(tmp_path / "state")
    world = World(host, source, repo, digests, tmp_path / "cache")
    files = {
        "reconciler.cue": settings,
        "catalogs/shop.cue": catalog,
        "environments/dev.cue": world.env("dev", "v1.1"),
        "environments/staging.cue": world.env("staging", "v1.1"),
        "environments/prod.cue": world.env("prod", "v1.1"),
        recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
        **(extra_files or {}),
    }
    repo.commit(files, "initial state")
    return world


def expected_tags(world: World, **releases: str) -> dict[str, str]:
    return {
        f"{env}-{item}": world.digests[release][item]
        for env, release in releases.items()
        for item in ITEMS
    }


REFERRERS_INDEX = re.compile(r"^sha256-[0-9a-f]{64}$")


def desired_only(tags: dict[str, str]) -> dict[str, str]:
    """Without record tags and where verification summaries live: referrer indexes, and
    the ``.att`` of a legacy-signed artifact."""
    return {
        t: d
        for t, d in tags.items()
        if not t.startswith("reconciler-record.")
        and not REFERRERS_INDEX.match(t)
        and not (t.endswith(".att") and REFERRERS_INDEX.match(t.removesuffix(".att")))
    }


def without_history(tags: Iterable[str]) -> set[str]:
    """Tags without records' history tags and referrer indexes: what a person manages."""
    return {
        t
        for t in tags
        if not t.startswith("reconciler-record.sha256-") and not REFERRERS_INDEX.match(t)
    }
