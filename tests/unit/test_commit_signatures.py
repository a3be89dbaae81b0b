"""Commit signatures: real git repositories (pygit2) and the real ssh-keygen."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from reconciler.git import history as git_history
from reconciler.git.history import History
from reconciler.verify.commits import verify_commit as verify_with_history
from reconciler.verify.errors import Refused
from reconciler.verify.inforce import Judge
from reconciler.verify.root import TrustRoot
from tests.support.sshsign import (
    SshKey,
    commit_content,
    commit_gpg_signed,
    commit_ssh_signed,
    commit_unsigned,
    new_key,
    sign,
    ssh_keygen,
    write_signed,
)

ENVS = ["environments"]
DEV = "environments/dev.cue"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SshKey]:
    ssh_keygen()  # fail, not skip, when it is missing
    directory = tmp_path_factory.mktemp("keys")
    return {name: new_key(directory, name) for name in ("alice", "mallory")}


@pytest.fixture
def alice(keys: dict[str, SshKey]) -> SshKey:
    return keys["alice"]


@pytest.fixture
def mallory(keys: dict[str, SshKey]) -> SshKey:
    return keys["mallory"]


@pytest.fixture
def allowed(alice: SshKey) -> bytes:
    return ("# release managers\n" + alice.allowed("alice@example.org")).encode()


@pytest.fixture
def repo(tmp_path: Path) -> pygit2.Repository:
    return pygit2.init_repository(str(tmp_path / "state.git"), bare=True, initial_head="main")


def verify_commit(
    repo: pygit2.Repository, commit: str, allowed: bytes, ssh_keygen: str = "ssh-keygen"
) -> str:
    return verify_with_history(History(repo), commit, allowed, ssh_keygen)


def check_commits(
    repo: pygit2.Repository,
    old: str | None,
    new: str,
    allowed: bytes,
    unsigned: tuple[str, ...] = (),
) -> dict[str, str]:
    """The commit rule as the policy in force applies it to one step of a trail:
    {commit: principal} of the signed commits. ``old`` None: first contact, where the
    newest commit alone must be signed."""
    if old is None:
        return {new: verify_commit(repo, new, allowed)}
    judge = Judge(History(repo), TrustRoot("test"), load=_no_states)
    judged = judge.trail(old, new, allowed, unsigned)
    return {c: how.removeprefix("signed by ") for c, how in judged if how.startswith("signed by")}


def _no_states(commit: str) -> object:
    raise AssertionError("a trail is judged from git alone")


def touching(repo: pygit2.Repository, commits: list[str], paths: list[str]) -> list[str]:
    return History(repo).touching(commits, paths)


def commits_between(repo: pygit2.Repository, old: str | None, new: str) -> list[str]:
    return History(repo).between(old, new)


def refusal(excinfo: pytest.ExceptionInfo[Refused], commit: str, subject: str) -> str:
    """The refusal's text, after checking it names the rule, the commit and its subject."""
    error = excinfo.value
    assert error.rule == "commit-signature"
    assert commit[:10] in error.message
    assert f'"{subject}"' in error.message
    return str(error)


# --- verify_commit -------------------------------------------------------------------


def test_commit_signed_by_allowed_signer_passes_and_names_the_principal(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    assert verify_commit(repo, tip, allowed) == "alice@example.org"
    assert check_commits(repo, None, tip, allowed) == {tip: "alice@example.org"}


def test_unsigned_commit_is_refused_naming_commit_subject_and_rule(
    repo: pygit2.Repository, allowed: bytes
) -> None:
    tip = commit_unsigned(repo, {DEV: "release: v1"}, "dev: v1\n\nbody text")

    with pytest.raises(Refused) as excinfo:
        check_commits(repo, None, tip, allowed)

    text = refusal(excinfo, tip, "dev: v1")
    assert "is not signed" in text
    assert "allowedSigners" in text
    assert "git commit -S" in excinfo.value.hint


def test_gpg_signed_commit_is_refused_as_not_ssh(repo: pygit2.Repository, allowed: bytes) -> None:
    tip = commit_gpg_signed(repo, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed)

    assert "OpenPGP (GPG) signature, not an SSH one" in refusal(excinfo, tip, "dev: v1")


def test_commit_signed_by_key_not_in_allowed_signers_is_refused(
    repo: pygit2.Repository, mallory: SshKey, allowed: bytes
) -> None:
    tip = commit_ssh_signed(repo, mallory, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed)

    assert "not in the allowed-signers file" in refusal(excinfo, tip, "dev: v1")


def test_commit_changed_after_signing_is_refused(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    signed = commit_content(repo, {DEV: "release: v1"}, "dev: v1")
    swapped = commit_content(repo, {DEV: "release: v666"}, "dev: v1")
    tip = write_signed(repo, swapped, sign(alice, signed))

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed)

    assert "does not verify" in refusal(excinfo, tip, "dev: v1")


def test_allowed_key_restricted_to_another_namespace_is_refused(
    repo: pygit2.Repository, alice: SshKey
) -> None:
    file_only = alice.allowed("alice@example.org", namespaces="file").encode()
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, file_only)

    assert "does not verify" in refusal(excinfo, tip, "dev: v1")


