"""GitOps workflows on the state repository: promote, roll back, audit.

People who use this never call the registry: they open a merge request to promote,
revert to roll back, and read history to audit. So ``promote`` and ``rollback`` make a
branch and a commit (never touching the working tree), pre-checked with the same
verification ``apply`` will run; ``audit`` joins git history with the apply records.
Edits change one string literal in one file and keep every other byte (comments,
formatting) of CUE and JSON files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pygit2

from reconciler import records
from reconciler.errors import Stalled
from reconciler.git import GitSource, Snapshot, is_url, push_ref, reverted_commit
from reconciler.model import DesiredState, Record
from reconciler.reconcile import Mode, Reconciler, Status
from reconciler.registry import parse_reference

log = logging.getLogger(__name__)

_RELEASE_CUE = re.compile(r'\brelease\s*:\s*("(?:[^"\\\n]|\\.)*")')
_RELEASE_JSON = re.compile(r'"release"\s*:\s*("(?:[^"\\]|\\.)*")')
_MR = (
    re.compile(r"See merge request (\S+![0-9]+)"),  # GitLab
    re.compile(r"Merge pull request (#[0-9]+)"),  # GitHub merge commit
    re.compile(r"\((#[0-9]+)\)\s*$", re.M),  # GitHub squash
)
AUDIT_LIMIT = 1000


class WorkflowRefused(Stalled):
    """A promotion or rollback that would not pass, or cannot be made safely."""


# --------------------------------------------------------------------------- editing


def release_span(text: str, env: str, json_file: bool) -> tuple[int, int, str] | None:
    """(start, end, value) of ``env``'s release string literal in a state file, or None.

    A file holding several environments is searched from the environment's own key on;
    matches inside ``//`` comments do not count.
    """
    pattern = _RELEASE_JSON if json_file else _RELEASE_CUE
    matches = [m for m in pattern.finditer(text) if not _in_comment(text, m.start())]
    if len(matches) > 1:
        key = re.search(rf'(^|[\s{{,])("{re.escape(env)}"|{re.escape(env)})\s*:', text, re.M)
        after = key.end() if key else 0
        matches = [m for m in matches if m.start() >= after][:1]
    if not matches:
        return None
    m = matches[0]
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return None
    return m.start(1), m.end(1), str(value)


def _in_comment(text: str, at: int) -> bool:
    line_start = text.rfind("\n", 0, at) + 1
    return "//" in text[line_start:at]


def replace_file(repo: pygit2.Repository, tree: pygit2.Tree, path: str, data: bytes) -> pygit2.Oid:
    """A new tree equal to ``tree`` but for the file at ``path``."""
    head, _, rest = path.partition("/")
    builder = repo.TreeBuilder(tree)
    if not rest:
        builder.insert(head, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
        return builder.write()
    sub = tree[head]
    if not isinstance(sub, pygit2.Tree):
        raise WorkflowRefused(f"{path}: {head} is not a directory")
    builder.insert(head, replace_file(repo, sub, rest, data), pygit2.enums.FileMode.TREE)
    return builder.write()


def _release_in(tree: pygit2.Tree, path: str, env: str) -> str | None:
    """``env``'s release as written in the file at ``path`` of ``tree``, or None."""
    try:
        blob = tree[path]
    except KeyError:
        return None
    if not isinstance(blob, pygit2.Blob):
        return None
    span = release_span(blob.data.decode("utf-8", "replace"), env, path.endswith(".json"))
    return span[2] if span else None


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    """As git does: GIT_AUTHOR_NAME/EMAIL, else user.name/email, else a reconciler identity."""
    name, email = os.environ.get("GIT_AUTHOR_NAME"), os.environ.get("GIT_AUTHOR_EMAIL")
    if name and email:
        return pygit2.Signature(name, email)
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature(name or "reconciler", email or "reconciler@localhost")


def _branch_name(*parts: str) -> str:
    cleaned = [re.sub(r"[^A-Za-z0-9._-]+", "-", p).strip(".-") or "x" for p in parts]
    name = "/".join(cleaned)
    return name.replace("..", ".")


# --------------------------------------------------------------------------- result


@dataclass
class Proposal:
    """A branch with one commit, ready for a merge request."""

    environment: str
    branch: str
    commit: str
    base: str
    release_from: str
    release_to: str
    message: str
    pushed: bool = False
    verified: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "branch": self.branch,
            "commit": self.commit,
            "base": self.base,
            "from": self.release_from,
            "to": self.release_to,
            "pushed": self.pushed,
            "message": self.message,
            "verified": self.verified,
        }


