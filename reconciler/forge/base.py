"""The forge interface: merge requests, commit statuses and comments, one client per forge.

A forge is where people review a promotion: the reconciler opens the merge request
(:meth:`Forge.open`), puts its verdict on the head commit as a status that branch
protection can require (:data:`VERIFY`), and after the merge says on the merge request what
became of it (a comment, and :data:`APPLY` on the merge commit). Each forge's REST API is
wrapped by one small client (:mod:`~reconciler.forge.gitea`, :mod:`~reconciler.forge.github`,
:mod:`~reconciler.forge.gitlab`) over :class:`Api`, which holds the rules they share:

- the token comes from the reconciler's environment, from the variable ``settings.forge``
  in force names (``RECONCILER_FORGE_…``), never from git, and is sent only to that origin
  (redirects are not followed);
- every answer is read with a size cap, every request has a timeout;
- errors are classified where their cause is known: 5xx, 429 and connection errors are
  :class:`ForgeUnavailable` (try again), anything else :class:`ForgeRefused` (a person
  acts); their messages never hold the token.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from reconciler import __version__
from reconciler.errors import ReconcilerError, Stalled, Transient
from reconciler.model import FORGE_ENV_RE, ForgeSettings

log = logging.getLogger(__name__)

VERIFY = "reconciler/verify"  # the status on a merge request's head: the gate's verdict
APPLY = "reconciler/apply"  # the status on a merge commit: what the daemon did with it
LABEL = "reconciler"
MAX_ANSWER = 4 * 1024 * 1024  # bytes of one API answer
MAX_BODY = 60_000  # characters of a description or comment (GitHub's limit is 65536)
TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class ForgeError(ReconcilerError):
    """A forge API call that did not do what was asked."""


class ForgeRefused(ForgeError, Stalled):
    """The forge said no (401, 403, 404, 422 …) or is not configured: a person acts."""


class ForgeUnavailable(ForgeError, Transient):
    """The forge did not answer or failed (connection, timeout, 429, 5xx): try again."""


class CommitState(StrEnum):
    """A commit status, in the words the three forges share (GitLab says ``failed``)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


@dataclass(frozen=True)
class MergeRequest:
    """One merge (pull) request as the reconciler needs it, whichever forge it is on."""

    number: int
    title: str
    url: str
    head_branch: str
    head_sha: str
    base_branch: str
    state: str  # open | closed | merged
    author: str = ""
    merged_by: str = ""
    merge_sha: str = ""
    body: str = ""
    labels: tuple[str, ...] = ()

    @property
    def merged(self) -> bool:
        """Merged (not merely closed)."""
        return self.state == "merged"


@dataclass(frozen=True)
class Status:
    """One commit status: its context, state and one-line description."""

    context: str
    state: CommitState
    description: str = ""


class Forge(Protocol):
    """What the reconciler does on a forge. Every method raises :class:`ForgeRefused` or
    :class:`ForgeUnavailable`, nothing else."""

    kind: str
    repository: str

    def get(self, number: int) -> MergeRequest:
        """The merge request ``number``."""
        ...

    def find_open(self, branch: str, base: str) -> MergeRequest | None:
        """The open merge request from ``branch`` into ``base``, if any."""
        ...

    def list_open(self) -> list[MergeRequest]:
        """The open merge requests (the newest 50)."""
        ...

    def create(self, branch: str, base: str, title: str, body: str) -> MergeRequest:
        """A new merge request from ``branch`` into ``base``."""
        ...

    def update(self, number: int, title: str, body: str) -> MergeRequest:
        """New title and description of merge request ``number``."""
        ...

    def add_labels(self, number: int, labels: tuple[str, ...]) -> None:
        """Put ``labels`` on merge request ``number`` (creating them where the forge needs)."""
        ...

    def merged_for(self, sha: str) -> MergeRequest | None:
        """The merged merge request whose merge (or squashed) commit is ``sha``, if any."""
        ...

    def approvers(self, number: int) -> tuple[str, ...]:
        """Who approved merge request ``number``."""
        ...

    def comment(self, number: int, body: str) -> None:
        """Add a comment to merge request ``number``."""
        ...

    def comments(self, number: int) -> list[str]:
        """The bodies of merge request ``number``'s comments, oldest first (the first 100)."""
        ...

    def set_status(self, sha: str, status: Status, target_url: str = "") -> None:
        """Set ``status`` on commit ``sha``."""
        ...

    def statuses(self, sha: str) -> list[Status]:
        """The statuses on commit ``sha``, the newest of each context."""
        ...

    def branch_head(self, branch: str) -> str | None:
        """The commit ``branch`` is at as the forge sees it (None: no such branch yet)."""
        ...


