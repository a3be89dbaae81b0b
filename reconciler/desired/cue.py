"""The ``cue`` runner: one ``cue export`` per evaluation, its cache, and its errors.

Each evaluation runs two ``cue`` processes side by side on the same files: ``cue export``
(the user's files unified with the schema -> JSON) and ``cue eval`` of the same files
plus a *position probe* that closes every object (``environments: [_]: close({})`` ...).
cue then reports every field of every object as "not allowed", each with the positions
of all the conjuncts that define it: a source map from CUE's own evaluator, which
attributes objects and errors to files (never a text search). A field whose only
positions are the schema's is one the user did not write.

Both outputs (the document and the positions) are cached together by the tree id of
the state directory, so an unchanged commit costs no ``cue`` call.

``cue`` never reaches the network: every process runs with ``CUE_REGISTRY=none``, an
empty cache and configuration of its own, and none of the caller's other variables
(proxies, ``GOPROXY``, registry credentials). What is evaluated is the commit's files
and nothing else: a package the state imports must be vendored in the tree
(``cue.mod/pkg/<import path>/``, with no ``deps`` entry for it, as cue resolves deps
from a registry only) or be a package of the state's own module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.desired.files import StateFiles
from reconciler.desired.sources import Label, Position, SourceMap
from reconciler.errors import InvalidState, Problem, Stalled, ToolMissing
from reconciler.model import NOTIFY_ENV_HINT

log = logging.getLogger(__name__)

CUE_TIMEOUT_S = 120
SCHEMA_DIR = "__reconciler_schema__"
SCHEMA_NAME = f"{SCHEMA_DIR}/reconciler.cue"
PROBE_NAME = f"{SCHEMA_DIR}/positions.cue"
SCHEMA_SHOWN = "schemas/reconciler.cue"
_CACHE_FORMAT = "2"  # bump when the cached value's shape changes
_PACKAGE_RE = re.compile(r"^\s*package\s+([A-Za-z_#][\w]*)", re.MULTILINE)
_POSITION = re.compile(r"^\s+(?:\./)?(?P<file>\S+?\.cue):(?P<line>\d+):(?P<col>\d+)\s*$")
_DISJUNCTION = re.compile(r"^\d+ errors in empty disjunction")
_LABEL = re.compile(r'[#_$A-Za-z][\w$]*|"(?:[^"\\]|\\.)*"|\d+')
_NOT_ALLOWED_V04 = re.compile(r"^field (?P<label>.+) not allowed$")
_MISSING_PACKAGE = re.compile(r'cannot find package "(?P<package>[^"]+)"')
# The caller's variables a cue process keeps; everything else (HTTP(S)_PROXY, GOPROXY,
# CUE_REGISTRY, CUE_CONFIG_DIR with its logins, ...) stays out.
_CUE_ENV_KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
_PROBE = """package {package}

// Written by the reconciler next to the schema. Closing every object makes cue report
// each of its fields with the positions of every conjunct that defines it.
[!~"^(settings|catalogs|environments)$"]: close({{}})
settings: close({{}})
catalogs: [_]: close({{}})
environments: [_]: close({{}})
"""


def schema_dir() -> Path:
    """The schemas shipped in the wheel, or those of the source tree (editable installs)."""
    packaged = Path(__file__).parent.parent / "schemas"
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "schemas"


@cache
def schema_texts() -> tuple[str, dict[str, Any]]:
    """(the CUE schema, the JSON Schema), read once per process."""
    d = schema_dir()
    cue_text = (d / "reconciler.cue").read_text(encoding="utf-8")
    json_schema = json.loads((d / "reconciler.schema.json").read_text(encoding="utf-8"))
    return cue_text, json_schema


def cue_command() -> str:
    """The cue executable: ``$RECONCILER_CUE``, else ``cue`` on PATH."""
    return os.environ.get("RECONCILER_CUE") or "cue"


def cue_environment(home: Path) -> dict[str, str]:
    """The environment of every ``cue`` process: no module registry, and a private,
    empty ``home`` for its cache and configuration, so that nothing outside the commit
    (the network, a module cache filled earlier, registry logins) can be evaluated."""
    env = {name: value for name in _CUE_ENV_KEPT if (value := os.environ.get(name))}
    env.update(
        CUE_REGISTRY="none",
        CUE_CACHE_DIR=str(home / "cache"),
        CUE_CONFIG_DIR=str(home / "config"),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_CONFIG_HOME=str(home / "config"),
    )
    return env


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class CueError:
    """One error block of cue's report: an optional field path, a message, positions."""

    path: tuple[Label, ...] | None
    path_text: str
    message: str
    positions: tuple[Position, ...]

    @property
    def user_positions(self) -> tuple[Position, ...]:
        """The positions in the user's files: the schema's own say nothing they can fix."""
        return tuple(p for p in self.positions if not p.file.startswith(SCHEMA_DIR + "/"))


