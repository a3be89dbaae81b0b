"""SSH-signed git commits for tests, made the way `git commit -S` with gpg.format=ssh does.

The commit object is built with pygit2, its exact bytes are signed with the real
``ssh-keygen -Y sign -n git``, and the signature is stored in the ``gpgsig`` header.
Helpers work on bare and non-bare repositories (a non-bare one gets its work tree and
index moved along, so :class:`tests.support.staterepo.StateRepo` can keep committing).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import CheckoutStrategy, FileMode

from tests.support.staterepo import SIGNATURE

BRANCH = "refs/heads/main"
# Looks like what `git commit -S` writes with gpg.format=openpgp; never verifiable.
GPG_SIGNATURE = (
    "-----BEGIN PGP SIGNATURE-----\n"
    "\n"
    "iHUEABYKAB0WIQTtest0nly+not/a/real/signature0000000AAoJEAAAAAAAAAAA\n"
    "=abcd\n"
    "-----END PGP SIGNATURE-----"
)


def ssh_keygen() -> str:
    """The real ssh-keygen; a missing one fails the test with the fix, never skips."""
    exe = shutil.which("ssh-keygen")
    if not exe:
        pytest.fail("no `ssh-keygen` on PATH: install it (apt-get install -y openssh-client)")
    return exe


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key pair on disk: ``private`` is the key file, ``public`` its .pub line."""

    private: Path
    public: str

    def allowed(self, principal: str, namespaces: str | None = "git") -> str:
        """An ALLOWED SIGNERS line for this key (``namespaces=None``: no restriction)."""
        keytype, blob = self.public.split()[:2]
        option = f' namespaces="{namespaces}"' if namespaces is not None else ""
        return f"{principal}{option} {keytype} {blob}\n"


def new_key(directory: Path, name: str = "id_ed25519") -> SshKey:
    """`ssh-keygen -t ed25519 -N ""`: a passphrase-less key pair under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    subprocess.run(
        [ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)],
        check=True,
        capture_output=True,
    )
    return SshKey(private, private.with_name(name + ".pub").read_text().strip())


def sign(key: SshKey, data: bytes | str, namespace: str = "git") -> str:
    """An armored SSH signature of exactly ``data``, as `ssh-keygen -Y sign` writes it."""
    raw = data.encode() if isinstance(data, str) else data
    done = subprocess.run(
        [ssh_keygen(), "-Y", "sign", "-f", str(key.private), "-n", namespace],
        input=raw,
        check=True,
        capture_output=True,
    )
    return done.stdout.decode().strip()


def tree_with(
    repo: pygit2.Repository,
    files: Mapping[str, bytes | str | None],
    base: pygit2.Oid | None = None,
) -> pygit2.Oid:
    """The tree of commit ``base`` (or empty) with ``files`` written (None deletes)."""
    index = pygit2.Index()
    if base is not None:
        commit = repo[base]
        assert isinstance(commit, pygit2.Commit)
        index.read_tree(commit.tree)
    for path, data in files.items():
        if data is None:
            index.remove(path)
            continue
        blob = repo.create_blob(data.encode() if isinstance(data, str) else data)
        index.add(pygit2.IndexEntry(path, blob, FileMode.BLOB))
    return index.write_tree(repo)


def commit_content(
    repo: pygit2.Repository,
    files: Mapping[str, bytes | str | None],
    message: str,
    parents: Sequence[pygit2.Oid | str] | None = None,
) -> str:
    """The bytes (as str) of a commit object on ``parents`` (default: the branch tip).

    The tree is the first parent's with ``files`` applied. This is what gets signed.
    """
    if parents is None:
        tip = repo.references.get(BRANCH)
        parents = [] if tip is None else [tip.target]
    oids = [pygit2.Oid(hex=p) if isinstance(p, str) else p for p in parents]
    tree = tree_with(repo, files, oids[0] if oids else None)
    parent_ids: list[str | pygit2.Oid] = list(oids)
    # pygit2's stubs say Oid; it returns the commit's text.
    return str(repo.create_commit_string(SIGNATURE, SIGNATURE, message, tree, parent_ids))


def write_signed(repo: pygit2.Repository, content: str, signature: str) -> str:
    """Store ``content`` with ``signature`` in its gpgsig header and move the branch there."""
    oid = repo.create_commit_with_signature(content, signature)
    _move_branch(repo, oid)
    return str(oid)


def commit_ssh_signed(
    repo: pygit2.Repository,
    key: SshKey,
    files: Mapping[str, bytes | str | None],
    message: str = "change state",
    parents: Sequence[pygit2.Oid | str] | None = None,
    namespace: str = "git",
) -> str:
    """An SSH-signed commit, like `git commit -S` with gpg.format=ssh."""
    content = commit_content(repo, files, message, parents)
    return write_signed(repo, content, sign(key, content, namespace))


def commit_gpg_signed(
    repo: pygit2.Repository,
    files: Mapping[str, bytes | str | None],
    message: str = "change state",
    parents: Sequence[pygit2.Oid | str] | None = None,
) -> str:
    """A commit whose gpgsig header holds an OpenPGP-looking (not SSH) signature."""
    return write_signed(repo, commit_content(repo, files, message, parents), GPG_SIGNATURE)


def commit_unsigned(
    repo: pygit2.Repository,
    files: Mapping[str, bytes | str | None],
    message: str = "change state",
    parents: Sequence[pygit2.Oid | str] | None = None,
) -> str:
    """A plain commit without any signature."""
    content = commit_content(repo, files, message, parents)
    oid = repo.odb.write(pygit2.enums.ObjectType.COMMIT, content.encode())
    _move_branch(repo, oid)
    return str(oid)


def _move_branch(repo: pygit2.Repository, oid: pygit2.Oid) -> None:
    repo.references.create(BRANCH, oid, force=True)
    if not repo.is_bare and repo.head.name == BRANCH:
        repo.checkout_head(strategy=CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