class Workflows:
    """promote / rollback / audit for one state repository and ref."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.source: GitSource = reconciler.source

    # ------------------------------------------------------------------ promote

    def promote(
        self,
        env: str,
        release: str,
        *,
        branch: str | None = None,
        message: str | None = None,
        push: bool = False,
    ) -> Proposal:
        self._require_push_for_urls(push)
        state = self._load_with(env)
        current = state.environments[env]
        catalog = state.catalogs[current.catalog]
        if catalog.release(release) is None:
            known = ", ".join(r.name for r in catalog.releases)
            raise WorkflowRefused(
                f"catalog {catalog.name} has no release {release!r}",
                f"choose one of: {known}, or add the release to {catalog.file} first",
            )
        if current.release == release:
            raise WorkflowRefused(f"{env} already runs {release} in {current.file}")
        repo = self.source.repo
        head = self.source.resolve(self.reconciler.ref)
        path = current.file
        blob = head.tree[path]
        assert isinstance(blob, pygit2.Blob)
        text = blob.data.decode("utf-8")
        span = release_span(text, env, path.endswith(".json"))
        if span is None or span[2] != current.release:
            raise WorkflowRefused(
                f"cannot find {env}'s release in {path}",
                'edit the file by hand: the release must be a string literal, e.g. release: "v1.2"',
            )
        start, end, _ = span
        edited = text[:start] + json.dumps(release) + text[end:]
        tree = replace_file(repo, head.tree, path, edited.encode("utf-8"))
        _, verified = self._precheck(head, tree, env, release)
        subject = message or f"Promote {env} to {release}"
        body = (
            f"{subject}\n\nPromote {env} from {current.release} to {release} "
            f"({current.catalog}).\n\n"
            f"Promote-Environment: {env}\nPromote-Release: {release}\n"
            f"Promote-From: {current.release}\n"
        )
        name = branch or _branch_name("promote", env, release)
        proposal = Proposal(env, name, "", str(head.id), current.release, release, body)
        proposal.verified = verified
        return self._commit(proposal, tree, head, push)

    # ------------------------------------------------------------------ rollback

    def rollback(
        self, env: str, *, to: str | None = None, branch: str | None = None, push: bool = False
    ) -> Proposal:
        self._require_push_for_urls(push)
        state = self._load_with(env)
        repo = self.source.repo
        head = self.source.resolve(self.reconciler.ref)
        path = state.environments[env].file
        target = self._find_promotion(head, path, env) if to is None else self._commit_of(to)
        ours = head
        index = repo.revert_commit(target, ours)
        if index.conflicts is not None:
            files = sorted({c.path for entry in index.conflicts for c in entry if c is not None})
            raise WorkflowRefused(
                f"reverting {str(target.id)[:12]} conflicts with later changes to "
                f"{', '.join(files)}",
                f"resolve it by hand: git revert {str(target.id)[:12]}",
            )
        tree = index.write_tree(repo)
        new_tree = repo[tree]
        assert isinstance(new_tree, pygit2.Tree)
        after = _release_in(new_tree, path, env)
        before = state.environments[env].release
        if after is None or after == before:
            raise WorkflowRefused(
                f"reverting {str(target.id)[:12]} does not change {env}'s release",
                "pass --to with the commit that promoted the release to roll back",
            )
        _, verified = self._precheck(head, tree, env, after)
        subject = f"Roll back {env} from {before} to {after}"
        body = (
            f"{subject}\n\nThis reverts commit {target.id}.\n\n"
            f"Rollback-Environment: {env}\nRollback-From: {before}\nRollback-To: {after}\n"
        )
        name = branch or _branch_name("rollback", env, str(target.id)[:12])
        proposal = Proposal(env, name, "", str(head.id), before, after, body, verified=verified)
        return self._commit(proposal, tree, head, push)

    def _find_promotion(self, head: pygit2.Commit, path: str, env: str) -> pygit2.Commit:
        """The newest commit that changed ``env``'s release in ``path``."""
        repo = self.source.repo
        walker = repo.walk(head.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME)
        for count, commit in enumerate(walker):
            if count >= AUDIT_LIMIT:
                break
            now = _release_in(commit.tree, path, env)
            if not commit.parents:
                break
            if all(_release_in(p.tree, path, env) != now for p in commit.parents):
                return commit
        raise WorkflowRefused(
            f"no commit in the last {AUDIT_LIMIT} changed {env}'s release in {path}",
            "pass --to with the commit to revert",
        )

    def _commit_of(self, rev: str) -> pygit2.Commit:
        try:
            obj = self.source.repo.revparse_single(rev).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            raise WorkflowRefused(f"no commit {rev!r} in {self.source.display}") from None
        assert isinstance(obj, pygit2.Commit)
        return obj

    # ------------------------------------------------------------------ shared

    def _load_with(self, env: str) -> DesiredState:
        state = self.reconciler.load()
        if env not in state.environments:
            raise WorkflowRefused(
                f"unknown environment {env!r}",
                f"choose one of: {', '.join(sorted(state.environments))}",
            )
        return state

    def _require_push_for_urls(self, push: bool) -> None:
        if is_url(self.source.location) and not push:
            raise WorkflowRefused(
                f"{self.source.display} is a URL: a branch made in the local mirror is lost",
                "pass --push to publish the branch for a merge request",
            )

    def _precheck(
        self, head: pygit2.Commit, tree_id: pygit2.Oid, env: str, release: str
    ) -> tuple[DesiredState, dict[str, str]]:
        """Validate the proposed tree and run the checks apply would run for ``env``."""
        repo = self.source.repo
        root = repo[tree_id]
        assert isinstance(root, pygit2.Tree)
        sub = root[self.reconciler.path.strip("/")] if self.reconciler.path.strip("/") else root
        assert isinstance(sub, pygit2.Tree)
        snap = Snapshot(
            repo, self.source.display, self.reconciler.ref, str(head.id), str(sub.id),
            self.reconciler.path.strip("/"), sub,
        )  # fmt: skip
        state = self.reconciler.loader.load(snap)
        if state.environments[env].release != release:
            raise WorkflowRefused(f"the edit did not set {env}'s release to {release}")
        result = self.reconciler.run(Mode.PLAN, [env], state=state)
        outcome = result.outcomes[0]
        if outcome.status in (Status.REFUSED, Status.FAILED):
            assert outcome.error is not None
            raise WorkflowRefused(
                f"{env} cannot take {release}: {outcome.error.message}", outcome.error.hint
            )
        return state, outcome.verified

    def _commit(
        self, proposal: Proposal, tree: pygit2.Oid, head: pygit2.Commit, push: bool
    ) -> Proposal:
        repo = self.source.repo
        ref = f"refs/heads/{proposal.branch}"
        if not pygit2.reference_is_valid_name(ref):
            raise WorkflowRefused(f"{proposal.branch!r} is not a valid branch name")
        if ref in repo.references:
            raise WorkflowRefused(
                f"branch {proposal.branch} already exists", "pass --branch with another name"
            )
        who = _signature(repo)
        oid = repo.create_commit(ref, who, who, proposal.message, tree, [head.id])
        proposal.commit = str(oid)
        log.info("made %s on %s", proposal.commit[:12], proposal.branch)
        if push:
            self._push(ref)
            proposal.pushed = True
        return proposal

    def _push(self, ref: str) -> None:
        repo = self.source.repo
        try:
            remote = repo.remotes["origin"]
        except KeyError:
            raise WorkflowRefused(
                f"{self.source.display} has no remote 'origin' to push to",
                "add one (git remote add origin URL) or push the branch yourself",
            ) from None
        push_ref(remote, ref, self.source.location)

    # ------------------------------------------------------------------ audit

    def audit(
        self, envs: Sequence[str] | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        return audit(self, envs, since)


# --------------------------------------------------------------------------- audit


@dataclass
class AuditEntry:
    environment: str
    commit: str
    author: str
    committer: str
    time: str
    subject: str
    merge_request: str | None
    release_from: str | None
    release_to: str | None
    kind: str  # promotion | rollback | other
    status: str  # applied | superseded | pending | refused
    applied_at: str | None = None
    applied_by: str | None = None
    verified: dict[str, str] = field(default_factory=dict)
    record: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "commit": self.commit,
            "author": self.author,
            "committer": self.committer,
            "time": self.time,
            "subject": self.subject,
            "mergeRequest": self.merge_request,
            "from": self.release_from,
            "to": self.release_to,
            "kind": self.kind,
            "status": self.status,
            "appliedAt": self.applied_at,
            "appliedBy": self.applied_by,
            "verified": self.verified,
            "record": self.record,
            "reason": self.reason,
        }


