"""The local anchor: the last apply record this host trusted, per environment.

Like TUF's trusted metadata on disk, it makes the registry unable to take the
reconciler back in time: a head that is missing, or that does not chain back to the
anchored record, is refused, whoever wrote it. It lives in the cache directory (keep
that on a volume), written atomically; the anchor also remembers the record's commit,
whose settings say which record keys are in force.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Anchor:
    digest: str
    commit: str


class Anchors:
    """Anchors under ``<cache>/anchors``; with no directory, nothing is remembered."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.directory = cache_dir / "anchors" if cache_dir else None

    def path(self, repository: str, env: str) -> Path | None:
        if self.directory is None:
            return None
        key = hashlib.sha256(f"{repository}\0{env}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.json"

    def get(self, repository: str, env: str) -> Anchor | None:
        path = self.path(repository, env)
        if path is None:
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return Anchor(str(doc["digest"]), str(doc["commit"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # An unreadable anchor must not silently become "no anchor".
            raise OSError(f"the local anchor {path} is unreadable: {exc}") from None

    def set(self, repository: str, env: str, anchor: Anchor) -> None:
        path = self.path(repository, env)
        if path is None or self.get(repository, env) == anchor:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"repository": repository, "environment": env, **anchor.__dict__}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
        log.debug("%s: anchored at %s", env, anchor.digest[:19])
