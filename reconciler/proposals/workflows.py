"""GitOps workflows on the state repository: add a release, promote, roll back, audit.

People who use this never call the registry: they open a merge request to promote,
revert to roll back, and read history to audit. So ``release_add``, ``promote`` and
``rollback`` make a branch and a commit (never touching the working tree), pre-checked
with the same verification ``apply`` will run; ``audit`` joins git history with the
apply records. Edits change one string literal (promote) or insert one list element
(a release) in one file and keep every other byte (comments, formatting) of CUE and
JSON files.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from reconciler.engine.reconcile import Mode, Reconciler, Status
from reconciler.errors import GitSourceError, ReconcilerError, Stalled
from reconciler.git import GitSource, is_url
from reconciler.git.branches import (
    BranchRefused,
    create_branch,
    edit_file,
    existing_proposal,
    push_branch,
    revert,
    snapshot_of,
)
from reconciler.git.history import History
from reconciler.model import TAG_RE, Catalog, DesiredState, ItemRef, Release, frozen_map
from reconciler.proposals import releases
from reconciler.verify import Refused
from reconciler.verify.governance import explain
from reconciler.verify.inforce import Judgement

log = logging.getLogger(__name__)


_RELEASE_CUE = re.compile(r'\brelease\s*:\s*("(?:[^"\\\n]|\\.)*")')
_RELEASE_JSON = re.compile(r'"release"\s*:\s*("(?:[^"\\]|\\.)*")')
AUDIT_LIMIT = 1000
# A line break (any of them: git and trailer parsers split on more than "\n") or any other
# control character in a value written into a commit message.
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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


def release_in(history: History, commit: str, path: str, env: str) -> str | None:
    """``env``'s release as written in the file at ``path`` of ``commit``, or None."""
    data = history.file_at(commit, path)
    if data is None:
        return None
    span = release_span(data.decode("utf-8", "replace"), env, path.endswith(".json"))
    return span[2] if span else None


def one_line(value: str, what: str) -> str:
    """``value``, to be written into a commit message: refused if it could add a line.

    A release name like ``v1.7"}\nPromote-Environment: prod`` would otherwise forge a
    trailer that audit and people read as the promotion's own.

    Raises:
        WorkflowRefused: ``value`` holds a line break or another control character.
    """
    if _NOT_ONE_LINE.search(value):
        raise WorkflowRefused(
            f"{what} {value[:80]!r} holds a line break or a control character, which would "
            "add a line to the commit message",
            f"give the {what} on one line, without control characters",
        )
    return value


def check_name(value: str, what: str) -> str:
    """A new release or item name: it must be a valid OCI tag, as tag templates
    (``{release}``, ``{item}``) make it part of one.

    Raises:
        WorkflowRefused: ``value`` is not in the tag grammar.
    """
    if not TAG_RE.match(value):
        raise WorkflowRefused(
            f"{what} {value[:80]!r} is not a valid name: names follow the OCI tag grammar",
            "use 1-128 characters of letters, digits, '_', '.' and '-', starting with a "
            "letter, digit or '_' (e.g. v1.7 or web)",
        )
    return value


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
    governance: list[str] = field(default_factory=list)  # the rules the merge must satisfy

    def to_json(self) -> dict[str, object]:
        """The documented ``--json`` shape of ``promote`` and ``rollback``."""
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
            "governance": self.governance,
        }


