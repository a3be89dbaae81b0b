"""Command line: argparse, output formatting and exit codes; the logic lives elsewhere.

Exit codes: 0 success, 1 an error, an invalid state or a refusal, 2 a usage error
(argparse, including an option that means nothing for the command, e.g. ``promote
--env``) -- and, for ``status`` and ``plan --detailed-exitcode``, "not in sync".
Errors print their message and hint; a traceback only with ``-v``. Progress of long
work goes to stderr (``--progress``), results to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from reconciler.cli.parser import LOG_LEVELS, parse
from reconciler.cli.render import _dump
from reconciler.errors import InvalidState, ReconcilerError

log = logging.getLogger("reconciler")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """The ``reconciler`` command: the only place errors become exit codes; a bug prints
    one line (the traceback with ``-v``), never a bare trace."""
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
