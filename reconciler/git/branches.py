"""Writing to the state repository: new trees, reverts and branches, never the work tree.

promote and rollback propose changes as a branch with one commit for a merge request;
this module makes them with pygit2 in the object database only, so a checkout (or a
bare mirror) is never touched.
"""

from __future__ import annotations

import os
from typing import Any

import pygit2

from reconciler.errors import GitSourceError
from reconciler.git.source import GitSource, Snapshot, fetch_ref, is_url, push_ref


class BranchRefused(GitSourceError):
    """A branch or commit that cannot be made as asked (exists, bad name, conflict)."""


def edit_file(source: GitSource, base: str, path: str, data: bytes) -> str:
    """A new tree: ``base``'s tree with the file at ``path`` replaced by ``data``."""
    repo = source.repo
    tree = _tree_of(repo, base)
    return str(_replace(repo, tree, path, data))


def revert(source: GitSource, commit: str, onto: str) -> str:
    """The tree of ``git revert commit`` on top of ``onto``; BranchRefused on conflict."""
    repo = source.repo
    index = repo.revert_commit(_commit(repo, commit), _commit(repo, onto))
    if index.conflicts is not None:
        files = sorted({c.path for entry in index.conflicts for c in entry if c is not None})
        raise BranchRefused(
            f"reverting {commit[:12]} conflicts with later changes to {', '.join(files)}",
            f"resolve it by hand: git revert {commit[:12]}",
        )
    return str(index.write_tree(repo))


def snapshot_of(source: GitSource, base: str, tree: str, path: str, ref: str) -> Snapshot:
    """A snapshot of a proposed tree (not yet committed), as if it were ``base``'s."""
    repo = source.repo
    root: Any = repo[pygit2.Oid(hex=tree)]
    clean = path.strip("/")
    sub = root[clean] if clean else root
    if not isinstance(sub, pygit2.Tree):
        raise GitSourceError(f"{clean!r} is not a directory in the proposed tree")
    return Snapshot(repo, source.display, ref, base, str(sub.id), clean, sub)


def create_branch(source: GitSource, branch: str, message: str, tree: str, parent: str) -> str:
    """Commit ``tree`` on a new branch whose only parent is ``parent``; the commit id."""
    repo = source.repo
    ref = f"refs/heads/{branch}"
    if not pygit2.reference_is_valid_name(ref):
        raise BranchRefused(f"{branch!r} is not a valid branch name")
    if ref in repo.references:
        raise BranchRefused(f"branch {branch} already exists", "pass --branch with another name")
    who = _signature(repo)
    oid = repo.create_commit(ref, who, who, message, pygit2.Oid(hex=tree), [pygit2.Oid(hex=parent)])
    return str(oid)


def existing_proposal(source: GitSource, branch: str, tree: str, parent: str) -> str | None:
    """The commit of ``branch`` when it is exactly one commit of ``tree`` on ``parent`` (the
    same proposal made before), else None."""
    ref = source.repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        return None
    commit: Any = ref.peel(pygit2.Commit)
    if str(commit.tree_id) == tree and [str(p) for p in commit.parent_ids] == [parent]:
        return str(commit.id)
    return None


def branch_exists(source: GitSource, branch: str) -> bool:
    """Whether ``branch`` was proposed already: a local branch (in a URL's mirror: a
    branch of origin as of the last fetch) or origin's as last fetched into a checkout."""
    refs = source.repo.references
    return f"refs/heads/{branch}" in refs or f"refs/remotes/origin/{branch}" in refs


def push_branch(source: GitSource, branch: str) -> None:
    """Push ``branch`` to origin, for a merge request.

    Raises:
        BranchRefused: the repository has no origin.
        GitUnreachable: the push failed.
    """
    try:
        remote = source.repo.remotes["origin"]
    except KeyError:
        raise BranchRefused(
            f"{source.display} has no remote 'origin' to push to",
            "add one (git remote add origin URL) or push the branch yourself",
        ) from None
    push_ref(remote, f"refs/heads/{branch}", source.location)


