"""Parse artifact references: ``host[:port]/path[:tag][@digest]`` and ``oci:/dir[:tag]``.

The OCI layout form follows skopeo's ``oci:`` transport: the directory is the
repository, and the text after the last ``:`` that follows the last ``/`` is the tag.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache

from reconciler.registry.errors import InvalidReference
from reconciler.registry.oci import check_digest, check_tag

LAYOUT_PREFIX = "oci:"
DOCKER_HUB = "docker.io"
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """A repository in a registry, optionally with a tag and/or a digest.

    ``registry`` is ``host[:port]`` for the distribution API, or ``"oci:"`` for an
    OCI layout, in which case ``repository`` is the layout's absolute directory.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_layout(self) -> bool:
        """An OCI layout on disk rather than a registry host."""
        return self.registry == LAYOUT_PREFIX

    @property
    def ref(self) -> str | None:
        """What to ask the registry for: the digest when known, else the tag."""
        return self.digest or self.tag

    def with_tag(self, tag: str | None) -> Reference:
        """The same repository and digest with another tag (None: none)."""
        return Reference(self.registry, self.repository, tag, self.digest)

    def __str__(self) -> str:
        base = (
            f"{LAYOUT_PREFIX}{self.repository}"
            if self.is_layout
            else f"{self.registry}/{self.repository}"
        )
        if self.tag:
            base += f":{self.tag}"
        if self.digest:
            base += f"@{self.digest}"
        return base


def check_repository(name: str) -> str:
    """``name`` if the distribution spec's repository grammar allows it.

    Raises:
        InvalidReference: it does not (upper case, empty components, over 255 characters).
    """
    parts = name.split("/")
    if not name or len(name) > 255 or not all(_REPO_COMPONENT.match(p) for p in parts):
        raise InvalidReference(
            f"invalid repository name {name[:255]!r}",
            "repository names are lowercase path components of [a-z0-9._-]",
        )
    return name


def parse_reference(text: str) -> Reference:
    """Parse a reference; raises :class:`InvalidReference` naming the input."""
    text = text.strip()
    if text.startswith(LAYOUT_PREFIX):
        return _parse_layout(text[len(LAYOUT_PREFIX) :], text)
    if "://" in text:
        raise InvalidReference(
            f"invalid reference {text[:200]!r}: no URL scheme expected",
            "write host[:port]/repository[:tag][@digest]",
        )
    rest, digest = _split_digest(text)
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], check_tag(rest[colon + 1 :])
    first, sep, remainder = rest.partition("/")
    if sep and (("." in first or ":" in first or first == "localhost") and _HOST.match(first)):
        registry, repository = first.lower(), remainder  # host names ignore case
    else:
        registry, repository = DOCKER_HUB, rest
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return Reference(registry, check_repository(repository), tag, digest)


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, _, digest = text.rpartition("@")
    return rest, check_digest(digest)


def _parse_layout(body: str, text: str) -> Reference:
    rest, digest = _split_digest(body)
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], check_tag(rest[colon + 1 :])
    if not rest:
        raise InvalidReference(
            f"invalid layout reference {text[:200]!r}", "write oci:/directory[:tag]"
        )
    return Reference(LAYOUT_PREFIX, os.path.abspath(rest), tag, digest)


@lru_cache(maxsize=4096)
def canonical_repository(repository: str) -> str:
    """One spelling per repository: for "no two environments write one tag", prune,
    and the keys of local anchors.

    Hosts are case-insensitive; ``docker.io``, ``index.docker.io``,
    ``registry-1.docker.io`` and no host at all are Docker Hub, whose one-component names
    get ``library/``; an OCI layout is its normalised directory.
    """
    if repository.startswith(LAYOUT_PREFIX):
        path = repository[len(LAYOUT_PREFIX) :]
        return LAYOUT_PREFIX + (posixpath.normpath(path) if path else path)
    first, sep, rest = repository.partition("/")
    text = f"{first.lower()}/{rest}" if sep else repository
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return text
    return f"{ref.registry.lower()}/{ref.repository}"
