"""Registry events: a push or delete of a managed tag asks for a targeted check of it.

Events are triggers, never truth: they only say which tags to re-read; the pass reads
them from the registry, plans and runs the whole gate before anything moves. What
costs nothing: pulls, blob events, tags no environment manages (records, referrer
indexes, other people's tags) and the echo of the reconciler's own writes. Bursts
coalesce: the queue holds a set of tags per environment until the next pass takes it.

The shape is distribution's notification envelope
(``application/vnd.docker.distribution.events.v1+json``, ``{"events": [...]}``), each
event with ``action`` and ``target.{repository, tag, digest, mediaType}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.model import DesiredState
from reconciler.registry import InvalidReference, parse_reference

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
ACTIONS = frozenset({"push", "delete"})
OWN_WRITE_TTL = 120.0  # seconds an event may echo a write of ours
MAX_EVENTS = 1000


@dataclass(frozen=True)
class RegistryEvent:
    """One registry notification about a tag or digest; a trigger to re-read it, never
    taken as what the registry holds."""

    action: str
    repository: str  # the repository path in its registry, e.g. "team/app"
    tag: str | None
    digest: str | None


def parse(body: bytes) -> list[RegistryEvent]:
    """The events of a notification body; ValueError when it is not one."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ValueError('expected {"events": [...]}')
    events = []
    for raw in doc["events"][:MAX_EVENTS]:
        target = raw.get("target") if isinstance(raw, dict) else None
        if not isinstance(target, dict) or not isinstance(target.get("repository"), str):
            continue
        tag, digest = target.get("tag"), target.get("digest")
        events.append(
            RegistryEvent(
                str(raw.get("action", "")),
                target["repository"],
                tag if isinstance(tag, str) and tag else None,
                digest if isinstance(digest, str) and digest else None,
            )
        )
    return events


class EventQueue:
    """Managed tags, the echoes to ignore, and the checks pending; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._managed: dict[tuple[str, str], tuple[str, str]] = {}  # (repo, tag) -> (env, digest)
        self._by_digest: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (repo, digest)
        self._echo: dict[tuple[str, str, str], float] = {}  # (repo, tag, digest) -> until
        self._pending: dict[str, set[tuple[str, str, str | None]]] = {}  # (repo, tag, digest)
        self._since: dict[str, float] = {}

    def manage(self, state: DesiredState, envs: Iterable[str]) -> None:
        """The tags of ``envs`` in ``state`` are the ones events may be about."""
        managed: dict[tuple[str, str], tuple[str, str]] = {}
        by_digest: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for env in envs:
            for t in state.tags[env]:
                try:
                    repo = parse_reference(t.repository).repository
                except InvalidReference:
                    continue
                managed[(repo, t.tag)] = (env, t.digest)
                by_digest.setdefault((repo, t.digest), set()).add((env, t.tag))
        with self._lock:
            self._managed, self._by_digest = managed, by_digest

    def wrote(self, repository: str, tag: str, digest: str) -> None:
        """The reconciler itself moved ``repository:tag``: its event is an echo."""
        try:
            repo = parse_reference(repository).repository
        except InvalidReference:
            return
        with self._lock:
            self._echo[(repo, tag, digest)] = self.clock() + OWN_WRITE_TTL

    def offer(self, events: Iterable[RegistryEvent]) -> int:
        """Queue checks for the events about managed tags; how many were queued."""
        now = self.clock()
        queued = 0
        with self._lock:
            for event in events:
                for env, tag in self._targets(event):
                    key = (event.repository, tag, event.digest if event.tag else None)
                    if self._is_echo(key, now):
                        continue
                    self._pending.setdefault(env, set()).add(key)
                    self._since.setdefault(env, now)
                    queued += 1
        return queued

    def _is_echo(self, key: tuple[str, str, str | None], now: float) -> bool:
        """A push of a tag to the digest we wrote there: our own write coming back. An
        event may arrive before the pass that wrote it says so: checked again on take."""
        self._echo = {k: until for k, until in self._echo.items() if until > now}
        repo, tag, digest = key
        return digest is not None and (repo, tag, digest) in self._echo

    def _targets(self, event: RegistryEvent) -> list[tuple[str, str]]:
        if event.action not in ACTIONS:
            return []
        if event.tag is not None:
            found = self._managed.get((event.repository, event.tag))
            return [(found[0], event.tag)] if found else []
        if event.action == "delete" and event.digest:  # a manifest deleted, with its tags
            return sorted(self._by_digest.get((event.repository, event.digest), ()))
        return []  # a blob, or a manifest pushed by digest: no tag moved

    def take(self) -> dict[str, tuple[frozenset[str], float]]:
        """The pending checks (env -> (tags, when the first event came)), now emptied."""
        now = self.clock()
        with self._lock:
            taken = {}
            for env, keys in self._pending.items():
                tags = frozenset(k[1] for k in keys if not self._is_echo(k, now))
                if tags:
                    taken[env] = (tags, self._since[env])
            self._pending, self._since = {}, {}
        return taken
