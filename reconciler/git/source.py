"""The state repository: fetch it, resolve a ref to a commit, read its tree without a checkout.

A local path is opened in place. A URL (file://, git://, https://, ssh) is kept as a bare
mirror under the cache directory and fetched, never re-cloned, so an unchanged remote
costs one round trip. Remote operations are bounded by libgit2's connect and I/O timeouts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pygit2

from reconciler.errors import GitSourceError, GitUnreachable, redact_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_MS = 10_000
MAX_FILE_BYTES = 1 << 20  # no file the desired state is built from is larger
IO_TIMEOUT_MS = 30_000
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:(?!//)")
_REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


def default_cache_dir() -> Path:
    """``$RECONCILER_CACHE_DIR``, else ``$XDG_CACHE_HOME/reconciler`` or ``~/.cache/reconciler``."""
    explicit = os.environ.get("RECONCILER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reconciler"


def is_url(location: str) -> bool:
    """A remote (``scheme://`` or scp-like ``user@host:path``), mirrored; else a local path."""
    return "://" in location or bool(_SCP_LIKE.match(location))


@dataclass(frozen=True)
class Snapshot:
    """One commit's tree (or a sub-directory of it), readable without a checkout."""

    repo: pygit2.Repository
    location: str
    ref: str
    commit: str
    tree_id: str
    path: str
    tree: pygit2.Tree
    # Every path read or looked up, relative to ``path``: the files the desired state is
    # built from, which the commit-signature rule guards (a missing file that was looked
    # up counts too: adding it later changes the state).
    consulted: set[str] = field(default_factory=set, compare=False, repr=False)

    def read(self, relpath: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of a file relative to ``path``; GitSourceError when it is not a file
        or is larger than ``max_bytes`` (checked before the content is read)."""
        self.consulted.add(relpath)
        try:
            obj = self.tree[relpath]
        except KeyError:
            raise GitSourceError(
                f"{self.display(relpath)}: no such file at commit {self.commit[:12]}",
                "add the file or fix the path that names it",
            ) from None
        if not isinstance(obj, pygit2.Blob):
            raise GitSourceError(f"{self.display(relpath)}: is not a file")
        if obj.size > max_bytes:
            raise GitSourceError(
                f"{self.display(relpath)}: {obj.size:,} bytes, over the {max_bytes:,}-byte "
                "limit for a file the state reads",
                "keys, trusted roots, signers and CA files are small; check the path",
            )
        return bytes(obj.data)

    def exists(self, relpath: str) -> bool:
        """Whether a file exists at ``relpath``; recorded as consulted either way, since adding
        the file later would change the state."""
        self.consulted.add(relpath)
        try:
            return isinstance(self.tree[relpath], pygit2.Blob)
        except KeyError:
            return False

    def files(self, directory: str = "") -> Iterator[tuple[str, int]]:
        """(relative path, size) of the files directly in ``directory`` ('' = the top)."""
        if directory:
            try:
                sub = self.tree[directory]
            except KeyError:
                return
            if not isinstance(sub, pygit2.Tree):
                return
            prefix = directory.rstrip("/") + "/"
        else:
            sub, prefix = self.tree, ""
        for entry in sub:
            if isinstance(entry, pygit2.Blob):
                yield prefix + (entry.name or ""), entry.size

    def directories(self, directory: str = "") -> Iterator[str]:
        """The sub-directories directly in ``directory`` ('' = the top), as paths."""
        sub: Any = self.tree
        if directory:
            try:
                sub = self.tree[directory]
            except KeyError:
                return
        if not isinstance(sub, pygit2.Tree):
            return
        prefix = f"{directory.rstrip('/')}/" if directory else ""
        for entry in sub:
            if isinstance(entry, pygit2.Tree):
                yield prefix + (entry.name or "")

    def inputs(self) -> frozenset[str]:
        """The consulted files as paths from the repository root."""
        prefix = self.path.strip("/")
        return frozenset(f"{prefix}/{p}" if prefix else p for p in self.consulted)

    def display(self, relpath: str) -> str:
        """How a file is named in messages: relative to the repository root."""
        return f"{self.path.strip('/')}/{relpath}" if self.path.strip("/") else relpath


class GitSource:
    """A state repository at a local path or a URL (mirrored under ``cache_dir``)."""

    def __init__(self, location: str, cache_dir: Path | None = None) -> None:
        self.location = location
        self.display = redact_url(location) if is_url(location) else location
        self.cache_dir = cache_dir or default_cache_dir()
        self._repo: pygit2.Repository | None = None

    @property
    def repo(self) -> pygit2.Repository:
        """The repository, opened on first use: a local path in place, a URL as a bare
        mirror under the cache directory (filled by :meth:`fetch`).

        Raises:
            GitSourceError: a local path that does not exist or is no git repository.
        """
        if self._repo is None:
            self._repo = self._open()
        return self._repo

    def fetch(self) -> None:
        """Bring the mirror up to date; a local path needs no fetch."""
        if not is_url(self.location):
            return
        repo = self.repo
        remote = repo.remotes["origin"]
        pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
        pygit2.settings.server_timeout = IO_TIMEOUT_MS
        try:
            remote.fetch(
                _REFSPECS,
                callbacks=_Credentials(self.location),
                prune=pygit2.enums.FetchPrune.PRUNE,
            )
        except (pygit2.GitError, OSError) as exc:
            raise GitUnreachable(
                f"cannot fetch {self.display}: {_clean(str(exc), self.location)}",
                "check the URL, the network and the credentials (ssh agent, or a token)",
            ) from None
        log.debug("fetched %s", self.display)

    def snapshot(self, ref: str = "main", path: str = "") -> Snapshot:
        """Resolve ``ref`` to a commit and return its tree at ``path``."""
        repo = self.repo
        commit = self.resolve(ref)
        tree: Any = commit.tree
        clean = path.strip("/")
        if clean:
            try:
                tree = commit.tree[clean]
            except KeyError:
                raise GitSourceError(
                    f"{self.display}: no directory {clean!r} at {ref} ({str(commit.id)[:12]})",
                    "check --path: it names a directory inside the repository",
                ) from None
            if not isinstance(tree, pygit2.Tree):
                raise GitSourceError(f"{self.display}: {clean!r} at {ref} is not a directory")
        return Snapshot(repo, self.display, ref, str(commit.id), str(tree.id), clean, tree)

    def resolve(self, ref: str) -> pygit2.Commit:
        """The commit ``ref`` names: a branch, a tag, origin's branch, or any revision.

        Raises:
            GitSourceError: nothing by that name.
        """
        repo = self.repo
        candidates = [ref] if ref.startswith("refs/") else []
        candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/origin/{ref}"]
        for name in candidates:
            reference = repo.references.get(name)
            if reference is not None:
                return _peel(reference.peel(pygit2.Commit))
        try:
            return _peel(repo.revparse_single(ref).peel(pygit2.Commit))
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            heads = sorted(
                r.removeprefix("refs/heads/")
                for r in repo.references
                if r.startswith("refs/heads/")
            )
            known = ", ".join(heads[:10]) or "none"
            raise GitSourceError(
                f"{self.display}: ref {ref!r} not found",
                f"pass --ref with a branch, tag or commit (branches: {known})",
            ) from None

    def _open(self) -> pygit2.Repository:
        if not is_url(self.location):
            path = Path(self.location)
            if not path.exists():
                raise GitSourceError(
                    f"{self.location}: no such directory",
                    "pass --repo with the path or URL of the state repository",
                )
            try:
                return pygit2.Repository(str(path))
            except pygit2.GitError:
                raise GitSourceError(
                    f"{self.location}: not a git repository",
                    "pass --repo with the path or URL of the state repository",
                ) from None
        # The mirror's config keeps the URL without credentials: they are handed to
        # libgit2 by the callback on each fetch or push, never written to disk.
        stored = _without_secrets(self.location)
        key = hashlib.sha256(stored.encode()).hexdigest()[:24]
        mirror = self.cache_dir / "git" / f"{key}.git"
        if (mirror / "HEAD").exists():
            repo = pygit2.Repository(str(mirror))
            if repo.remotes["origin"].url != stored:  # an older cache kept them: drop them
                repo.remotes.set_url("origin", stored)
            return repo
        mirror.parent.mkdir(parents=True, exist_ok=True)
        repo = pygit2.init_repository(str(mirror), bare=True)
        repo.remotes.create("origin", stored)
        return repo


_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{7,64})")


def reverted_commit(message: str) -> str | None:
    """The commit a revert commit reverts (git's standard message), else None."""
    found = _REVERTS.search(message)
    return found.group(1) if found else None


def push_ref(remote: pygit2.Remote, ref: str, location: str) -> None:
    """Push one branch to ``remote``; credentials as for fetch, never printed."""
    pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
    pygit2.settings.server_timeout = IO_TIMEOUT_MS
    try:
        remote.push([f"{ref}:{ref}"], callbacks=_Credentials(remote.url or location, location))
    except (pygit2.GitError, OSError) as exc:
        shown = redact_url(remote.url or location)
        raise GitUnreachable(
            f"cannot push {ref} to {shown}: {_clean(str(exc), remote.url or location)}",
            "check the remote, your credentials and that the branch does not exist there",
        ) from None
    log.info("pushed %s to %s", ref, redact_url(remote.url or location))


def fetch_ref(remote: pygit2.Remote, refspec: str, location: str) -> None:
    """Fetch one refspec from ``remote``; credentials as for :meth:`GitSource.fetch`."""
    pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
    pygit2.settings.server_timeout = IO_TIMEOUT_MS
    try:
        remote.fetch([refspec], callbacks=_Credentials(remote.url or location, location))
    except (pygit2.GitError, OSError) as exc:
        shown = redact_url(remote.url or location)
        raise GitUnreachable(
            f"cannot fetch {refspec.split(':')[0].lstrip('+')} from {shown}: "
            f"{_clean(str(exc), remote.url or location)}",
            "check the remote, your credentials and that the branch exists there",
        ) from None


def _peel(obj: Any) -> pygit2.Commit:
    if not isinstance(obj, pygit2.Commit):
        raise KeyError("not a commit")
    return obj


def _clean(message: str, url: str) -> str:
    """libgit2 may quote the URL it failed on: never let userinfo or a query through."""
    return message.replace(url, redact_url(url)).strip()


def _without_secrets(location: str) -> str:
    """The URL to store: no userinfo for http(s) (a token often is the user name), no
    password for the others (an ssh user name is part of the address)."""
    if not is_url(location) or "://" not in location:
        return location
    try:
        parts = urlsplit(location)
        port = parts.port
    except ValueError:
        return location
    if parts.username is None and parts.password is None:
        return location
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    if parts.scheme not in ("http", "https") and parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class _Credentials(pygit2.RemoteCallbacks):
    """Userinfo from the URL the user gave, else the ssh agent: never from the state
    repository, and never stored in the mirror's config."""

    def __init__(self, *urls: str) -> None:
        super().__init__()
        self._urls = urls

    def credentials(self, url: str, username_from_url: str | None, allowed_types: int) -> Any:
        if allowed_types & pygit2.enums.CredentialType.USERPASS_PLAINTEXT:
            for candidate in self._urls:
                try:
                    parts = urlsplit(candidate)
                except ValueError:
                    continue
                if "://" in candidate and parts.username:
                    return pygit2.UserPass(unquote(parts.username), unquote(parts.password or ""))
        if allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            return pygit2.KeypairFromAgent(username_from_url or "git")
        return None
