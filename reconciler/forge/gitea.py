"""Gitea (and Forgejo): pull requests, commit statuses, reviews and comments over ``/api/v1``.

Gitea processes a push in the background: a pull request opened right after the push
can be refused (404/422) until the branch is known, so the caller waits for
:meth:`Gitea.branch_head` to show the pushed commit first. Labels are repository
objects with ids: :meth:`Gitea.add_labels` creates the missing ones.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from reconciler.forge.base import (
    Api,
    CommitState,
    MergeRequest,
    Status,
    shown,
)

__all__ = ["GitHubShaped", "Gitea", "merge_request", "state_of"]

LABEL_COLOR = "#1d76db"


def state_of(value: object) -> CommitState:
    """A forge's status state in our words (``warning`` and unknown ones are errors)."""
    try:
        return CommitState(str(value))
    except ValueError:
        return CommitState.FAILURE if value == "failed" else CommitState.ERROR


def merge_request(doc: dict[str, Any]) -> MergeRequest:
    """A pull request as Gitea (and GitHub, whose shape Gitea follows) answers it."""
    merged = bool(doc.get("merged") or doc.get("merged_at"))
    head, base = doc.get("head") or {}, doc.get("base") or {}
    return MergeRequest(
        number=int(doc["number"]),
        title=str(doc.get("title") or ""),
        url=str(doc.get("html_url") or ""),
        head_branch=str(head.get("ref") or ""),
        head_sha=str(head.get("sha") or ""),
        base_branch=str(base.get("ref") or ""),
        state="merged" if merged else str(doc.get("state") or ""),
        author=str((doc.get("user") or {}).get("login") or ""),
        merged_by=str((doc.get("merged_by") or {}).get("login") or ""),
        merge_sha=str(doc.get("merge_commit_sha") or "") if merged else "",
        body=str(doc.get("body") or ""),
        labels=tuple(str(label.get("name")) for label in doc.get("labels") or ()),
    )


class GitHubShaped:
    """What Gitea and GitHub answer alike: creating and editing pull requests, issue
    comments and the combined status. ``page`` names the page-size parameter (Gitea
    ``limit``, GitHub ``per_page``)."""

    api: Api
    _repo: str
    page = "limit"

    def create(self, branch: str, base: str, title: str, body: str) -> MergeRequest:
        """A new pull request."""
        doc = {"head": branch, "base": base, "title": title, "body": body}
        return merge_request(self.api.call("POST", f"{self._repo}/pulls", doc))

    def update(self, number: int, title: str, body: str) -> MergeRequest:
        """New title and description."""
        doc = {"title": title, "body": body}
        return merge_request(self.api.call("PATCH", f"{self._repo}/pulls/{number}", doc))

    def comment(self, number: int, body: str) -> None:
        """A comment on the pull request (an issue comment)."""
        self.api.call("POST", f"{self._repo}/issues/{number}/comments", {"body": body})

    def comments(self, number: int) -> list[str]:
        """The comments' bodies, oldest first."""
        found = self.api.call(
            "GET", f"{self._repo}/issues/{number}/comments", params={self.page: 100}
        )
        return [str(c.get("body") or "") for c in found or ()]

    def statuses(self, sha: str) -> list[Status]:
        """The newest status of each context on ``sha`` (Gitea says ``status``, GitHub
        ``state``)."""
        doc = self.api.call("GET", f"{self._repo}/commits/{sha}/status") or {}
        return [
            Status(str(s["context"]), state_of(s.get("status") or s.get("state")),
                   str(s.get("description") or ""))
            for s in doc.get("statuses") or ()
        ]  # fmt: skip


class Gitea(GitHubShaped):
    """One Gitea repository through its API, with one token (``Authorization: token``)."""

    kind = "gitea"

    def __init__(self, url: str, repository: str, token: str, api: Api | None = None) -> None:
        self.repository = repository
        self.api = api or Api(
            f"{url.rstrip('/')}/api/v1",
            {"Authorization": f"token {token}", "Accept": "application/json"},
            f"gitea at {shown(url)}",
        )
        self._repo = "/repos/" + "/".join(quote(p, safe="") for p in repository.split("/"))

    def get(self, number: int) -> MergeRequest:
        """The pull request ``number``."""
        return merge_request(self.api.call("GET", f"{self._repo}/pulls/{number}"))

    def list_open(self) -> list[MergeRequest]:
        """The open pull requests (the newest 50)."""
        found = self.api.call("GET", f"{self._repo}/pulls", params={"state": "open", "limit": 50})
        return [merge_request(d) for d in found or ()]

    def find_open(self, branch: str, base: str) -> MergeRequest | None:
        """The open pull request from ``branch`` into ``base``."""
        return next(
            (m for m in self.list_open() if m.head_branch == branch and m.base_branch == base),
            None,
        )

    def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        """Labels by name, created in the repository when missing."""
        known: dict[str, int] = {}
        for page in range(1, 21):  # 50 a page; a repository with more than 1000 labels errs
            found = self.api.call("GET", f"{self._repo}/labels", params={"limit": 50, "page": page})
            known.update({str(d["name"]): int(d["id"]) for d in found or ()})
            if len(found or ()) < 50:
                break
        for name in labels:
            if name not in known:
                made = self.api.call(
                    "POST", f"{self._repo}/labels", {"name": name, "color": LABEL_COLOR}
                )
                known[name] = int(made["id"])
        ids = [known[n] for n in labels]
        self.api.call("POST", f"{self._repo}/issues/{number}/labels", {"labels": ids})

    def merged_for(self, sha: str) -> MergeRequest | None:
        """The merged pull request whose merge commit is ``sha``."""
        doc = self.api.call("GET", f"{self._repo}/commits/{sha}/pull", missing_ok=True)
        if not doc:
            return None
        found = merge_request(doc)
        return found if found.merged and found.merge_sha == sha else None

    def approvers(self, number: int) -> tuple[str, ...]:
        """Who approved (reviews not dismissed)."""
        reviews = self.api.call("GET", f"{self._repo}/pulls/{number}/reviews") or ()
        return tuple(
            sorted(
                {
                    str((r.get("user") or {}).get("login") or "")
                    for r in reviews
                    if r.get("state") == "APPROVED" and not r.get("dismissed")
                }
                - {""}
            )
        )

    def set_status(self, sha: str, status: Status, target_url: str = "") -> None:
        """A commit status (Gitea's states are GitHub's)."""
        doc = {
            "context": status.context,
            "state": status.state.value,
            "description": status.description[:255],
            "target_url": target_url,
        }
        self.api.call("POST", f"{self._repo}/statuses/{sha}", doc)

    def branch_head(self, branch: str) -> str | None:
        """The commit ``branch`` is at, once Gitea has processed the push."""
        path = f"{self._repo}/branches/{quote(branch, safe='/')}"
        doc = self.api.call("GET", path, missing_ok=True)
        return str((doc.get("commit") or {}).get("id") or "") or None if doc else None
