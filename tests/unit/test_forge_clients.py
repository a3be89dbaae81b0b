"""The GitHub and GitLab clients on recorded request and answer shapes (from their REST
documentation); Gitea is tested for real (tests/integration/test_forge_gitea.py). Also the
rules every client shares: the token only from a RECONCILER_FORGE_ variable, errors
classified, and no token in any message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from reconciler.forge import (
    CommitState,
    ForgeRefused,
    ForgeUnavailable,
    Status,
    open_forge,
)
from reconciler.forge.base import Api, token_from
from reconciler.forge.github import GitHub
from reconciler.forge.gitlab import GitLab
from reconciler.model import ForgeSettings

TOKEN = "tok-0123456789-secret"
SHA = "a" * 40
MERGE = "b" * 40


@dataclass
class Answer:
    status: int
    doc: Any = None

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def status_code(self) -> int:
        return self.status

    def iter_content(self, size: int) -> Iterator[bytes]:
        yield b"" if self.doc is None else json.dumps(self.doc).encode()


@dataclass
class Recorded:
    """A session that answers a recorded exchange, in order, and keeps what was asked."""

    exchange: list[tuple[str, str, Any, Answer]]  # method, path?query, body, answer
    asked: list[tuple[str, str, Any, dict[str, str]]] = field(default_factory=list)

    def request(self, method: str, url: str, **kw: Any) -> Answer:
        query = f"?{urlencode(kw['params'])}" if kw.get("params") else ""
        self.asked.append((method, url + query, kw.get("json"), kw["headers"]))
        assert kw["allow_redirects"] is False and kw["timeout"]
        want_method, want_path, want_body, answer = self.exchange[len(self.asked) - 1]
        assert (method, url + query) == (want_method, want_path)
        if want_body is not None:
            assert kw.get("json") == want_body
        return answer


def github(exchange: list[tuple[str, str, Any, Answer]]) -> tuple[GitHub, Recorded]:
    session = Recorded([(m, "https://api.github.com" + p, b, a) for m, p, b, a in exchange])
    client = GitHub("https://api.github.com", "acme/state", TOKEN)
    client.api.session = session  # type: ignore[assignment]
    return client, session


def gitlab(exchange: list[tuple[str, str, Any, Answer]]) -> tuple[GitLab, Recorded]:
    base = "https://gitlab.example.org/api/v4"
    session = Recorded([(m, base + p, b, a) for m, p, b, a in exchange])
    client = GitLab("https://gitlab.example.org", "platform/deploy/state", TOKEN)
    client.api.session = session  # type: ignore[assignment]
    return client, session


GITHUB_PR = {  # GET /repos/{owner}/{repo}/pulls/{n}, abbreviated
    "number": 7,
    "state": "open",
    "title": "Promote prod to v1.2",
    "html_url": "https://github.com/acme/state/pull/7",
    "user": {"login": "alice"},
    "body": "plan",
    "labels": [{"name": "reconciler"}],
    "head": {"ref": "promote/prod/v1.2", "sha": SHA},
    "base": {"ref": "main", "sha": "c" * 40},
    "merged": False,
    "merged_by": None,
    "merge_commit_sha": "d" * 40,  # GitHub's test merge commit while open
}


def test_github_opens_a_pull_request_labels_it_and_sets_the_status() -> None:
    client, session = github([
        ("GET", "/repos/acme/state/pulls?state=open&head=acme%3Apromote%2Fprod%2Fv1.2&base=main",
         None, Answer(200, [])),
        ("POST", "/repos/acme/state/pulls",
         {"head": "promote/prod/v1.2", "base": "main", "title": "t", "body": "b"},
         Answer(201, GITHUB_PR)),
        ("POST", "/repos/acme/state/issues/7/labels", {"labels": ["reconciler", "promote"]},
         Answer(200, [{"name": "reconciler"}, {"name": "promote"}])),
        ("POST", f"/repos/acme/state/statuses/{SHA}",
         {"context": "reconciler/verify", "state": "failure", "description": "x" * 140,
          "target_url": GITHUB_PR["html_url"]},
         Answer(201, {"state": "failure"})),
    ])  # fmt: skip
    assert client.find_open("promote/prod/v1.2", "main") is None
    mr = client.create("promote/prod/v1.2", "main", "t", "b")
    assert (mr.number, mr.head_sha, mr.head_branch, mr.state) == (
        7,
        SHA,
        "promote/prod/v1.2",
        "open",
    )
    assert mr.merge_sha == ""  # an open pull request's test merge is not a merge
    client.add_labels(7, ("reconciler", "promote"))
    status = Status("reconciler/verify", CommitState.FAILURE, "x" * 200)
    client.set_status(SHA, status, str(GITHUB_PR["html_url"]))
    headers = session.asked[0][3]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-GitHub-Api-Version"] == "2022-11-28"


def test_github_finds_the_merged_pull_request_of_a_merge_commit_and_its_approvers() -> None:
    listed = {**GITHUB_PR, "state": "closed", "merged_at": "2026-01-01T00:00:00Z",
              "merge_commit_sha": MERGE}  # fmt: skip
    full = {**listed, "merged": True, "merged_by": {"login": "bob"}}
    client, _ = github([
        ("GET", f"/repos/acme/state/commits/{MERGE}/pulls", None, Answer(200, [listed])),
        ("GET", "/repos/acme/state/pulls/7", None, Answer(200, full)),
        ("GET", "/repos/acme/state/pulls/7/reviews?per_page=100", None, Answer(200, [
            {"user": {"login": "bob"}, "state": "APPROVED"},
            {"user": {"login": "carol"}, "state": "APPROVED"},
            {"user": {"login": "carol"}, "state": "CHANGES_REQUESTED"},
            {"user": {"login": "dave"}, "state": "COMMENTED"},
        ])),
    ])  # fmt: skip
    mr = client.merged_for(MERGE)
    assert mr is not None and (mr.merged, mr.merged_by, mr.author) == (True, "bob", "alice")
    assert client.approvers(7) == ("bob",)  # carol's later review withdrew her approval


GITLAB_MR = {  # GET /projects/:id/merge_requests/:iid, abbreviated
    "id": 9001,
    "iid": 12,
    "title": "Promote prod to v1.2",
    "description": "plan",
    "state": "merged",
    "source_branch": "promote/prod/v1.2",
    "target_branch": "main",
    "sha": SHA,
    "merge_commit_sha": None,
    "squash_commit_sha": MERGE,
    "author": {"username": "alice"},
    "merge_user": {"username": "bob"},
    "labels": ["reconciler", "promote", "prod"],
    "web_url": "https://gitlab.example.org/platform/deploy/state/-/merge_requests/12",
}
PROJECT = "/projects/platform%2Fdeploy%2Fstate"


def test_gitlab_speaks_iids_failed_and_names() -> None:
    client, session = gitlab([
        ("POST", f"{PROJECT}/merge_requests",
         {"source_branch": "promote/prod/v1.2", "target_branch": "main", "title": "t",
          "description": "b"},
         Answer(201, {**GITLAB_MR, "state": "opened", "squash_commit_sha": None})),
        ("PUT", f"{PROJECT}/merge_requests/12", {"add_labels": "reconciler,promote"},
         Answer(200, GITLAB_MR)),
        ("POST", f"{PROJECT}/statuses/{SHA}",
         {"state": "failed", "name": "reconciler/verify", "description": "prod: rule hazards"},
         Answer(201, {"status": "failed"})),
        ("GET", f"{PROJECT}/repository/commits/{MERGE}/merge_requests", None,
         Answer(200, [GITLAB_MR])),
        ("GET", f"{PROJECT}/merge_requests/12/approvals", None,
         Answer(200, {"approved_by": [{"user": {"username": "bob"}}]})),
        ("GET", f"{PROJECT}/merge_requests/12/notes?sort=asc&order_by=created_at&per_page=100",
         None, Answer(200, [{"body": "approved this merge request", "system": True},
                            {"body": "applied", "system": False}])),
        ("GET", f"{PROJECT}/repository/commits/{SHA}/statuses?per_page=100", None, Answer(200, [
            {"id": 2, "name": "reconciler/verify", "status": "success", "description": "ok"},
            {"id": 1, "name": "reconciler/verify", "status": "running", "description": "checking"},
        ])),
    ])  # fmt: skip
    opened = client.create("promote/prod/v1.2", "main", "t", "b")
    assert (opened.number, opened.state, opened.merge_sha) == (12, "open", "")
    client.add_labels(12, ("reconciler", "promote"))
    client.set_status(SHA, Status("reconciler/verify", CommitState.FAILURE, "prod: rule hazards"))
    merged = client.merged_for(MERGE)  # a squash merge: its squash commit
    assert merged is not None and (merged.merged_by, merged.merge_sha) == ("bob", MERGE)
    assert client.approvers(12) == ("bob",)
    assert client.comments(12) == ["applied"]  # system notes are not comments
    assert client.statuses(SHA) == [Status("reconciler/verify", CommitState.SUCCESS, "ok")]
    assert session.asked[0][3]["PRIVATE-TOKEN"] == TOKEN


def test_errors_are_classified_and_never_carry_the_token() -> None:
    client, _ = github(
        [("GET", "/repos/acme/state/pulls/7", None, Answer(401, {"message": "Bad credentials"}))]
    )
    with pytest.raises(ForgeRefused) as refused:
        client.get(7)
    assert "HTTP 401: Bad credentials" in refused.value.message
    assert "tokenEnv" in refused.value.hint and TOKEN not in str(refused.value)

    client, _ = github([("GET", "/repos/acme/state/pulls/7", None, Answer(502))] * 3)
    client.api.attempts = 3
    with pytest.raises(ForgeUnavailable):
        client.get(7)

    client, _ = github([("GET", "/repos/acme/state/branches/gone", None, Answer(404))])
    assert client.branch_head("gone") is None


def test_a_connection_error_is_transient_and_its_text_is_not_shown() -> None:
    class Down:
        def request(self, *a: object, **kw: object) -> None:
            raise requests.ConnectionError(f"https://x:{TOKEN}@api.github.com refused")

    api = Api("https://api.github.com", {}, "github at https://api.github.com", Down(), 1)  # type: ignore[arg-type]
    with pytest.raises(ForgeUnavailable) as exc:
        api.call("GET", "/x")
    assert TOKEN not in str(exc.value) and "ConnectionError" in exc.value.message


def test_the_token_comes_only_from_a_reconciler_forge_variable() -> None:
    settings = ForgeSettings("github", "https://api.github.com", "acme/state", "RECONCILER_FORGE_T")
    assert token_from(settings, {"RECONCILER_FORGE_T": " t \n"}) == "t"
    with pytest.raises(ForgeRefused, match="is not set"):
        token_from(settings, {})
    other = ForgeSettings(
        "github", "https://api.github.com", "acme/state", "RECONCILER_WEBHOOK_SECRET"
    )
    with pytest.raises(ForgeRefused, match="not a RECONCILER_FORGE_ variable"):
        token_from(other, {"RECONCILER_WEBHOOK_SECRET": "s"})
    with pytest.raises(ForgeRefused, match="no forge is configured"):
        open_forge(None)
    assert open_forge(settings, {"RECONCILER_FORGE_T": "t"}).kind == "github"