@dataclass
class ReleaseProposal(Proposal):
    """A branch adding one release to a catalog, ready for a merge request."""

    catalog: str = ""
    file: str = ""
    items: dict[str, releases.NewItem] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The documented ``release add --json`` shape."""
        return {
            "catalog": self.catalog,
            "release": self.release_to,
            "file": self.file,
            "branch": self.branch,
            "commit": self.commit,
            "base": self.base,
            "pushed": self.pushed,
            "message": self.message,
            "items": {name: item.to_json() for name, item in self.items.items()},
            "verified": self.verified,
        }


def release_branch(catalog: str, release: str) -> str:
    """``release/<catalog>/<release>``, each part cleaned for a branch name."""
    return _branch_name("release", catalog, release)


def promote_branch(env: str, release: str) -> str:
    """``promote/<env>/<release>``, each part cleaned for a branch name; follow relies on it
    to find a promotion it proposed already."""
    return _branch_name("promote", env, release)


class Workflows:
    """release add / promote / rollback / audit for one state repository and ref."""

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
        reuse: bool = False,
    ) -> Proposal:
        """A branch ``promote/<env>/<release>`` whose one commit changes the environment's
        release literal in its file (every other byte kept), pre-checked as ``apply`` would
        check it: the commit it builds on must be in force, and the edit changes no setting.

        Raises:
            WorkflowRefused: unknown environment or release, the release already runs, a
                message that is not one line, a file that cannot be edited safely, the
                pre-check failed, a branch that exists, or a URL repository without ``push``.
            InvalidState: the state at the ref, or as edited, does not validate.
            GitUnreachable: the fetch or the push failed.
        """
        self._require_push_for_urls(push)
        one_line(release, "release")
        if message is not None:
            one_line(message, "commit subject")
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
        head = str(self.source.resolve(self.reconciler.ref).id)
        path = current.file
        text = (self.history.file_at(head, path) or b"").decode("utf-8")
        span = release_span(text, env, path.endswith(".json"))
        if span is None or span[2] != current.release:
            raise WorkflowRefused(
                f"cannot find {env}'s release in {path}",
                'edit the file by hand: the release must be a string literal, e.g. release: "v1.2"',
            )
        start, end, _ = span
        edited = text[:start] + json.dumps(release) + text[end:]
        tree = edit_file(self.source, head, path, edited.encode("utf-8"))
        _, verified, rules = self._precheck(head, tree, env, release)
        subject = one_line(message or f"Promote {env} to {release}", "commit subject")
        one_line(current.release, "release")
        one_line(current.catalog, "catalog")
        body = (
            f"{subject}\n\nPromote {env} from {current.release} to {release} "
            f"({current.catalog}).\n\n"
            f"Promote-Environment: {env}\nPromote-Release: {release}\n"
            f"Promote-From: {current.release}\n"
        )
        name = branch or promote_branch(env, release)
        proposal = Proposal(env, name, "", head, current.release, release, body)
        proposal.verified, proposal.governance = verified, rules
        return self._commit(proposal, tree, head, push, reuse)

    # ------------------------------------------------------------------ release add

    def release_add(
        self,
        catalog: str,
        release: str,
        items: Mapping[str, str],
        *,
        hazards: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        branch: str | None = None,
        message: str | None = None,
        push: bool = False,
        reuse: bool = False,
    ) -> ReleaseProposal:
        """A branch ``release/<catalog>/<release>`` adding the release, newest first.

        Each ``items`` value is a tag in the catalog's source, a digest or a reference
        (:func:`releases.resolve_item`); every digest must pass integrity and the
        catalog's ``signers`` before anything is written.

        Raises:
            WorkflowRefused: a release or item name outside the tag grammar, a message
                that is not one line, unknown catalog, existing release, an unverified
                item, a file that cannot be edited safely, or a branch that exists.
            Transient: the registry or the remote failed.
        """
        check_name(release, "release name")
        for item in items:
            check_name(item, "item name")
        if message is not None:
            one_line(message, "commit subject")
        self._require_push_for_urls(push)
        policy = self.reconciler.in_force()
        state = policy.trusted  # the catalog's sources are read as the policy in force has them
        found = state.catalogs.get(catalog)
        if found is None:
            raise WorkflowRefused(
                f"unknown catalog {catalog!r}",
                f"choose one of: {', '.join(sorted(state.catalogs)) or 'none'}",
            )
        one_line(catalog, "catalog")
        if found.release(release) is not None:
            raise WorkflowRefused(
                f"catalog {catalog} already has a release {release!r} (in {found.file})",
                "a release is immutable: name the new build with a new release",
            )
        if not items:
            raise WorkflowRefused(f"release {release} names no item", "pass ITEM=TAG …")
        registries = self.reconciler.registries(policy)
        try:
            new = [releases.resolve_item(registries, found, i, ref) for i, ref in items.items()]
            verified = releases.verify_items(registries, found, release, new)
        except Refused as exc:
            raise WorkflowRefused(
                f"release {release} of {catalog} was not added: {exc.message}", exc.hint
            ) from None
        entry = releases.Entry(
            release,
            {n.item: n.ref for n in new},
            dict(metadata or {}),
            dict(hazards or {}),
        )
        head = str(self.source.resolve(self.reconciler.ref).id)
        path = found.file
        text = (self.history.file_at(head, path) or b"").decode("utf-8")
        try:
            edited = releases.insert_release(text, catalog, entry, path.endswith(".json"))
        except releases.CannotEdit as exc:
            raise WorkflowRefused(f"{path}: {exc.message}", exc.hint) from None
        tree = edit_file(self.source, head, path, edited.encode("utf-8"))
        self._check_release(head, tree, state, found, entry)
        subject = one_line(message or f"Add release {release} to {catalog}", "commit subject")
        width = max(len(n.item) for n in new)
        lines = [
            f"  {n.item:<{width}}  {one_line(n.origin, 'reference')} -> {n.digest}" for n in new
        ]
        body = (
            f"{subject}\n\nResolved from their tags and verified against the catalog's "
            "signers:\n" + "\n".join(lines) + "\n\n"
            f"Release-Catalog: {catalog}\nRelease-Name: {release}\n"
        )
        name = branch or release_branch(catalog, release)
        proposal = ReleaseProposal(
            "", name, "", head, "", release, body, verified=verified,
            catalog=catalog, file=path, items={n.item: n for n in new},
        )  # fmt: skip
        result = self._commit(proposal, tree, head, push, reuse)
        assert isinstance(result, ReleaseProposal)
        return result

    def _check_release(
        self, head: str, tree: str, before: DesiredState, catalog: Catalog, entry: releases.Entry
    ) -> None:
        """The edited tree must load, and differ from ``before`` by exactly the new release."""
        snap = snapshot_of(self.source, head, tree, self.reconciler.path, self.reconciler.ref)
        try:
            after = self.reconciler.loader.load(snap)
        except ReconcilerError as exc:
            raise WorkflowRefused(
                f"with release {entry.name}, {catalog.file} would not validate: {exc.message}",
                "add the release by hand",
            ) from None
        wanted = Release(
            entry.name,
            {item: ItemRef.parse(ref) for item, ref in entry.items.items()},
            frozen_map(entry.metadata),
            frozen_map(entry.hazards),
        )
        new = after.catalogs.get(catalog.name)
        others_same = {k: v for k, v in after.catalogs.items() if k != catalog.name} == {
            k: v for k, v in before.catalogs.items() if k != catalog.name
        }
        if (
            new is None
            or not new.releases
            or new.releases[0] != wanted
            or replace(new, releases=new.releases[1:]) != catalog
            or not others_same
            or after.environments != before.environments
        ):
            raise WorkflowRefused(
                f"inserting release {entry.name} into {catalog.file} did not change exactly "
                "that catalog's releases",
                "add the release by hand (the catalog's releases may be built by CUE "
                "expressions rather than written as one list)",
            )

    # ------------------------------------------------------------------ rollback

    def rollback(
        self,
        env: str,
        *,
        to: str | None = None,
        branch: str | None = None,
        push: bool = False,
        reuse: bool = False,
    ) -> Proposal:
        """A branch whose one commit reverts the newest change of the environment's release
        (or the commit ``to``), pre-checked like :meth:`promote`. A new commit, not a reset:
        the history moves forward, as the gate's history rule requires.

        Raises:
            WorkflowRefused: unknown environment or commit, a revert that conflicts or does
                not change the release, the pre-check failed, a branch that exists, or a URL
                repository without ``push``.
            InvalidState: the state at the ref, or as reverted, does not validate.
            GitUnreachable: the fetch or the push failed.
        """
        self._require_push_for_urls(push)
        state = self._load_with(env)
        head = str(self.source.resolve(self.reconciler.ref).id)
        path = state.environments[env].file
        target = self._find_promotion(head, path, env) if to is None else self._commit_of(to)
        try:
            tree = revert(self.source, target, head)
        except BranchRefused as exc:
            raise WorkflowRefused(exc.message, exc.hint) from None
        proposed = snapshot_of(self.source, head, tree, "", self.reconciler.ref)
        data = proposed.read(path) if proposed.exists(path) else b""
        span = release_span(data.decode("utf-8", "replace"), env, path.endswith(".json"))
        after = span[2] if span else None
        before = state.environments[env].release
        if after is None or after == before:
            raise WorkflowRefused(
                f"reverting {target[:12]} does not change {env}'s release",
                "pass --to with the commit that promoted the release to roll back",
            )
        _, verified, rules = self._precheck(head, tree, env, after)
        one_line(before, "release")
        subject = f"Roll back {env} from {before} to {one_line(after, 'release')}"
        body = (
            f"{subject}\n\nThis reverts commit {target}.\n\n"
            f"Rollback-Environment: {env}\nRollback-From: {before}\nRollback-To: {after}\n"
        )
        name = branch or _branch_name("rollback", env, target[:12])
        proposal = Proposal(env, name, "", head, before, after, body, verified=verified)
        proposal.governance = rules
        return self._commit(proposal, tree, head, push, reuse)

    def _find_promotion(self, head: str, path: str, env: str) -> str:
        """The newest commit that changed ``env``'s release in ``path``."""
        history = self.history
        for commit_id in history.between(None, head)[:AUDIT_LIMIT]:
            commit = history.commit(commit_id)
            if not commit.parents:
                break
            now = release_in(history, commit_id, path, env)
            if all(release_in(history, p, path, env) != now for p in commit.parents):
                return commit_id
        raise WorkflowRefused(
            f"no commit in the last {AUDIT_LIMIT} changed {env}'s release in {path}",
            "pass --to with the commit to revert",
        )

    def _commit_of(self, rev: str) -> str:
        try:
            return str(self.source.resolve(rev).id)
        except GitSourceError:
            raise WorkflowRefused(f"no commit {rev!r} in {self.source.display}") from None

    @property
    def history(self) -> History:
        """The state repository's history (the reconciler's)."""
        return self.reconciler.history

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
        self, head: str, tree: str, env: str, release: str
    ) -> tuple[DesiredState, dict[str, str], list[str]]:
        """Validate the proposed tree and run the checks apply would run for ``env``: the
        state, how its digests were verified, and the governance rules the merge meets."""
        snap = snapshot_of(self.source, head, tree, self.reconciler.path, self.reconciler.ref)
        state = self.reconciler.loader.load(snap)
        if state.environments[env].release != release:
            raise WorkflowRefused(f"the edit did not set {env}'s release to {release}")
        result = self.reconciler.run(Mode.PLAN, [env], state=state, judgement=self._as_if(state))
        outcome = result.outcomes[0]
        if outcome.status in (Status.REFUSED, Status.FAILED):
            assert outcome.error is not None
            raise WorkflowRefused(
                f"{env} cannot take {release}: {outcome.error.message}", outcome.error.hint
            )
        # The edit changes no setting and no governance: these are the ones in force.
        rules = explain(env, state.environments[env].governance, state.proposed_settings.freeze)
        return state, outcome.verified, rules

    def _as_if(self, proposed: DesiredState) -> Judgement:
        """The verdict apply would reach if ``proposed`` (an edit of the release line on
        top of its commit, not a commit yet) were signed and merged: the commit it builds
        on must be in force, and the edit may change no setting (settings come only from
        the policy in force)."""
        head = self.reconciler.judge(self.reconciler.state_at(proposed.commit))
        if not head.passed:
            refusal = head.refusal
            raise WorkflowRefused(
                f"the commit this change builds on, {proposed.commit[:12]}, is not in force: "
                + (refusal.message if refusal else "unknown"),
                refusal.hint if refusal else "",
            )
        if proposed.proposed_settings != head.policy.settings:
            raise WorkflowRefused("the edit changes settings, which a promotion must not")
        return replace(head, policy=replace(head.policy, state=proposed))

    def _commit(
        self, proposal: Proposal, tree: str, head: str, push: bool, reuse: bool = False
    ) -> Proposal:
        """Commit the proposal on its new branch (``reuse``: a branch that already holds
        exactly this change on this base is taken as it is, so proposing twice updates
        one merge request rather than failing)."""
        same = existing_proposal(self.source, proposal.branch, tree, head) if reuse else None
        try:
            proposal.commit = same or create_branch(
                self.source, proposal.branch, proposal.message, tree, head
            )
            log.info("made %s on %s", proposal.commit[:12], proposal.branch)
            if push:
                push_branch(self.source, proposal.branch)
                proposal.pushed = True
        except BranchRefused as exc:
            raise WorkflowRefused(exc.message, exc.hint) from None
        return proposal