def test_signature_made_in_another_namespace_is_refused(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1", namespace="file")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed)

    assert "namespace does not match" in refusal(excinfo, tip, "dev: v1")


def test_principal_from_a_list_of_principals_is_returned(
    repo: pygit2.Repository, alice: SshKey
) -> None:
    shared = alice.allowed("alice@example.org,release@example.org").encode()
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    assert verify_commit(repo, tip, shared) == "alice@example.org"


def test_missing_ssh_keygen_is_refused_with_install_hint(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes, tmp_path: Path
) -> None:
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed, ssh_keygen=str(tmp_path / "no-such-ssh-keygen"))

    assert excinfo.value.rule == "commit-signature"
    assert "cannot run" in excinfo.value.message
    assert "openssh-client" in excinfo.value.hint


def test_failing_ssh_keygen_is_refused(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes, tmp_path: Path
) -> None:
    broken = tmp_path / "ssh-keygen"
    broken.write_text("#!/bin/sh\necho 'something broke' >&2\nexit 1\n")
    broken.chmod(0o755)
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, tip, allowed, ssh_keygen=str(broken))

    assert "something broke" in refusal(excinfo, tip, "dev: v1")


def test_commit_that_cannot_be_read_is_refused(repo: pygit2.Repository, allowed: bytes) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"

    with pytest.raises(Refused) as excinfo:
        verify_commit(repo, missing, allowed)
    assert "0123456789 cannot be read" in excinfo.value.message

    with pytest.raises(Refused):
        check_commits(repo, None, missing, allowed)


def test_allowed_signers_without_signers_is_refused(repo: pygit2.Repository, alice: SshKey) -> None:
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")

    with pytest.raises(Refused, match="lists no signers"):
        check_commits(repo, None, tip, b"# nobody yet\n\n")


# --- which commits are checked ------------------------------------------------------


