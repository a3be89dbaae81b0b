"""Commit signatures: every commit that changes environments is SSH-signed by an allowed signer.

When the settings name ``settings.git.allowedSigners`` (an ``ssh-keygen -Y`` ALLOWED
SIGNERS file), a change reaches an environment only if every commit that changed the
environment's files since the last applied commit carries an SSH signature (the
``gpgsig`` header git writes with ``gpg.format=ssh``) in namespace ``git``, made by a key
that file allows. Verification is ``ssh-keygen -Y verify``, the same check
``git verify-commit`` runs, so what a person verifies locally is what the reconciler
verifies.

Fail closed: an unsigned commit, a GPG or X.509 signature, a bad signature, a key not in
the file (or not allowed in namespace ``git``), a commit that cannot be read, a missing
or failing ``ssh-keygen`` all raise :class:`Refused`; nothing returns False.

Where trust comes from is the caller's decision and it matters: read the allowed-signers
file from the last *applied* commit (not from the commit being checked, or whoever can
push can also add their key), and include the allowed-signers file and the settings in
``paths`` so that a change to them must itself be signed by an already-allowed signer.

History is walked with pygit2 (pure, values in and out); only :func:`verify_commit`
runs a subprocess, in a private temporary directory and with a time limit.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import SortMode

from reconciler.verify.errors import Refused

log = logging.getLogger(__name__)

RULE = "commit-signature"
NAMESPACE = "git"
# With no applied commit there is no lower bound: check the newest commits only, so a
# first pass over a long history stays bounded. Older commits are trusted as the base.
MAX_HISTORY = 1000
SSH_KEYGEN_TIMEOUT_S = 30.0
SHORT_SHA = 10

_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
_PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
_X509_ARMOR = b"-----BEGIN SIGNED MESSAGE-----"
_SUBJECT_MAX = 72

_RULE_TEXT = (
    "settings.git.allowedSigners requires every commit that changes environments to carry "
    "an SSH signature (namespace git) by an allowed signer"
)
_SIGN_HINT = (
    "sign commits with an SSH key listed in the allowed-signers file "
    "(git config gpg.format ssh; git config user.signingkey KEY.pub; git commit -S), "
    "then re-sign or revert the offending commit"
)
_INSTALL_HINT = (
    "install OpenSSH's ssh-keygen 8.2 or newer (Debian/Ubuntu: apt-get install "
    "openssh-client) and make it available on PATH"
)


def commits_between(repo: pygit2.Repository, old: str | None, new: str) -> list[str]:
    """Commits reachable from ``new`` and not from ``old``, newest first.

    With ``old`` None (nothing applied yet) the walk is capped at the newest
    :data:`MAX_HISTORY` commits. ``old`` need not be an ancestor of ``new``: after a
    force-push the range is everything ``new`` has that ``old`` had not.
    """
    tip = _commit(repo, new)
    walker = repo.walk(tip.id, SortMode.TOPOLOGICAL | SortMode.TIME)
    if old is not None:
        walker.hide(_commit(repo, old).id)
    limit = MAX_HISTORY if old is None else None
    try:
        return [str(c.id) for c in itertools.islice(walker, limit)]
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise Refused(
            RULE,
            f"cannot walk the history of {new[:SHORT_SHA]}: {exc}",
            "the state repository is incomplete or corrupt; re-clone it",
        ) from None


def touching(repo: pygit2.Repository, commits: Sequence[str], paths: Sequence[str]) -> list[str]:
    """Those of ``commits`` that change any of ``paths`` (files or directories).

    A commit changes a path when the entry there (object id and mode, or absence)
    differs from the entry in *every* parent. A root commit changes a path that exists in
    it. A merge whose result at the path equals one parent's changes nothing there: that
    content came from commits that are judged on their own. ``""`` or ``"."`` is the whole
    tree.
    """
    if not paths:
        raise ValueError("touching() needs at least one path")
    clean = [_clean_path(p) for p in paths]
    found: list[str] = []
    for commit_id in commits:
        commit = _commit(repo, commit_id)
        try:
            mine = [_entry(commit.tree, p) for p in clean]
            parents = [[_entry(parent.tree, p) for p in clean] for parent in commit.parents]
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise Refused(
                RULE,
                f"cannot read {_describe(commit)} or its parents: {exc}",
                "the state repository is incomplete or corrupt; re-clone it",
            ) from None
        if not parents:
            changed = any(entry is not None for entry in mine)
        else:
            changed = any(
                all(theirs[i] != entry for theirs in parents) for i, entry in enumerate(mine)
            )
        if changed:
            found.append(commit_id)
    return found


def verify_commit(
    repo: pygit2.Repository,
    commit_id: str,
    allowed_signers: bytes,
    ssh_keygen: str = "ssh-keygen",
) -> str:
    """Return the principal whose SSH signature on the commit ``allowed_signers`` accepts.

    Like git: ``find-principals`` names the candidates for the signing key, then
    ``verify -I principal -n git`` checks the signature over the exact signed bytes (the
    commit object without its ``gpgsig`` header) and the file's ``namespaces=`` and
    validity options, at the current time.
    """
    commit = _commit(repo, commit_id)
    label = _describe(commit)
    try:
        signature, payload = commit.gpg_signature
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise Refused(RULE, f"cannot read the signature of {label}: {exc}", _SIGN_HINT) from None
    if signature is None or payload is None:
        raise Refused(RULE, f"{label} is not signed; {_RULE_TEXT}", _SIGN_HINT)
    signature = bytes(signature)
    if not signature.lstrip().startswith(_SSH_ARMOR):
        kind = (
            "an OpenPGP (GPG) signature"
            if signature.lstrip().startswith(_PGP_ARMOR)
            else "an X.509 signature"
            if signature.lstrip().startswith(_X509_ARMOR)
            else "a signature of unknown format"
        )
        raise Refused(RULE, f"{label} carries {kind}, not an SSH one; {_RULE_TEXT}", _SIGN_HINT)

    with tempfile.TemporaryDirectory(prefix="reconciler-sshsig-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        sigfile = Path(tmp) / "commit.sig"
        allowed.write_bytes(allowed_signers)
        sigfile.write_bytes(signature)

        found = _ssh_keygen(
            ssh_keygen, ["-Y", "find-principals", "-f", str(allowed), "-s", str(sigfile)], b""
        )
        principals = [p.strip() for p in found.stdout.decode("utf-8", "replace").splitlines()]
        principals = [p for p in principals if p]
        if found.returncode != 0 or not principals:
            raise Refused(
                RULE,
                f"{label} is signed by a key that is not in the allowed-signers file"
                f"{_detail(found.stderr)}; {_RULE_TEXT}",
                "add the signer's public key to the allowed-signers file (in a commit signed "
                "by an already-allowed signer), or re-sign the commit with an allowed key",
            )

        failures: list[str] = []
        for principal in principals:
            args = ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE]
            checked = _ssh_keygen(ssh_keygen, [*args, "-s", str(sigfile)], bytes(payload))
            if checked.returncode == 0:
                log.debug("%s signed by %s", label, principal)
                return principal
            failures.append(f"{principal}{_detail(checked.stderr)}")

    raise Refused(
        RULE,
        f"{label}: the SSH signature does not verify for any allowed signer "
        f"({'; '.join(failures)}); {_RULE_TEXT}",
        "the commit was changed after signing, signed in another namespace than git, or "
        "the key is not allowed for namespace git (namespaces=) or at this time "
        "(valid-after/valid-before); re-sign it with an allowed key",
    )


def check_commits(
    repo: pygit2.Repository,
    old: str | None,
    new: str,
    paths: Sequence[str],
    allowed_signers: bytes,
) -> dict[str, str]:
    """Verify every commit in ``old..new`` that changes ``paths``: {commit: principal}.

    Stops at the first refusal, newest commit first; the refusal names that commit.
    An allowed-signers file without a single signer is refused: an empty policy would
    accept nothing and is surely a mistake.
    """
    if not _has_signers(allowed_signers):
        raise Refused(
            RULE,
            "settings.git.allowedSigners names a file that lists no signers",
            'add lines like `alice@example.org namespaces="git" ssh-ed25519 AAAA...` or '
            "remove settings.git.allowedSigners",
        )
    relevant = touching(repo, commits_between(repo, old, new), paths)
    signed = {c: verify_commit(repo, c, allowed_signers) for c in relevant}
    log.debug("verified %d signed commit(s) up to %s", len(signed), new[:SHORT_SHA])
    return signed


def _commit(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    """The commit ``rev`` (full or abbreviated hex) names, or a refusal naming it."""
    try:
        obj: Any = repo[rev]
        if not isinstance(obj, pygit2.Commit):
            obj = obj.peel(pygit2.Commit)
    except (KeyError, ValueError, TypeError, pygit2.GitError):
        raise Refused(
            RULE,
            f"commit {rev[:SHORT_SHA]} cannot be read from the state repository",
            "fetch the state repository again; if the commit was removed by a force-push, "
            "the next pass starts from the branch as it is now",
        ) from None
    if not isinstance(obj, pygit2.Commit):
        raise Refused(RULE, f"{rev[:SHORT_SHA]} is not a commit")
    return obj


def _describe(commit: pygit2.Commit) -> str:
    """``commit 1a2b3c4d5e "subject"``, printable whatever the message holds."""
    raw: bytes = commit.raw_message
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    subject = "".join(ch if ch.isprintable() else "?" for ch in (lines[0] if lines else ""))
    if len(subject) > _SUBJECT_MAX:
        subject = subject[: _SUBJECT_MAX - 1] + "…"
    return f'commit {str(commit.id)[:SHORT_SHA]} "{subject}"'


def _clean_path(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} leaves the repository")
    return "/".join(parts)


def _entry(tree: pygit2.Tree, path: str) -> tuple[str, int] | None:
    if not path:
        return (str(tree.id), 0o040000)
    try:
        obj: Any = tree[path]
    except KeyError:
        return None
    return (str(obj.id), int(obj.filemode))


def _has_signers(allowed_signers: bytes) -> bool:
    lines = allowed_signers.decode("utf-8", "replace").splitlines()
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def _ssh_keygen(exe: str, args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run ssh-keygen; a missing, unrunnable or hung one is a refusal, never a crash."""
    try:
        return subprocess.run(
            [exe, *args],
            input=stdin,
            capture_output=True,
            timeout=SSH_KEYGEN_TIMEOUT_S,
            check=False,
        )
    except OSError as exc:
        raise Refused(
            RULE,
            f"cannot run {exe!r} to verify commit signatures ({exc.strerror or exc})",
            _INSTALL_HINT,
        ) from None
    except subprocess.TimeoutExpired:
        raise Refused(
            RULE,
            f"{exe!r} did not finish verifying a commit signature within "
            f"{SSH_KEYGEN_TIMEOUT_S:.0f} s",
            "check that ssh-keygen is a working OpenSSH ssh-keygen",
        ) from None


def _detail(stderr: bytes) -> str:
    """The last line ssh-keygen printed, made safe to show: why it said no."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    text = "".join(ch if ch.isprintable() else "?" for ch in lines[-1])[:200]
    return f" ({text})"
