"""The error tree. A leaf module: it imports nothing from the package.

Errors are classified where their cause is known, so the loop and the CLI only
dispatch on the type:

- ``Stalled``: a person must act (invalid state, refused verification, a missing
  tool). Retrying the same input gives the same answer.
- ``Transient``: try again later (network, 429, 5xx, a remote that did not answer).

Every error presents itself with a message and a hint. Messages never contain
credentials or URL query strings: build them with :func:`redact_url`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the desired state, located as precisely as we can."""

    file: str
    field: str
    message: str
    hint: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def to_json(self) -> dict[str, object]:
        """For ``--output json``: every field, ``line`` None when unknown."""
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


class ReconcilerError(Exception):
    """Base of every error the package raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class Stalled(ReconcilerError):
    """A person must act; retrying the same input cannot help."""


class Transient(ReconcilerError):
    """Worth retrying later, with backoff."""


class InvalidState(Stalled):
    """The desired state in git is invalid; carries every problem found."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"invalid desired state: {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"- {p}" for p in self.problems))


class ToolMissing(Stalled):
    """An external executable (cue, ssh-keygen, ...) is not installed."""


class GitSourceError(Stalled):
    """The state repository, ref or path does not exist."""


class GitUnreachable(Transient):
    """The state repository's remote did not answer in time."""


_USERINFO = re.compile(r"//[^/@\s]*@")


def redact_url(url: str) -> str:
    """Return ``url`` without userinfo, query string or fragment, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub("//", url.split("?", 1)[0])
    if not parts.scheme or not parts.netloc:
        return _USERINFO.sub("//", url.split("?", 1)[0])
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class LeaseLost(Transient):
    """This replica no longer holds its lease: it stops before its next write, and a
    replica that holds the lease re-plans from what the registry then says."""