def fetch_branch(source: GitSource, branch: str) -> None:
    """Bring origin's ``branch`` into ``refs/remotes/origin/`` (a merge request's head that
    someone else pushed); a URL's mirror has every branch after its fetch already.

    Raises:
        BranchRefused: the repository has no origin.
        GitUnreachable: the fetch failed.
    """
    if is_url(source.location):
        source.fetch()
        return
    try:
        remote = source.repo.remotes["origin"]
    except KeyError:
        raise BranchRefused(
            f"{source.display} has no remote 'origin' to fetch {branch} from",
            "run it in a checkout of the forge's repository, or pass --repo with its URL",
        ) from None
    fetch_ref(remote, f"+refs/heads/{branch}:refs/remotes/origin/{branch}", source.location)


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    """As git does: GIT_AUTHOR_NAME/EMAIL, else user.name/email, else a reconciler identity."""
    name, email = os.environ.get("GIT_AUTHOR_NAME"), os.environ.get("GIT_AUTHOR_EMAIL")
    if name and email:
        return pygit2.Signature(name, email)
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature(name or "reconciler", email or "reconciler@localhost")


def _replace(repo: pygit2.Repository, tree: pygit2.Tree, path: str, data: bytes) -> pygit2.Oid:
    head, _, rest = path.partition("/")
    builder = repo.TreeBuilder(tree)
    if not rest:
        builder.insert(head, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
        return builder.write()
    sub = tree[head]
    if not isinstance(sub, pygit2.Tree):
        raise BranchRefused(f"{path}: {head} is not a directory")
    builder.insert(head, _replace(repo, sub, rest, data), pygit2.enums.FileMode.TREE)
    return builder.write()


def worktree_tree(source: GitSource, under: str = "") -> tuple[str, str, list[str]]:
    """(HEAD's commit, the tree ``git add -A`` would record from the work tree, the
    paths that differ from HEAD): what ``validate --worktree`` checks. Only changes
    ``under`` a directory are taken (the state's ``--path``); elsewhere HEAD's tree stays.

    The work tree and the index are only read; the blobs of changed files are written
    to the object database (as ``git hash-object -w`` would), nothing else.
    """
    repo = source.repo
    workdir = None if repo.is_bare else repo.workdir
    if workdir is None:
        raise GitSourceError(
            f"{source.display} has no work tree", "run it in a checkout, or drop --worktree"
        )
    if repo.head_is_unborn:
        raise GitSourceError(f"{source.display} has no commit yet", "commit something first")
    head = _commit(repo, "HEAD")
    tree: Any = head.tree
    changed = []
    ignored = pygit2.enums.FileStatus.IGNORED
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    for path, flags in sorted(repo.status().items()):
        if flags & ignored or not path.startswith(prefix):
            continue
        full = os.path.join(workdir, path)
        oid, mode = None, pygit2.enums.FileMode.BLOB
        if os.path.islink(full):
            oid, mode = repo.create_blob(os.readlink(full).encode()), pygit2.enums.FileMode.LINK
        elif os.path.isfile(full):
            oid = repo.create_blob_fromworkdir(path)
            if os.access(full, os.X_OK):
                mode = pygit2.enums.FileMode.BLOB_EXECUTABLE
        written = _put(repo, tree, path, oid, mode)
        tree = repo[written] if written is not None else None
        changed.append(path)
    if tree is None:
        tree = repo[repo.TreeBuilder().write()]
    return str(head.id), str(tree.id), changed


def _put(
    repo: pygit2.Repository,
    tree: pygit2.Tree | None,
    path: str,
    oid: pygit2.Oid | None,
    mode: int,
) -> pygit2.Oid | None:
    """``tree`` with ``path`` set to ``oid`` (None: removed), creating directories as
    needed; None when the result is empty (git keeps no empty trees)."""
    head, _, rest = path.partition("/")
    builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    if rest:
        sub = tree[head] if tree is not None and head in tree else None
        oid = _put(repo, sub if isinstance(sub, pygit2.Tree) else None, rest, oid, mode)
        mode = pygit2.enums.FileMode.TREE
    if oid is None:
        if builder.get(head) is not None:
            builder.remove(head)
    else:
        builder.insert(head, oid, mode)
    return builder.write() if len(builder) else None


def _commit(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    try:
        obj: Any = repo.revparse_single(rev).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        raise GitSourceError(f"no commit {rev!r} in the state repository") from None
    if not isinstance(obj, pygit2.Commit):
        raise GitSourceError(f"{rev!r} is not a commit")
    return obj


def _tree_of(repo: pygit2.Repository, rev: str) -> pygit2.Tree:
    return _commit(repo, rev).tree
