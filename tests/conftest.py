"""Shared fixtures. Real parts (cue, git, registries) are found or the test fails loudly."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.support.recordkeys import session_key
from tests.support.staterepo import ROOT, StateRepo, example_files

# The cue that `make setup` installs when none is on PATH.
_TOOLS = ROOT / ".tools" / "bin"
if _TOOLS.is_dir() and str(_TOOLS) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + str(_TOOLS)

pytest_plugins = ["tests.support.registry_servers", "tests.support.gitea", "tests.support.daemon"]


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own cache dir, so no test sees another's cached state."""
    monkeypatch.setenv("RECONCILER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _offline_sigstore(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's environment can never make the suite refresh the root over TUF."""
    monkeypatch.delenv("RECONCILER_SIGSTORE_REFRESH", raising=False)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification is offline: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def _record_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are signed in every test, with the session's key (subprocesses too)."""
    monkeypatch.setenv("RECONCILER_RECORD_KEY", str(session_key()[0]))


@pytest.fixture(autouse=True)
def _first_contact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts trust the state repository on first use unless a test gives a trust root
    (tests of the trust root take this away: ``monkeypatch.delenv``)."""
    monkeypatch.delenv("RECONCILER_TRUST_ROOT", raising=False)
    monkeypatch.setenv("RECONCILER_TRUST_ON_FIRST_USE", "1")


@pytest.fixture(scope="session")
def cue_bin() -> str:
    """The real cue executable; a missing one fails with the fix, never skips."""
    exe = os.environ.get("RECONCILER_CUE") or shutil.which("cue")
    if not exe:
        pytest.fail("no `cue` executable on PATH and RECONCILER_CUE unset: run `make setup`")
    return exe


@pytest.fixture
def state_repo(tmp_path: Path, cue_bin: str) -> StateRepo:
    """A real git repository whose main branch holds the quickstart example."""
    repo = StateRepo(tmp_path / "state")
    repo.commit(example_files(), "quickstart state")
    return repo
