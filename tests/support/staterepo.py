"""Real git state repositories for tests, made with pygit2 (no checkout needed)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pygit2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quickstart"
SIGNATURE = pygit2.Signature("Test Author", "author@example.org")


def example_files() -> dict[str, bytes]:
    """The quickstart state repository, as {relative path: bytes}."""
    return {
        str(p.relative_to(EXAMPLE)): p.read_bytes()
        for p in sorted(EXAMPLE.rglob("*"))
        if p.is_file()
    }


class StateRepo:
    """A non-bare repository on disk whose ``main`` branch tests write commits to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repo = pygit2.init_repository(str(path), bare=False, initial_head="main")

    def commit(
        self,
        files: Mapping[str, bytes | str | None],
        message: str = "change state",
        *,
        replace: bool = False,
    ) -> str:
        """Write ``files`` (None deletes) on top of main (or replace the tree) and commit."""
        workdir = self.path
        if replace:
            for child in workdir.iterdir():
                if child.name != ".git":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for rel, data in files.items():
            target = workdir / rel
            if data is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        index = self.repo.index
        index.add_all()
        gone = [p for p in _indexed(index) if not (workdir / p).exists()]
        if gone:  # an empty pathspec would match every path
            index.remove_all(gone)
        index.write()
        tree = index.write_tree()
        parents = [] if self.repo.head_is_unborn else [self.repo.head.target]
        oid = self.repo.create_commit(
            "refs/heads/main", SIGNATURE, SIGNATURE, message, tree, parents
        )
        return str(oid)


def _indexed(index: pygit2.Index) -> list[str]:
    return [entry.path for entry in index]
