"""The commands that propose changes in git (``promote``, ``rollback``, ``release add``,
``discover``, ``check-mr``, ``init``) and read its history (``audit``): loaded only when one
of them runs, so ``apply`` does not import the proposal and forge code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence

from reconciler.cli.commands import make_reconciler, progress
from reconciler.cli.render import _dump, table
from reconciler.engine.reconcile import Reconciler
from reconciler.errors import Stalled
from reconciler.forge import VERIFY, CommitState, MergeRequest
from reconciler.git import is_url
from reconciler.proposals import discover, mergerequests, scaffold
from reconciler.proposals.audit import EntryKind, audit
from reconciler.proposals.workflows import Proposal, Workflows


def cmd_init(args: argparse.Namespace) -> int:
    """``init DIR``: a working state repository (:mod:`reconciler.proposals.scaffold`), and
    what to do next."""
    options = scaffold.InitOptions(
        args.directory,
        source=args.source,
        signer_key=args.signer_key,
        insecure_skip_signatures=args.insecure_skip_signatures,
        record_key=args.record_key,
        trust_root=args.write_root,
        allowed_signers=args.allowed_signers,
    )
    created = scaffold.init(options)
    if args.insecure_skip_signatures:
        print(f"WARNING: {scaffold.UNVERIFIED}", file=sys.stderr)
    if not args.quiet:
        print(scaffold.next_steps(created))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """``promote ENV RELEASE``: a branch and commit for a merge request; nothing is applied."""
    return _propose(
        args,
        f"promote {args.environment}",
        ("promote", args.environment),
        lambda flows: flows.promote(
            args.environment,
            args.release,
            branch=args.branch,
            message=args.message,
            push=args.push or args.open,
            reuse=args.open,
        ),
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    """``rollback ENV``: a branch reverting the environment's last promotion, for a merge
    request."""
    return _propose(
        args,
        f"rollback {args.environment}",
        ("rollback", args.environment),
        lambda flows: flows.rollback(
            args.environment,
            to=args.to,
            branch=args.branch,
            push=args.push or args.open,
            reuse=args.open,
        ),
    )


def _propose(
    args: argparse.Namespace,
    title: str,
    kind: tuple[str, str],
    make: Callable[[Workflows], Proposal],
) -> int:
    """One proposal: the forge checked first (``--open``), the branch made by ``make``, its
    merge request opened or updated, and what was done printed."""
    flows = Workflows(make_reconciler(args))
    try:
        with progress(args, title):
            _forge_first(args, flows.reconciler)
            proposal = make(flows)
            opened = _open_mr(args, flows.reconciler, proposal, kind)
    finally:
        flows.reconciler.close()
    _print_proposal(args, proposal, opened)
    return 0


def _unique(pairs: Sequence[tuple[str, str]], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise Stalled(f"{what} {key!r} is given twice")
        found[key] = value
    return found


def cmd_release_add(args: argparse.Namespace) -> int:
    """``release add CATALOG RELEASE ITEM=REF…``: a branch adding the release, its tags
    resolved to digests and verified first."""
    items = _unique(args.items, "item")
    return _propose(
        args,
        f"release {args.release}",
        ("release", args.catalog),
        lambda flows: flows.release_add(
            args.catalog,
            args.release,
            items,
            hazards=_unique(args.hazard, "hazard"),
            metadata=_unique(args.metadata, "metadata key"),
            branch=args.branch,
            message=args.message,
            push=args.push or args.open,
            reuse=args.open,
        ),
    )


def _forge_first(args: argparse.Namespace, reconciler: Reconciler) -> None:
    """With ``--open``, the forge of the policy in force before any branch is made, so a
    missing ``settings.forge`` or token fails first (kept on ``args.forge``)."""
    args.forge = mergerequests.forge_in_force(reconciler) if args.open else None


def _open_mr(
    args: argparse.Namespace, reconciler: Reconciler, p: Proposal, labels: Sequence[str]
) -> dict[str, object] | None:
    """With ``--open``: the merge request of the pushed proposal, opened or updated on the
    forge of the policy in force, with its ``reconciler/verify`` status."""
    if not args.open:
        return None
    forge = getattr(args, "forge", None) or mergerequests.forge_in_force(reconciler)
    title = p.message.splitlines()[0]
    mr, check, new = mergerequests.open_merge_request(
        reconciler, forge, p.branch, p.commit, title, labels
    )
    return _mr_json(mr, check, "opened" if new else "updated")


def _mr_json(mr: MergeRequest, check: mergerequests.Check, action: str) -> dict[str, object]:
    return {
        "number": mr.number,
        "url": mr.url,
        "action": action,
        "head": check.head,
        "status": {"context": VERIFY, "state": check.state.value, "description": check.summary},
    }


def _print_proposal(
    args: argparse.Namespace, p: Proposal, opened: dict[str, object] | None = None
) -> None:
    if args.json:
        _dump({**p.to_json(), **({"mergeRequest": opened} if opened else {})}, sys.stdout)
        return
    if args.quiet:
        print(opened["url"] if opened else p.branch)
        return
    print(f"{p.message.splitlines()[0]}")
    print(f"  branch   {p.branch}{' (pushed to origin)' if p.pushed else ''}")
    print(f"  commit   {p.commit[:12]} on {p.base[:12]}")
    for digest, how in sorted(p.verified.items()):
        print(f"  verified {digest[:19]}  {how}")
    for rule in p.governance:
        print(f"  rule     {rule}")
    if opened:
        status = opened["status"]
        assert isinstance(status, dict)
        print(f"  merge request !{opened['number']} {opened['action']}: {opened['url']}")
        print(f"  {VERIFY}: {status['state']}: {status['description']}")
    elif not p.pushed:
        print(f"  next: git push origin {p.branch}, then open a merge request")


def cmd_check_mr(args: argparse.Namespace) -> int:
    """``check-mr N``: the gate on merge request N's head, as apply will run it after the
    merge; sets ``reconciler/verify`` (pending, then success or failure naming the rule).
    Exit 0 success, 1 failure."""
    reconciler = make_reconciler(args)
    try:
        with progress(args, f"check merge request {args.number}"):
            forge = mergerequests.forge_in_force(reconciler)
            mr, check = mergerequests.check(reconciler, forge, args.number)
    finally:
        reconciler.close()
    if args.json:
        _dump(_mr_json(mr, check, "checked"), sys.stdout)
    elif not args.quiet:
        print(f"merge request !{mr.number} {mr.title}")
        print(f"  head     {mr.head_branch} at {mr.head_sha[:12]}")
        print(f"  {VERIFY}: {check.state.value}: {check.summary}")
        if check.error is not None and check.error.hint:
            print(f"  hint: {check.error.hint}")
    return 0 if check.state is CommitState.SUCCESS else 1


def cmd_discover(args: argparse.Namespace) -> int:
    """``discover``: one round of release discovery (and ``--follow``), each proposal a
    branch. A URL repository needs ``--push``: branches in the local mirror would be lost.
    Exit 1 when a proposal failed."""
    reconciler = make_reconciler(args)
    flows = Workflows(reconciler)
    args.push = args.push or args.open
    if is_url(reconciler.source.location) and not args.push:
        raise Stalled(
            f"{reconciler.source.display} is a URL: branches made in the local mirror are lost",
            "pass --push to publish the proposals for merge requests",
        )
    try:
        with progress(args, "discover"):
            _forge_first(args, reconciler)
            state = reconciler.load()
            unknown = sorted(set(args.catalog or ()) - set(state.catalogs))
            if unknown:
                raise Stalled(
                    f"unknown catalog(s): {', '.join(unknown)}",
                    f"choose from: {', '.join(sorted(state.catalogs))}",
                )
            findings = discover.discover_releases(flows, state, push=args.push, only=args.catalog)
            if args.follow:
                findings += discover.follow_latest(flows, state, push=args.push, only=args.env)
            opened = _open_findings(args, reconciler, findings)
    finally:
        reconciler.close()
    failed = any(f.status == discover.FindingStatus.FAILED for f in findings)
    if args.json:
        shown = [{**f.to_json(), **opened.get(f.branch, {})} for f in findings]
        _dump({"findings": shown}, sys.stdout)
    elif args.quiet:
        for f in findings:
            if f.status == discover.FindingStatus.PROPOSED:
                print(f.branch)
    elif not findings:
        print("nothing new: no catalog with discover found a newer release")
    else:
        rows = [
            [f.kind, f.environment or f.catalog, f.release, f.status, f.branch, f.reason[:80]]
            for f in findings
        ]
        table(["KIND", "FOR", "RELEASE", "STATUS", "BRANCH", "WHY"], rows, sys.stdout)
        for branch, found in opened.items():
            mr = found["mergeRequest"]
            print(f"merge request !{mr['number']} for {branch}: {mr['url']}")
    return 1 if failed else 0


def _open_findings(
    args: argparse.Namespace, reconciler: Reconciler, findings: Sequence[discover.Finding]
) -> dict[str, dict[str, dict[str, object]]]:
    """With ``--open``: a merge request for each new proposal, by branch."""
    opened: dict[str, dict[str, dict[str, object]]] = {}
    for f in findings:
        if f.status != discover.FindingStatus.PROPOSED or f.proposal is None:
            continue
        kind = ("release", f.catalog) if f.environment is None else ("promote", f.environment)
        mr = _open_mr(args, reconciler, f.proposal, kind)
        if mr is not None:
            opened[f.branch] = {"mergeRequest": mr}
    return opened


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit``: per environment, git's promotions and rollbacks joined with the apply
    records that carried them out."""
    flows = Workflows(make_reconciler(args))
    try:
        with progress(args, "audit"):
            entries = audit(flows, args.env, args.since)
    finally:
        flows.reconciler.close()
    if args.json:
        _dump({"entries": [e.to_json() for e in entries]}, sys.stdout)
        return 0
    if args.quiet:
        return 0
    current = None
    for e in entries:
        if e.environment != current:
            current = e.environment
            print(f"\n{current}")
        if e.kind is EntryKind.RECORD:
            print(f"  {e.time or '-':<20}  {e.commit[:12] or '-':<12}  record    {e.status}")
            print(f"      {e.subject}")
            continue
        change = f"{e.release_from or '-'} -> {e.release_to or '-'}"
        mr = f" {e.merge_request}" if e.merge_request else ""
        print(f"  {e.time}  {e.commit[:12]}  {e.kind:<9} {change:<16} {e.status}{mr}")
        merged = f", merged by {e.committer}" if e.committer != e.author else ""
        print(f"      {e.subject}  (asked by {e.author}{merged})")
        if e.forge:
            approved = ", ".join(e.forge["approvers"]) or "nobody"
            print(
                f"      merge request {e.merge_request} by {e.forge['author']}, approved by "
                f"{approved}, merged by {e.forge['mergedBy'] or '-'}"
            )
        if e.applied_at:
            how = _receipt_summary(e.verified)
            signed = f", record signed by key {e.signer}" if e.signer else ", record unsigned"
            print(f"      applied {e.applied_at} by {e.applied_by}{signed}: {how}")
            for said in e.governance:
                print(f"      governance: {said}")
        if e.reason:
            print(f"      {e.reason}")
    return 0


def _receipt_summary(verified: Mapping[str, str]) -> str:
    """Who signed, once: the receipts without integrity counts and evidence digests."""
    parts: set[str] = set()
    for how in verified.values():
        for part in how.split("; "):
            if not part.startswith("integrity"):
                parts.add(re.sub(r" \(sha256:[0-9a-f]+[^)]*\)", "", part))
    return "; ".join(sorted(parts)) or "integrity only"
