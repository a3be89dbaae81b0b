"""Command line: argparse, output formatting and exit codes; the logic lives elsewhere.

Exit codes: 0 success, 1 an error or an invalid state, 2 a usage error (argparse).
Errors print their message and hint; a traceback only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from reconciler import __version__
from reconciler.desired import Loader
from reconciler.errors import InvalidState, ReconcilerError
from reconciler.gitsource import GitSource, default_cache_dir
from reconciler.model import DesiredState

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
    return parser


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


def load_state(args: argparse.Namespace) -> DesiredState:
    cache_dir = args.cache_dir or default_cache_dir()
    source = GitSource(args.repo, cache_dir=cache_dir)
    source.fetch()
    snapshot = source.snapshot(args.ref, args.path)
    return Loader(cache_dir).load(snapshot)


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    state = load_state(args)
    envs = _selected(state, args.env)
    if args.json:
        _dump({"valid": True, **state_json(state, envs)}, sys.stdout)
    else:
        print_state(state, envs, sys.stdout, header=f"{args.repo} @ {args.ref}")
        print(f"\nvalid: {len(state.catalogs)} catalogs, {len(envs)} environments")
    return 0


def _selected(state: DesiredState, names: list[str] | None) -> list[str]:
    if not names:
        return sorted(state.environments, key=lambda n: _order(state, n))
    unknown = [n for n in names if n not in state.environments]
    if unknown:
        raise ReconcilerError(
            f"unknown environment{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            f"--env takes one of: {', '.join(sorted(state.environments))}",
        )
    return names


def _order(state: DesiredState, name: str) -> tuple[int, str]:
    """Promotion order: an environment comes after those it requires."""
    depth, seen, frontier = 0, {name}, list(state.environments[name].requires)
    while frontier:
        depth += 1
        frontier = [r for r in frontier if r not in seen and r in state.environments]
        seen.update(frontier)
        frontier = [x for r in frontier for x in state.environments[r].requires]
    return depth, name


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
