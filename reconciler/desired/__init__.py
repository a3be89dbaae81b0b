"""Desired state: one commit of the state repository -> a validated, frozen DesiredState.

Steps, each stopping at the first stage that finds problems (but reporting every
problem of that stage):

1. ``files``: read the state files through the snapshot (size limit, strict UTF-8;
   ``cue.mod/**`` and imported packages when the state is a CUE module);
2. ``cue``: evaluate every ``.cue`` file with the schema in ONE ``cue export`` (plus the
   position probe beside it), cached by tree id; cue's errors name the user's file;
3. ``sources``: merge the ``.json`` files in; the source map says which file defines what;
4. ``schema``: JSON Schema on the merged document;
5. ``build``: cross-checks and the model (pure, reading only through the snapshot).

Everything after ``cue`` is cheap and re-run every time, so a cached result can never
skip a check.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reconciler.desired.build import Builder
from reconciler.desired.cue import (
    CueCache,
    Evaluation,
    cache_key,
    cue_command,
    cue_environment,
    evaluate,
    schema_dir,
    schema_key,
    schema_texts,
)
from reconciler.desired.files import (
    CATALOGS,
    ENVIRONMENTS,
    MAX_FILE_BYTES,
    SETTINGS_STEM,
    read_state_files,
)
from reconciler.desired.schema import schema_problems
from reconciler.desired.sources import SourceMap, merge
from reconciler.errors import InvalidState
from reconciler.git import Snapshot
from reconciler.model import DesiredState
from reconciler.registry import canonical_repository

log = logging.getLogger(__name__)

__all__ = [
    "CATALOGS",
    "ENVIRONMENTS",
    "MAX_FILE_BYTES",
    "SETTINGS_STEM",
    "CueCache",
    "Loader",
    "canonical_repository",
    "cue_command",
    "cue_environment",
    "schema_dir",
    "schema_texts",
]


class Loader:
    """Loads desired state; keeps the ``cue`` cache for the life of the process."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache = CueCache(cache_dir)
        self.cue_calls = 0  # evaluations run (each is one `cue export` + its position probe)

    def load(self, snap: Snapshot) -> DesiredState:
        """Raises InvalidState (every problem of the first failing stage), ToolMissing
        (no cue), Stalled (cue misbehaved)."""
        files = read_state_files(snap)
        if files.problems:
            raise InvalidState(files.problems)
        evaluation = Evaluation({}, {})
        if files.cue:
            key = cache_key(snap.tree_id, files)
            cached = self.cache.get(key)
            if cached is None:
                self.cue_calls += 1
                evaluation = evaluate(files, snap.display)
                self.cache.put(key, evaluation)
            else:
                log.debug("desired state of tree %s from cache", snap.tree_id[:12])
                evaluation = cached
        sources = SourceMap(evaluation.positions, snap.display, files.cue)
        doc = merge(files, evaluation.value, sources)
        checked = schema_key(doc)  # the schema check is half the cost of a cached load
        if not self.cache.passed(checked):
            problems = schema_problems(doc, sources)
            if problems:
                raise InvalidState(problems)
            self.cache.mark_passed(checked)
        return Builder(snap, doc, sources).build()
