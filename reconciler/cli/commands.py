"""The commands: each turns parsed options into one call of the library and
its output (reconciler.cli.render); only main() turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import logging
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from reconciler import __version__, receivers
from reconciler.cli import completion
from reconciler.cli.progress import Progress
from reconciler.cli.render import (
    _dump,
    _report,
    print_state,
    state_json,
    table,
)
from reconciler.daemon.options import DaemonConfig
from reconciler.desired import Loader, cue_command, cue_environment
from reconciler.engine.reconcile import Mode, PassResult, Reconciler, promotion_order
from reconciler.errors import ReconcilerError, Stalled, redact_url
from reconciler.evidence.signing import generate, signing_key_from
from reconciler.forge import VERIFY, CommitState, MergeRequest
from reconciler.git import GitSource, default_cache_dir, is_url
from reconciler.git.branches import snapshot_of, worktree_tree
from reconciler.model import DesiredState, PublicKey
from reconciler.proposals import discover, mergerequests, scaffold
from reconciler.proposals.audit import EntryKind, audit
from reconciler.proposals.markdown import plan_markdown
from reconciler.proposals.workflows import Proposal, Workflows
from reconciler.registry import set_auth_file
from reconciler.verify.root import ROOT_ENV, TrustRoot, trust_root_from, write_trust_root

log = logging.getLogger("reconciler")


@contextmanager
def progress(args: argparse.Namespace, title: str) -> Iterator[None]:
    """Show ``title``'s progress on stderr while the block runs (``--progress``; none with
    ``--quiet``)."""
    mode = "none" if args.quiet else args.progress
    with Progress(mode).task(title):
        yield


def make_reconciler(args: argparse.Namespace) -> Reconciler:
    """The reconciler the options describe. The record key is loaded only for commands that
    take ``--record-key`` (those that write records), so a bad key fails them alone.

    Raises:
        KeyProblem: the record key cannot be used.
        TrustRootProblem: the trust root cannot be read.
    """
    set_auth_file(getattr(args, "authfile", None))
    cache_dir = args.cache_dir or default_cache_dir()
    source = GitSource(args.repo, cache_dir=cache_dir)
    # Only the commands that write records load the key (a bad key fails them, not validate).
    key = signing_key_from(args.record_key) if hasattr(args, "record_key") else None
    root = trust_root_from(args.trust_root, args.trust_on_first_use)
    return Reconciler(
        source, Loader(cache_dir), ref=args.ref, path=args.path, record_key=key, trust_root=root
    )


def load_state(args: argparse.Namespace) -> DesiredState:
    """The desired state of the ref's newest commit, not yet judged."""
    return make_reconciler(args).load()


# --------------------------------------------------------------------------- small commands


def cmd_keygen(args: argparse.Namespace) -> int:
    """``keygen PATH``: a record-signing key pair and, with ``--write-trust-root``, a trust
    root naming its public key (and ``--allowed-signers``)."""
    if args.allowed_signers and not args.write_root:
        raise Stalled("--allowed-signers goes into a trust root: add --write-trust-root FILE")
    signers = None
    if args.allowed_signers:
        try:
            signers = args.allowed_signers.read_bytes()
        except OSError as exc:
            raise Stalled(f"cannot read {args.allowed_signers}: {exc.strerror}") from None
    private, public = generate(args.key, args.key_type)
    print(f"wrote {private} (private, mode 0600) and {public}")
    if args.write_root:
        pem = public.read_text(encoding="utf-8")
        root = TrustRoot(str(args.write_root), signers, (PublicKey(str(public), pem),))
        write_trust_root(args.write_root, root)
        print(
            f"wrote {args.write_root}: the trust root (record key {public.name}"
            + (f", commit signers of {args.allowed_signers}" if signers else ", no commit signers")
            + f"); give it to every host with --trust-root or ${ROOT_ENV}"
        )
    if not args.quiet:
        print(
            f"  commit {public.name} to the state repository (e.g. as keys/records.pub), list "
            f"it in settings.records.keys, and run the reconciler with --record-key {private}"
        )
    return 0


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


