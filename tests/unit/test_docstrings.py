"""Every public definition says why it exists: a newcomer reads the docstring, not the body.

Public means: every module; module-level classes and functions whose names do not start
with ``_``; and the methods and properties of those classes (and of their public nested
classes) whose names do not start with ``_``. Enum members and dataclass fields are
values, not definitions, and need none; ``@overload`` stubs share the implementation's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "reconciler"

Definition = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _is_overload(node: Definition) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload")
        or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


def _definitions(body: list[ast.stmt]) -> Iterator[Definition]:
    """The definitions of a module or class body, including those under ``if``/``try``."""
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        elif isinstance(node, ast.If | ast.Try):
            blocks = [node.body, node.orelse]
            if isinstance(node, ast.Try):
                blocks += [node.finalbody, *(h.body for h in node.handlers)]
            for block in blocks:
                yield from _definitions(block)


def _public(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[Definition, str]]:
    for node in _definitions(body):
        if node.name.startswith("_") or _is_overload(node):
            continue
        name = f"{prefix}{node.name}"
        yield node, name
        if isinstance(node, ast.ClassDef):
            yield from _public(node.body, f"{name}.")


def public_definitions() -> Iterator[tuple[str, int, str, bool]]:
    """(path, line, name, documented) for every public definition under ``reconciler/``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(PACKAGE.parent).as_posix()
        yield where, 1, "(module)", ast.get_docstring(tree) is not None
        for node, name in _public(tree.body):
            yield where, node.lineno, name, ast.get_docstring(node) is not None


def test_every_public_definition_has_a_docstring() -> None:
    missing = [f"{path}:{line} {name}" for path, line, name, ok in public_definitions() if not ok]
    assert not missing, f"{len(missing)} public definitions without a docstring:\n" + "\n".join(
        missing
    )
