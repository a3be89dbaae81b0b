"""The package dependency order: no package imports one above it.

The layout is the architecture (docs/architecture.md): leaves at the bottom, the
command line at the top. A module may import its own package and anything below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler

PACKAGE = Path(reconciler.__file__).parent
# Bottom to top; the names of one layer may import each other.
LAYERS: list[set[str]] = [
    {"errors", "fencing", "model", "receivers", "__init__"},
    {"git", "registry", "forge"},
    {"desired"},
    {"verify"},
    {"evidence"},
    {"engine"},
    {"proposals"},
    {"daemon"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit_of(path: Path) -> str:
    """The package a module belongs to (or the root module's own name)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "reconciler":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from reconciler import x, y
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "reconciler" and len(parts) > 1:
                    found.add(parts[1])
    return found - {"__version__"}


def test_every_module_belongs_to_a_layer() -> None:
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")}
    assert units - set(LEVEL) == set(), "add new packages to LAYERS (and the architecture page)"


def test_no_package_imports_one_above_it() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = unit_of(path)
        for unit in imported_units(path):
            if LEVEL[unit] > LEVEL[mine]:
                upward.append(f"{path.relative_to(PACKAGE)} ({mine}) imports {unit}")
    assert upward == []


def test_no_module_grows_past_the_size_a_reader_holds() -> None:
    """~600 lines: past that a module is doing several jobs (issue 22)."""
    large = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 650
    }
    assert large == {}
