"""Merge requests: open one for a proposal with the plan in it, and check one with the gate.

A promotion is reviewed as a merge request. :func:`open_merge_request` pushes nothing
itself (the proposal's branch is pushed already): it waits until the forge knows the
branch, checks its head (:func:`evaluate`), and opens the merge request, or updates the
open one from the same branch, with the plan as its description, the labels
``reconciler``, the kind and the environment, and the verdict as the commit status
``reconciler/verify`` on the head, which branch protection can require.

:func:`evaluate` is the gate ``apply`` will run after the merge, run now on the head:
the head's state must load and validate, its commits must pass the policy in force
(:meth:`Reconciler.judge`, nothing persisted), and each environment the merge request
changes must pass the gate in ``plan`` mode (history, commits, hazards, requires,
artifacts). The forge, and so where its token goes, comes from ``settings.forge`` of
the policy in force, never from the merge request's own commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from reconciler.engine.reconcile import Mode, PassResult, Reconciler, Status
from reconciler.errors import ReconcilerError, Stalled, Transient
from reconciler.forge import (
    LABEL,
    VERIFY,
    CommitState,
    Forge,
    ForgeUnavailable,
    MergeRequest,
    clip,
    open_forge,
)
from reconciler.forge import Status as CommitStatus
from reconciler.git.branches import fetch_branch
from reconciler.model import DesiredState, Settings
from reconciler.proposals.markdown import cell, plan_markdown
from reconciler.verify import Refused

__all__ = ["MARKER", "Check", "check", "evaluate", "forge_in_force", "open_merge_request"]

log = logging.getLogger(__name__)

MARKER = "<!-- reconciler:plan -->"  # a description the reconciler wrote (and may rewrite)
BRANCH_WAIT = 30.0  # seconds a forge may take to process a push before it knows the branch
STATUS_TEXT = 140  # characters of a status description (GitHub's limit)


@dataclass
class Check:
    """The gate's verdict on one head commit, as a status and as markdown."""

    head: str
    state: CommitState
    summary: str  # one line: the status's description
    environments: list[str] = field(default_factory=list)
    result: PassResult | None = None
    error: ReconcilerError | None = None

    @property
    def status(self) -> CommitStatus:
        """``reconciler/verify`` with this verdict."""
        return CommitStatus(VERIFY, self.state, _one_line(self.summary))


def forge_in_force(reconciler: Reconciler) -> Forge:
    """The forge ``settings.forge`` of the policy in force names (judging the ref's newest
    commit, persisting nothing).

    Raises:
        ForgeRefused: no forge configured, or its token is not set.
        Refused: nothing of the state repository is in force.
    """
    policy = reconciler.in_force()
    policy.trusted  # noqa: B018 - raises when nothing is in force
    return open_forge(policy.forge)


def changed_environments(before: DesiredState | None, after: DesiredState) -> list[str]:
    """The environments whose definition or release differs between the two states."""
    if before is None:
        return sorted(after.environments)
    return sorted(
        name
        for name, env in after.environments.items()
        if before.environments.get(name) != env
        or (name in before.environments and before.release_of(name) != after.release_of(name))
    )


