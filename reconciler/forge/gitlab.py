"""GitLab: merge requests, commit statuses, approvals and notes over ``/api/v4``.

Written from the REST documentation and tested on recorded request and answer shapes
(tests/unit/test_forge_clients.py). ``settings.forge.url`` is the instance
(``https://gitlab.com``); ``repository`` the project's full path, sent URL-encoded as
its id. A merge request is named by its ``iid``; GitLab says ``opened`` and ``failed``
where the others say ``open`` and ``failure``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from reconciler.forge.base import Api, CommitState, MergeRequest, Status, shown
from reconciler.forge.gitea import state_of

__all__ = ["GitLab", "merge_request"]

_STATE = {"opened": "open", "merged": "merged", "closed": "closed", "locked": "closed"}
_OURS = {
    CommitState.PENDING: "pending",
    CommitState.SUCCESS: "success",
    CommitState.FAILURE: "failed",
    CommitState.ERROR: "failed",
}


def merge_request(doc: dict[str, Any]) -> MergeRequest:
    """A merge request as GitLab answers it."""
    state = _STATE.get(str(doc.get("state")), str(doc.get("state") or ""))
    merger = doc.get("merge_user") or doc.get("merged_by") or {}
    return MergeRequest(
        number=int(doc["iid"]),
        title=str(doc.get("title") or ""),
        url=str(doc.get("web_url") or ""),
        head_branch=str(doc.get("source_branch") or ""),
        head_sha=str(doc.get("sha") or ""),
        base_branch=str(doc.get("target_branch") or ""),
        state=state,
        author=str((doc.get("author") or {}).get("username") or ""),
        merged_by=str(merger.get("username") or ""),
        merge_sha=str(doc.get("merge_commit_sha") or doc.get("squash_commit_sha") or "")
        if state == "merged"
        else "",
        body=str(doc.get("description") or ""),
        labels=tuple(str(label) for label in doc.get("labels") or ()),
    )


class GitLab:
    """One GitLab project through the REST API, with one token (``PRIVATE-TOKEN``)."""

    kind = "gitlab"

    def __init__(self, url: str, repository: str, token: str, api: Api | None = None) -> None:
        self.repository = repository
        self.api = api or Api(
            f"{url.rstrip('/')}/api/v4", {"PRIVATE-TOKEN": token}, f"gitlab at {shown(url)}"
        )
        self._project = f"/projects/{quote(repository, safe='')}"

    def get(self, number: int) -> MergeRequest:
        """The merge request ``number`` (its iid)."""
        return merge_request(self.api.call("GET", f"{self._project}/merge_requests/{number}"))

    def list_open(self) -> list[MergeRequest]:
        """The open merge requests (the newest 50)."""
        params: dict[str, str | int] = {"state": "opened", "per_page": 50}
        found = self.api.call("GET", f"{self._project}/merge_requests", params=params)
        return [merge_request(d) for d in found or ()]

    def find_open(self, branch: str, base: str) -> MergeRequest | None:
        """The open merge request from ``branch`` into ``base``."""
        params: dict[str, str | int] = {
            "state": "opened",
            "source_branch": branch,
            "target_branch": base,
        }
        found = self.api.call("GET", f"{self._project}/merge_requests", params=params) or []
        return merge_request(found[0]) if found else None

    def create(self, branch: str, base: str, title: str, body: str) -> MergeRequest:
        """A new merge request."""
        doc = {"source_branch": branch, "target_branch": base, "title": title, "description": body}
        return merge_request(self.api.call("POST", f"{self._project}/merge_requests", doc))

    def update(self, number: int, title: str, body: str) -> MergeRequest:
        """New title and description."""
        doc = {"title": title, "description": body}
        path = f"{self._project}/merge_requests/{number}"
        return merge_request(self.api.call("PUT", path, doc))

    def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        """Labels by name (GitLab creates missing ones)."""
        path = f"{self._project}/merge_requests/{number}"
        self.api.call("PUT", path, {"add_labels": ",".join(labels)})

    def merged_for(self, sha: str) -> MergeRequest | None:
        """The merged merge request whose merge (or squash) commit is ``sha``."""
        path = f"{self._project}/repository/commits/{sha}/merge_requests"
        for doc in self.api.call("GET", path, missing_ok=True) or ():
            mr = merge_request(doc)
            if mr.merged and mr.merge_sha == sha:
                return mr
        return None

    def approvers(self, number: int) -> tuple[str, ...]:
        """Who approved."""
        doc = self.api.call("GET", f"{self._project}/merge_requests/{number}/approvals") or {}
        approved = doc.get("approved_by") or ()
        names = {str((a.get("user") or {}).get("username") or "") for a in approved}
        return tuple(sorted(names - {""}))

    def comment(self, number: int, body: str) -> None:
        """A note on the merge request."""
        path = f"{self._project}/merge_requests/{number}/notes"
        self.api.call("POST", path, {"body": body})

    def comments(self, number: int) -> list[str]:
        """The notes' bodies (not system notes), oldest first."""
        path = f"{self._project}/merge_requests/{number}/notes"
        params: dict[str, str | int] = {"sort": "asc", "order_by": "created_at", "per_page": 100}
        found = self.api.call("GET", path, params=params)
        return [str(n.get("body") or "") for n in found or () if not n.get("system")]

    def set_status(self, sha: str, status: Status, target_url: str = "") -> None:
        """A commit status; GitLab names the context ``name`` and says ``failed``."""
        doc = {
            "state": _OURS[status.state],
            "name": status.context,
            "description": status.description[:255],
        }
        if target_url:
            doc["target_url"] = target_url
        self.api.call("POST", f"{self._project}/statuses/{sha}", doc)

    def statuses(self, sha: str) -> list[Status]:
        """The newest status of each context (GitLab lists every one, oldest first)."""
        path = f"{self._project}/repository/commits/{sha}/statuses"
        found = self.api.call("GET", path, params={"per_page": 100}) or []
        newest: dict[str, Status] = {}
        for s in sorted(found, key=lambda s: int(s.get("id") or 0)):
            said = str(s["status"])
            state = state_of({"running": "pending", "canceled": "error"}.get(said, said))
            newest[str(s["name"])] = Status(str(s["name"]), state, str(s.get("description") or ""))
        return list(newest.values())

    def branch_head(self, branch: str) -> str | None:
        """The commit ``branch`` is at."""
        path = f"{self._project}/repository/branches/{quote(branch, safe='')}"
        doc = self.api.call("GET", path, missing_ok=True)
        return str((doc.get("commit") or {}).get("id") or "") or None if doc else None