def test_unsigned_commit_is_refused_whatever_it_touches_unless_declared_unsigned(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    base = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")
    docs = commit_unsigned(repo, {"README.md": "hello"}, "docs")

    with pytest.raises(Refused) as excinfo:
        check_commits(repo, base, docs, allowed)
    refusal(excinfo, docs, "docs")
    assert check_commits(repo, base, docs, allowed, unsigned=("README.md",)) == {}
    assert check_commits(repo, base, docs, allowed, unsigned=("*.md",)) == {}
    with pytest.raises(Refused):  # a pattern that misses the file excuses nothing
        check_commits(repo, base, docs, allowed, unsigned=("docs/**",))


def test_only_commits_after_the_judged_one_are_checked(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    applied = commit_unsigned(repo, {DEV: "release: v1"}, "before signing was required")
    tip = commit_ssh_signed(repo, alice, {DEV: "release: v2"}, "dev: v2")

    assert check_commits(repo, applied, tip, allowed) == {tip: "alice@example.org"}


def test_newest_offending_commit_is_named(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    base = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")
    commit_unsigned(repo, {DEV: "release: v2"}, "dev: v2")
    commit_ssh_signed(repo, alice, {DEV: "release: v3"}, "dev: v3")
    tip = commit_unsigned(repo, {"environments/prod.cue": "release: v1"}, "prod: v1")

    with pytest.raises(Refused) as excinfo:
        check_commits(repo, base, tip, allowed)
    refusal(excinfo, tip, "prod: v1")


def test_unsigned_merge_of_signed_changes_passes(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    base = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")
    feature = commit_ssh_signed(repo, alice, {DEV: "release: v2"}, "dev: v2", parents=[base])
    docs = commit_unsigned(repo, {"README.md": "hello"}, "docs", parents=[base])
    # The merge's tree: docs' tree with the feature's environment file.
    merge = commit_unsigned(repo, {DEV: "release: v2"}, "Merge dev: v2", parents=[docs, feature])

    assert touching(repo, [merge], ENVS) == []
    # The docs commit is unsigned: excused only where the policy declares README unsigned.
    assert check_commits(repo, base, merge, allowed, ("README.md",)) == {
        feature: "alice@example.org"
    }


def test_merge_that_changes_environments_itself_must_be_signed(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    base = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")
    feature = commit_ssh_signed(repo, alice, {DEV: "release: v2"}, "dev: v2", parents=[base])
    other = commit_ssh_signed(repo, alice, {DEV: "release: v3"}, "dev: v3", parents=[base])
    # Content in neither parent: the merge itself is the change.
    merge = commit_unsigned(repo, {DEV: "release: v9"}, "Merge evil", parents=[other, feature])

    assert touching(repo, [merge], ENVS) == [merge]
    with pytest.raises(Refused) as excinfo:
        check_commits(repo, base, merge, allowed)
    refusal(excinfo, merge, "Merge evil")

    signed = commit_ssh_signed(repo, alice, {DEV: "release: v9"}, "Merge", parents=[other, feature])
    assert check_commits(repo, base, signed, allowed) == {
        signed: "alice@example.org",
        other: "alice@example.org",
        feature: "alice@example.org",
    }


def test_merge_bringing_an_unsigned_change_is_refused_naming_that_change(
    repo: pygit2.Repository, alice: SshKey, allowed: bytes
) -> None:
    base = commit_ssh_signed(repo, alice, {DEV: "release: v1"}, "dev: v1")
    sneaky = commit_unsigned(repo, {DEV: "release: v2"}, "dev: v2 unsigned", parents=[base])
    docs = commit_ssh_signed(repo, alice, {"README.md": "hi"}, "docs", parents=[base])
    merge = commit_ssh_signed(repo, alice, {DEV: "release: v2"}, "Merge", parents=[docs, sneaky])

    with pytest.raises(Refused) as excinfo:
        check_commits(repo, base, merge, allowed)
    refusal(excinfo, sneaky, "dev: v2 unsigned")


def test_touching_files_directories_roots_and_deletions(repo: pygit2.Repository) -> None:
    root = commit_unsigned(repo, {DEV: "v1", "README.md": "hi"}, "root")
    readme = commit_unsigned(repo, {"README.md": "hello"}, "readme")
    prod = commit_unsigned(repo, {"environments/prod.cue": "v1"}, "prod")
    gone = commit_unsigned(repo, {DEV: None}, "drop dev")
    history = [gone, prod, readme, root]

    assert touching(repo, history, ["environments/"]) == [gone, prod, root]
    assert touching(repo, history, [DEV]) == [gone, root]
    assert touching(repo, history, ["./environments/prod.cue"]) == [prod]
    assert touching(repo, history, ["settings.cue"]) == []
    assert touching(repo, history, ["settings.cue", "README.md"]) == [readme, root]
    assert touching(repo, history, [""]) == history


def test_commits_between_is_newest_first_hides_old_and_caps_full_history(
    repo: pygit2.Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [commit_unsigned(repo, {DEV: f"v{i}"}, f"v{i}") for i in range(5)]
    newest_first = made[::-1]

    assert commits_between(repo, made[1], made[4]) == newest_first[:3]
    assert commits_between(repo, made[4], made[4]) == []
    assert commits_between(repo, None, made[4]) == newest_first
    monkeypatch.setattr(git_history, "MAX_HISTORY", 3)
    assert commits_between(repo, None, made[4]) == newest_first[:3]


def test_commits_between_after_force_push_checks_the_new_side(
    repo: pygit2.Repository,
) -> None:
    base = commit_unsigned(repo, {DEV: "v1"}, "v1")
    applied = commit_unsigned(repo, {DEV: "v2"}, "v2", parents=[base])
    rewritten = commit_unsigned(repo, {DEV: "v2'"}, "v2 again", parents=[base])

    assert commits_between(repo, applied, rewritten) == [rewritten]


def test_unknown_applied_commit_is_refused(repo: pygit2.Repository) -> None:
    tip = commit_unsigned(repo, {DEV: "v1"}, "v1")

    with pytest.raises(Refused, match="cannot be read"):
        check_commits(repo, "f" * 40, tip, b"alice ssh-ed25519 AAAA\n")