def merge_request(message: str) -> str | None:
    for pattern in _MR:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


def commit_kind(message: str, before: str | None, after: str | None) -> str:
    if before == after:
        return "other"
    if reverted_commit(message) or "Rollback-Environment:" in message:
        return "rollback"
    return "promotion"


def _when(commit: pygit2.Commit) -> str:
    return datetime.fromtimestamp(commit.commit_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit(
    flows: Workflows, envs: Sequence[str] | None = None, since: datetime | None = None
) -> list[AuditEntry]:
    """A timeline per environment: commits that changed its file, joined with its records."""
    reconciler = flows.reconciler
    state = reconciler.load()
    names = sorted(envs or state.environments)
    unknown = [n for n in names if n not in state.environments]
    if unknown:
        raise WorkflowRefused(f"unknown environment(s): {', '.join(unknown)}")
    repo = flows.source.repo
    head = flows.source.resolve(reconciler.ref)
    registries = reconciler.registries(state)
    timelines: dict[str, list[AuditEntry]] = {}
    for name in names:
        path = state.environments[name].file
        target = parse_reference(state.target_of(name))
        chain = records.read_chain(registries.get(target), target.repository, name)
        mine: list[AuditEntry] = []
        # The mainline (first-parent) history: with merge requests, each merge is one
        # change, asked for by the branch's author and approved by whoever merged it.
        walker = repo.walk(head.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME)
        walker.simplify_first_parent()
        for count, commit in enumerate(walker):
            if count >= AUDIT_LIMIT:
                break
            if since is not None and commit.commit_time < since.timestamp():
                break
            parents = commit.parents
            blob = _blob_id(commit, path)
            if blob == (_blob_id(parents[0], path) if parents else None):
                continue
            before = _release_in(parents[0].tree, path, name) if parents else None
            after = _release_in(commit.tree, path, name)
            asked = parents[1] if len(parents) > 1 else commit  # a merge: the branch's tip
            text = f"{asked.message}\n{commit.message}"
            entry = AuditEntry(
                environment=name,
                commit=str(commit.id),
                author=f"{asked.author.name} <{asked.author.email}>",
                committer=f"{commit.committer.name} <{commit.committer.email}>",
                time=_when(commit),
                subject=asked.message.splitlines()[0] if asked.message else "",
                merge_request=merge_request(commit.message),
                release_from=before,
                release_to=after,
                kind=commit_kind(text, before, after),
                status="pending",
            )
            mine.append(entry)
        _settle(mine, chain, repo)
        timelines[name] = mine
    # Only an environment whose newest change is unapplied needs a verification now, to
    # tell a refused change from a pending one.
    waiting = [name for name, mine in timelines.items() if mine and mine[0].status == "pending"]
    if waiting:
        for outcome in reconciler.run(Mode.PLAN, waiting, state=state).outcomes:
            if outcome.status in (Status.REFUSED, Status.FAILED) and outcome.error is not None:
                newest = timelines[outcome.environment][0]
                newest.status, newest.reason = "refused", outcome.error.message
    return [entry for name in names for entry in timelines[name]]


def _settle(entries: list[AuditEntry], chain: Sequence[Record], repo: pygit2.Repository) -> None:
    """Join commits (newest first) with apply records.

    A record applies the newest commit of the timeline that its own commit contains;
    older commits it contains were superseded before anyone applied them; the rest stay
    pending.
    """
    for record in reversed(chain):  # oldest first: a later record of the same commit re-applies
        entry = next((e for e in entries if _descends(repo, record.commit, e.commit)), None)
        if entry is not None and entry.record is None:
            entry.status, entry.applied_at = "applied", record.time
            entry.applied_by, entry.verified = record.reconciler, dict(record.verified)
            entry.record = record.digest
    applied = [e.commit for e in entries if e.status == "applied"]
    for entry in entries:
        if entry.status != "applied" and any(_descends(repo, a, entry.commit) for a in applied):
            entry.status = "superseded"


def _descends(repo: pygit2.Repository, new: str, old: str) -> bool:
    if new == old:
        return True
    try:
        return bool(repo.descendant_of(pygit2.Oid(hex=new), pygit2.Oid(hex=old)))
    except (pygit2.GitError, KeyError, ValueError):
        return False


def _blob_id(commit: pygit2.Commit, path: str) -> str | None:
    try:
        return str(commit.tree[path].id)
    except KeyError:
        return None
