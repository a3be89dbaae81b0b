"""Git credentials over an authenticated smart-HTTP remote: handed to libgit2 by a
callback, never stored in the cache's git config, never printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reconciler.cli.main import main
from reconciler.errors import GitUnreachable
from reconciler.git import GitSource
from tests.support.githttp import GitHttpServer
from tests.support.staterepo import StateRepo

USER = "deploy-bot"
TOKEN = "glpat-S3cretT0ken-9f8e7d"


@pytest.fixture
def remote(tmp_path: Path, state_repo: StateRepo) -> Iterator[GitHttpServer]:
    root = tmp_path / "served"
    root.mkdir()
    pygit2.clone_repository(str(state_repo.path), str(root / "state.git"), bare=True)
    server = GitHttpServer(root, USER, TOKEN)
    yield server
    server.close()


def cache_text(cache: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in cache.rglob("*") if p.is_file())


def test_validate_over_an_authenticated_url_never_prints_or_stores_the_token(
    remote: GitHttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    url = remote.url("state.git", f"{USER}:{TOKEN}")
    assert main(["validate", "--repo", url, "--ref", "main", "--cache-dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert remote.url("state.git") in out  # the URL is shown, without its userinfo
    # The server was asked with the credentials: the callback handed them over.
    assert any(auth == remote.expected for _, _, auth in remote.seen)
    # Nothing under the cache holds them: not the mirror's config, not FETCH_HEAD.
    assert TOKEN not in cache_text(cache)
    (mirror,) = (cache / "git").glob("*.git")
    assert pygit2.Repository(str(mirror)).remotes["origin"].url == remote.url("state.git")


def test_a_cache_written_with_the_token_in_its_config_is_cleaned(
    remote: GitHttpServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    url = remote.url("state.git", f"{USER}:{TOKEN}")
    GitSource(url, cache).fetch()
    (mirror,) = (cache / "git").glob("*.git")
    pygit2.Repository(str(mirror)).remotes.set_url("origin", url)  # as older versions did
    assert TOKEN in (mirror / "config").read_text()
    source = GitSource(url, cache)
    source.fetch()
    assert TOKEN not in (mirror / "config").read_text()
    assert source.snapshot("main").commit


def test_a_wrong_token_fails_without_printing_it(
    remote: GitHttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "not-the-token-12345"
    url = remote.url("state.git", f"{USER}:{wrong}")
    with pytest.raises(GitUnreachable) as caught:
        GitSource(url, tmp_path / "cache").fetch()
    assert wrong not in str(caught.value)
    assert main(["validate", "--repo", url, "--cache-dir", str(tmp_path / "c2")]) == 1
    out, err = capsys.readouterr()
    assert wrong not in out + err
    assert "127.0.0.1" in err
    assert wrong not in cache_text(tmp_path / "cache") + cache_text(tmp_path / "c2")
