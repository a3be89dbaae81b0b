"""Attacks on the trust gate (issue 11): a promotion world whose state repository
requires SSH-signed commits, the people who sign (alice) or only try to (mallory), and
the assertion every refusal makes.

Commits are real: SSH signatures from the real ``ssh-keygen`` (see
:mod:`tests.support.sshsign`), reverts computed by libgit2 as ``git revert`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import pytest

from tests.support import recordkeys
from tests.support.sshsign import (
    SshKey,
    commit_content,
    commit_ssh_signed,
    commit_unsigned,
    new_key,
    sign,
    write_signed,
)
from tests.support.staterepo import SIGNATURE
from tests.support.world import World

SIGNERS = "keys/allowed_signers"
ALICE = "alice@example.org"
MALLORY = "mallory@example.org"
SHORT = 10  # how refusals name a commit: its first 10 hex characters

Files = Mapping[str, bytes | str | None]


def settings_cue(host: str, verify: str, signers: str | None = SIGNERS) -> str:
    """``reconciler.cue`` as :func:`tests.support.world.build_world` writes it, plus
    ``settings.git.allowedSigners`` (``signers=None``: no signed-commit rule)."""
    git = f'\tgit: allowedSigners: "{signers}"\n' if signers else ""
    return (
        "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{host}": plainHTTP: true\n'
        f"\tverify: {verify}\n\t{recordkeys.SETTINGS}\n{git}}}\n"
    )


@dataclass
class SignedWorld:
    """A :class:`World` whose main branch requires commits signed by alice."""

    world: World
    alice: SshKey
    mallory: SshKey
    verify: str  # the CUE of settings.verify

    @property
    def repo(self) -> pygit2.Repository:
        return self.world.repo.repo

    def signed(self, files: Files, message: str, by: SshKey | None = None) -> str:
        """A commit on main signed by ``by`` (default alice)."""
        return commit_ssh_signed(self.repo, by or self.alice, files, message)

    def unsigned(self, files: Files, message: str) -> str:
        return commit_unsigned(self.repo, files, message)

    def signed_aside(self, files: Files, message: str) -> str:
        """A commit alice signs on top of main without moving main: a merge request branch."""
        content = commit_content(self.repo, files, message)
        return str(self.repo.create_commit_with_signature(content, sign(self.alice, content)))

    def merge(self, branch_tip: str, message: str) -> str:
        """An unsigned merge commit of ``branch_tip`` into main, as a forge's merge button
        makes it: its tree is main's with the branch's changes and nothing else."""
        main = self.repo.revparse_single("main").peel(pygit2.Commit)
        merged = self.repo.merge_commits(main, pygit2.Oid(hex=branch_tip))
        assert not merged.conflicts, "the merge has conflicts"
        tree = merged.write_tree(self.repo)
        parents = [main.id, pygit2.Oid(hex=branch_tip)]
        oid = self.repo.create_commit(
            "refs/heads/main", SIGNATURE, SIGNATURE, message, tree, parents
        )
        self.repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
        return str(oid)

    def revert(self, commit: str, message: str | None = None) -> str:
        """`git revert` of ``commit`` on main, signed by alice; ``message`` replaces git's
        standard one ("This reverts commit <sha>.")."""
        head = self.repo.revparse_single("main").peel(pygit2.Commit)
        reverted = self.repo[pygit2.Oid(hex=commit)].peel(pygit2.Commit)
        index = self.repo.revert_commit(reverted, head)
        assert not index.conflicts, f"reverting {commit[:SHORT]} conflicts"
        tree = index.write_tree(self.repo)
        subject = reverted.message.splitlines()[0]
        text = message or f'Revert "{subject}"\n\nThis reverts commit {commit}.\n'
        # pygit2's stubs say Oid; it returns the commit's text.
        content = str(self.repo.create_commit_string(SIGNATURE, SIGNATURE, text, tree, [head.id]))
        return write_signed(self.repo, content, sign(self.alice, content))

    def apply(
        self, capsys: pytest.CaptureFixture[str], *args: str
    ) -> tuple[int, dict[str, dict[str, Any]]]:
        """`reconciler apply --json`: the exit code and each environment's result by name."""
        code, result = self.world.cli(capsys, "apply", *args)
        return code, by_name(result)


def require_signed_commits(
    world: World, keys: Path, verify: str = "insecureSkipSignatures: true"
) -> SignedWorld:
    """Alice signs the commit that names ``keys/allowed_signers`` (alice only) in
    ``settings.git.allowedSigners``; ``verify`` keeps the world's settings.verify."""
    alice, mallory = new_key(keys, "alice"), new_key(keys, "mallory")
    commit_ssh_signed(
        world.repo.repo,
        alice,
        {"reconciler.cue": settings_cue(world.host, verify), SIGNERS: alice.allowed(ALICE)},
        "Require signed commits",
    )
    return SignedWorld(world, alice, mallory, verify)


def by_name(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in result["environments"]}


def assert_refused(env: Mapping[str, Any], rule: str, *named: str) -> None:
    """``env`` was refused by ``rule`` and its message names one of ``named``: a commit
    (given in full, shown by its first 10 hex characters) or a file."""
    error = env.get("error") or {}
    assert env["status"] == "refused", (
        f"{env['name']} is {env['status']!r}, not refused: {error.get('message')}"
    )
    assert error["rule"] == rule, error["message"]
    if named:
        shown = [n[:SHORT] if _is_commit(n) else n for n in named]
        assert any(s in error["message"] for s in shown), (
            f"the refusal names none of {shown}: {error['message']}"
        )


def _is_commit(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)
