"""Documents and their source map: which file (and line) defines each part of the state.

A CUE object's files come from cue's own positions (the position probe in ``cue.py``),
a JSON file owns the one object it holds. Nothing here searches file text to decide
which file an object belongs to; text is searched only for a line inside a JSON file
already known to hold the object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired.files import CATALOGS, ENVIRONMENTS, SETTINGS_STEM, StateFiles
from reconciler.errors import InvalidState, Problem

Label = str | int
PRIMARY_FIELD = {ENVIRONMENTS: ("release", "catalog"), CATALOGS: ("releases", "source")}


@dataclass(frozen=True, order=True)
class Position:
    """A place in a state file, as cue reports it or as found in a JSON file."""

    file: str  # relative to the state directory
    line: int


def format_cue_path(path: Iterable[Any]) -> str:
    """The field path as users read it: ``environments.dev.items[1]``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(p)}]"
    return out


class SourceMap:
    """Field path -> the positions that define it (CUE), plus the JSON files' objects."""

    def __init__(
        self,
        positions: Mapping[tuple[Label, ...], tuple[Position, ...]],
        display: Callable[[str], str] = lambda rel: rel,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        self._positions: dict[tuple[str, ...], tuple[Position, ...]] = {}
        self._by_object: dict[tuple[str, ...], set[tuple[str, ...]]] = {}  # key[:2] -> keys
        for path, where in positions.items():
            if where:
                self._add(_key(path), tuple(where))
        self.display = display
        self._texts = dict(texts or {})

    def _add(self, key: tuple[str, ...], where: tuple[Position, ...]) -> None:
        self._positions[key] = where
        self._by_object.setdefault(key[:2], set()).add(key)

    def own(self, path: tuple[Label, ...], rel: str, text: str, line: int | None = None) -> None:
        """A JSON file defines the object at ``path`` (and everything under it)."""
        self._add(_key(path), (Position(rel, line or 1),))
        self._texts[rel] = text

    def exact(self, path: Iterable[Label]) -> tuple[Position, ...]:
        """The positions recorded for exactly ``path`` (none for its children)."""
        return self._positions.get(_key(path), ())

    def under(self, path: Iterable[Label]) -> tuple[Position, ...]:
        """Every position at ``path`` or below it, in file and line order."""
        prefix = _key(path)
        if len(prefix) >= 2:
            keys: Iterable[tuple[str, ...]] = self._by_object.get(prefix[:2], ())
        else:
            keys = self._positions
        found = {p for key in keys if key[: len(prefix)] == prefix for p in self._positions[key]}
        return tuple(sorted(found))

    def files(self, path: Iterable[Label]) -> tuple[str, ...]:
        """The files that define ``path`` or anything under it."""
        return tuple(sorted({p.file for p in self.under(path)}))

    def primary(self, part: str, name: str) -> str | None:
        """The file that defines an object's main field (an environment's ``release``)."""
        for field in PRIMARY_FIELD.get(part, ()):
            where = self.exact((part, name, field))
            if where:
                return where[0].file
        where = self.under((part, name))
        return where[0].file if where else None

    def locate(self, path: Iterable[Label]) -> Position | None:
        """Where to point for ``path``: it, else the first position below it, else the same
        for its nearest ancestor that has any."""
        key = _key(path)
        for n in range(len(key), 0, -1):
            where = self.exact(key[:n])
            if where:
                return self._refine(where[0], key[n:])
            below = self.under(key[:n])
            if below:
                return below[0]
        return None

    def where(self, path: Iterable[Label]) -> tuple[str, int | None]:
        """(file as shown to the user, line) for a message about ``path``."""
        at = self.locate(path)
        return (self.display(at.file), at.line) if at else ("(state)", None)

    def _refine(self, at: Position, rest: tuple[str, ...]) -> Position:
        """Inside a JSON file, the line of the deepest named key below ``at``."""
        text = self._texts.get(at.file)
        needle = next((p for p in reversed(rest) if not p.isdigit()), "")
        if text is None or not needle:
            return at
        line = line_of(text, needle)
        return Position(at.file, line) if line else at


def _key(path: Iterable[Label]) -> tuple[str, ...]:
    return tuple(str(p) for p in path)


def line_of(text: str, needle: str) -> int | None:
    """The line of ``needle`` in ``text``, preferring it as a quoted JSON key; None if absent."""
    for quoted in (f'"{needle}"', needle):
        at = text.find(quoted)
        if at >= 0:
            return text.count("\n", 0, at) + 1
    return None


# --------------------------------------------------------------------------- json


def _json_problem(name: str, text: str, exc: json.JSONDecodeError) -> Problem:
    hint = "fix the JSON syntax"
    before = text[: exc.pos].rstrip()
    if text[exc.pos : exc.pos + 1] in "]}" and before.endswith(","):
        line = before.count("\n") + 1
        hint = f"JSON allows no trailing comma: remove the ',' at the end of line {line}"
    return Problem(
        name,
        "",
        f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        hint,
        line=exc.lineno,
    )


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(name: str, text: str, problems: list[Problem]) -> dict[str, Any] | None:
    """A JSON object (no duplicate keys), else None with the reason in ``problems``."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        problems.append(_json_problem(name, text, exc))
        return None
    except _DuplicateKey as exc:
        problems.append(
            Problem(
                name,
                str(exc),
                "key appears twice in one object",
                "keep one of them",
                line=line_of(text, str(exc)),
            )
        )
        return None
    if not isinstance(value, dict):
        problems.append(Problem(name, "", f"expected a JSON object, found {type(value).__name__}"))
        return None
    return value


# --------------------------------------------------------------------------- merge


def merge(files: StateFiles, evaluated: Mapping[str, Any], sources: SourceMap) -> dict[str, Any]:
    """The evaluated CUE document plus each JSON file's object; records JSON ownership."""
    doc: dict[str, Any] = json.loads(json.dumps(evaluated))  # a private, mutable copy
    problems: list[Problem] = []
    for part in (CATALOGS, ENVIRONMENTS):
        doc.setdefault(part, {})
        if not isinstance(doc[part], dict):
            return doc  # the schema reports it
    for rel, text in sorted(files.json.items()):
        name = sources.display(rel)
        value = parse_json(name, text, problems)
        if value is None:
            continue
        if rel == f"{SETTINGS_STEM}.json":
            if "settings" in doc:
                problems.append(
                    Problem(name, "settings", "settings are also defined in CUE", "keep one")
                )
            doc["settings"] = value
            sources.own(("settings",), rel, text)
            continue
        part = rel.split("/", 1)[0]
        if part == CATALOGS:
            key = value.get("name")
            if not isinstance(key, str) or not key:
                problems.append(
                    Problem(
                        name,
                        "name",
                        "a catalog file needs a non-empty string 'name'",
                        'add "name": "example.org/team/app"',
                        line=1,
                    )
                )
                continue
        else:
            stem = Path(rel).stem
            key = value.get("name", stem) if isinstance(value.get("name"), str) else stem
        if key in doc[part]:
            other = sources.files((part, key))
            where = ", ".join(sources.display(f) for f in other) or "CUE"
            problems.append(
                Problem(
                    name,
                    "name" if part == CATALOGS else "",
                    f"{part[:-1]} {key!r} is also defined in {where}",
                    "each catalog and environment is defined once",
                )
            )
            continue
        doc[part][key] = value
        sources.own((part, key), rel, text)
    if problems:
        raise InvalidState(problems)
    return doc
