"""settings.forge comes from the policy in force: an unsigned commit on main that points the
forge (and so the token) elsewhere is never used. Real git, real cue, real SSH signatures."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from reconciler.cli.main import main
from reconciler.forge import CommitState
from reconciler.forge.gitea import Gitea
from reconciler.proposals.mergerequests import evaluate, forge_in_force
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


def test_a_merge_requests_check_runs_under_the_settings_in_force_not_its_own(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str
) -> None:
    """A branch that changes settings (here: its registry stops being plain HTTP, as it
    could add a record key of its own) is checked under the settings in force on main."""
    world = build_world(plain_registry.host, tmp_path)
    repo = world.repo.repo
    main = str(repo.references["refs/heads/main"].target)
    settings = (world.repo.path / "reconciler.cue").read_text()
    head = world.repo.commit(
        {
            "environments/dev.cue": world.env("dev", "v1.2"),
            "reconciler.cue": settings.replace("plainHTTP: true", "plainHTTP: false"),
        },
        "dev to v1.2, and my own registry settings",
    )
    repo.references["refs/heads/main"].set_target(main)  # the commit is a branch's, not main's
    repo.references.create("refs/heads/feature", head)
    tags = world.tags()
    check = evaluate(world.reconciler(), head)
    assert check.state is CommitState.SUCCESS, check.summary
    assert check.environments == ["dev"] and "dev v1.2" in check.summary
    assert world.tags() == tags  # a check writes nothing

    # main moves on: the branch no longer holds what the merge would be judged from
    world.repo.repo.checkout("refs/heads/main", strategy=pygit2.enums.CheckoutStrategy.FORCE)
    world.repo.commit({"environments/staging.cue": world.env("staging", "v1.2")}, "staging")
    behind = evaluate(world.reconciler(), head)
    assert behind.state is CommitState.FAILURE and "behind main" in behind.summary
    assert behind.error is not None and "merge main into the branch" in behind.error.hint


def test_open_without_a_forge_or_its_token_fails_before_any_branch_is_made(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    repo = str(world.repo.path)
    assert main(["promote", "dev", "v1.2", "--open", "--repo", repo]) == 1
    assert "no forge is configured: settings.forge is not set" in capsys.readouterr().err

    world.repo.commit({"forge.cue": forge_cue("https://git.example.org")}, "a forge")
    monkeypatch.delenv("RECONCILER_FORGE_T", raising=False)
    assert main(["promote", "dev", "v1.2", "--open", "--repo", repo]) == 1
    err = capsys.readouterr().err
    assert "$RECONCILER_FORGE_T" in err and "is not set" in err
    assert set(world.repo.repo.branches.local) == {"main"}  # nothing made, nothing pushed
