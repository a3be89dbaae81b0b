"""The state repository over real transports: a path, file://, git:// (git daemon)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reconciler.errors import GitSourceError, GitUnreachable
from reconciler.git import GitSource
from tests.support.staterepo import StateRepo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def origin(tmp_path: Path) -> StateRepo:
    repo = StateRepo(tmp_path / "origin")
    repo.commit({"environments/dev.json": '{"release": "v1"}'}, "first")
    return repo


@pytest.fixture
def git_daemon(tmp_path: Path, origin: StateRepo) -> Iterator[str]:
    """`git daemon` serving ``origin`` on 127.0.0.1 as git://127.0.0.1:PORT/origin."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={tmp_path}",
            "--export-all",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("git daemon did not start (is git installed? run `make setup`)")
    yield f"git://127.0.0.1:{port}/origin"
    proc.terminate()
    proc.wait(timeout=5)


def test_local_path_reads_tree_without_checkout(origin: StateRepo) -> None:
    snap = GitSource(str(origin.path)).snapshot("main")
    assert snap.read("environments/dev.json") == b'{"release": "v1"}'
    assert snap.commit == str(origin.repo.head.target)
    assert list(snap.files("environments")) == [("environments/dev.json", 17)]


def test_local_bare_repository(tmp_path: Path, origin: StateRepo) -> None:
    bare = pygit2.clone_repository(str(origin.path), str(tmp_path / "bare.git"), bare=True)
    snap = GitSource(bare.path).snapshot("main")
    assert snap.exists("environments/dev.json")


def test_file_url_is_mirrored_then_fetched_not_recloned(tmp_path: Path, origin: StateRepo) -> None:
    cache = tmp_path / "cache"
    url = f"file://{origin.path}"
    source = GitSource(url, cache_dir=cache)
    source.fetch()
    first = source.snapshot("main")
    mirror = Path(source.repo.path)
    marker = mirror / "reconciler-marker"
    marker.write_text("kept")
    second_commit = origin.commit({"environments/dev.json": '{"release": "v2"}'}, "second")

    again = GitSource(url, cache_dir=cache)
    again.fetch()
    snap = again.snapshot("main")
    assert Path(again.repo.path) == mirror and marker.exists()  # the same mirror, fetched
    assert snap.commit == second_commit != first.commit
    assert snap.read("environments/dev.json") == b'{"release": "v2"}'
    assert again.snapshot(first.commit).read("environments/dev.json") == b'{"release": "v1"}'


def test_git_daemon_url(tmp_path: Path, origin: StateRepo, git_daemon: str) -> None:
    source = GitSource(git_daemon, cache_dir=tmp_path / "cache")
    source.fetch()
    assert source.snapshot("main").commit == str(origin.repo.head.target)


def test_tags_and_sub_directories(origin: StateRepo) -> None:
    commit = origin.repo.revparse_single("main")
    origin.repo.references.create("refs/tags/release-1", commit.id)
    snap = GitSource(str(origin.path)).snapshot("release-1", "environments")
    assert snap.path == "environments" and snap.read("dev.json")
    assert snap.display("dev.json") == "environments/dev.json"


def test_missing_repository_ref_and_path_are_clear_errors(
    tmp_path: Path, origin: StateRepo
) -> None:
    with pytest.raises(GitSourceError, match="no such directory"):
        GitSource(str(tmp_path / "nowhere")).snapshot()
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitSourceError, match="not a git repository"):
        GitSource(str(tmp_path / "plain")).snapshot()
    with pytest.raises(GitSourceError, match=r"ref 'release' not found.*") as exc:
        GitSource(str(origin.path)).snapshot("release")
    assert "branches: main" in exc.value.hint
    with pytest.raises(GitSourceError, match="no directory 'deploy'"):
        GitSource(str(origin.path)).snapshot("main", "deploy")
    with pytest.raises(GitSourceError, match="no such file"):
        GitSource(str(origin.path)).snapshot("main").read("reconciler.cue")


def test_unreachable_remote_fails_fast_without_leaking_credentials(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    url = f"https://alice:s3cr3t@127.0.0.1:{port}/state.git?token=abc123"
    start = time.monotonic()
    with pytest.raises(GitUnreachable) as exc:
        GitSource(url, cache_dir=tmp_path / "cache").fetch()
    assert time.monotonic() - start < 30  # bounded by the connect timeout, not hung
    text = str(exc.value)
    assert f"https://127.0.0.1:{port}/state.git" in text
    assert "s3cr3t" not in text and "alice" not in text and "abc123" not in text


def test_remote_that_accepts_but_never_answers_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reconciler.git.source as gitsource

    monkeypatch.setattr(gitsource, "IO_TIMEOUT_MS", 1_000)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"git://127.0.0.1:{server.getsockname()[1]}/state"
        with pytest.raises(GitUnreachable, match=r"cannot fetch git://127\.0\.0\.1"):
            GitSource(url, cache_dir=tmp_path / "cache").fetch()


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Keys, trusted roots, signers and CA files are read through the snapshot, capped."""
    repo = StateRepo(tmp_path / "state")
    repo.commit({"keys/cosign.pub": b"x" * (2 << 20), "keys/small.pub": b"ok"})
    snap = GitSource(str(repo.path)).snapshot("main")
    assert snap.read("keys/small.pub") == b"ok"
    with pytest.raises(GitSourceError, match=r"keys/cosign\.pub: 2,097,152 bytes, over"):
        snap.read("keys/cosign.pub")
    assert "keys/cosign.pub" in snap.inputs()  # asked for: it counts as an input
