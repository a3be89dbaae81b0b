"""Command line: argparse, output formatting and exit codes; the logic lives elsewhere.

Exit codes: 0 success, 1 an error or an invalid state, 2 a usage error (argparse,
including an option that means nothing for the command, e.g. ``promote --env``).
Errors print their message and hint; a traceback only with ``-v``. Progress of long
work goes to stderr (``--progress``), results to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from reconciler import __version__, receivers
from reconciler.cli import completion
from reconciler.cli.progress import MODES as PROGRESS_MODES
from reconciler.cli.progress import Progress
from reconciler.daemon import service as daemon
from reconciler.desired import Loader, cue_command, cue_environment
from reconciler.engine.reconcile import EnvOutcome, Mode, PassResult, Reconciler, promotion_order
from reconciler.errors import InvalidState, ReconcilerError, Stalled, redact_url
from reconciler.evidence.signing import KEY_ENV, PASSWORD_ENV, generate, signing_key_from
from reconciler.git import GitSource, default_cache_dir, is_url
from reconciler.git.branches import snapshot_of, worktree_tree
from reconciler.model import Action, DesiredState, PublicKey
from reconciler.proposals import discover, scaffold
from reconciler.proposals.workflows import Proposal, Workflows
from reconciler.registry import set_auth_file
from reconciler.verify import disposition
from reconciler.verify.root import ROOT_ENV, TOFU_ENV, TrustRoot, trust_root_from, write_trust_root

log = logging.getLogger("reconciler")

# --------------------------------------------------------------------------- options

# The common options: accepted before or after the command, but only by the commands
# they mean something for (anything else is a usage error that says why).
COMMON_DEFAULTS: dict[str, Any] = {
    "repo": ".",
    "ref": "main",
    "path": "",
    "env": None,
    "json": False,
    "cache_dir": None,
    "authfile": None,
    "trust_root": None,
    "trust_on_first_use": False,
}
_STATE = ("repo", "ref", "path", "cache_dir")
_TRUST = ("trust_root", "trust_on_first_use")  # judges commits and trusts records
_READS = (*_STATE, "json", "authfile", *_TRUST)  # loads the state and reads registries
ACCEPTS: dict[str, tuple[str, ...]] = {
    "validate": (*_STATE, "env", "json"),
    "plan": (*_READS, "env"),
    "apply": (*_READS, "env"),
    "status": (*_READS, "env"),
    "audit": (*_READS, "env"),
    "promote": _READS,
    "rollback": _READS,
    "release add": _READS,
    "discover": (*_READS, "env"),
    "run": (*_STATE, "env", "authfile", *_TRUST),
    "keygen": (),
    "init": (),
    "version": ("json",),
    "completion": (),
}
_WHY = {
    "env": "{command} does not work per environment",
    "json": "{command} has no JSON output",
    "authfile": "{command} reads no registry",
    "trust_root": "{command} judges no commit",
    "trust_on_first_use": "{command} judges no commit",
    "promote env": "promote names its environment as an argument, not with --env",
    "rollback env": "rollback names its environment as an argument, not with --env",
    "release add env": "a release belongs to a catalog, not to an environment",
    "run json": "run logs rather than prints a result: use --log-format json",
}
OUTPUT_DEFAULTS: dict[str, Any] = {
    "verbose": False,
    "quiet": False,
    "log_level": "warning",
    "progress": "auto",
}
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _common(parser: argparse.ArgumentParser, hidden: Sequence[str] = ()) -> None:
    """The common options, without defaults (so that what was given is known); those in
    ``hidden`` are accepted only to say why they mean nothing here."""

    def h(name: str, text: str) -> str:
        return argparse.SUPPRESS if name in hidden else text

    s = argparse.SUPPRESS
    parser.add_argument("--repo", default=s, help=h("repo", "state repository: a path or a URL"))
    parser.add_argument("--ref", default=s, help=h("ref", "branch, tag or commit (default main)"))
    parser.add_argument("--path", default=s, help=h("path", "sub-directory holding the state"))
    parser.add_argument(
        "--env", action="append", default=s, metavar="NAME", help=h("env", "only this environment")
    )
    parser.add_argument("--json", action="store_true", default=s, help=h("json", "JSON output"))
    parser.add_argument(
        "--cache-dir", type=Path, default=s, help=h("cache_dir", "default: $RECONCILER_CACHE_DIR")
    )
    parser.add_argument(
        "--authfile",
        metavar="FILE",
        default=s,
        help=h("authfile", "registry credentials (auth.json / config.json), consulted first"),
    )
    parser.add_argument(
        "--trust-root",
        type=Path,
        metavar="FILE",
        default=s,
        help=h(
            "trust_root",
            f"the deployment's pinned commit signers and record keys (default: ${ROOT_ENV}); "
            "a host that has judged nothing starts from it",
        ),
    )
    parser.add_argument(
        "--trust-on-first-use",
        action="store_true",
        default=s,
        help=h(
            "trust_on_first_use",
            f"without a trust root, trust the newest commit as it is on first contact "
            f"(or ${TOFU_ENV}=1); said loudly, see docs/trust.md",
        ),
    )


def _output(parser: argparse.ArgumentParser) -> None:
    """How much to say, on every command, before or after it."""
    s = argparse.SUPPRESS
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=s, help="debug log and tracebacks"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=s, help="only errors (--json is unchanged)"
    )
    parser.add_argument(
        "--log-level", choices=tuple(LOG_LEVELS), default=s, help="default warning (run: info)"
    )
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=s,
        help="progress on stderr: auto (a terminal only), plain (lines), none",
    )


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    func: Callable[[argparse.Namespace], int],
    key: str | None = None,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    accepted = ACCEPTS[key or name]
    _common(parser, hidden=[n for n in COMMON_DEFAULTS if n not in accepted])
    _output(parser)
    parser.set_defaults(func=func, command_key=key or name, command_parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Promote OCI artifacts between environments from a git state repository.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    _common(parser)
    _output(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = _command(
        sub, "validate", "evaluate, schema-check and cross-check the desired state (for MR CI)",
        cmd_validate,
    )  # fmt: skip
    validate.add_argument(
        "--worktree",
        action="store_true",
        help="check the files of the work tree (edits included), not a commit",
    )

    plan = _command(
        sub, "plan", "show the changes each environment needs and what blocks them", cmd_plan
    )
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 in sync, 2 changes pending, 1 error",
    )
    plan.add_argument(
        "--format",
        choices=("text", "json", "markdown"),
        help="markdown: a merge-request comment; json: as --json",
    )

    apply = _command(
        sub, "apply", "verify and apply: move the tags, write apply records", cmd_apply
    )
    apply.add_argument("--dry-run", action="store_true", help="plan and verify; write nothing")
    _record_key(apply)

    _command(sub, "status", "desired vs actual, drift and the last apply record", cmd_status)

    promote = _command(
        sub, "promote", "a branch + commit moving ENV to RELEASE, for a MR", cmd_promote
    )
    promote.add_argument("environment", metavar="ENV")
    promote.add_argument("release", metavar="RELEASE")
    promote.add_argument("--branch", help="default promote/<env>/<release>")
    promote.add_argument("--message", "-m", help="the commit's subject line")
    promote.add_argument("--push", action="store_true", help="push the branch to origin")

    rollback = _command(
        sub, "rollback", "a branch + git revert of ENV's last promotion", cmd_rollback
    )
    rollback.add_argument("environment", metavar="ENV")
    rollback.add_argument("--to", metavar="COMMIT", help="revert this commit instead")
    rollback.add_argument("--branch", help="default rollback/<env>/<commit>")
    rollback.add_argument("--push", action="store_true", help="push the branch to origin")

    release = sub.add_parser(
        "release", help="catalog releases: add one from signed tags", description="releases"
    )
    _output(release)
    releases = release.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    add = _command(
        releases, "add", "a branch adding RELEASE to CATALOG from tags, verified, for a MR",
        cmd_release_add, key="release add",
    )  # fmt: skip
    add.add_argument("catalog", metavar="CATALOG")
    add.add_argument("release", metavar="RELEASE")
    add.add_argument(
        "items",
        metavar="ITEM=REF",
        nargs="+",
        type=_pair("ITEM=REF"),
        help="REF: a tag in the catalog's source, sha256:…, or host/repo:tag (@sha256:…)",
    )
    add.add_argument(
        "--hazard", action="append", type=_pair("ID=TEXT"), default=[], metavar="ID=TEXT"
    )
    add.add_argument(
        "--metadata", action="append", type=_pair("KEY=VALUE"), default=[], metavar="K=V"
    )
    add.add_argument("--branch", help="default release/<catalog>/<release>")
    add.add_argument("--message", "-m", help="the commit's subject line")
    add.add_argument("--push", action="store_true", help="push the branch to origin")

    disc = _command(
        sub, "discover", "propose new releases found in registries (catalog discover), once",
        cmd_discover,
    )  # fmt: skip
    disc.add_argument(
        "--catalog", action="append", metavar="NAME", help="only this catalog (repeatable)"
    )
    disc.add_argument(
        "--follow",
        action="store_true",
        help="also propose promotions for environments with follow: latest",
    )
    disc.add_argument("--push", action="store_true", help="push the branches to origin")

    audit = _command(sub, "audit", "timeline: git history joined with apply records", cmd_audit)
    audit.add_argument("--since", type=_date, help="only commits since DATE (YYYY-MM-DD)")

    run = _command(sub, "run", "reconcile continuously: poll, webhook, health, metrics", cmd_run)
    daemon.add_arguments(run)
    _record_key(run)
    run.add_argument(
        "--discover-interval",
        type=_seconds,
        metavar="S",
        help="discovery and follow: latest proposals every S seconds (0: never; default: "
        "the --drift-interval)",
    )

    keygen = _command(
        sub, "keygen", "write a record-signing key pair: PATH and PATH.pub", cmd_keygen
    )
    keygen.add_argument("key", type=Path, metavar="PATH", help="the private key file to write")
    keygen.add_argument(
        "--type", choices=("ecdsa-p256", "ed25519"), default="ecdsa-p256", dest="key_type"
    )
    keygen.add_argument(
        "--write-trust-root",
        type=Path,
        metavar="FILE",
        dest="write_root",
        help="also write a trust root pinning the new public key as the record key",
    )
    keygen.add_argument(
        "--allowed-signers",
        type=Path,
        metavar="FILE",
        help="with --write-trust-root: the SSH allowed-signers file of who may sign commits",
    )

    scaffold_parser = _command(
        sub, "init", "create a working state repository in DIR: settings, a catalog, "
        "dev/staging/prod, keys, a trust root", cmd_init,
    )  # fmt: skip
    scaffold_parser.add_argument(
        "directory", type=Path, nargs="?", default=Path("."), metavar="DIR", help="default: ."
    )
    scaffold_parser.add_argument(
        "--signer-key", type=Path, metavar="FILE", help="the public key your builds are signed "
        "with (cosign.pub): the catalog's signers and settings.verify.keys",
    )  # fmt: skip
    scaffold_parser.add_argument(
        "--insecure-skip-signatures",
        action="store_true",
        help="without --signer-key: accept unsigned artifacts (shown as UNVERIFIED)",
    )
    scaffold_parser.add_argument(
        "--source", metavar="REF", help="the catalog's OCI repository (default: an OCI "
        "layout with sample artifacts under DIR/.reconciler/oci/app)",
    )  # fmt: skip
    scaffold_parser.add_argument(
        "--record-key", type=Path, metavar="FILE",
        help="where to write the record-signing private key (default DIR/.reconciler/records.key)",
    )  # fmt: skip
    scaffold_parser.add_argument(
        "--write-trust-root", type=Path, metavar="FILE", dest="write_root",
        help="where to write the trust root (default DIR/.reconciler/trust-root.json)",
    )  # fmt: skip
    scaffold_parser.add_argument(
        "--allowed-signers", type=Path, metavar="FILE", help="the SSH allowed-signers file of "
        "who may sign commits: settings.git.allowedSigners and the trust root; the first "
        "commit is signed (git commit -S)",
    )  # fmt: skip

    _command(sub, "version", "the versions of reconciler and of the tools it runs", cmd_version)

    comp = _command(
        sub, "completion", "print a shell completion script (bash, zsh, fish)", cmd_completion
    )
    comp.add_argument("shell", choices=completion.SHELLS, metavar="SHELL", help="bash, zsh, fish")
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, refuse options that mean nothing for the command (exit 2), fill defaults."""
    args = build_parser().parse_args(argv)
    key: str = args.command_key
    parser: argparse.ArgumentParser = args.command_parser
    args.given = {n for n in (*COMMON_DEFAULTS, *OUTPUT_DEFAULTS) if n in vars(args)}
    for name, default in COMMON_DEFAULTS.items():
        if hasattr(args, name) and name not in ACCEPTS[key]:
            flag = "--" + name.replace("_", "-")
            why = _WHY.get(f"{key} {name}") or _WHY.get(name, "{command} reads no state repository")
            parser.error(f"{flag} means nothing for `{key}`: {why.format(command=key)}")
        if not hasattr(args, name):
            setattr(args, name, default)
    for name, default in OUTPUT_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.verbose and args.quiet:
        parser.error("-v and -q contradict each other")
    if key == "validate" and args.worktree:
        if "ref" in args.given:
            parser.error("--worktree checks the work tree (its HEAD and edits), not --ref")
        if is_url(args.repo):
            parser.error("--worktree needs a checkout: --repo is a URL")
    if key == "plan":
        if args.format == "json" or (args.format is None and args.json):
            args.json, args.format = True, "json"
        elif args.json:
            parser.error(f"--json and --format {args.format} contradict each other")
        args.format = args.format or "text"
    return args


