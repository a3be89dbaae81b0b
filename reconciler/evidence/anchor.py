"""The local anchors: the commit in force per state repository, and the last apply
record this host trusted per environment.

Like TUF's trusted metadata on disk, it makes the registry unable to take the
reconciler back in time: a head that is missing, or that does not chain back to the
anchored record, is refused, whoever wrote it. It lives in the cache directory (keep
that on a volume), written atomically; the anchor also remembers the record's commit,
whose settings said which record keys were in force.

The repository's anchor is the last commit whose trail this host judged
(:mod:`reconciler.verify.inforce`): the policy in force, from which every later commit
and every environment, new or old, is judged. Only commands that apply write anchors;
read-only ones judge in memory.
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
    """The record this host last trusted for one environment, and its commit (whose settings
    named the record keys then in force)."""

    digest: str
    commit: str


class Anchors:
    """Anchors under ``<cache>/anchors``; with no directory, nothing is remembered."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.directory = cache_dir / "anchors" if cache_dir else None

    def path(self, repository: str, env: str) -> Path | None:
        """The anchor file of ``env`` in ``repository`` (None: no cache directory); the name is
        hashed so that any repository or environment name makes a safe file name."""
        if self.directory is None:
            return None
        key = hashlib.sha256(f"{repository}\0{env}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.json"

    def get(self, repository: str, env: str) -> Anchor | None:
        """The anchored record of ``env``, None if there is none yet.

        Raises:
            OSError: the anchor exists but cannot be read; it never silently counts as absent.
        """
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
        """Anchor ``env`` at ``anchor``, atomically (only applying passes do)."""
        path = self.path(repository, env)
        if path is None or self.get(repository, env) == anchor:
            return
        _write(path, {"repository": repository, "environment": env, **anchor.__dict__})
        log.debug("%s: anchored at %s", env, anchor.digest[:19])

    def policy(self, repository: str) -> str | None:
        """The commit in force for ``repository`` (the state repository's location and
        directory), None if this host has judged nothing of it."""
        path = self.path(_POLICY, repository)
        if path is None:
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return str(doc["commit"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OSError(f"the local anchor {path} is unreadable: {exc}") from None

    def set_policy(self, repository: str, commit: str) -> None:
        """Move the commit in force for ``repository``, atomically (only applying passes do)."""
        path = self.path(_POLICY, repository)
        if path is None or self.policy(repository) == commit:
            return
        _write(path, {"repository": repository, "commit": commit})
        log.info("policy in force for %s: commit %s", repository, commit[:12])


_POLICY = "\0policy"  # the anchor key of a repository's policy (no environment is named so)


def _write(path: Path, doc: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)