def evaluate(reconciler: Reconciler, head: str, base_branch: str | None = None) -> Check:
    """The gate on ``head`` as ``apply`` will run it once merged (see the module docstring);
    nothing is written. Environments compared against the merge base with ``base_branch``
    (default: the reconciler's ref)."""
    try:
        state = reconciler.state_at(head)
    except Transient as exc:
        return Check(head, CommitState.ERROR, f"could not load: {_first(exc)}", error=exc)
    except ReconcilerError as exc:
        return Check(head, CommitState.FAILURE, f"invalid: {_first(exc)}", error=exc)
    branch = base_branch or reconciler.ref
    behind = _behind(reconciler, head, branch)
    if behind is not None:
        return Check(head, CommitState.FAILURE, behind.message, error=behind)
    try:
        judgement = reconciler.judge(state)
    except ReconcilerError as exc:
        return Check(head, CommitState.FAILURE, _refusal_text(exc), error=exc)
    if not judgement.passed:
        refusal = judgement.refusal
        text = _refusal_text(refusal) if refusal else f"commit {head[:12]} is not in force"
        return Check(head, CommitState.FAILURE, text, error=refusal)
    before = _merge_base_state(reconciler, head, branch)
    envs = changed_environments(before, state)
    if not envs:
        return Check(head, CommitState.SUCCESS, "valid; no environment changes", [])
    # The gate runs under the settings in force on the base branch (registries, record
    # keys): a branch cannot vouch for itself, e.g. with a record key of its own.
    in_force = _base_settings(reconciler, branch)
    if state.proposed_settings != in_force:
        as_in_force = replace(state, proposed_settings=in_force)
        judgement = replace(judgement, policy=replace(judgement.policy, state=as_in_force))
    try:
        result = reconciler.run(Mode.PLAN, envs, state=state, judgement=judgement)
    except ReconcilerError as exc:  # before any environment ran (e.g. registry settings)
        again = CommitState.ERROR if isinstance(exc, Transient) else CommitState.FAILURE
        return Check(head, again, _refusal_text(exc), envs, error=exc)
    bad = [o for o in result.outcomes if o.status in (Status.REFUSED, Status.FAILED)]
    if bad:
        first = bad[0]
        assert first.error is not None
        transient = all(o.transient for o in bad)
        text = f"{first.environment}: {_refusal_text(first.error)}"
        state_ = CommitState.ERROR if transient else CommitState.FAILURE
        return Check(head, state_, text, envs, result, first.error)
    parts = []
    for o in result.outcomes:
        moves = len(o.plan.changes) if o.plan else 0
        env = state.environments[o.environment]
        parts.append(f"{o.environment} {env.release}: {o.status.value}, {moves} tag(s) to move")
    return Check(head, CommitState.SUCCESS, "verified: " + "; ".join(parts), envs, result)


def _behind(reconciler: Reconciler, head: str, branch: str) -> Stalled | None:
    """Why ``head`` cannot be checked as the merge will be applied: it does not contain
    ``branch``'s head (the gate judges a trail from the commit in force)."""
    try:
        tip = str(reconciler.source.resolve(branch).id)
    except ReconcilerError:
        return None
    if reconciler.history.descends(head, tip):
        return None
    return Stalled(
        f"the branch is behind {branch}: it does not contain {branch}'s head {tip[:12]}",
        f"merge {branch} into the branch (or rebase it); the check runs again on the push",
    )


def _base_settings(reconciler: Reconciler, branch: str) -> Settings:
    """The settings in force at ``branch``'s head (defaults when nothing is in force)."""
    try:
        head = str(reconciler.source.resolve(branch).id)
        return reconciler.judge(reconciler.state_at(head)).policy.settings
    except ReconcilerError:
        return Settings()


def _merge_base_state(reconciler: Reconciler, head: str, branch: str) -> DesiredState | None:
    try:
        base = reconciler.source.resolve(branch).id
        repo = reconciler.source.repo
        found = repo.merge_base(repo[head].id, base)
        return reconciler.state_at(str(found)) if found is not None else None
    except (ReconcilerError, KeyError, ValueError):
        return None


def _refusal_text(error: ReconcilerError) -> str:
    if isinstance(error, Refused):
        return f"rule {error.rule}: {error.reason.splitlines()[0]}"
    return _first(error)


def _first(error: ReconcilerError) -> str:
    return (error.message or str(error)).splitlines()[0]


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= STATUS_TEXT else line[: STATUS_TEXT - 1] + "…"


# --------------------------------------------------------------------------- describing


