"""``reconciler run`` as a subprocess for tests: its JSON log, its HTTP endpoints, a git
remote it fetches, and waiting for what it should do within a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pygit2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.registry_servers import free_port
from tests.support.staterepo import SIGNATURE
from tests.support.world import World, desired_only, expected_tags

INTERVAL = 1.0
PASS_ALLOWANCE = 15.0  # one pass: fetch, a cold cue evaluation, registry reads and writes


def daemon_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "run", *args]


def within(intervals: int) -> float:
    return intervals * INTERVAL * 1.1 + PASS_ALLOWANCE


# --------------------------------------------------------------------------- helpers


class Remote:
    """A bare repository the world's state repo pushes to; the daemon fetches it."""

    def __init__(self, world: World, path: Path) -> None:
        self.world = world
        self.path = path
        pygit2.init_repository(str(path), bare=True, initial_head="main")
        world.repo.repo.remotes.create("origin", str(path))
        self.push()

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def push(self) -> None:
        self.world.repo.repo.remotes["origin"].push(["+refs/heads/main:refs/heads/main"])

    def promote(self, **releases: str) -> None:
        self.world.promote(**releases)
        self.push()

    def revert(self, commit: str) -> None:
        repo = self.world.repo.repo
        head = repo[repo.head.target]
        index = repo.revert_commit(repo[pygit2.Oid(hex=commit)], head)
        assert not index.conflicts
        tree = index.write_tree(repo)
        repo.create_commit("refs/heads/main", SIGNATURE, SIGNATURE, "Revert", tree, [head.id])
        repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
        self.push()


class DaemonProcess:
    """``reconciler run`` in a subprocess, its JSON log in a file, its HTTP endpoints."""

    def __init__(
        self,
        log: Path,
        repo: str,
        *extra: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = log
        self.base = f"http://127.0.0.1:{self.port}"
        command = daemon_command(
            "--repo", repo, "--interval", str(INTERVAL), "--listen", f"127.0.0.1:{self.port}",
            "--log-format", "json", *extra,
        )  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        eventually(self._healthy, 20, "the daemon answers /healthz", self)

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.tail()
        try:
            return requests.get(self.base + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=5)

    def hook(self, body: bytes, headers: dict[str, str]) -> int:
        return requests.post(
            self.base + "/hooks/git", data=body, headers=headers, timeout=5
        ).status_code

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample as {(name, sorted labels): value}, through prometheus_client's parser."""
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def events(self, event: str, environment: str | None = None) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == event and environment in (None, doc.get("environment")):
                found.append(doc)
        return found

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def eventually(
    check: Callable[[], bool], seconds: float, what: str, daemon: DaemonProcess | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"not within {seconds:.0f} s: {what}\n{daemon.tail() if daemon else ''}")


def converged(world: World, **releases: str) -> Callable[[], bool]:
    expected = expected_tags(world, **releases)
    return lambda: desired_only(world.tags()) == expected


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts; each is killed at the end, a stopped one (SIGSTOP) too."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)
        daemon.kill()