def parse_cue_path(text: str) -> tuple[Label, ...] | None:
    """``catalogs."example.org/x".releases.0`` -> ('catalogs', 'example.org/x', 'releases', 0)."""
    labels: list[Label] = []
    at = 0
    while True:
        m = _LABEL.match(text, at)
        if not m:
            return None
        token = m.group()
        if token.startswith('"'):
            try:
                labels.append(json.loads(token))
            except ValueError:
                return None
        else:
            labels.append(int(token) if token.isdigit() else token)
        at = m.end()
        if at == len(text):
            return tuple(labels)
        if text[at] != ".":
            return None
        at += 1


def parse_cue_errors(stderr: str) -> list[CueError]:
    """Split cue's error report into blocks; knows the v0.4 and the v0.17 formats."""
    blocks: list[tuple[str, list[Position]]] = []
    for raw in stderr.splitlines():
        pos = _POSITION.match(raw)
        if pos and blocks:
            blocks[-1][1].append(Position(pos.group("file"), int(pos.group("line"))))
        elif raw.strip() and not raw.startswith((" ", "\t")):
            blocks.append((raw.strip(), []))
    errors = []
    for header, positions in blocks:
        head, sep, rest = header.partition(": ")
        path = parse_cue_path(head) if sep else None
        path_text, message = (head, rest) if path is not None else ("", header)
        message = message.rstrip(":").strip()
        if path is not None and (v04 := _NOT_ALLOWED_V04.match(message)):
            label = parse_cue_path(v04.group("label"))
            if label and len(label) == 1:  # v0.4: "a.b: field c not allowed"
                path, path_text = (*path, label[0]), f"{path_text}.{v04.group('label')}"
                message = "field not allowed"
        errors.append(CueError(path, path_text, message, tuple(positions)))
    return errors


def probe_positions(stderr: str) -> dict[tuple[Label, ...], tuple[Position, ...]]:
    """The user's positions of every field the position probe reported."""
    found: dict[tuple[Label, ...], tuple[Position, ...]] = {}
    for error in parse_cue_errors(stderr):
        if error.path is None:
            continue
        if error.message == "field not allowed" or (
            error.message.startswith("conflicting values")
            and any(p.file == PROBE_NAME for p in error.positions)
        ):
            user = tuple(p for p in error.user_positions if p.file != PROBE_NAME)
            found[error.path] = tuple(sorted(set(found.get(error.path, ()) + user)))
    return found


def cue_problems(errors: Sequence[CueError], sources: SourceMap) -> list[Problem]:
    """Problems naming the user's file and line for each of cue's errors.

    An error cue places only in the schema (a missing required field, a value that is
    not concrete) is placed with the source map: at the field where the user wrote it,
    else at the object that lacks it.
    """
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for error in errors:
        if _DISJUNCTION.match(error.message):
            continue  # the branches follow, each with the value, the file and the line
        problem = _problem(error, sources)
        if (problem.file, problem.field) in seen and problem.field:
            continue  # keep the first branch of a failed disjunction per field
        seen.add((problem.file, problem.field))
        problems.append(problem)
    return problems


_FIELD_HINTS = {"secretEnv": NOTIFY_ENV_HINT, "urlEnv": NOTIFY_ENV_HINT}


def _problem(error: CueError, sources: SourceMap) -> Problem:
    message, hint = error.message, _hint(error.message)
    if error.path and str(error.path[-1]) in _FIELD_HINTS:
        hint = _FIELD_HINTS[str(error.path[-1])]
    field_text = error.path_text
    if error.message == "field not allowed" and error.path:
        message = f"unknown field {str(error.path[-1])!r}"
    user = [p for p in error.user_positions if p.file != PROBE_NAME]
    if user:
        where = user[0]
        others = sorted({f"{sources.display(p.file)}:{p.line}" for p in user[1:]})
        if others and error.message.startswith("conflicting values") and len(user) > 1:
            message += f" (also {', '.join(others)})"
        return Problem(sources.display(where.file), field_text, message, hint, line=where.line)
    if error.path is not None:
        written = sources.exact(error.path)
        incomplete = error.message.startswith(("incomplete value", "field is required"))
        if incomplete and not written:
            label = str(error.path[-1])
            message = f"required field {label!r} is missing"
            hint = f"add {label}: … here (cue: {error.message})"
        elif incomplete:
            message = f"not a concrete value ({error.message})"
            hint = "give the field a concrete value, not only a type or constraint"
        found = sources.locate(error.path)
        if found is not None:
            return Problem(sources.display(found.file), field_text, message, hint, line=found.line)
    if error.positions:
        return Problem(SCHEMA_SHOWN, field_text, message, hint, line=error.positions[0].line)
    return Problem("(cue)", field_text, message, hint)


