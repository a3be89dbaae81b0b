"""The state files of one snapshot: read through the snapshot, size-checked, decoded.

Every file the desired state is built from is read with ``snap.read`` / ``snap.exists``
/ ``snap.files``, so it lands in ``snap.consulted`` and the commit-signature rule
guards it. That includes, for a CUE module, ``cue.mod/**`` and every package directory
that an evaluated file imports from the module (transitively).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.errors import Problem

MAX_FILE_BYTES = 1 << 20  # a state file over 1 MiB is a mistake, not a catalog
SETTINGS_STEM = "reconciler"
CATALOGS, ENVIRONMENTS = "catalogs", "environments"
MODULE_DIR = "cue.mod"
MODULE_FILE = f"{MODULE_DIR}/module.cue"

_MODULE_PATH = re.compile(r'^\s*module:\s*"([^"@]+)(?:@[^"]*)?"', re.MULTILINE)
_IMPORT_CLAUSE = re.compile(r"^\s*import\s*(\((?P<block>[^)]*)\)|(?P<one>[^\n]+))", re.MULTILINE)
_IMPORT_PATH = re.compile(r'"([^"]+)"')


class StateReader(Protocol):
    """What the loader needs of a snapshot (``reconciler.git.Snapshot`` is one)."""

    def read(self, relpath: str) -> bytes:
        """The bytes of a file (recorded as read)."""

    def exists(self, relpath: str) -> bool:
        """Whether a file exists (recorded as looked up: adding it later changes the state)."""

    def files(self, directory: str = "") -> Iterator[tuple[str, int]]:
        """(path, size) of the files directly in ``directory``."""

    def directories(self, directory: str = "") -> Iterator[str]:
        """The sub-directories directly in ``directory``."""

    def display(self, relpath: str) -> str:
        """How a file is named in messages."""


@dataclass
class StateFiles:
    """The decoded state files; ``problems`` collects what was wrong with them.

    ``cue`` are the files evaluated together (top level, catalogs/, environments/);
    ``support`` the other files cue must see: ``cue.mod/**`` and the module's imported
    package directories (as bytes, written as they are). ``module`` is the module path
    from ``cue.mod/module.cue``, or None without a module.
    """

    cue: dict[str, str] = field(default_factory=dict)
    json: dict[str, str] = field(default_factory=dict)
    support: dict[str, bytes] = field(default_factory=dict)
    module: str | None = None
    problems: list[Problem] = field(default_factory=list)


def read_state_files(snap: StateReader) -> StateFiles:
    """The state's files: every ``.cue`` at the top and in catalogs/ and environments/, the
    JSON ones there (``reconciler.json`` at the top), and a CUE module's support files.
    Problems (too large, not UTF-8) are collected, not raised."""
    out = StateFiles()
    candidates: list[tuple[str, int]] = []
    for directory in ("", CATALOGS, ENVIRONMENTS):
        for path, size in snap.files(directory):
            if path.endswith(".cue") or (
                path.endswith(".json") and (directory or path == f"{SETTINGS_STEM}.json")
            ):
                candidates.append((path, size))
    for path, size in sorted(candidates):
        text = _decode(snap, path, size, out.problems)
        if text is not None:
            (out.cue if path.endswith(".cue") else out.json)[path] = text
    if snap.exists(MODULE_FILE):
        _read_module(snap, out)
    return out


def _decode(snap: StateReader, path: str, size: int, problems: list[Problem]) -> str | None:
    name = snap.display(path)
    if size > MAX_FILE_BYTES:
        problems.append(
            Problem(
                name,
                "",
                f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for a state file",
                "split it into several catalog or environment files",
            )
        )
        return None
    data = snap.read(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(
            Problem(
                name,
                "",
                f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                "save the file as UTF-8",
                line=data[: exc.start].count(b"\n") + 1,
            )
        )
        return None


def _read_module(snap: StateReader, out: StateFiles) -> None:
    """``cue.mod/**`` and the module's own packages that the state imports."""
    for path, size in sorted(walk(snap, MODULE_DIR)):
        if size > MAX_FILE_BYTES:
            _decode(snap, path, size, out.problems)  # reports the size
            continue
        out.support[path] = snap.read(path)
    module_text = out.support.get(MODULE_FILE, b"").decode("utf-8", "replace")
    found = _MODULE_PATH.search(module_text)
    if not found:
        out.problems.append(
            Problem(
                snap.display(MODULE_FILE),
                "module",
                'no module path (module: "example.org/state@v0")',
                'declare the module, e.g. module: "example.org/state@v0" and '
                'language: version: "v0.17.1"',
            )
        )
        return
    out.module = found.group(1)
    pending = list(out.cue.values())
    seen: set[str] = set()
    while pending:
        for directory in _local_imports(pending.pop(), out.module):
            if directory in seen:
                continue
            seen.add(directory)
            for path, size in sorted(snap.files(directory)):
                if not path.endswith(".cue") or path in out.cue:
                    continue
                text = _decode(snap, path, size, out.problems)
                if text is not None:
                    out.support[path] = text.encode("utf-8")
                    pending.append(text)


def _local_imports(text: str, module: str) -> set[str]:
    """Directories (relative to the module root) of the module's packages ``text`` imports.

    Only decides what to copy for cue: an import this misses makes cue fail ("cannot
    find package"), so the parse can never widen what is evaluated.
    """
    dirs: set[str] = set()
    for clause in _IMPORT_CLAUSE.finditer(text):
        body = clause.group("block") or clause.group("one") or ""
        for path in _IMPORT_PATH.findall(body):
            path = path.split(":", 1)[0]
            if path == module:
                dirs.add("")
            elif path.startswith(module + "/"):
                dirs.add(path[len(module) + 1 :].strip("/"))
    return dirs


def walk(snap: StateReader, directory: str) -> Iterator[tuple[str, int]]:
    """(path, size) of every file under ``directory``, recursively, through the snapshot."""
    yield from snap.files(directory)
    for sub in snap.directories(directory):
        yield from walk(snap, sub)
