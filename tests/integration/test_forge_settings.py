"""settings.forge comes from the policy in force: an unsigned commit on main that points the
forge (and so the token) elsewhere is never used. Real git, real cue, real SSH signatures."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.forge.gitea import Gitea
from reconciler.proposals.mergerequests import forge_in_force
from tests.support.attack import require_signed_commits
from tests.support.registry_servers import RegistryServer
from tests.support.world import build_world


def forge_cue(url: str) -> str:
    return (
        'package reconciler\n\nsettings: forge: {type: "gitea", '
        f'url: "{url}", repository: "acme/state", tokenEnv: "RECONCILER_FORGE_T"}}\n'
    )


def test_the_forge_and_its_token_come_only_from_the_policy_in_force(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"forge.cue": forge_cue("https://git.example.org")},
    )
    signed = require_signed_commits(world, tmp_path / "ssh")
    monkeypatch.setenv("RECONCILER_FORGE_T", "the-token")
    forge = forge_in_force(world.reconciler())
    assert isinstance(forge, Gitea) and forge.api.base == "https://git.example.org/api/v1"

    # Someone with push but no signing key points the forge at their own host.
    signed.unsigned({"forge.cue": forge_cue("https://attacker.example")}, "forge elsewhere")
    forge = forge_in_force(world.reconciler())
    assert isinstance(forge, Gitea) and forge.api.base == "https://git.example.org/api/v1"

    # Signed by alice, the same change is in force.
    signed.signed({"forge.cue": forge_cue("https://git2.example.org")}, "move the forge")
    forge = forge_in_force(world.reconciler())
    assert isinstance(forge, Gitea) and forge.api.base == "https://git2.example.org/api/v1"