def _pair(what: str) -> Callable[[str], tuple[str, str]]:
    def parse_pair(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return key, value

    return parse_pair


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 0")
    return number


def _record_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record-key",
        type=Path,
        metavar="FILE",
        help="PEM private key that signs apply records and verification summaries "
        f"(default: ${KEY_ENV}; encrypted keys: ${PASSWORD_ENV})",
    )


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    _configure_logging(args)
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


def _level(args: argparse.Namespace) -> int:
    if args.verbose:
        return logging.DEBUG
    if args.quiet:
        return logging.ERROR
    return LOG_LEVELS[args.log_level]


def _configure_logging(args: argparse.Namespace) -> None:
    """stderr at the level asked for. Embedded (the root logger already has handlers,
    e.g. under pytest) the host's logging is left alone. ``run`` configures its own."""
    level = _level(args)
    package = logging.getLogger("reconciler")
    chosen = bool(args.given & {"log_level", "quiet"})
    package.setLevel(level if args.command_key == "run" and chosen else logging.NOTSET)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


@contextmanager
def progress(args: argparse.Namespace, title: str) -> Iterator[None]:
    mode = "none" if args.quiet else args.progress
    with Progress(mode).task(title):
        yield


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
    root = trust_root_from(args.trust_root, args.trust_on_first_use)
    return Reconciler(
        source, Loader(cache_dir), ref=args.ref, path=args.path, record_key=key, trust_root=root
    )