def token_from(settings: ForgeSettings, environ: Mapping[str, str] | None = None) -> str:
    """The forge's token, from the variable ``settings.tokenEnv`` names.

    Raises:
        ForgeRefused: the name is not a ``RECONCILER_FORGE_`` variable, or it is unset.
    """
    env = os.environ if environ is None else environ
    name = settings.token_env
    if not FORGE_ENV_RE.match(name):
        raise ForgeRefused(
            f"settings.forge.tokenEnv {name!r} is not a RECONCILER_FORGE_ variable",
            "name a variable starting with RECONCILER_FORGE_ (the reconciler's other "
            "secrets are never the forge's)",
        )
    token = env.get(name, "").strip()
    if not token:
        raise ForgeRefused(
            f"${name}, the token for {settings.type} at {shown(settings.url)}, is not set",
            f"set {name} in the reconciler's environment to a token that may open merge "
            "requests, comment and set commit statuses",
        )
    return token


def shown(url: str) -> str:
    """An origin as messages name it: scheme, host and port only."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return "(an invalid URL)"


@dataclass
class Api:
    """JSON over HTTP to one forge origin with one token: timeouts, size caps, no
    redirects, and errors classified (see the module docstring)."""

    base: str  # the API root, e.g. https://gitea.example.org/api/v1
    headers: dict[str, str]
    what: str  # for messages, e.g. "gitea at http://127.0.0.1:3000"
    session: requests.Session = field(default_factory=requests.Session)
    attempts: int = 3

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str | int] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """The decoded JSON answer of ``method path`` (None for an empty one, or a 404 with
        ``missing_ok``); transient failures are tried again, ``attempts`` times in all.

        Raises:
            ForgeRefused: a 4xx other than 408/429 (or 404 without ``missing_ok``).
            ForgeUnavailable: no answer, 408, 429 or 5xx after every attempt.
        """
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.session.request(
                    method,
                    self.base + path,
                    json=body,
                    params=params,
                    headers={"User-Agent": f"reconciler/{__version__}", **self.headers},
                    timeout=TIMEOUT,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                why = exc.__class__.__name__  # its text may quote the URL: never shown
            else:
                with response:
                    data = _read(response)
                    status = response.status_code
                if 200 <= status < 300:
                    return _decode(data, self.what, path)
                if status == 404 and missing_ok:
                    return None
                why = f"HTTP {status}{_detail(data)}"
                if status not in (408, 429) and status < 500:
                    raise ForgeRefused(
                        f"{self.what}: {method} {path}: {why}",
                        _HINTS.get(status, "check settings.forge and the token's permissions"),
                    )
            if attempt < self.attempts:
                time.sleep(0.5 * 2 ** (attempt - 1))
        raise ForgeUnavailable(f"{self.what}: {method} {path}: {why}", "it is tried again later")


_HINTS = {
    401: "the token was refused: check the variable settings.forge.tokenEnv names",
    403: "the token may not do this: give it the right scope (repository write, statuses)",
    404: "check settings.forge.repository and the merge request's number",
}


def _read(response: requests.Response) -> bytes:
    data = b""
    for chunk in response.iter_content(64 * 1024):
        data += chunk
        if len(data) > MAX_ANSWER:
            raise ForgeRefused(f"an answer of the forge is larger than {MAX_ANSWER} bytes")
    return data


def _decode(data: bytes, what: str, path: str) -> Any:
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise ForgeRefused(f"{what}: {path}: the answer is not JSON") from None


def _detail(data: bytes) -> str:
    """A forge's own error message (``message`` or ``error``), one line, short."""
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    if isinstance(doc, dict):
        text = doc.get("message") or doc.get("error") or ""
        return f": {str(text).splitlines()[0][:200]}" if text else ""
    return ""


def clip(text: str) -> str:
    """``text`` cut to what every forge accepts as a description or comment."""
    if len(text) <= MAX_BODY:
        return text
    return text[: MAX_BODY - 40] + "\n\n… (cut: the full plan is `reconciler plan`)\n"
