"""Git: the state repository and its history. The only package that imports pygit2."""

from __future__ import annotations

from reconciler.git.source import (
    GitSource,
    Snapshot,
    default_cache_dir,
    is_url,
    push_ref,
    reverted_commit,
)

__all__ = [
    "GitSource",
    "Snapshot",
    "default_cache_dir",
    "is_url",
    "push_ref",
    "reverted_commit",
]
