"""GitHub (and GitHub Enterprise Server): pull requests, commit statuses, reviews, comments.

Written from the REST documentation (API version 2022-11-28) and tested on recorded
request and answer shapes (tests/unit/test_forge_clients.py). ``settings.forge.url`` is
the API root: ``https://api.github.com``, or ``https://HOST/api/v3`` for a server.
A pull request's shape is Gitea's (which follows GitHub), so one parser serves both.
"""

from __future__ import annotations

from urllib.parse import quote

from reconciler.forge.base import Api, MergeRequest, Status, shown
from reconciler.forge.gitea import GitHubShaped, merge_request

__all__ = ["GitHub"]


class GitHub(GitHubShaped):
    """One GitHub repository through the REST API, with one token (``Bearer``)."""

    kind = "github"
    page = "per_page"

    def __init__(self, url: str, repository: str, token: str, api: Api | None = None) -> None:
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.api = api or Api(
            url.rstrip("/"),
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            },
            f"github at {shown(url)}",
        )
        self._repo = "/repos/" + "/".join(quote(p, safe="") for p in repository.split("/"))

    def get(self, number: int) -> MergeRequest:
        """The pull request ``number`` (its ``merged`` is set only by this call)."""
        return merge_request(self.api.call("GET", f"{self._repo}/pulls/{number}"))

    def list_open(self) -> list[MergeRequest]:
        """The open pull requests (the newest 50)."""
        found = self.api.call(
            "GET", f"{self._repo}/pulls", params={"state": "open", "per_page": 50}
        )
        return [merge_request(d) for d in found or ()]

    def find_open(self, branch: str, base: str) -> MergeRequest | None:
        """The open pull request from ``branch`` into ``base`` (GitHub filters by owner:branch)."""
        params: dict[str, str | int] = {
            "state": "open",
            "head": f"{self.owner}:{branch}",
            "base": base,
        }
        found = self.api.call("GET", f"{self._repo}/pulls", params=params) or []
        return merge_request(found[0]) if found else None

    def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        """Labels by name (GitHub creates missing ones)."""
        self.api.call("POST", f"{self._repo}/issues/{number}/labels", {"labels": list(labels)})

    def merged_for(self, sha: str) -> MergeRequest | None:
        """The merged pull request whose merge commit is ``sha``."""
        found = self.api.call("GET", f"{self._repo}/commits/{sha}/pulls") or []
        for doc in found:
            mr = merge_request(doc)
            if mr.merged and mr.merge_sha == sha:
                return self.get(mr.number)  # merged_by is only in the full answer
        return None

    def approvers(self, number: int) -> tuple[str, ...]:
        """Who approved (a later review by the same person replaces an earlier one)."""
        reviews = self.api.call(
            "GET", f"{self._repo}/pulls/{number}/reviews", params={"per_page": 100}
        )
        last: dict[str, str] = {}
        for r in reviews or ():
            login = str((r.get("user") or {}).get("login") or "")
            if login and r.get("state") in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
                last[login] = str(r["state"])
        return tuple(sorted(u for u, s in last.items() if s == "APPROVED"))

    def set_status(self, sha: str, status: Status, target_url: str = "") -> None:
        """A commit status (description at most 140 characters)."""
        doc = {
            "context": status.context,
            "state": status.state.value,
            "description": status.description[:140],
        }
        if target_url:
            doc["target_url"] = target_url
        self.api.call("POST", f"{self._repo}/statuses/{sha}", doc)

    def branch_head(self, branch: str) -> str | None:
        """The commit ``branch`` is at."""
        doc = self.api.call(
            "GET", f"{self._repo}/branches/{quote(branch, safe='')}", missing_ok=True
        )
        return str((doc.get("commit") or {}).get("sha") or "") or None if doc else None
