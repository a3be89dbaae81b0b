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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler import __version__, receivers
from reconciler.cli import completion
from reconciler.cli.progress import Progress
from reconciler.cli.render import (
    _dump,
    _report,
    print_state,
    state_json,
)
from reconciler.daemon.options import DaemonConfig
from reconciler.desired import Loader, cue_command, cue_environment
from reconciler.engine.reconcile import Mode, PassResult, Reconciler, promotion_order
from reconciler.errors import ReconcilerError, Stalled, redact_url
from reconciler.evidence.signing import generate, signing_key_from
from reconciler.git import GitSource, default_cache_dir, is_url
from reconciler.git.branches import snapshot_of, worktree_tree
from reconciler.model import DesiredState, PublicKey
from reconciler.proposals.markdown import plan_markdown
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
    from importlib import metadata  # for `version` only: 8 ms of every other command's start

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


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    """``validate`` (for merge-request CI): the state loads and cross-checks, or the error
    names every problem; ``--worktree`` checks the work tree's files, edits included;
    ``--mr N`` is ``check-mr N``."""
    if args.mr is not None:
        if args.worktree:
            raise Stalled("--mr checks a merge request's head, not the work tree: pass one")
        args.number = args.mr
        from reconciler.cli.proposing import cmd_check_mr

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
