"""docs/architecture.md's rule table is right: each rule names a module that defines the
named function or class, and a test that exists. A move or a rename that forgets the
page fails here, so a newcomer's one guess keeps landing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
ROW = re.compile(
    r"^\| (?P<rule>[^|]+) \| `(?P<module>[^`]+)` `(?P<name>[^`]+)` \| `(?P<test>[^`]+)` \|$"
)


def rows() -> list[re.Match[str]]:
    found = [m for line in PAGE.read_text().splitlines() if (m := ROW.match(line))]
    assert len(found) >= 20, "the rule table was not found or lost rows"
    return found


def defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
    }


def test_every_rule_names_code_that_exists() -> None:
    wrong = []
    for row in rows():
        path = ROOT / row["module"]
        if not path.is_file() or row["name"] not in defined(path):
            wrong.append(f"{row['rule']}: {row['module']} {row['name']}")
    assert wrong == []


def test_every_rule_names_a_test_that_exists() -> None:
    wrong = []
    for row in rows():
        file, _, name = row["test"].partition("::")
        path = ROOT / file
        if not path.is_file() or name not in defined(path):
            wrong.append(f"{row['rule']}: {row['test']}")
    assert wrong == []