def describe(check: Check, headline: str, state: DesiredState | None = None) -> str:
    """The merge request's description: the verdict, what moves (from -> to digests), the
    receipts, hazards and ``requires`` of each environment, then the plan."""
    mark = {CommitState.SUCCESS: "✅", CommitState.PENDING: "⏳"}.get(check.state, "❌")
    lines = [
        MARKER,
        f"## {cell(headline)}",
        "",
        f"{mark} `{VERIFY}`: **{check.state.value}** on `{check.head[:12]}`: {cell(check.summary)}",
    ]
    if check.error is not None and check.error.hint:
        lines.append(f"> way out: {cell(check.error.hint)}")
    result = check.result
    if result is not None and state is not None:
        for o in result.outcomes:
            env = state.environments.get(o.environment)
            if env is None:
                continue
            release = state.release_of(o.environment)
            lines += ["", f"### {cell(o.environment)}: {cell(env.catalog)} `{cell(env.release)}`"]
            lines.append(f"- requires: {', '.join(env.requires) or 'nothing'}")
            for c in o.plan.changes if o.plan else ():
                lines.append(
                    f"- moves `{cell(c.repository)}:{cell(c.tag)}`: "
                    f"`{c.from_digest or '(none)'}` → `{c.to_digest or '(deleted)'}`"
                )
            if release.hazards:
                allowed = " (allowed: allowHazards)" if env.allow_hazards else ""
                hazards = ", ".join(f"{k}: {v}" for k, v in release.hazards.items())
                lines.append(f"- hazards{allowed}: {cell(hazards)}")
            else:
                lines.append("- hazards: none")
            if o.verified:
                lines.append("- receipts:")
                lines += [f"  - `{d[:19]}` {cell(how)}" for d, how in sorted(o.verified.items())]
        lines += ["", plan_markdown(result)]
    lines += ["", "_Written by the reconciler; it is rewritten on every check._"]
    return clip("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- opening, checking


def wait_for_branch(
    forge: Forge, branch: str, commit: str, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Until the forge shows ``branch`` at ``commit`` (a forge processes pushes in the
    background).

    Raises:
        ForgeUnavailable: not within :data:`BRANCH_WAIT` seconds.
    """
    deadline = time.monotonic() + BRANCH_WAIT
    while forge.branch_head(branch) != commit:
        if time.monotonic() > deadline:
            raise ForgeUnavailable(
                f"{forge.kind} does not show branch {branch} at {commit[:12]} after "
                f"{BRANCH_WAIT:.0f} s",
                "open the merge request again later (the same command updates it)",
            )
        sleep(0.2)


def open_merge_request(
    reconciler: Reconciler,
    forge: Forge,
    branch: str,
    commit: str,
    title: str,
    labels: Sequence[str],
) -> tuple[MergeRequest, Check, bool]:
    """(the merge request, its check, whether it is new): opened from ``branch`` (pushed,
    at ``commit``) into the reconciler's ref, or the open one from that branch updated.

    Raises:
        ForgeRefused, ForgeUnavailable: the forge said no, or did not answer.
    """
    wait_for_branch(forge, branch, commit)
    check_ = evaluate(reconciler, commit)
    body = describe(check_, title, _state(reconciler, commit))
    existing = forge.find_open(branch, reconciler.ref)
    if existing is not None:
        mr = forge.update(existing.number, title, body)
    else:
        mr = forge.create(branch, reconciler.ref, title, body)
    forge.add_labels(mr.number, (LABEL, *labels))
    forge.set_status(commit, check_.status, mr.url)
    log.info("merge request %s: %s %s", mr.number, VERIFY, check_.state.value)
    return mr, check_, existing is None


def check(reconciler: Reconciler, forge: Forge, number: int) -> tuple[MergeRequest, Check]:
    """Check merge request ``number``'s head: ``reconciler/verify`` pending, then the verdict;
    a description the reconciler wrote is rewritten with the new plan.

    Raises:
        ForgeRefused, ForgeUnavailable: the forge said no, or did not answer.
        GitUnreachable: the head could not be fetched.
    """
    mr = forge.get(number)
    forge.set_status(mr.head_sha, CommitStatus(VERIFY, CommitState.PENDING, "checking"), mr.url)
    try:
        reconciler.source.repo[mr.head_sha]
    except (KeyError, ValueError):
        try:
            fetch_branch(reconciler.source, mr.head_branch)
        except ReconcilerError as exc:  # a fork's branch, a remote down: never left pending
            text = f"cannot fetch the head: {_first(exc)}"
            forge.set_status(mr.head_sha, CommitStatus(VERIFY, CommitState.ERROR, _one_line(text)))
            raise
    check_ = evaluate(reconciler, mr.head_sha, mr.base_branch)
    if MARKER in mr.body:
        body = describe(check_, mr.title, _state(reconciler, mr.head_sha))
        forge.update(mr.number, mr.title, body)
    forge.set_status(mr.head_sha, check_.status, mr.url)
    return mr, check_


def _state(reconciler: Reconciler, commit: str) -> DesiredState | None:
    try:
        return reconciler.state_at(commit)
    except ReconcilerError:
        return None