def load_state(args: argparse.Namespace) -> DesiredState:
    return make_reconciler(args).load()


# --------------------------------------------------------------------------- small commands


def cmd_keygen(args: argparse.Namespace) -> int:
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
    result = _run(args, Mode.PLAN, "plan")
    if args.format == "markdown":
        sys.stdout.write(plan_markdown(result))
    elif not (args.quiet and result.ok):
        _report(args, result, "plan")
    if not result.ok:
        return 1
    return 2 if args.detailed_exitcode and not result.in_sync else 0


def cmd_apply(args: argparse.Namespace) -> int:
    result = _run(args, Mode.PLAN if args.dry_run else Mode.APPLY, "apply")
    if not (args.quiet and result.ok):
        _report(args, result, "dry run" if args.dry_run else "apply")
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    result = _run(args, Mode.STATUS, "status")
    if not (args.quiet and result.ok):
        _report(args, result, "status")
    if not result.ok:
        return 1
    return 0 if result.in_sync else 2


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def plan_markdown(result: PassResult) -> str:
    """The plan as a merge-request comment: a summary table, then each environment's
    changes (folded) and every refusal with its hint."""
    state = result.state
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    mark = {"in-sync": "✅", "pending": "🔄", "applied": "✅", "suspended": "⏸️"}
    lines = [
        "### reconciler plan",
        "",
        f"Commit `{state.commit[:12]}` · tree `{state.tree[:12]}` · "
        + ", ".join(f"{n} {s}" for s, n in counts.items()),
        "",
        "| Environment | Release | Status | Changes | Verified |",
        "|---|---|---|---|---|",
    ]
    for o in result.outcomes:
        env = result.environment(o.environment)
        changes = len(o.plan.changes) if o.plan else 0
        policy = state.policies.get(o.environment)
        verify = (
            "⚠️ UNVERIFIED"
            if result.unverified(o.environment)
            else (policy.describe() if policy else "(not in force)")
        )
        status = f"{mark.get(o.status.value, '❌')} {o.status.value}"
        lines.append(
            f"| {_cell(o.environment)} | {_cell(env.catalog)} `{_cell(env.release)}` | "
            f"{status} | {changes or '-'} | {_cell(verify)} |"
        )
    for o in result.outcomes:
        details: list[str] = []
        if o.note:
            details.append(f"_{_cell(o.note)}_")
            details.append("")
        if o.plan and o.plan.changes:
            details += ["| Change | Tag | From | To | Drift |", "|---|---|---|---|---|"]
            for c in o.plan.changes:
                tag = f"`{_cell(c.repository)}:{_cell(c.tag)}`"
                details.append(
                    f"| {_SIGN[c.action]} {c.action.value} | {tag} "
                    f"| `{(c.from_digest or '-')[:19]}` | `{(c.to_digest or '(deleted)')[:19]}` "
                    f"| {c.drift.value} |"
                )
        for warning in o.warnings:
            details.append(f"- ⚠️ {_cell(warning)}")
        if o.error is not None:
            details.append(f"**{o.status.value}**: {_cell(o.error.message)}")
            if o.error.hint:
                details.append(f"> hint: {_cell(o.error.hint)}")
        if details:
            summary = f"{o.environment}: {o.status.value}"
            if o.plan and o.plan.changes:
                summary += (
                    f", {len(o.plan.changes)} change{'s' if len(o.plan.changes) != 1 else ''}"
                )
            folded = o.error is None
            lines += [
                "",
                f"<details{'' if folded else ' open'}><summary>{_cell(summary)}</summary>",
            ]
            lines += ["", *details, "", "</details>"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- workflows


def cmd_run(args: argparse.Namespace) -> int:
    reconciler = make_reconciler(args)
    try:
        return daemon.main(args, reconciler)
    finally:
        reconciler.close()


def cmd_promote(args: argparse.Namespace) -> int:
    flows = Workflows(make_reconciler(args))
    with progress(args, f"promote {args.environment}"):
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
    with progress(args, f"rollback {args.environment}"):
        proposal = flows.rollback(args.environment, to=args.to, branch=args.branch, push=args.push)
    _print_proposal(args, proposal)
    return 0


def _unique(pairs: Sequence[tuple[str, str]], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise Stalled(f"{what} {key!r} is given twice")
        found[key] = value
    return found


def cmd_release_add(args: argparse.Namespace) -> int:
    items = _unique(args.items, "item")
    flows = Workflows(make_reconciler(args))
    try:
        with progress(args, f"release {args.release}"):
            proposal = flows.release_add(
                args.catalog,
                args.release,
                items,
                hazards=_unique(args.hazard, "hazard"),
                metadata=_unique(args.metadata, "metadata key"),
                branch=args.branch,
                message=args.message,
                push=args.push,
            )
    finally:
        flows.reconciler.close()
    _print_proposal(args, proposal)
    return 0


def _print_proposal(args: argparse.Namespace, p: Proposal) -> None:
    if args.json:
        _dump(p.to_json(), sys.stdout)
        return
    if args.quiet:
        print(p.branch)
        return
    print(f"{p.message.splitlines()[0]}")
    print(f"  branch   {p.branch}{' (pushed to origin)' if p.pushed else ''}")
    print(f"  commit   {p.commit[:12]} on {p.base[:12]}")
    for digest, how in sorted(p.verified.items()):
        print(f"  verified {digest[:19]}  {how}")
    if not p.pushed:
        print(f"  next: git push origin {p.branch}, then open a merge request")


def cmd_discover(args: argparse.Namespace) -> int:
    reconciler = make_reconciler(args)
    flows = Workflows(reconciler)
    if is_url(reconciler.source.location) and not args.push:
        raise Stalled(
            f"{reconciler.source.display} is a URL: branches made in the local mirror are lost",
            "pass --push to publish the proposals for merge requests",
        )
    try:
        with progress(args, "discover"):
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
    finally:
        reconciler.close()
    failed = any(f.status == discover.FAILED for f in findings)
    if args.json:
        _dump({"findings": [f.to_json() for f in findings]}, sys.stdout)
    elif args.quiet:
        for f in findings:
            if f.status == discover.PROPOSED:
                print(f.branch)
    elif not findings:
        print("nothing new: no catalog with discover found a newer release")
    else:
        rows = [
            [f.kind, f.environment or f.catalog, f.release, f.status, f.branch, f.reason[:80]]
            for f in findings
        ]
        table(["KIND", "FOR", "RELEASE", "STATUS", "BRANCH", "WHY"], rows, sys.stdout)
    return 1 if failed else 0


def cmd_audit(args: argparse.Namespace) -> int:
    flows = Workflows(make_reconciler(args))
    try:
        with progress(args, "audit"):
            entries = flows.audit(args.env, args.since)
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


# --------------------------------------------------------------------------- output


def _report(args: argparse.Namespace, result: PassResult, what: str) -> None:
    if args.json:
        _dump(pass_json(result), sys.stdout)
        return
    state = result.state
    print(f"{what}: commit {state.commit[:12]}  tree {state.tree[:12]}")
    if result.proposed is not None and result.proposed.commit != state.commit:
        print(
            f"  commit {result.proposed.commit[:12]} is refused; the commit in force is "
            f"{state.commit[:12]}"
        )
    for o in result.outcomes:
        print_outcome(o, result, sys.stdout)
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))


_SIGN = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-"}


def print_outcome(o: EnvOutcome, result: PassResult, out: TextIO) -> None:
    env = result.environment(o.environment)
    verify = " UNVERIFIED" if result.unverified(o.environment) else ""
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
        env = result.environment(o.environment)
        plan = o.plan
        envs.append(
            {
                "name": o.environment,
                "catalog": env.catalog,
                "release": env.release,
                "status": o.status.value,
                "unverified": result.unverified(o.environment),
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