def versions() -> dict[str, str | None]:
    """reconciler, Python, its main libraries and the cue that would run (None: unknown)."""
    found: dict[str, str | None] = {
        "reconciler": __version__,
        "python": platform.python_version(),
        "pygit2": _distribution("pygit2"),
        "sigstore": _distribution("sigstore"),
        "cue": None,
        "cuePath": shutil.which(cue_command()),
    }
    if found["cuePath"]:
        try:
            with tempfile.TemporaryDirectory(prefix="reconciler-cue-home-") as home:
                proc = subprocess.run(
                    [found["cuePath"], "version"],
                    env=cue_environment(Path(home)),
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
            m = re.search(r"cue version (\S+)", proc.stdout)
            found["cue"] = m.group(1) if m else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found


def _distribution(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cmd_version(args: argparse.Namespace) -> int:
    """``version``: reconciler's version and those of the tools it depends on, the cue that
    would run included, for bug reports."""
    found = versions()
    if args.json:
        _dump(found, sys.stdout)
        return 0
    print(f"reconciler {found['reconciler']}")
    if args.quiet:
        return 0
    print(f"python     {found['python']}")
    print(f"pygit2     {found['pygit2']}")
    print(f"sigstore   {found['sigstore']}")
    cue = f"{found['cue'] or 'unknown version'} ({found['cuePath']})" if found["cuePath"] else None
    print(f"cue        {cue or f'not found (set RECONCILER_CUE or put {cue_command()} on PATH)'}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """``completion SHELL``: the script, generated from the parser so it never falls behind."""
    from reconciler.cli.parser import build_parser  # the parser names these commands

    sys.stdout.write(completion.script(build_parser(), args.shell))
    return 0


# --------------------------------------------------------------------------- plan/apply/status


def _run(args: argparse.Namespace, mode: Mode, title: str) -> PassResult:
    reconciler = make_reconciler(args)
    try:
        with progress(args, title):
            return reconciler.run(mode, args.env)
    finally:
        reconciler.close()


def cmd_plan(args: argparse.Namespace) -> int:
    """``plan``: exit 0, or 1 when an environment is refused or failed; with
    ``--detailed-exitcode``, 2 when changes are pending."""
    result = _run(args, Mode.PLAN, "plan")
    if args.format == "markdown":
        sys.stdout.write(plan_markdown(result))
    elif not (args.quiet and result.ok):
        _report(args, result, "plan")
    if not result.ok:
        return 1
    return 2 if args.detailed_exitcode and not result.in_sync else 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``apply`` (``--dry-run``: verify, write nothing): exit 0, or 1 when an environment
    is refused or failed."""
    result = _run(args, Mode.PLAN if args.dry_run else Mode.APPLY, "apply")
    if not (args.quiet and result.ok):
        _report(args, result, "dry run" if args.dry_run else "apply")
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: exit 0 in sync, 2 when an environment is not as desired, 1 when one is
    refused or failed."""
    result = _run(args, Mode.STATUS, "status")
    if not (args.quiet and result.ok):
        _report(args, result, "status")
    if not result.ok:
        return 1
    return 0 if result.in_sync else 2


# --------------------------------------------------------------------------- workflows


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: the daemon, until a signal stops it."""
    reconciler = make_reconciler(args)
    try:
        from reconciler.daemon import service  # the loop's libraries load for `run` only

        return service.main(DaemonConfig.from_args(args), reconciler)
    finally:
        reconciler.close()


def cmd_promote(args: argparse.Namespace) -> int:
    """``promote ENV RELEASE``: a branch and commit for a merge request; nothing is applied."""
    reconciler = make_reconciler(args)
    try:
        with progress(args, f"promote {args.environment}"):
            _forge_first(args, reconciler)
            proposal = Workflows(reconciler).promote(
                args.environment,
                args.release,
                branch=args.branch,
                message=args.message,
                push=args.push or args.open,
                reuse=args.open,
            )
            opened = _open_mr(args, reconciler, proposal, ("promote", args.environment))
    finally:
        reconciler.close()
    _print_proposal(args, proposal, opened)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """``rollback ENV``: a branch reverting the environment's last promotion, for a merge
    request."""
    reconciler = make_reconciler(args)
    try:
        with progress(args, f"rollback {args.environment}"):
            _forge_first(args, reconciler)
            proposal = Workflows(reconciler).rollback(
                args.environment,
                to=args.to,
                branch=args.branch,
                push=args.push or args.open,
                reuse=args.open,
            )
            opened = _open_mr(args, reconciler, proposal, ("rollback", args.environment))
    finally:
        reconciler.close()
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
    flows = Workflows(make_reconciler(args))
    try:
        with progress(args, f"release {args.release}"):
            _forge_first(args, flows.reconciler)
            proposal = flows.release_add(
                args.catalog,
                args.release,
                items,
                hazards=_unique(args.hazard, "hazard"),
                metadata=_unique(args.metadata, "metadata key"),
                branch=args.branch,
                message=args.message,
                push=args.push or args.open,
                reuse=args.open,
            )
            opened = _open_mr(args, flows.reconciler, proposal, ("release", args.catalog))
    finally:
        flows.reconciler.close()
    _print_proposal(args, proposal, opened)
    return 0


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


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    """``validate`` (for merge-request CI): the state loads and cross-checks, or the error
    names every problem; ``--worktree`` checks the work tree's files, edits included;
    ``--mr N`` is ``check-mr N``."""
    if args.mr is not None:
        if args.worktree:
            raise Stalled("--mr checks a merge request's head, not the work tree: pass one")
        args.number = args.mr
        return cmd_check_mr(args)
    reconciler = make_reconciler(args)
    shown = redact_url(args.repo) if is_url(args.repo) else args.repo
    if args.worktree:
        head, tree, changed = worktree_tree(reconciler.source, args.path)
        snap = snapshot_of(reconciler.source, head, tree, args.path, "(work tree)")
        state = reconciler.loader.load(snap)
        where = f"the work tree ({len(changed)} changed file{'s' if len(changed) != 1 else ''})"
    else:
        state = reconciler.load()
        where = f"@ {args.ref}"
        if not args.quiet:
            _warn_if_worktree_differs(reconciler, args, state)
    envs = _selected(state, args.env)
    _warn_private_receivers(state)
    if args.json:
        _dump({"valid": True, **state_json(state, envs)}, sys.stdout)
    elif not args.quiet:
        print_state(state, envs, sys.stdout, header=f"{shown} {where}")
        print(f"\nvalid: {len(state.catalogs)} catalogs, {len(envs)} environments")
    return 0


def _warn_private_receivers(state: DesiredState) -> None:
    """A receiver on a loopback or private address is valid, but the daemon sends to it
    only with --notify-allow-private, which validate cannot know: say so (on stderr)."""
    for target in state.proposed_settings.notify:
        host = receivers.literal_host(target.url or "")
        if host is not None and receivers.classify(host)[0] is receivers.Reach.PRIVATE:
            why = receivers.refusal(host, allow_private=False)
            print(f"warning: settings.notify: {why}", file=sys.stderr)


def _warn_if_worktree_differs(
    reconciler: Reconciler, args: argparse.Namespace, state: DesiredState
) -> None:
    """A checkout whose files differ from what was validated: say so (on stderr)."""
    if is_url(args.repo):
        return
    try:
        head, tree, changed = worktree_tree(reconciler.source, args.path)
        snap = snapshot_of(reconciler.source, head, tree, args.path, "(work tree)")
    except ReconcilerError:
        return  # a bare repository, an unborn HEAD, no such --path in the work tree
    if snap.tree_id == state.tree:
        return
    what = f"edits to {', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}"
    if not changed:
        what = f"HEAD at {head[:12]}, not {args.ref} ({state.commit[:12]})"
    print(
        f"warning: validated {args.ref} ({state.commit[:12]}), but the work tree differs: "
        f"{what}\n  hint: pass --worktree to validate the files as they are",
        file=sys.stderr,
    )


def _selected(state: DesiredState, names: list[str] | None) -> list[str]:
    """The environments asked for (validated), else all of them in promotion order."""
    ordered = promotion_order(state, names)
    return names or ordered
