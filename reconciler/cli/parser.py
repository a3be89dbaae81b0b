"""The command line's parser: the commands, their options, and which common
options each accepts (anything else is a usage error that says why).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.cli import completion
from reconciler.cli.commands import (
    cmd_apply,
    cmd_completion,
    cmd_keygen,
    cmd_plan,
    cmd_run,
    cmd_status,
    cmd_validate,
    cmd_version,
)
from reconciler.cli.progress import MODES as PROGRESS_MODES
from reconciler.daemon import options as daemon_options
from reconciler.daemon.options import number
from reconciler.evidence.signing import KEY_ENV, PASSWORD_ENV
from reconciler.git import is_url
from reconciler.verify.root import ROOT_ENV, TOFU_ENV

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
    "check-mr": _READS,
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


def _proposing(name: str) -> Callable[[argparse.Namespace], int]:
    """A command of :mod:`reconciler.cli.proposing`, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        from reconciler.cli import proposing

        command: Callable[[argparse.Namespace], int] = getattr(proposing, name)
        return command(args)

    return run


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
    """Every command with its options; each command accepts only the common options that
    mean something for it (:data:`ACCEPTS`)."""
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
    validate.add_argument(
        "--mr", type=int, metavar="N", help="as check-mr N: the gate on merge request N's head"
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
        sub,
        "promote",
        "a branch + commit moving ENV to RELEASE, for a MR",
        _proposing("cmd_promote"),
    )
    promote.add_argument("environment", metavar="ENV")
    promote.add_argument("release", metavar="RELEASE")
    promote.add_argument("--branch", help="default promote/<env>/<release>")
    promote.add_argument("--message", "-m", help="the commit's subject line")
    promote.add_argument("--push", action="store_true", help="push the branch to origin")
    _open(promote)

    rollback = _command(
        sub, "rollback", "a branch + git revert of ENV's last promotion", _proposing("cmd_rollback")
    )
    rollback.add_argument("environment", metavar="ENV")
    rollback.add_argument("--to", metavar="COMMIT", help="revert this commit instead")
    rollback.add_argument("--branch", help="default rollback/<env>/<commit>")
    rollback.add_argument("--push", action="store_true", help="push the branch to origin")
    _open(rollback)

    release = sub.add_parser(
        "release", help="catalog releases: add one from signed tags", description="releases"
    )
    _output(release)
    releases = release.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    add = _command(
        releases, "add", "a branch adding RELEASE to CATALOG from tags, verified, for a MR",
        _proposing("cmd_release_add"), key="release add",
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
    _open(add)

    disc = _command(
        sub, "discover", "propose new releases found in registries (catalog discover), once",
        _proposing("cmd_discover"),
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
    _open(disc)

    check_mr = _command(
        sub, "check-mr", "run the gate on merge request N's head; set its reconciler/verify "
        "status (settings.forge)", _proposing("cmd_check_mr"),
    )  # fmt: skip
    check_mr.add_argument("number", metavar="N", type=int, help="the merge request's number")

    audit = _command(
        sub, "audit", "timeline: git history joined with apply records", _proposing("cmd_audit")
    )
    audit.add_argument("--since", type=_date, help="only commits since DATE (YYYY-MM-DD)")

    run = _command(sub, "run", "reconcile continuously: poll, webhook, health, metrics", cmd_run)
    daemon_options.add_arguments(run)
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
        "dev/staging/prod, keys, a trust root", _proposing("cmd_init"),
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


def _open(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--open",
        action="store_true",
        help="push the branch and open (or update) its merge request on settings.forge",
    )


def _pair(what: str) -> Callable[[str], tuple[str, str]]:
    def parse_pair(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return key, value

    return parse_pair


_seconds = number(0)


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
