"""Command line: argparse, output formatting and exit codes; the logic lives elsewhere.

Exit codes: 0 success, 1 an error or an invalid state, 2 a usage error (argparse).
Errors print their message and hint; a traceback only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from reconciler import __version__, daemon
from reconciler.desired import Loader
from reconciler.errors import InvalidState, ReconcilerError, redact_url
from reconciler.git import GitSource, default_cache_dir, is_url
from reconciler.model import Action, DesiredState
from reconciler.reconcile import EnvOutcome, Mode, PassResult, Reconciler, promotion_order
from reconciler.registry import set_auth_file
from reconciler.signing import KEY_ENV, PASSWORD_ENV, generate, signing_key_from
from reconciler.verify import disposition
from reconciler.workflows import Proposal, Workflows

log = logging.getLogger("reconciler")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the command (a subparser must not reset them)."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--repo", default=d("."), help="state repository: a path or a URL")
    parser.add_argument("--ref", default=d("main"), help="branch, tag or commit (default main)")
    parser.add_argument("--path", default=d(""), help="sub-directory holding the state")
    parser.add_argument(
        "--env", action="append", default=d(None), metavar="NAME", help="only this environment"
    )
    parser.add_argument("--json", action="store_true", default=d(False), help="JSON output")
    parser.add_argument("-v", "--verbose", action="store_true", default=d(False))
    parser.add_argument(
        "--cache-dir", type=Path, default=d(None), help="default: $RECONCILER_CACHE_DIR"
    )
    parser.add_argument(
        "--authfile",
        metavar="FILE",
        default=d(None),
        help="registry credentials (auth.json / config.json), consulted before the others",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Promote OCI artifacts between environments from a git state repository.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    validate = sub.add_parser(
        "validate", help="evaluate, schema-check and cross-check the desired state (for MR CI)"
    )
    _common(validate, suppress=True)
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser(
        "plan", help="show the changes each environment needs and what blocks them"
    )
    _common(plan, suppress=True)
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 in sync, 2 changes pending, 1 error",
    )
    plan.set_defaults(func=cmd_plan)

    apply = sub.add_parser("apply", help="verify and apply: move the tags, write apply records")
    _common(apply, suppress=True)
    apply.add_argument("--dry-run", action="store_true", help="plan and verify; write nothing")
    _record_key(apply)
    apply.set_defaults(func=cmd_apply)

    status = sub.add_parser("status", help="desired vs actual, drift and the last apply record")
    _common(status, suppress=True)
    status.set_defaults(func=cmd_status)

    promote = sub.add_parser("promote", help="a branch + commit moving ENV to RELEASE, for a MR")
    _common(promote, suppress=True)
    promote.add_argument("environment", metavar="ENV")
    promote.add_argument("release", metavar="RELEASE")
    promote.add_argument("--branch", help="default promote/<env>/<release>")
    promote.add_argument("--message", "-m", help="the commit's subject line")
    promote.add_argument("--push", action="store_true", help="push the branch to origin")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="a branch + git revert of ENV's last promotion")
    _common(rollback, suppress=True)
    rollback.add_argument("environment", metavar="ENV")
    rollback.add_argument("--to", metavar="COMMIT", help="revert this commit instead")
    rollback.add_argument("--branch", help="default rollback/<env>/<commit>")
    rollback.add_argument("--push", action="store_true", help="push the branch to origin")
    rollback.set_defaults(func=cmd_rollback)

    audit = sub.add_parser("audit", help="timeline: git history joined with apply records")
    _common(audit, suppress=True)
    audit.add_argument("--since", type=_date, help="only commits since DATE (YYYY-MM-DD)")
    audit.set_defaults(func=cmd_audit)

    run = sub.add_parser("run", help="reconcile continuously: poll, webhook, health, metrics")
    _common(run, suppress=True)
    daemon.add_arguments(run)
    _record_key(run)
    run.set_defaults(func=cmd_run)

    keygen = sub.add_parser("keygen", help="write a record-signing key pair: PATH and PATH.pub")
    keygen.add_argument("key", type=Path, metavar="PATH", help="the private key file to write")
    keygen.add_argument(
        "--type", choices=("ecdsa-p256", "ed25519"), default="ecdsa-p256", dest="key_type"
    )
    keygen.set_defaults(func=cmd_keygen, json=False, verbose=False)
    return parser


def _record_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record-key",
        type=Path,
        metavar="FILE",
        help="PEM private key that signs apply records and verification summaries "
        f"(default: ${KEY_ENV}; encrypted keys: ${PASSWORD_ENV})",
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public = generate(args.key, args.key_type)
    print(f"wrote {private} (private, mode 0600) and {public}")
    print(
        f"  commit {public.name} to the state repository (e.g. as keys/records.pub), list it "
        f"in settings.records.keys, and run the reconciler with --record-key {private}"
    )
    return 0


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ReconcilerError as exc:
        _print_error(args, exc)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so plainly, trace only on request
        if args.verbose:
            traceback.print_exc()
        print(f"internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print("  hint: re-run with -v for the traceback and report it", file=sys.stderr)
        return 1


def _print_error(args: argparse.Namespace, exc: ReconcilerError) -> None:
    if args.verbose:
        traceback.print_exc()
    if args.json:
        errors: list[dict[str, object]]
        if isinstance(exc, InvalidState):
            errors = [p.to_json() for p in exc.problems]
        else:
            errors = [{"message": exc.message, "hint": exc.hint}]
        _dump({"valid": False, "errors": errors}, sys.stdout)
    else:
        print(f"error: {exc}", file=sys.stderr)


def make_reconciler(args: argparse.Namespace) -> Reconciler:
    set_auth_file(getattr(args, "authfile", None))
    cache_dir = args.cache_dir or default_cache_dir()
    source = GitSource(args.repo, cache_dir=cache_dir)
    # Only the commands that write records load the key (a bad key fails them, not validate).
    key = signing_key_from(args.record_key) if hasattr(args, "record_key") else None
    return Reconciler(source, Loader(cache_dir), ref=args.ref, path=args.path, record_key=key)


def load_state(args: argparse.Namespace) -> DesiredState:
    return make_reconciler(args).load()


# --------------------------------------------------------------------------- plan/apply/status


def _run(args: argparse.Namespace, mode: Mode) -> PassResult:
    reconciler = make_reconciler(args)
    try:
        return reconciler.run(mode, args.env)
    finally:
        reconciler.close()


def cmd_plan(args: argparse.Namespace) -> int:
    result = _run(args, Mode.PLAN)
    _report(args, result, "plan")
    if not result.ok:
        return 1
    return 2 if args.detailed_exitcode and not result.in_sync else 0


def cmd_apply(args: argparse.Namespace) -> int:
    result = _run(args, Mode.PLAN if args.dry_run else Mode.APPLY)
    _report(args, result, "dry run" if args.dry_run else "apply")
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    result = _run(args, Mode.STATUS)
    _report(args, result, "status")
    if not result.ok:
        return 1
    return 0 if result.in_sync else 2


# --------------------------------------------------------------------------- workflows


def cmd_run(args: argparse.Namespace) -> int:
    reconciler = make_reconciler(args)
    try:
        return daemon.main(args, reconciler)
    finally:
        reconciler.close()


def cmd_promote(args: argparse.Namespace) -> int:
    flows = Workflows(make_reconciler(args))
    proposal = flows.promote(
        args.environment,
        args.release,
        branch=args.branch,
        message=args.message,
        push=args.push,
    )
    _print_proposal(args, proposal)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    flows = Workflows(make_reconciler(args))
    proposal = flows.rollback(args.environment, to=args.to, branch=args.branch, push=args.push)
    _print_proposal(args, proposal)
    return 0


def _print_proposal(args: argparse.Namespace, p: Proposal) -> None:
    if args.json:
        _dump(p.to_json(), sys.stdout)
        return
    print(f"{p.message.splitlines()[0]}")
    print(f"  branch   {p.branch}{' (pushed to origin)' if p.pushed else ''}")
    print(f"  commit   {p.commit[:12]} on {p.base[:12]}")
    for digest, how in sorted(p.verified.items()):
        print(f"  verified {digest[:19]}  {how}")
    if not p.pushed:
        print(f"  next: git push origin {p.branch}, then open a merge request")


def cmd_audit(args: argparse.Namespace) -> int:
    flows = Workflows(make_reconciler(args))
    try:
        entries = flows.audit(args.env, args.since)
    finally:
        flows.reconciler.close()
    if args.json:
        _dump({"entries": [e.to_json() for e in entries]}, sys.stdout)
        return 0
    current = None
    for e in entries:
        if e.environment != current:
            current = e.environment
            print(f"\n{current}")
        if e.kind == "record":
            print(f"  {e.time or '-':<20}  {e.commit[:12] or '-':<12}  record    {e.status}")
            print(f"      {e.subject}")
            continue
        change = f"{e.release_from or '-'} -> {e.release_to or '-'}"
        mr = f" {e.merge_request}" if e.merge_request else ""
        print(f"  {e.time}  {e.commit[:12]}  {e.kind:<9} {change:<16} {e.status}{mr}")
        merged = f", merged by {e.committer}" if e.committer != e.author else ""
        print(f"      {e.subject}  (asked by {e.author}{merged})")
        if e.applied_at:
            how = _receipt_summary(e.verified)
            signed = f", record signed by key {e.signer}" if e.signer else ", record unsigned"
            print(f"      applied {e.applied_at} by {e.applied_by}{signed}: {how}")
        if e.reason:
            print(f"      {e.reason}")
    return 0


def _receipt_summary(verified: dict[str, str]) -> str:
    """Who signed, once: the receipts without integrity counts and evidence digests."""
    parts: set[str] = set()
    for how in verified.values():
        for part in how.split("; "):
            if not part.startswith("integrity"):
                parts.add(re.sub(r" \(sha256:[0-9a-f]+[^)]*\)", "", part))
    return "; ".join(sorted(parts)) or "integrity only"


def _report(args: argparse.Namespace, result: PassResult, what: str) -> None:
    if args.json:
        _dump(pass_json(result), sys.stdout)
        return
    state = result.state
    print(f"{what}: commit {state.commit[:12]}  tree {state.tree[:12]}")
    for o in result.outcomes:
        print_outcome(o, state, sys.stdout)
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))


_SIGN = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-"}


def print_outcome(o: EnvOutcome, state: DesiredState, out: TextIO) -> None:
    env = state.environments[o.environment]
    policy = state.policies[o.environment]
    verify = " UNVERIFIED" if policy.insecure_skip_signatures else ""
    print(f"\n{o.environment}  {env.catalog} {env.release}  {o.status.value}{verify}", file=out)
    if o.note:
        print(f"  {o.note}", file=out)
    if o.record is not None:
        rb = o.record
        print(
            f"  record   {rb.digest[:19]}  {rb.release} at {rb.commit[:12]}  {rb.time}",
            file=out,
        )
    plan = o.plan
    if plan is not None:
        rows = []
        for c in plan.changes:
            rows.append(
                [
                    f"{_SIGN[c.action]} {c.action.value}",
                    f"{c.repository}:{c.tag}",
                    (c.from_digest or "-")[:19],
                    "->",
                    (c.to_digest or "(deleted)")[:19],
                    c.drift.value,
                ]
            )
        if rows:
            table(["CHANGE", "TAG", "FROM", "", "TO", "DRIFT"], rows, out)
        elif plan.record_due and not plan.suspended:
            print("  tags in place; a new apply record is due", file=out)
        for note in plan.notes:
            print(f"  note: {note}", file=out)
    if o.applied is not None:
        a = o.applied
        print(
            f"  applied: {len(a.moved)} moved, {len(a.deleted)} pruned, {len(a.copied)} copied",
            file=out,
        )
    for warning in o.warnings:
        print(f"  warning: {warning}", file=out)
    if o.error is not None:
        print(f"  {o.status.value}: {o.error.message}", file=out)
        if o.error.hint:
            print(f"  hint: {o.error.hint}", file=out)


def pass_json(result: PassResult) -> dict[str, Any]:
    """The documented ``--json`` shape of plan, apply and status."""
    state = result.state
    envs = []
    for o in result.outcomes:
        env = state.environments[o.environment]
        plan = o.plan
        envs.append(
            {
                "name": o.environment,
                "catalog": env.catalog,
                "release": env.release,
                "status": o.status.value,
                "unverified": state.policies[o.environment].insecure_skip_signatures,
                "changes": [
                    {
                        "action": c.action.value,
                        "repository": c.repository,
                        "tag": c.tag,
                        "item": c.item,
                        "from": c.from_digest,
                        "to": c.to_digest,
                        "drift": c.drift.value,
                    }
                    for c in (plan.changes if plan else ())
                ],
                "recordDue": bool(plan and plan.record_due),
                "notes": list(plan.notes) if plan else [],
                "transition": o.note,
                "verified": o.verified,
                "receipt": o.receipt.to_json() if o.receipt else None,
                "warnings": list(o.warnings),
                "applied": None
                if o.applied is None
                else {
                    "moved": o.applied.moved,
                    "deleted": o.applied.deleted,
                    "copied": o.applied.copied,
                },
                "record": None
                if o.record is None
                else {
                    "digest": o.record.digest,
                    "commit": o.record.commit,
                    "release": o.record.release,
                    "time": o.record.time,
                    "reconciler": o.record.reconciler,
                },
                "error": None
                if o.error is None
                else {
                    "message": o.error.message,
                    "hint": o.error.hint,
                    "rule": getattr(o.error, "rule", None),
                    "transient": o.transient,
                    "disposition": disposition(o.error).value,
                },
            }
        )
    return {
        "commit": state.commit,
        "tree": state.tree,
        "ok": result.ok,
        "inSync": result.in_sync,
        "environments": envs,
    }


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    state = load_state(args)
    envs = _selected(state, args.env)
    if args.json:
        _dump({"valid": True, **state_json(state, envs)}, sys.stdout)
    else:
        shown = redact_url(args.repo) if is_url(args.repo) else args.repo
        print_state(state, envs, sys.stdout, header=f"{shown} @ {args.ref}")
        print(f"\nvalid: {len(state.catalogs)} catalogs, {len(envs)} environments")
    return 0


def _selected(state: DesiredState, names: list[str] | None) -> list[str]:
    """The environments asked for (validated), else all of them in promotion order."""
    ordered = promotion_order(state, names)
    return names or ordered


def state_json(state: DesiredState, envs: Sequence[str]) -> dict[str, Any]:
    """The documented ``--json`` shape of a desired state."""
    return {
        "commit": state.commit,
        "tree": state.tree,
        "catalogs": {
            name: {
                "source": c.source,
                "file": c.file,
                "releases": [
                    {
                        "name": r.name,
                        "items": {k: str(v) for k, v in r.items.items()},
                        "metadata": dict(r.metadata),
                        "hazards": dict(r.hazards),
                    }
                    for r in c.releases
                ],
            }
            for name, c in sorted(state.catalogs.items())
        },
        "environments": {
            name: {
                "catalog": e.catalog,
                "release": e.release,
                "file": e.file,
                "requires": list(e.requires),
                "verify": state.policies[name].describe(),
                "unverified": state.policies[name].insecure_skip_signatures,
                "allowHazards": e.allow_hazards,
                "suspend": e.suspend,
                "prune": e.prune,
                "tags": [
                    {
                        "item": t.item,
                        "repository": t.repository,
                        "tag": t.tag,
                        "digest": t.digest,
                        "source": t.source_repository,
                    }
                    for t in state.tags[name]
                ],
            }
            for name in envs
            for e in [state.environments[name]]
        },
    }


def print_state(state: DesiredState, envs: Sequence[str], out: TextIO, header: str) -> None:
    print(f"state    {header}  commit {state.commit[:12]}  tree {state.tree[:12]}", file=out)
    print("\ncatalogs", file=out)
    rows = []
    for name, c in sorted(state.catalogs.items()):
        releases = ", ".join(r.name + (" (HAZARDS)" if r.hazardous else "") for r in c.releases)
        rows.append([name, c.source, releases or "-"])
    table(["CATALOG", "SOURCE", "RELEASES"], rows, out)
    print("\nenvironments", file=out)
    rows = []
    for name in envs:
        e = state.environments[name]
        policy = state.policies[name].describe()
        flags = [f for f, on in (("suspended", e.suspend), ("prune", e.prune)) if on]
        label = name + (f" ({', '.join(flags)})" if flags else "")
        tags = state.tags[name] or ()
        if not tags:
            rows.append([label, e.release, "-", "-", "-", policy])
        for i, t in enumerate(tags):
            first = i == 0
            rows.append(
                [
                    label if first else "",
                    e.release if first else "",
                    t.item,
                    t.reference,
                    t.digest[:19],
                    policy if first else "",
                ]
            )
    table(["ENVIRONMENT", "RELEASE", "ITEM", "TARGET", "DIGEST", "VERIFY"], rows, out)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print(
            "  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip(),
            file=out,
        )


def _dump(value: Any, out: TextIO) -> None:
    json.dump(value, out, indent=2, sort_keys=False)
    out.write("\n")