def _hint(message: str) -> str:
    if message.startswith("found packages"):
        return "use one package name in every .cue file, e.g. `package reconciler`"
    if message == "field not allowed":
        return "remove it or fix its spelling; the known fields are in schemas/reconciler.cue"
    if "mismatched types" in message:
        return "use a value of the type schemas/reconciler.cue gives this field"
    if message.startswith("conflicting values"):
        return "the field is given two different values: keep one"
    if "out of bound" in message or message.startswith("invalid value"):
        return "use a value that satisfies the constraint shown (see schemas/reconciler.cue)"
    if message.startswith("expected ") or "illegal" in message:
        return "fix the CUE syntax at this position"
    if "undefined field" in message or "reference" in message:
        return "define what the expression refers to, or fix its spelling"
    if "cannot find package" in message or "import" in message:
        return (
            "import only the standard library or this module's own packages "
            "(paths under the module in cue.mod/module.cue)"
        )
    if "module" in message or "language" in message:
        return "CUE modules need a current cue (v0.9 or later): `make setup` builds v0.17.1"
    return "fix the value cue reports; the schema is schemas/reconciler.cue"


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation yields: the exported document and the probe's positions."""

    value: dict[str, Any]
    positions: Mapping[tuple[Label, ...], tuple[Position, ...]]

    def to_json(self) -> dict[str, Any]:
        """The cache's file format (read back by :meth:`from_json`)."""
        return {
            "value": self.value,
            "positions": [
                [list(path), [[p.file, p.line] for p in positions]]
                for path, positions in self.positions.items()
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Evaluation:
        """Raises: KeyError, TypeError, ValueError: not what :meth:`to_json` wrote."""
        positions = {
            tuple(path): tuple(Position(f, line) for f, line in where)
            for path, where in doc["positions"]
        }
        return cls(dict(doc["value"]), positions)


def evaluate(files: StateFiles, display: Any) -> Evaluation:
    """Run ``cue export`` and the position probe; raise InvalidState with the user's files.

    ``display`` maps a state-relative path to how it is shown (``Snapshot.display``).
    """
    cue_schema, _ = schema_texts()
    packages = {m.group(1) for text in files.cue.values() if (m := _PACKAGE_RE.search(text))}
    package = packages.pop() if len(packages) == 1 else "reconciler"
    # Speak the user's package name so cue sees one instance.
    cue_schema = _PACKAGE_RE.sub(f"package {package}", cue_schema, count=1)
    exe = cue_command()
    with (
        tempfile.TemporaryDirectory(prefix="reconciler-cue-") as tmp,
        tempfile.TemporaryDirectory(prefix="reconciler-cue-home-") as home,
    ):
        root, env = Path(tmp), cue_environment(Path(home))
        written: list[tuple[str, bytes]] = [
            *((rel, text.encode("utf-8")) for rel, text in files.cue.items()),
            *files.support.items(),
            (SCHEMA_NAME, cue_schema.encode("utf-8")),
            (PROBE_NAME, _PROBE.format(package=package).encode("utf-8")),
        ]
        for rel, data in written:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        state = sorted(files.cue)
        export = [exe, "export", "-E", "--out", "json", *state, SCHEMA_NAME]
        probe = [exe, "eval", "-E", "-c", *state, SCHEMA_NAME, PROBE_NAME]
        log.debug("running %s on %d files (module %s)", exe, len(state), files.module)
        with ThreadPoolExecutor(max_workers=2) as pool:
            exported, probed = pool.map(lambda args: _run(args, root, env), [export, probe])
    positions = probe_positions(probed.stderr.replace(tmp + "/", ""))
    sources = SourceMap(positions, display)
    if exported.returncode != 0:
        stderr = exported.stderr.replace(tmp + "/", "").replace(tmp, ".")
        problems = [_not_vendored(p) for p in cue_problems(parse_cue_errors(stderr), sources)]
        raise InvalidState(
            problems or [Problem("(cue)", "", stderr.strip() or "cue failed without a message")]
        )
    try:
        value: dict[str, Any] = json.loads(exported.stdout)
    except ValueError:
        raise Stalled(f"cue printed output that is not JSON: {exported.stdout[:200]!r}") from None
    return Evaluation(value, positions)


def _not_vendored(problem: Problem) -> Problem:
    """An import cue could not find, said as what it is: content outside the commit."""
    found = _MISSING_PACKAGE.search(problem.message)
    if found is None:
        return problem
    package = found.group("package")
    return replace(
        problem,
        message=f"imports {package!r}, which is not in the commit: modules are never "
        f"fetched (cue runs with CUE_REGISTRY=none); cue said: {problem.message}",
        hint=f"vendor it in the tree: its files under cue.mod/pkg/{package}/ and no deps "
        "entry for its module in cue.mod/module.cue (cue resolves deps from a registry "
        "only), or make it a package of this module (CUE modules need cue v0.9 or later: "
        "`make setup` builds v0.17.1)",
    )


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str


def _run(args: list[str], cwd: Path, env: Mapping[str, str]) -> _Result:
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, timeout=CUE_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise ToolMissing(
            f"the cue executable {args[0]!r} was not found",
            "install cue (https://cuelang.org) or set RECONCILER_CUE to its path; "
            "`make setup` builds one under .tools/bin",
        ) from None
    except subprocess.TimeoutExpired:
        raise Stalled(f"cue did not finish within {CUE_TIMEOUT_S} s") from None
    return _Result(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


# --------------------------------------------------------------------------- cache


class CueCache:
    """Evaluations by key, in memory and as files under ``directory``."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory / "desired" if directory else None
        self._memory: dict[str, Evaluation] = {}
        self._passed: set[str] = set()

    def get(self, key: str) -> Evaluation | None:
        """The evaluation under ``key``, or None; an unreadable file is a miss, not an error."""
        if key in self._memory:
            return self._memory[key]
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            value = Evaluation.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._memory[key] = value
        return value

    def passed(self, key: str) -> bool:
        """A document under ``key`` (:func:`schema_key`) passed the schema before."""
        if key in self._passed:
            return True
        if self.directory is not None and (self.directory / f"{key}.passed").exists():
            self._passed.add(key)
            return True
        return False

    def mark_passed(self, key: str) -> None:
        """Remember that the document under ``key`` passed the schema; best effort."""
        self._passed.add(key)
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / f"{key}.passed").touch()
        except OSError as exc:
            log.warning("cannot write the desired-state cache: %s", exc)

    def put(self, key: str, value: Evaluation) -> None:
        """Keep ``value`` under ``key``, written atomically; a cache that cannot be written
        only costs speed, so it is logged, never raised."""
        self._memory[key] = value
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value.to_json(), fh)
            os.replace(tmp, self.directory / f"{key}.json")
        except OSError as exc:  # a cache that cannot be written only costs speed
            log.warning("cannot write the desired-state cache: %s", exc)


def schema_key(doc: Any) -> str:
    """Identifies one schema check: the merged document, the JSON Schema and the
    reconciler's version (a check is a pure function of them)."""
    h = hashlib.sha256()
    for part in (_CACHE_FORMAT, __version__, _json_schema_text()):
        h.update(part.encode() + b"\0")
    h.update(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


@cache
def _json_schema_text() -> str:
    """The JSON Schema as one canonical text, made once per process."""
    return json.dumps(schema_texts()[1], sort_keys=True)


def cache_key(tree_id: str, files: StateFiles) -> str:
    """Identifies one evaluation: the tree, the files evaluated and those cue sees, the
    schema and the reconciler's version, so an upgrade never reuses a stale result."""
    cue_schema, _ = schema_texts()
    h = hashlib.sha256()
    parts = (_CACHE_FORMAT, __version__, tree_id, cue_schema, "\0".join(sorted(files.cue)))
    for part in (*parts, "\0".join(sorted(files.support))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


__all__ = [
    "CueCache",
    "CueError",
    "Evaluation",
    "cache_key",
    "cue_command",
    "cue_environment",
    "cue_problems",
    "evaluate",
    "parse_cue_errors",
    "parse_cue_path",
    "probe_positions",
    "schema_dir",
    "schema_key",
    "schema_texts",
]
