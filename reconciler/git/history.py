"""The one reader of the state repository's history: walks, ancestry, file contents.

Every question the reconciler asks of git history goes through :class:`History`, so
there is one answer to "does this commit descend from that one", "which commits
changed these files" and "what did this file hold then". Answers are values (ids,
bytes, :class:`Entry`), never pygit2 objects, so the trust logic that consumes them
stays pure and testable with plain data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pygit2
from pygit2.enums import SortMode

from reconciler.errors import GitSourceError

SHORT_SHA = 10
# With no lower bound (nothing applied yet) a walk stops here, so a first pass over a
# long history stays bounded; older commits are the trusted base.
MAX_HISTORY = 1000
_SUBJECT_MAX = 72


@dataclass(frozen=True)
class Entry:
    """What a tree holds at a path: an object id and a file mode."""

    oid: str
    mode: int


@dataclass(frozen=True)
class Commit:
    """One commit, as values."""

    id: str
    parents: tuple[str, ...]
    message: str
    author: str  # "Name <email>"
    committer: str
    time: int  # committer time, seconds since the epoch
    label: str  # 'commit 1a2b3c4d5e "subject"', printable whatever the message holds

    @property
    def short(self) -> str:
        """The id as shown in messages."""
        return self.id[:SHORT_SHA]


class History:
    """Questions about commits of one repository; unreadable objects raise GitSourceError."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo

    # ------------------------------------------------------------------ commits

    def commit(self, rev: str) -> Commit:
        """The commit ``rev`` (its id) as values.

        Raises:
            GitSourceError: no such commit.
        """
        c = self._commit(rev)
        return Commit(
            id=str(c.id),
            parents=tuple(str(p) for p in c.parent_ids),
            message=c.message,
            author=_person(c.author),
            committer=_person(c.committer),
            time=int(c.commit_time),
            label=_label(c),
        )

    def signature(self, rev: str) -> tuple[bytes | None, bytes | None]:
        """The commit's ``gpgsig`` header and the exact bytes it signs (None, None: unsigned)."""
        try:
            signature, payload = self._commit(rev).gpg_signature
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitSourceError(f"cannot read the signature of {rev[:SHORT_SHA]}: {exc}") from None
        if signature is None or payload is None:
            return None, None
        return bytes(signature), bytes(payload)

    def descends(self, new: str, old: str) -> bool:
        """``new`` is ``old`` or has it as an ancestor; unknown commits descend from nothing."""
        if new == old:
            return True
        try:
            return bool(self.repo.descendant_of(pygit2.Oid(hex=new), pygit2.Oid(hex=old)))
        except (pygit2.GitError, KeyError, ValueError):
            return False

    def between(self, old: str | None, new: str) -> list[str]:
        """Commits reachable from ``new`` and not from ``old``, newest first (topological).

        ``old`` None walks at most :data:`MAX_HISTORY` commits. ``old`` need not be an
        ancestor of ``new``: after a force-push it is everything ``new`` has that ``old``
        had not.
        """
        walker = self.repo.walk(self._commit(new).id, SortMode.TOPOLOGICAL | SortMode.TIME)
        if old is not None:
            walker.hide(self._commit(old).id)
        try:
            return [
                str(c.id) for c in itertools.islice(walker, MAX_HISTORY if old is None else None)
            ]
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitSourceError(
                f"cannot walk the history of {new[:SHORT_SHA]}: {exc}",
                "the state repository is incomplete or corrupt; re-clone it",
            ) from None

    def mainline(self, tip: str, limit: int = MAX_HISTORY) -> Iterator[Commit]:
        """First-parent history from ``tip``: the branch as its merges made it."""
        current: str | None = tip
        for _ in range(limit):
            if current is None:
                return
            commit = self.commit(current)
            yield commit
            current = commit.parents[0] if commit.parents else None

    # ------------------------------------------------------------------ contents

    def entry(self, rev: str, path: str) -> Entry | None:
        """What ``rev``'s tree holds at ``path`` ('' = the whole tree), None if absent."""
        return _entry(self._commit(rev).tree, clean_path(path))

    def file_at(self, rev: str, path: str) -> bytes | None:
        """A file's bytes at ``rev``; None when the commit or the file does not exist."""
        try:
            obj: Any = self._commit(rev).tree[clean_path(path)]
        except (KeyError, GitSourceError):
            return None
        return bytes(obj.data) if isinstance(obj, pygit2.Blob) else None

    def changes(self, rev: str, paths: Iterable[str]) -> dict[str, tuple[Entry | None, ...]]:
        """The paths ``rev`` changes, each with its entries in the parents.

        A commit changes a path when its entry there (or absence) differs from the
        entry in *every* parent: a merge that takes one parent's content adds nothing of
        its own there. A root commit changes every path it has.
        """
        commit = self._commit(rev)
        found: dict[str, tuple[Entry | None, ...]] = {}
        try:
            parents = [p.tree for p in commit.parents]
            for path in sorted({clean_path(p) for p in paths}):
                mine = _entry(commit.tree, path)
                theirs = tuple(_entry(tree, path) for tree in parents)
                if (not theirs and mine is not None) or (theirs and mine not in theirs):
                    found[path] = theirs
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitSourceError(
                f"cannot read {_label(commit)} or its parents: {exc}",
                "the state repository is incomplete or corrupt; re-clone it",
            ) from None
        return found

    def changed_files(self, rev: str) -> dict[str, tuple[Entry | None, ...]]:
        """Every file ``rev`` changes, whatever it is, with its entries in the parents.

        Unlike :meth:`changes`, a merge is compared with its *first* parent only: a path
        that equals the side branch's is still a change to the branch the merge lands
        on (an old commit merged in can bring back old files). A root commit changes
        every file it has.
        """
        commit = self._commit(rev)
        try:
            parents = list(commit.parents)
            base = parents[0].tree if parents else None
            diff = (
                base.diff_to_tree(commit.tree)
                if base is not None
                else commit.tree.diff_to_tree(swap=True)
            )
            paths = {d.new_file.path for d in diff.deltas} | {d.old_file.path for d in diff.deltas}
            return {path: tuple(_entry(p.tree, path) for p in parents) for path in sorted(paths)}
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise GitSourceError(
                f"cannot read {_label(commit)} or its parents: {exc}",
                "the state repository is incomplete or corrupt; re-clone it",
            ) from None

    def clean_merge(self, rev: str) -> bool:
        """``rev`` is a merge of two parents whose tree is exactly what a clean three-way
        merge of them gives: it adds nothing that no parent's author wrote."""
        commit = self._commit(rev)
        if len(commit.parents) != 2:
            return False
        try:
            ours, theirs = commit.parent_ids
            merged = self.repo.merge_commits(ours, theirs)
            if merged.conflicts is not None:
                return False
            return bool(merged.write_tree(self.repo) == commit.tree_id)
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def touching(self, commits: Sequence[str], paths: Sequence[str]) -> list[str]:
        """Those of ``commits`` that change any of ``paths`` (see :meth:`changes`)."""
        return [c for c in commits if self.changes(c, paths)]

    def reverted(self, revert: str, paths: Sequence[str], limit: int = 200) -> str | None:
        """The commit whose changes to ``paths`` ``revert`` undid, judged by content.

        Walks the mainline back from ``revert``'s first parent to the newest commit that
        changed ``paths`` there (a merge counts as the change it brought in) and answers
        it if its parent held what ``revert`` holds now; None if ``revert`` restores
        nothing, whatever its message says.
        """
        mine = list(self.changes(revert, paths))
        first = self.commit(revert).parents
        if not mine or not first:
            return None
        now = {p: self.entry(revert, p) for p in mine}
        for commit in itertools.islice(self.mainline(first[0]), limit):
            parent = commit.parents[0] if commit.parents else None
            before = {p: self.entry(parent, p) if parent else None for p in mine}
            changed = [p for p in mine if self.entry(commit.id, p) != before[p]]
            if changed:
                return commit.id if all(now[p] == before[p] for p in changed) else None
        return None

    # ------------------------------------------------------------------ helpers

    def _commit(self, rev: str) -> pygit2.Commit:
        try:
            obj: Any = self.repo[rev]
            if not isinstance(obj, pygit2.Commit):
                obj = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, TypeError, pygit2.GitError):
            raise GitSourceError(
                f"commit {rev[:SHORT_SHA]} cannot be read from the state repository",
                "fetch the state repository again; if a force-push removed the commit, "
                "restore it or roll back with a new commit",
            ) from None
        if not isinstance(obj, pygit2.Commit):
            raise GitSourceError(f"{rev[:SHORT_SHA]} is not a commit")
        return obj


def _person(sig: pygit2.Signature) -> str:
    return f"{sig.name} <{sig.email}>"


def _label(commit: pygit2.Commit) -> str:
    raw: bytes = commit.raw_message
    lines = raw.decode("utf-8", "replace").strip().splitlines()
    subject = "".join(ch if ch.isprintable() else "?" for ch in (lines[0] if lines else ""))
    if len(subject) > _SUBJECT_MAX:
        subject = subject[: _SUBJECT_MAX - 1] + "…"
    return f'commit {str(commit.id)[:SHORT_SHA]} "{subject}"'


def clean_path(path: str) -> str:
    """A repository path without '.' parts or slashes at the ends; '..' is a ValueError."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} leaves the repository")
    return "/".join(parts)


def _entry(tree: pygit2.Tree, path: str) -> Entry | None:
    if not path:
        return Entry(str(tree.id), 0o040000)
    try:
        obj: Any = tree[path]
    except KeyError:
        return None
    return Entry(str(obj.id), int(obj.filemode))
